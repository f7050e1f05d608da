"""The DVC pipeline: grid expansion, result-file checks, and a reduced grid through `dvc repro`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from benchmark.aggregate import method_label
from benchmark.reported import reported_table
from benchmark.results import ResultFileError, load_result
from pipelines import aggregate, cell, parallel, stages
from pipelines.grid import diagnosed, expand, load_params

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**ENV, "DVC_SITE_CACHE_DIR": str(cwd / ".dvc" / "site-cache"), "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_repo(dst: Path, with_results: bool = False) -> Path:
    """The project's source files (as git sees them), without results the pipeline writes
    (with them: as a clone is)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    skip = () if with_results else ("results/runs/", "results/tables/", "results/leaderboard/",
                                     "results/data/", "results/diagnostics/", "pretrained/",
                                     "dvc.lock")
    for name in files:
        if not name.startswith(skip) and (REPO / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dst / name)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    return dst


def commit(repo: Path) -> None:
    git = ["git", "-c", "user.email=ci@parax-bench", "-c", "user.name=ci"]
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=repo, check=True)


def with_grid(params_text: str, profile: str) -> str:
    return params_text.replace("grid: *mini", f"grid: *{profile}")


def test_committed_dvc_yaml_is_the_generated_one():
    """dvc.yaml is written from params.yaml and the code's imports; the committed file is
    current (`python -m pipelines.stages` rewrites it; scripts/dvc does so before dvc runs)."""
    assert stages.main(["--params", str(REPO / "params.yaml"), "--out", str(REPO / "dvc.yaml"),
                        "--check"]) == 0


@pytest.mark.parametrize("profile", ["mini", "paper"])
def test_dvc_stages_are_the_grid(tmp_path, profile):
    """DVC reads the generated dvc.yaml as one stage per grid cell, running that cell."""
    (tmp_path / "params.yaml").write_text(with_grid((REPO / "params.yaml").read_text(), profile))
    params = load_params(tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text(stages.render(params, "test"))
    dvc(tmp_path, "init", "--no-scm", "-q")
    from dvc.repo import Repo

    with Repo(str(tmp_path)) as repo:
        commands = {Path(out.def_path).name: (stage.name, stage.cmd)
                    for stage in repo.index.stages for out in stage.outs
                    if out.def_path.startswith(("results/runs/", "results/diagnostics/"))}
    cells = expand(params)
    kept = [c for c in cells if diagnosed(params, c)]  # seed 0 of the diagnostics' tasks
    assert commands == {
        **{f"{c.id}.json": (f"cell-{c.id}", f"python -m pipelines.cell {c.id}") for c in cells},
        **{f"{c.id}.adapter.pth": (f"cell-{c.id}", f"python -m pipelines.cell {c.id}")
           for c in kept},
        **{f"{c.id}.{ext}": (f"diagnose-{c.id}", f"python -m pipelines.diagnose {c.id}")
           for c in kept for ext in ("json", "svg")}}
    assert {(c.task, c.seed) for c in kept} == {
        (t, s) for t in params["grid"]["diagnostics"]["tasks"]
        for s in params["grid"]["diagnostics"]["seeds"]}
    if profile == "paper":  # Tables 1-3: 3 tasks x 4 backbones, 7: 1, 4: 4 datasets, 9: 1, 10: 2
        # (every method), 8: Table 8's 7 methods on VMamba-B
        assert len(cells) == (12 + 1 + 4 + 1 + 2) * 12 * 3 + 24 * 3 + 7 * 3
        # ADE20K's 5 backbones, but VPT on the two ConvNeXts and CoLoRA on the other three,
        # and Table 8's 7 on VMamba-B
        assert len(kept) == 5 * 12 - 2 - 3 + 7
        assert {c.method for c in cells if c.backbone == "vmamba-b"} == {
            "full", "parax", "mona", "lorand", "repadapter", "adaptformer", "snell"}
    else:  # CoLoRA runs on ConvNeXt only, beside full fine-tuning, and nowhere else
        assert {(c.backbone, c.method) for c in cells if c.method == "colora"
                or c.backbone == "convnext-micro"} == {("convnext-micro", "full"),
                                                       ("convnext-micro", "colora")}


def test_a_cell_depends_on_its_own_method_only():
    params = load_params(REPO / "params.yaml")
    generated = stages.stages(params)
    parax, lora = (generated[f"cell-ade20k.swin-micro.{m}.s0"]["deps"] for m in ("parax", "lora"))
    assert "methods/parax.py" in parax and "methods/lora.py" not in parax
    assert "methods/lora.py" in lora and "methods/parax.py" not in lora
    assert "methods/full.py" in lora  # a budget of 14% is 14% of full fine-tuning's count
    assert "methods/base.py" in lora and "tasks/segmentation.py" in lora
    assert "tasks/detection.py" not in lora  # another task kind
    assert "results/reported/paper_results.csv" in lora  # read by the budget code (DATA_FILES)
    assert "grid.threads" in generated["cell-ade20k.swin-micro.lora.s0"]["params"]


def test_not_applicable_cell_writes_a_record(tmp_path, monkeypatch):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["grid"]["classification"]["backbones"] = ["convnext-micro"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert cell.main(["cifar100.convnext-micro.vpt.s0"]) == 0
    result = load_result(tmp_path / "results/runs/mini/cifar100.convnext-micro.vpt.s0.json")
    assert "ConvNeXt" in result["not_applicable"]


@pytest.mark.parametrize("cell_id, message", [
    ("imagenet.swin-micro.parax.s0", "no cell 'imagenet.swin-micro.parax.s0' in the grid"),
    ("cifar100.swin-micro.prompt.s0", "unknown method 'prompt'"),
    ("cifar100.parax", "no cell 'cifar100.parax' in the grid"),
])
def test_cell_refuses_a_cell_outside_the_grid(cell_id, message, capsys):
    with pytest.raises(SystemExit) as info:
        cell.main([cell_id, "--params", str(REPO / "params.yaml")])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_parallel_forks_only_cell_and_diagnose_commands():
    with pytest.raises(ValueError, match="stage cell-x: expected a command 'python -m pipelines.cell"):
        parallel.forked_argv("cell-x", "python -m pipelines.data --dataset cifar100")
    assert parallel.forked_argv("cell-a", "python -m pipelines.cell a.b.c.s0  --params p") == (
        "pipelines.cell", ["a.b.c.s0", "--params", "p"])
    assert parallel.forked_argv("diagnose-a", "python -m pipelines.diagnose a.b.c.s0") == (
        "pipelines.diagnose", ["a.b.c.s0"])


def test_parallel_reports_a_failing_cell(tmp_path, capsys, monkeypatch):
    """A cell that fails leaves its log, names it, and is not among the finished cells; the
    cells' thread setting does not leak into later stages."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    bad = f"python -m pipelines.cell nosuch.swin-micro.parax.s0 --params {REPO / 'params.yaml'}"
    argvs = {"cell-bad": parallel.forked_argv("cell-bad", bad)}
    assert parallel.run_cells(argvs, {}, 2, tmp_path) == []
    out, err = capsys.readouterr()
    assert f"1/1 cell-bad: FAILED (exit 2, log {tmp_path / 'cell-bad'}.log)" in out
    assert "no cell 'nosuch.swin-micro.parax.s0'" in (tmp_path / "cell-bad.log").read_text()
    assert "no cell 'nosuch.swin-micro.parax.s0'" in err
    assert "OMP_WAIT_POLICY" not in os.environ


def test_parallel_stages_wait_for_the_stages_they_read(tmp_path, monkeypatch, capsys):
    """Pretraining starts once its source data is written; independent stages run beside."""
    monkeypatch.chdir(tmp_path)
    write = "import pathlib, time; time.sleep(1); pathlib.Path('source').write_text('x')"
    read = "import pathlib; print(pathlib.Path('source').read_text())"
    commands = {"data-source": f'python -c "{write}"', "data-other": 'python -c "print(1)"',
                "pretrain-b": f'python -c "{read}"'}
    after = {"pretrain-b": {"data-source"}, "data-other": set(), "data-source": set()}
    done = parallel.run_commands(commands, after, 2, tmp_path / "logs")
    assert sorted(done) == sorted(commands) and done.index("data-source") < done.index("pretrain-b")
    assert (tmp_path / "logs/pretrain-b.log").read_text() == "x\n"
    assert "3/3 pretrain-b: ok" in capsys.readouterr().out


def test_parallel_runs_each_pretraining_stage_by_itself(tmp_path, monkeypatch):
    """Pretraining uses every core: nothing runs beside a pretrain stage (data stages, two at
    a time, do run together)."""
    monkeypatch.chdir(tmp_path)
    stamp = ("import sys, time; f = open('times', 'a'); f.write(f'{sys.argv[1]} {time.time()} ');"
             " time.sleep(0.5); f.write(f'{time.time()}\\n')")
    names = ["pretrain-a", "data-x", "pretrain-b", "data-y", "data-z"]
    commands = {n: f'python -c "{stamp}" {n}' for n in names}
    assert sorted(parallel.run_commands(commands, {}, 2, tmp_path / "logs")) == sorted(names)
    spans = {name: (float(t0), float(t1)) for name, t0, t1 in
             (line.split() for line in (tmp_path / "times").read_text().splitlines())}
    overlapping = {(a, b) for a in spans for b in spans if a < b
                   and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]}
    assert overlapping and all(not n.startswith("pretrain-") for pair in overlapping for n in pair)


def test_a_stage_reads_the_outputs_inside_or_around_the_paths_it_depends_on():
    deps = {"aggregate": ["results/runs/mini", "benchmark/aggregate.py"],
            "diagnose-x": ["results/runs/mini/x.json"], "page": ["results/tables/mini/t.json"],
            "cell-x": ["pretrained/mini/b.pth"], "cell-y": [], "tables": [], "pretrain-b": []}
    outs = {"cell-x": ["results/runs/mini/x.json"], "cell-y": ["results/runs/mini/y.json"],
            "tables": ["results/tables/mini"], "pretrain-b": ["pretrained/mini/b.pth"],
            "aggregate": [], "diagnose-x": [], "page": []}
    reads = parallel.readers(deps, outs)
    assert reads["aggregate"] == {"cell-x", "cell-y"}  # a folder holding their outputs
    assert reads["page"] == {"tables"}  # a file inside an output folder
    assert reads["diagnose-x"] == {"cell-x"} and reads["cell-x"] == {"pretrain-b"}
    assert reads["cell-y"] == reads["tables"] == set()


def test_cells_run_longest_first_by_their_last_recorded_wall_time(tmp_path):
    def result(name, **fields):
        (tmp_path / f"{name}.json").write_text(json.dumps(fields))
        return [str(tmp_path / f"{name}.json")]

    outs = {"cell-short": result("short", wall_time_s=3.0), "cell-long": result("long", wall_time_s=40.0),
            "cell-na": result("na", not_applicable="no prompts"), "cell-new": [str(tmp_path / "new.json")],
            "cell-torn": [str(tmp_path / "torn.json")]}
    (tmp_path / "torn.json").write_text("{")
    order = parallel.longest_first(["cell-short", "cell-na", "cell-long", "cell-new", "cell-torn"], outs)
    assert order == ["cell-new", "cell-torn", "cell-long", "cell-short", "cell-na"]


def test_a_forced_run_starts_the_table_stages_that_read_no_cell_with_the_data():
    commands = dict.fromkeys(["params_table", "data-source", "pretrain-b", "cell-x",
                              "diagnose-x", "efficiency", "aggregate", "leaderboard", "counts"])
    reads = {"params_table": set(), "data-source": set(), "pretrain-b": {"data-source"},
             "cell-x": {"pretrain-b"}, "diagnose-x": {"cell-x"}, "efficiency": set(),
             "aggregate": {"cell-x", "efficiency"}, "leaderboard": {"aggregate"},
             "counts": {"params_table", "pretrain-b"}}
    # The efficiency stage times itself: never beside other work; the page reads the cells
    # through the aggregate.
    assert parallel.before_cells(commands, reads) == ["params_table", "counts"]


def test_the_grid_s_stages_read_what_they_aggregate():
    """On this repository's dvc.yaml: the aggregate waits for every cell, diagnose stage and
    the efficiency table; only the parameter table can start before the cells."""
    commands, _, reads, _ = parallel.stages(force=True)
    forked = {n for n in commands if n.startswith(parallel.CELLS)}
    assert forked and forked | {"efficiency"} <= reads["aggregate"]
    assert reads["leaderboard"] == {"aggregate"}
    assert parallel.before_cells(commands, reads) == ["params_table"]


@pytest.mark.parametrize("content, message", [
    ('{"metrics": {"top1": 1.0}}', "not a parax-bench result file"),
    ('{"cell": {"task": "cifar100"', "not a JSON result file"),
])
def test_aggregate_refuses_broken_or_foreign_files(tmp_path, content, message):
    runs = tmp_path / "runs"
    runs.mkdir()
    bad = runs / "something.json"
    bad.write_text(content)
    out = tmp_path / "tables"
    with pytest.raises(ResultFileError, match=message) as info:
        aggregate.main(["--params", str(REPO / "params.yaml"), "--runs", str(runs),
                        "--out", str(out)])
    assert str(bad) in str(info.value)
    assert not out.exists()


class Tables(HTMLParser):
    """Section id -> rows of cell texts, from the rendered leaderboard."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, list[list[str]]] = {}
        self.current = None
        self.row = None
        self.text = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.current = attrs.get("id")
            self.sections[self.current] = []
        elif tag == "tr" and self.current is not None:
            self.row = []
        elif tag in ("td", "th") and self.row is not None:
            self.text = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.text is not None:
            self.row.append(self.text.strip())
            self.text = None
        elif tag == "tr" and self.row is not None:
            self.sections[self.current].append(self.row)
            self.row = None

    def handle_data(self, data):
        if self.text is not None:
            self.text += data

    def row_of(self, section: str, label: str) -> list[str]:
        rows = [r for r in self.sections[section] if r and r[0] == label]
        assert len(rows) == 1, (section, label, self.sections[section])
        return rows[0]


REDUCED = {
    "exclude": ["full", "lora", "adaptformer", "mona", "lorand", "repadapter", "vpt", "snell",
                "gps", "spt-lora", "colora"],
    "datasets": ["source", "ade20k", "cifar100"],
    "tasks": {"source": {"train": 512, "val": 64, "iters": 40},
              "ade20k": {"train": 8, "val": 4, "iters": 4},
              "cifar100": {"train": 64, "val": 32, "iters": 6}},
    "dense": {"tasks": ["ade20k"], "backbones": ["swin-micro"]},
    "vit_dense": {"tasks": [], "backbones": ["vit-micro"]},
    "classification": {"tasks": ["cifar100"], "backbones": ["swin-micro"]},
    "pose": {"tasks": [], "backbones": ["swin-micro"]},
    "remote_sensing": {"tasks": [], "backbones": ["swin-micro"]},
    "ablation": {"task": "cifar100", "backbone": "swin-micro", "variants": ["t14b-relu"]},
    "diagnostics": {"tasks": ["ade20k"], "seeds": [0], "images": 4},
    "efficiency": {"backbone": "swin-micro", "task": "coco_instance", "height": 64, "width": 64,
                   "batch": 2, "device": "cpu", "amp": "none", "warmup": 0, "iters": 2,
                   "latency_batch": 1, "latency_iters": 2, "methods": ["parax"]},
}


@pytest.mark.slow
def test_reduced_grid_through_dvc_repro(tmp_path):
    root = copy_repo(tmp_path / "repo")
    text = (root / "params.yaml").read_text()
    mini = text.index("  mini: &mini\n")
    paper = text.index("  paper: &paper\n")
    block = yaml.safe_dump({"mini": {"profile": "mini", "data_root": "data/mini",
                                     "pretrained_root": "pretrained/mini", "seeds": [0],
                                     "budget": "14%", "pretrain": ["swin-micro"], **REDUCED}},
                           default_flow_style=None, sort_keys=False)
    block = "\n".join("  " + line for line in block.splitlines()).replace(
        "  mini:", "  mini: &mini", 1)
    (root / "params.yaml").write_text(text[:mini] + block + "\n" + text[paper:])
    commit(root)

    # The main command's way: cells two at a time outside DVC, then recorded by `dvc commit`.
    env = {**ENV, "DVC_SITE_CACHE_DIR": str(root / ".dvc" / "site-cache"), "DVC_NO_ANALYTICS": "1"}
    run = subprocess.run([sys.executable, "-m", "pipelines.parallel", "--jobs", "2"], cwd=root,
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[parallel] 5 cells and 2 diagnose stages, 2 at a time" in run.stdout
    params = load_params(root / "params.yaml")
    html = (root / "results/leaderboard/index.html").read_text()
    page = Tables()
    page.feed(html)
    for section in ("table1", "table4", "rank", "table14b", "table15", "pareto-ade20k-swin-micro",
                    "diagnostics-ade20k-swin-micro", "provenance"):
        assert section in page.sections, section
    # ADE20K's cells kept their method states; their diagnose stages drew them on the page
    for method in ("linear", "parax"):
        cell_id = f"ade20k.swin-micro.{method}.s0"
        assert (root / f"results/runs/mini/{cell_id}.adapter.pth").is_file()
        report = json.loads((root / f"results/diagnostics/mini/{cell_id}.json").read_text())
        assert report["images"] == 4 and bool(report["routing"]) == (method == "parax")
        assert f'<figure class="diag-card" data-cell="{cell_id}">' in html
        assert page.row_of("diagnostics-ade20k-swin-micro", method_label(method))
    reported = reported_table()

    def paper_value(table, dataset, method, metric):
        row = reported[(reported.table == table) & (reported.dataset == dataset)
                       & (reported.method == method) & (reported.metric == metric)
                       & (reported.backbone == "Swin-B")]
        return f"{row.value.iloc[0]:.1f}"

    for c in expand(params):
        result = load_result(root / f"results/runs/mini/{c.id}.json")
        assert result["cell"]["task"] == c.task and result["git"]["commit"]
        assert result["git"]["dirty"] is False  # the pipeline's own outputs do not count
        if c.variant is not None:
            row = page.row_of("table14b", "gate=relu")
            assert f"{result['metrics']['top1']:.1f}" in row
            assert paper_value("14b", "COCO2017", "AdaRoute[gate=relu]", "AP_box") in row
            continue
        label = method_label(c.method)
        if c.task == "ade20k":
            row = page.row_of("table1", label)
            assert f"{result['metrics']['mIoU']:.1f}" in row
            if c.method == "parax":
                assert paper_value("1", "ADE20K", "AdaRoute", "mIoU") in row
        else:
            row = page.row_of("table4", label)
            assert f"{result['metrics']['top1']:.1f}" in row
        assert f"{result['trainable_backbone_params'] / 1e6:.2f}" in row
        assert f"results/runs/mini/{c.id}.json".split("/")[-1] in html

    measured = json.loads((root / "results/efficiency/mini.json").read_text())
    assert [r["name"] for r in measured["rows"]] == ["parax", "full", "linear"]
    for r in measured["rows"]:
        row = page.row_of("table15", method_label(r["method"]))
        assert f"{r['trainable_params'] / 1e6:.3f}" in row
        assert f"{r['train_img_s']['median']:.2f}" in row

    # dvc.lock holds exactly what `dvc repro` would have recorded: nothing is out of date.
    start = time.monotonic()
    again = dvc(root, "repro")
    assert "Running stage" not in again.stdout and time.monotonic() - start < 60

    # A change to one method's options invalidates that method's cells only.
    params_text = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params_text.replace("  parax: {}", "  parax: {gate: softmax}"))
    status = json.loads(dvc(root, "status", "--json").stdout)
    changed = {name for name in status if name.startswith("cell-")}
    assert changed == {"cell-ade20k.swin-micro.parax.s0", "cell-cifar100.swin-micro.parax.s0",
                       "cell-cifar100.swin-micro.parax~t14b-relu.s0"}
    # As on a fresh clone (stamps committed, synthetic data absent): the cells rewrite it.
    shutil.rmtree(root / "data")
    rerun = dvc(root, "repro")
    # 3 cells, the ADE20K cell's diagnostics, the efficiency table (it reads every method's
    # options), tables, page
    assert rerun.stdout.count("Running stage '") == 7, rerun.stdout
    assert "Running stage 'diagnose-ade20k.swin-micro.parax.s0'" in rerun.stdout

    # A cell's deps hold every project module it imports (run again with -X importtime; it
    # resumes from its finished checkpoint).
    generated = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for cell_id in ("ade20k.swin-micro.parax.s0", "cifar100.swin-micro.parax~t14b-relu.s0"):
        run = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipelines.cell", cell_id],
                             cwd=root, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in run.stderr.splitlines()
                    if line.startswith("import time:")}
        project = {m for m in imported if m.split(".")[0] in stages.PACKAGES}
        files = {Path(stages.module_path(m)).relative_to(REPO).as_posix() for m in project}
        assert files and files <= set(generated[f"cell-{cell_id}"]["deps"]), sorted(
            files - set(generated[f"cell-{cell_id}"]["deps"]))


HOULSBY = '''"""Houlsby et al. (2019): a serial bottleneck adapter after each residual sum."""
import dataclasses

from torch import nn

from methods import MethodConfig, PEFTMethod, Role, register_method, width_field


@dataclasses.dataclass
class HoulsbyConfig(MethodConfig):
    bottleneck: int = width_field(64, "d: bottleneck width", budget=(1, 4096, 1))


class Bottleneck(nn.Module):
    def __init__(self, dim, width):
        super().__init__()
        self.down, self.up = nn.Linear(dim, width), nn.Linear(width, dim)

    def forward(self, x, hw):
        return x + self.up(nn.functional.gelu(self.down(x)))


@register_method
class Houlsby(PEFTMethod):
    name = "houlsby"
    description = "Houlsby: a serial bottleneck adapter after each residual sum"
    config_class = HoulsbyConfig
    requires = (Role.SERIAL,)

    def attach(self, host):
        for block in host.blocks:
            for site in host.sites_of(Role.SERIAL):
                host.add(site, Bottleneck(block.dim, self.config.bottleneck), block=block)
'''


@pytest.mark.slow
def test_a_new_method_file_joins_the_grid_and_nothing_else_reruns(tmp_path):
    """Only methods/houlsby.py is added to a copy of the repository: it is listed, sized to a
    budget, and dvc (through scripts/dvc's regeneration) shows its cells as new; no other
    stage but the aggregation (which labels every method) goes out of date."""
    root = copy_repo(tmp_path / "repo", with_results=True)
    commit(root)
    env = {**ENV, "DVC_SITE_CACHE_DIR": str(root / ".dvc" / "site-cache"), "DVC_NO_ANALYTICS": "1",
           "PYTHONPATH": str(root)}  # the copy's packages, not the installed checkout's

    def status() -> set[str]:  # what scripts/dvc does, with this interpreter's .venv
        subprocess.run([sys.executable, "-m", "pipelines.stages"], cwd=root, env=env, check=True)
        return set(json.loads(dvc(root, "status", "--json").stdout))

    before = status()
    (root / "methods" / "houlsby.py").write_text(HOULSBY)
    exe = Path(sys.executable).parent / "parax-bench"
    listing = subprocess.run([exe, "methods"], cwd=root, env=env, capture_output=True, text=True)
    assert any(line.startswith("houlsby ") for line in listing.stdout.splitlines())
    sized = subprocess.run([exe, "params", "--backbone", "swin-b", "--method", "houlsby",
                            "--budget", "5.2M", "--format", "json"], cwd=root, env=env,
                           capture_output=True, text=True, check=True)
    assert abs(json.loads(sized.stdout)[0]["trainable_backbone_params"] - 5.2e6) < 0.1e6
    after = status()
    houlsby = {name for name in after if ".houlsby." in name or ".houlsby~" in name}
    # (3 dense, 1 classification, 1 pose) x 3 seeds, the sweep's 2 tasks x 2 budgets, and a
    # diagnose stage for seed 0 of each dense task
    assert len(houlsby) == 5 * 3 + 2 * 2 + 4 and not houlsby & before
    assert after - before - houlsby <= {"aggregate"}
