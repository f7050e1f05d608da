"""Budget matching: every target form, the paper's columns, and impossible budgets."""
from __future__ import annotations

import json

import pytest

from benchmark.budget import Budget, parse_budget
from benchmark.cli import main
from benchmark.reported import reported_table

BASELINES = ["lora", "adaptformer", "mona", "lorand", "repadapter", "vpt", "parax", "snell"]
# VPT keeps n = 10 under every budget; GPS has counts only in Tables 4 and 7 (tests/test_gps.py)
KNOBBED = [m for m in BASELINES if m != "vpt"] + ["gps"]


def rows(capsys, *args):
    assert main(["params", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("text,expected", [
    ("5.2M", Budget("absolute", 5.2e6)), ("800k", Budget("absolute", 8e5)),
    ("5200000", Budget("absolute", 5.2e6)), ("3%", Budget("fraction", 0.03)),
    ("match:parax", Budget("match", "parax")), ("paper", Budget("paper")),
])
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text,message", [
    ("lots", "--budget expects a count"), ("0%", "--budget expects a count"),
    ("-1M", "--budget expects a count"), ("match:nope", "unknown method 'nope'"),
])
def test_parse_budget_errors(text, message):
    with pytest.raises((ValueError, KeyError), match=message):
        parse_budget(text)


def _paper_cells():
    """(backbone, task) cells of Tables 1-3, 9 and 10 with a count for an implemented method."""
    names = {"Swin-B": "swin-b", "Swin-L": "swin-l", "ConvNeXt-B": "convnext-b",
             "ConvNeXt-L": "convnext-l"}
    tasks = {("1", "ADE20K"): "ade20k", ("2", "COCO2017"): "coco_instance",
             ("3", "COCO2017"): "coco_panoptic", ("9", "COCO2017 keypoints"): "coco_pose",
             ("10", "ISPRS Potsdam"): "potsdam", ("10", "LoveDA"): "loveda"}
    df = reported_table()
    paper = {"LoRA", "AdaptFormer", "Mona", "LoRand", "RepAdapter", "VPT", "AdaRoute", "SNELL"}
    df = df[df.table.isin(["1", "2", "3", "9", "10"]) & df.method.isin(paper)]
    return sorted({(names[r.backbone], tasks[(r.table, r.dataset)]) for r in df.itertuples()})


@pytest.mark.parametrize("backbone,task", _paper_cells())
def test_paper_budget_lands_within_a_tenth_of_a_million(capsys, backbone, task):
    found = rows(capsys, "--backbone", backbone, "--method", *BASELINES, "--task", task,
                 "--budget", "paper")
    reported = [r for r in found if r["reported_params_m"] is not None]
    assert reported
    for r in reported:
        assert abs(r["trainable_backbone_params"] / 1e6 - r["reported_params_m"]) <= 0.1 + 1e-9, r


def test_paper_budget_keeps_released_widths(capsys):
    found = {r["method"]: r for r in rows(capsys, "--backbone", "swin-b", "--method", "parax",
                                          "vpt", "--task", "coco_instance", "--budget", "paper")}
    assert found["parax"]["width"]["bottleneck"] == 128
    assert found["parax"]["trainable_backbone_params"] == 5_194_864
    assert found["vpt"]["width"]["num_prompts"] == 10  # VPT keeps its original configuration


def test_match_and_fraction_budgets(capsys):
    parax = 5_242_992
    for r in rows(capsys, "--backbone", "swin-b", "--method", *KNOBBED, "--budget",
                  "match:parax"):
        assert r["budget_target"] == parax
        # SNELL's knob moves in steps of two ranks, 2 x 192,512 on Swin-B, GPS's in steps of
        # 110,208 (one entry per row): half a step at most
        tolerance = {"snell": 192_512, "gps": 110_208 / 2}.get(r["method"], 0.01 * parax)
        assert abs(r["trainable_backbone_params"] - parax) <= tolerance, r
    (r,) = rows(capsys, "--backbone", "swin-b", "--method", "lora", "--budget", "3%")
    assert r["budget_target"] == round(0.03 * 86_745_016)
    assert abs(r["trainable_backbone_params"] - r["budget_target"]) <= 48_128 / 2  # half a rank


def test_absolute_budget_picks_the_closest_width(capsys):
    (r,) = rows(capsys, "--backbone", "swin-b", "--method", "lora", "--budget", "1M")
    # q and v ranks on Swin-B cost 48,128 per rank: 21 ranks = 1,010,688 is closest to 1M.
    assert r["width"]["rank"] == 21 and r["trainable_backbone_params"] == 1_010_688


def test_methods_without_a_width_knob_ignore_the_budget(capsys):
    full, vpt = rows(capsys, "--backbone", "swin-b", "--method", "full", "vpt", "--budget", "5M")
    assert full["trainable_backbone_params"] == 86_745_016 and full["budget_target"] is None
    assert vpt["width"] == {"num_prompts": 10} and vpt["budget_target"] is None
    assert vpt["trainable_backbone_params"] == 120_320  # 10 x 12,032


@pytest.mark.parametrize("budget,message", [
    ("10k", r"budget 0.010M is outside what lora reaches on swin-b: 0.048M \(rank=1\) to"),
    ("900M", r"budget 900.000M is outside what lora reaches on swin-b"),
])
def test_impossible_budget_names_the_reachable_range(capsys, budget, message):
    assert main(["params", "--backbone", "swin-b", "--method", "lora", "--budget", budget]) == 2
    import re
    assert re.search(message, capsys.readouterr().err)


def test_paper_budget_without_a_paper_figure(capsys):
    assert main(["params", "--backbone", "swin-l", "--method", "lora", "--task", "coco_pose",
                 "--budget", "paper"]) == 2
    assert "the paper reports no count for lora on swin-l" in capsys.readouterr().err
