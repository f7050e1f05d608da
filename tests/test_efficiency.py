"""`parax-bench efficiency`: counts agree with `params`, ratios and merges are what they say,
the paper's Table 15 ratios are read right, bad input fails cleanly."""
from __future__ import annotations

import io
import json

import pytest
import torch

from benchmark import efficiency
from benchmark.aggregate import efficiency_section, method_label
from benchmark.cli import main
from benchmark.efficiency import Entry, Setting, parse_entry, run, trainable_state
from benchmark.params import count_row
from methods import NotApplicableError, available_methods, build, get_method
from methods.spt import units
from pipelines.efficiency import setting_of

TINY = ["--backbone", "swin-micro", "--task", "coco_instance", "--size", "64x64", "--batch", "2",
        "--budget", "14%", "--device", "cpu", "--warmup", "0", "--iters", "2",
        "--latency-iters", "2"]
TINY_SETTING = Setting(backbone="swin-micro", task="coco_instance", height=64, width=64, batch=2,
                       budget="14%", device="cpu", warmup=0, iters=2, latency_iters=2)


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    """Every default entry, in this process, through the command line."""
    out = tmp_path_factory.mktemp("eff") / "eff.json"
    assert main(["efficiency", *TINY, "--no-isolate", "--format", "csv", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def applicable(method, family):
    try:
        get_method(method).check_applicable(family)
    except NotApplicableError:
        return False
    return True


def _rows(result):
    return {r["name"]: r for r in result["rows"]}


def test_counts_match_the_params_command(tiny_result, capsys):
    methods = [m for m in available_methods() if applicable(m, "swin")]  # CoLoRA is not
    assert main(["params", "--backbone", "swin-micro", "--method", *methods, "--task",
                 "coco_instance", "--budget", "14%", "--format", "json"]) == 0
    counted = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    rows = _rows(tiny_result)
    assert set(rows) == set(methods) | {"parax[convs=false]"}
    for method in methods:
        measured, planned = rows[method]["trainable_params"], counted[method]["trainable_backbone_params"]
        if method == "spt-lora":  # chosen from data: the count closest to its budget, which
            # one matrix turning LoRA moves by at most its LoRA's size
            step = max(u.cost for u in units(build("swin-micro", "spt-lora", device="meta"), 8))
            assert measured and abs(measured - planned) <= step / 2, (measured, planned)
        else:
            assert measured == planned
        # sized to the width `params` solves; a width left out is at its default (VPT's n)
        options, width = rows[method]["options"], counted[method]["width"]
        assert {k: options.get(k, v) for k, v in width.items()} == width
    # Every row, variants included, equals `params` with the row's resolved options.
    for row in rows.values():
        if row["method"] != "spt-lora":  # (its count is the selection's, above)
            assert row["trainable_params"] == count_row("swin-micro", row["method"],
                                                        "coco_instance", row["options"]
                                                        ).trainable_backbone_params
    # ParaX without convs: the budget's ParaX (same r) minus its convs.
    noconv, parax = rows["parax[convs=false]"], rows["parax"]
    assert noconv["options"] == {**parax["options"], "convs": False}
    assert noconv["trainable_params"] < parax["trainable_params"]


def test_ratios_merges_and_references(tiny_result):
    rows = _rows(tiny_result)
    full, frozen = rows["full"], rows["linear"]
    assert all(v == pytest.approx(1.0) for v in full["ratios"]["to_full"].values() if v is not None)
    assert frozen["trainable_params"] == 0 and frozen["ratios"]["to_frozen"]["latency"] == 1.0
    for row in rows.values():
        assert row["ratios"]["to_full"]["train_img_s"] == pytest.approx(
            row["train_img_s"]["median"] / full["train_img_s"]["median"])
        assert row["peak_memory_mb"] is None  # not measured in a used process on CPU
        assert row["train_step_ms"]["n"] == 2 and row["latency_ms"]["unmerged"]["n"] == 2
        merged = row["latency_ms"]["merged"] is not None
        assert merged == (row["name"] in ("lora", "repadapter", "snell", "gps", "spt-lora")), row["name"]
        assert merged == (row["merge"] == "merged")
    assert rows["full"]["merge"] == rows["linear"]["merge"] == "nothing attached"
    assert "parax has no merged form" in rows["parax"]["merge"]


def test_checkpoint_holds_the_trainable_state_only():
    host = build("swin-micro", "lora", "coco_instance", rank=4)
    state = trainable_state(host)
    assert sum(v.numel() for v in state.values()) == host.num_trainable()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert all(".peft_branches." in k for k in state)


def test_paper_figures_are_table15_ratios(tiny_result):
    rows = _rows(tiny_result)
    assert rows["parax"]["reported"]["train_img_s_to_full"] == pytest.approx(4.0 / 4.6)
    assert rows["parax"]["reported"]["peak_memory_to_full"] == pytest.approx(3.2 / 3.2)
    assert rows["parax[convs=false]"]["reported"]["method"] == "AdaRoute-noconv"
    assert rows["parax[convs=false]"]["reported"]["train_img_s_to_full"] == pytest.approx(5.0 / 4.6)
    assert rows["mona"]["reported"]["peak_memory_to_full"] == pytest.approx(3.3 / 3.2)
    assert rows["mona"]["reported"]["params_m"] == 7.5
    assert rows["linear"]["reported"] is None and rows["vpt"]["reported"] is None


def test_efficiency_table_in_the_aggregate(tiny_result):
    section = efficiency_section(tiny_result)
    labels = [r["method"]["text"] for r in section["rows"]]
    assert len(labels) == len(tiny_result["rows"])
    assert f"{method_label('parax')} [convs=false]" in labels
    parax = section["rows"][[r["name"] for r in tiny_result["rows"]].index("parax")]
    assert parax["params_m"]["value"] == _rows(tiny_result)["parax"]["trainable_params"] / 1e6
    assert parax["paper:img_s:full"]["text"] == f"{4.0 / 4.6:.2f}"
    assert "All methods ran in one process" in section["caption"]  # --no-isolate


def test_the_gpu_check_s_table_15_beside_the_cpu_one(tiny_result, tmp_path):
    """The GPU check's Table 15 files (scripts/gpu-check.sh) become their own sections, one per
    amp that was measured; a folder without them adds none."""
    from benchmark.aggregate import load_gpu_efficiency

    assert load_gpu_efficiency(tmp_path) == {}
    (tmp_path / "table15-bf16.json").write_text(json.dumps(tiny_result))
    measured = load_gpu_efficiency(tmp_path)
    assert list(measured) == ["bf16"]
    section = efficiency_section(measured["bf16"], "table15-gpu-bf16", "Table 15 (GPU, bf16 autocast)")
    assert section["id"] == "table15-gpu-bf16"
    assert section["title"].startswith("Table 15 (GPU, bf16 autocast): Efficiency (")
    (tmp_path / "table15-none.json").write_text("{}")
    with pytest.raises(ValueError, match="table15-none.json: not a parax-bench efficiency result"):
        load_gpu_efficiency(tmp_path)


def test_each_method_in_a_fresh_process():
    result = run(TINY_SETTING, ["parax"], log=lambda line: None)
    assert result["isolated"] and [r["name"] for r in result["rows"]] == ["parax", "full", "linear"]
    rows = _rows(result)
    for row in rows.values():
        assert row["peak_memory_mb"] > 0
        assert row["ratios"]["to_frozen"]["peak_memory"] == pytest.approx(
            row["peak_memory_mb"] / rows["linear"]["peak_memory_mb"])
        assert row["ratios"]["to_full"]["peak_memory"] == pytest.approx(
            row["peak_memory_mb"] / rows["full"]["peak_memory_mb"])
    # Full fine-tuning keeps gradients and AdamW state of every weight; the frozen backbone
    # keeps neither, nor any activation for backward.
    assert rows["full"]["peak_memory_mb"] > rows["linear"]["peak_memory_mb"]


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "parax[convs]"], "expected KEY=VALUE"),
    (["--method", "parax[r=3]"], "unknown option(s) ['r']"),
    (["--method", "parax", "parax"], "listed twice"),
    (["--iters", "1"], "argument --iters: expected an integer >= 2, got 1"),
    (["--amp", "fp16"], "fp16 autocast is for CUDA"),
    (["--backbone", "resnet"], "argument --backbone: invalid choice: 'resnet'"),
])
def test_bad_input_fails_without_a_file(tmp_path, capsys, args, message):
    out = tmp_path / "eff.json"
    assert main(["efficiency", *TINY, "--no-isolate", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_default_says_how_to_run_on_cpu(capsys):
    assert main(["efficiency", "--backbone", "swin-micro", "--method", "parax"]) == 2
    assert "CUDA is not available here; use --device cpu" in capsys.readouterr().err


def test_bad_size_is_a_usage_error(capsys):
    assert main(["efficiency", "--size", "640"]) == 2
    assert "expected WIDTHxHEIGHT" in capsys.readouterr().err


def test_parse_entry_values_are_yaml():
    assert parse_entry("parax[kernel_sizes=[3,5],convs=true]") == Entry(
        "parax", {"kernel_sizes": [3, 5], "convs": True})
    assert Entry("parax", {"convs": False}).name == "parax[convs=false]"


def test_stage_setting_and_broken_results(tmp_path):
    params = {"grid": {"budget": "14%", "efficiency": {"backbone": "swin-micro", "methods": ["parax"],
                                                       "hieght": 4}}}
    with pytest.raises(ValueError, match="unknown key 'hieght'"):
        setting_of(params)
    del params["grid"]["efficiency"]["hieght"]
    setting, entries = setting_of(params)
    assert setting.budget == "14%" and entries == ["parax"]
    bad = tmp_path / "eff.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(ValueError, match=f"{bad}: not a parax-bench efficiency result"):
        efficiency.load(bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp16_with_synchronised_timing():
    setting = Setting(backbone="swin-micro", task="coco_instance", height=128, width=128,
                      batch=2, budget="14%", device="cuda", amp="fp16", warmup=1, iters=3,
                      latency_iters=3)
    result = run(setting, ["parax", "lora"], log=lambda line: None)
    rows = _rows(result)
    assert result["device_type"] == "cuda"
    assert all(r["memory_kind"] == "CUDA max_memory_allocated" for r in rows.values())
    assert rows["lora"]["latency_ms"]["merged"] is not None


def test_not_applicable_method_is_skipped_with_the_reason():
    setting = Setting(backbone="convnext-micro", task="coco_instance", height=64, width=64,
                      batch=2, budget=None, device="cpu", warmup=0, iters=2, latency_iters=2)
    result = run(setting, ["vpt"], isolate=False, log=lambda line: None)
    assert [r["name"] for r in result["rows"]] == ["full", "linear"]
    assert result["skipped"] == ["vpt: vpt is not applicable to ConvNeXt backbones: the family "
                                 "has no prompts placement"]
