"""Aggregation statistics: paired per-seed differences with t intervals, the separation rule,
budget-sweep series in the Pareto data, sweep cells in the grid."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmark.aggregate import Aggregator, Run, paired_difference
from catalog import Cell

PARAMS = {"grid": {"profile": "mini", "budget": "14%"}, "ablations": {}}
T_975_DF2 = 4.302652729911275  # Student's t, 97.5% quantile, 2 degrees of freedom


def test_paired_difference_interval_and_significance():
    d = paired_difference({0: 10.0, 1: 12.0, 2: 14.0}, {0: 9.0, 1: 10.0, 2: 11.0})
    half = T_975_DF2 * 1.0 / 3 ** 0.5  # differences 1, 2, 3: mean 2, sd 1
    assert d["mean"] == pytest.approx(2.0) and d["n"] == 3
    assert (d["low"], d["high"]) == pytest.approx((2.0 - half, 2.0 + half))
    assert d["significant"] is False  # the interval holds 0
    tight = paired_difference({0: 12.0, 1: 12.1, 2: 11.9}, {0: 10.0, 1: 10.0, 2: 10.0})
    assert tight["significant"] is True and tight["low"] > 0


def test_paired_difference_pairs_by_seed_only():
    d = paired_difference({0: 5.0, 1: 7.0, 5: 100.0}, {0: 4.0, 1: 4.0, 2: -50.0})
    assert d["n"] == 2 and d["mean"] == pytest.approx(2.0)  # seeds 0 and 1
    single = paired_difference({0: 5.0}, {0: 4.0, 1: 3.0})
    assert single["n"] == 1 and single["low"] is None and single["significant"] is None
    assert paired_difference({0: 5.0}, {1: 4.0}) is None


def _run(method: str, seed: int, top1: float, params: int = 1000, budget: str = "14%",
         sweep: bool = False) -> Run:
    cell = Cell(task="cifar100", backbone="swin-micro", method=method, seed=seed,
                budget=budget, sweep=sweep)
    result = {"cell": cell.to_dict(), "metrics": {"top1": top1},
              "trainable_backbone_params": params}
    return Run(cell, Path(f"{cell.id}.json"), result)


def _aggregator(extra: list[Run] = ()) -> Aggregator:
    scores = {"full": (90, 91, 92), "linear": (60, 61, 59), "parax": (80, 82, 81),
              "lora": (70, 75, 65)}
    runs = [_run(m, s, v, params={"full": 600_000, "linear": 1}.get(m, 80_000))
            for m, vs in scores.items() for s, v in enumerate(vs)]
    return Aggregator(PARAMS, runs + list(extra), list(scores))


def test_differences_against_full_and_the_best_baseline():
    section = _aggregator().differences("4", "Image classification", ["cifar100"])
    keys = [c["key"] for c in section["columns"]]
    assert keys == ["method", "cifar100:swin-micro:vs:full", "cifar100:swin-micro:vs:lora"]
    rows = {r["method"]["text"].split(" ")[0]: r for r in section["rows"]}
    parax_vs_full = rows["ParaX"]["cifar100:swin-micro:vs:full"]
    assert parax_vs_full["value"] == pytest.approx(-10.0) and parax_vs_full["significant"]
    # LoRA is the best baseline (mean 70 > linear's 60); its own row is the reference
    assert rows["LoRA"]["cifar100:swin-micro:vs:lora"]["text"] == "reference"
    parax_vs_lora = rows["ParaX"]["cifar100:swin-micro:vs:lora"]  # 10, 7, 16: sd 4.58
    assert parax_vs_lora["value"] == pytest.approx(11.0)
    half = T_975_DF2 * (21 ** 0.5) / 3 ** 0.5
    assert parax_vs_lora["interval"] == pytest.approx([11.0 - half, 11.0 + half])
    assert parax_vs_lora["significant"] is False and parax_vs_lora["text"].endswith("n.s.")


def test_separation_rule():
    [sep] = _aggregator().separation()
    # PEFT means (full left out): linear 60, parax 81, lora 70 -> spread 21;
    # seed stds 1, 1, 5 -> median 1
    assert sep["spread"] == pytest.approx(21.0) and sep["median_std"] == pytest.approx(1.0)
    assert sep["separated"] is True


def test_pareto_series_hold_the_sweep_points_and_main_tables_do_not():
    sweep = [_run("parax", 0, 70.0, params=60_000, budget="10%", sweep=True),
             _run("parax", 0, 85.0, params=170_000, budget="28%", sweep=True)]
    agg = _aggregator(sweep)
    [plot] = agg.pareto()
    parax = [p for p in plot["points"] if p["method"] == "parax"]
    assert [(p["budget"], p["n"]) for p in parax] == [("14%", 3), ("10%", 1), ("28%", 1)]
    assert [p["method"] for p in plot["points"]].count("linear") == 1
    # the comparison table's ParaX cell is the grid's three seeds only
    table = agg.comparison("4", "Image classification", ["cifar100"])
    row = next(r for r in table["rows"] if r["method"]["text"].startswith("ParaX"))
    assert row["cifar100:swin-micro:top1"]["n"] == 3


def test_grid_sweep_cells_and_unreachable_points():
    from pipelines.grid import expand, load_params, not_applicable

    params = load_params()
    params["grid"]["sweep"] = {"tasks": ["cifar100"], "backbones": ["swin-micro"],
                               "budgets": ["10%"], "seeds": [0]}
    cells = {c.id: c for c in expand(params) if c.sweep}
    methods = {c.method for c in cells.values()}
    assert "full" not in methods and "linear" not in methods and {"parax", "lora"} <= methods
    lorand = cells["cifar100.swin-micro.lorand~10pct.s0"]
    assert lorand.budget == "10%" and lorand.to_dict()["sweep"] is True
    assert "outside what lorand reaches" in not_applicable(lorand)
    assert not_applicable(cells["cifar100.swin-micro.parax~10pct.s0"]) is None
    grid_cell = next(c for c in expand(params) if not c.sweep)
    assert "sweep" not in grid_cell.to_dict()  # the grid's cells keep their config hashes


def test_a_miniature_shows_the_paper_figures_of_the_tables_own_backbone():
    """Table 4 adapts only ViT-B: swin-micro's CIFAR-100 rows show ViT-B's figures, so
    labelled (Swin-B has none there); a dense table keeps the family's Swin-B."""
    section = _aggregator().comparison("4", "Image classification", ["cifar100"])
    labels = {c["key"]: c["label"] for c in section["columns"]}
    assert labels["cifar100:swin-micro:top1:reported"] == "top1 (paper, ViT-B/16 (MAE))"
    parax = next(r for r in section["rows"] if r["method"]["text"].startswith("ParaX"))
    assert parax["cifar100:swin-micro:top1:reported"]["value"] is not None
    agg = _aggregator()
    assert agg._reference_backbone("1", "ade20k", "swin-micro") == "Swin-B"
