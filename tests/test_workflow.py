"""The researcher's workflow from a plain shell: arguments refused before any model is built
(one line, exit 2, nothing on disk), a fast ``--help``, a quiet console, and
train -> export -> merge."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from methods import build, create_backbone
from methods.checkpoints import export_official, load_official, read_state_dict
from tasks.synthetic import generate

from .conftest import micro_input, run

EXE = Path(sys.executable).parent / "parax-bench"


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    return generate("cifar100", tmp_path_factory.mktemp("data") / "cifar100", seed=0,
                    train=16, val=8)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A swin-micro checkpoint in the release naming (random weights)."""
    path = tmp_path_factory.mktemp("pretrained") / "swin-micro.pth"
    torch.save(export_official(build("swin-micro", "full", "cifar100")), path)
    return path


# case: (arguments replaced or added, the error line's gist)
REFUSED = {
    "no --pretrained": ({}, "no --pretrained checkpoint for swin-micro"),
    "missing checkpoint": ({"--pretrained": "nowhere.pth"}, "checkpoint not found: nowhere.pth"),
    "both sources": ({"--pretrained": "PRE", "--from-scratch": None}, "exclude each other"),
    "not applicable": ({"--from-scratch": None, "--backbone": "convnext-micro", "--method": "vpt"},
                       "vpt is not applicable to ConvNeXt"),
    "knobless budget": ({"--from-scratch": None, "--method": "full", "--budget": "3%"},
                        "full has no width knob"),
    "budget over 100%": ({"--from-scratch": None, "--budget": "500%"}, "at most 100%"),
    "unknown method": ({"--from-scratch": None, "--method": "nosuch"}, "unknown method 'nosuch'"),
    "missing data": ({"--from-scratch": None, "--data": "nowhere"},
                     "data directory not found: nowhere"),
    "bad choice": ({"--from-scratch": None, "--backbone": "swin-q"}, "invalid choice: 'swin-q'"),
    "negative iters": ({"--from-scratch": None, "--iters": "-1"}, "expected an integer >= 0"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_train_refuses_bad_arguments_in_one_line_leaving_nothing(case, tmp_path, cifar,
                                                                   pretrained):
    changes, expected = REFUSED[case]
    args = {"--task": "cifar100", "--backbone": "swin-micro", "--method": "parax",
            "--data": str(cifar), "--out": "r/cell.json"}
    args.update({k: str(pretrained) if v == "PRE" else v for k, v in changes.items()})
    argv = [a for k, v in args.items() for a in (k, v) if a is not None]
    start = time.monotonic()
    done = subprocess.run([EXE, "train", *argv], cwd=tmp_path, capture_output=True, text=True)
    seconds = time.monotonic() - start
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []  # no result, no work folder
    assert seconds < 10, f"{case}: refused after {seconds:.1f}s"


def test_help_and_version_load_no_stack():
    code = ("import sys; from benchmark.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'timm', 'mmengine', 'methods') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
    version = subprocess.run([EXE, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("parax-bench ")
    helped = subprocess.run([EXE, "train", "--help"], capture_output=True, text=True, check=True)
    assert "--from-scratch" in helped.stdout and "swin-micro" in helped.stdout


def test_an_unknown_method_in_params_fails_before_any_stage(tmp_path):
    text = Path("params.yaml").read_text().replace("  vpt: {}\n", "  vpt: {}\n  nosuch: {}\n", 1)
    bad = tmp_path / "params.yaml"
    bad.write_text(text)
    done = subprocess.run([sys.executable, "-m", "pipelines.stages", "--params", str(bad),
                           "--out", str(tmp_path / "dvc.yaml")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"{bad}: error: params.yaml names method 'nosuch', which is not registered; "
        f"registered: adaptformer, colora, full, gps, linear, lora, lorand, mona, parax, repadapter, snell, spt-lora, vpt"]
    assert not (tmp_path / "dvc.yaml").exists()


def test_train_export_merge_gives_the_trained_outputs(tmp_path, cifar, pretrained, capsys):
    out = tmp_path / "lora.json"
    assert main(["train", "--task", "cifar100", "--backbone", "swin-micro", "--method", "lora",
                 "--data", str(cifar), "--out", str(out), "--pretrained", str(pretrained),
                 "--iters", "4"]) == 0
    adapter = tmp_path / "lora.adapter.pth"
    assert f"-> {adapter}" in capsys.readouterr().out
    state = read_state_dict(adapter)
    options = json.loads(out.read_text())["cell"]["options"]
    trained = build("swin-micro", "lora", "cifar100", **options)
    names = trained.method.official_keys(trained)  # the authors' naming where there is one
    assert set(state) == {names.get(k, k) for k in trained.added_state_keys()}  # adapter only
    # the adapter on its backbone is the trained model: equal to the run's last checkpoint
    load_official(trained, {**read_state_dict(pretrained), **state})
    (pointer,) = (tmp_path / "lora.work").rglob("last_checkpoint")
    saved = torch.load(pointer.read_text().strip(), map_location="cpu", weights_only=False)
    for key, value in trained.model.state_dict().items():
        assert torch.equal(saved["state_dict"][f"backbone.model.{key}"], value), key

    sets = [a for k, v in options.items() for a in ("--set", f"{k}={v}")]
    count = ["params", "--backbone", "swin-micro", "--method", "lora", "--task", "cifar100",
             "--checkpoint", str(adapter), "--format", "json"]
    assert main(count + sets) == 0
    captured = capsys.readouterr()
    n = sum(v.numel() for v in state.values())
    assert f"{adapter}: {n} parameters, the lora state these options build" in captured.err
    assert json.loads(captured.out)[0]["trainable_backbone_params"] == n
    assert options.get("rank") != 7
    assert main(count + ["--set", "rank=7"]) == 2  # other options than it trained with
    assert "is not lora on swin-micro with these options" in capsys.readouterr().err

    merged = tmp_path / "merged.pth"
    assert main(["merge", "--backbone", "swin-micro", "--method", "lora", "--task", "cifar100",
                 "--checkpoint", str(adapter), "--out", str(merged)]) == 2
    assert "give the backbone they were trained on with --pretrained" in capsys.readouterr().err
    assert main(["merge", "--backbone", "swin-micro", "--method", "lora", "--task", "cifar100",
                 "--checkpoint", str(pretrained), "--out", str(merged)]) == 2
    assert "holds no lora weights" in capsys.readouterr().err
    assert not merged.exists()
    assert main(["merge", "--backbone", "swin-micro", "--method", "lora", "--task", "cifar100",
                 *sets, "--checkpoint", str(adapter), "--pretrained", str(pretrained),
                 "--out", str(merged)]) == 0
    plain = create_backbone("swin-micro", dense=False)
    plain.model.load_state_dict(torch.load(merged, weights_only=True))
    trained.model.eval(), plain.model.eval()
    x = micro_input("swin-micro")
    with torch.no_grad():
        for a, b in zip(run(trained, x), run(plain, x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("task", ["ade20k", "coco_instance"])
def test_a_cell_prints_a_progress_bar_and_a_summary_and_v_the_full_log(tmp_path, task,
                                                                      pretrained):
    """By default a cell's console is its progress bars, warnings worth a look and one
    summary line in the tables' units (COCO APs in percent); -v is mmengine's own log. The
    run's log file holds the full log (config, hooks, per-class table) either way."""
    data = generate(task, tmp_path / "data", seed=0, train=8, val=4)
    base = [str(EXE), "train", "--task", task, "--backbone", "swin-micro", "--method", "lora",
            "--data", str(data), "--pretrained", str(pretrained), "--iters", "12"]
    quiet = subprocess.run(base + ["--out", str(tmp_path / "q.json")], capture_output=True,
                           text=True, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    console = (quiet.stdout + quiet.stderr).replace("\r", "\n").splitlines()
    shown = [line for line in console if line.strip() and "%|" not in line]  # bar updates aside
    assert len(console) < 40 and len(shown) <= 3, "\n".join(shown)
    assert any("train: 100%|" in line and "12/12" in line and "loss" in line for line in console)
    summary = next(line for line in quiet.stdout.splitlines() if line.startswith(task))
    primary = json.loads((tmp_path / "q.json").read_text())["metrics"]
    if task == "ade20k":
        assert f"mIoU {primary['mIoU']:.2f}" in summary
    else:
        assert f"AP_box {100 * primary['coco/bbox_mAP']:.2f}" in summary
    (log,) = (tmp_path / "q.work").rglob("*/*.log")
    assert "Config:" in log.read_text() and "Iter(train) [10/12]" in log.read_text()

    loud = subprocess.run(base + ["--out", str(tmp_path / "v.json"), "-v"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert "Config:" in loud.stdout and "Iter(train) [10/12]" in loud.stdout
    assert "%|" not in loud.stderr
