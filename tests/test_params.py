"""`parax-bench params` and `methods`: counts on the meta device, the paper's figures."""
from __future__ import annotations

import json

import pytest

from benchmark.cli import main

# shared/spec/parax.md §4: backbone-only trainable parameters of the released configs.
PARAX_REFERENCE = [
    ("swin-b", "ade20k", 5_242_992),
    ("swin-b", "coco_panoptic", 5_242_992),
    ("swin-b", "coco_instance", 5_194_864),
    ("swin-l", "coco_instance", 7_302_384),
    ("swin-l", "ade20k", 7_302_384),
    ("convnext-b", "coco_instance", 6_456_000),
    ("convnext-b", "ade20k", 6_630_912),
    ("convnext-l", "coco_panoptic", 9_156_096),
    ("convnext-l", "ade20k", 9_403_200),
    ("vit-b", "cifar100", 3_098_340),
]


def params_json(capsys, *args: str) -> list[dict]:
    assert main(["params", *args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("backbone,task,expected", PARAX_REFERENCE)
def test_parax_reference_counts(capsys, backbone, task, expected):
    (row,) = params_json(capsys, "--backbone", backbone, "--method", "parax", "--task", task)
    assert row["trainable_backbone_params"] == expected
    assert (row["backbone"], row["method"], row["task"]) == (backbone, "parax", task)
    assert row["width"]["bottleneck"] == 128


def test_parax_reported_figures_match(capsys):
    rows = params_json(capsys, "--backbone", "swin-b", "swin-l", "convnext-b", "convnext-l",
                       "--method", "parax", "--task", "ade20k", "coco_instance")
    for row in rows:
        n = row["trainable_backbone_params"]
        if row["backbone"].startswith("convnext") and row["task"] == "ade20k":
            # The paper prints the router-width-16 count for ConvNeXt on ADE20K too, while
            # the released ADE20K configs use width 24 (spec §4): 6.5 / 9.2 vs 6.63 / 9.40.
            assert row["width"]["router_hidden"] == 24
            assert row["reported_params_m"] < round(n / 1e6, 1)
        else:
            assert row["reported_params_m"] == round(n / 1e6, 1), row


# Dense backbones as OpenMMLab builds them: a norm on each stage output, no classifier norm.
FULL_COUNTS = {"swin-b": 86_745_016, "swin-l": 194_998_164,
               "convnext-b": 87_568_256, "convnext-l": 196_233_024}


def test_full_finetuning_counts(capsys):
    rows = params_json(capsys, "--backbone", *FULL_COUNTS, "--method", "full",
                       "--task", "coco_instance")
    for row in rows:
        n = row["trainable_backbone_params"]
        assert n == FULL_COUNTS[row["backbone"]]
        # The paper quotes earlier work's two-decimal figures (86.75 M) rounded once more.
        two_decimals = round(n / 1e6, 2)
        assert int(two_decimals * 10 + 0.5 + 1e-9) / 10 == row["reported_params_m"], row


def test_linear_probe_trains_nothing_in_backbone(capsys):
    (row,) = params_json(capsys, "--backbone", "swin-b", "--method", "linear")
    assert row["trainable_backbone_params"] == 0


def test_width_overrides(capsys):
    # Router width 40 on Swin-B Mask R-CNN: 24 more hidden units x sum(C + 1 + 5M) = 27,472.
    (row,) = params_json(capsys, "--backbone", "swin-b", "--method", "parax", "--task",
                         "coco_instance", "--set", "router_hidden=40")
    assert row["width"]["router_hidden"] == 40
    assert row["trainable_backbone_params"] == 5_194_864 + 24 * 27_472


def test_table_format(capsys):
    assert main(["params", "--backbone", "swin-b", "--method", "parax", "--task", "ade20k"]) == 0
    header, line = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ["backbone", "method", "task", "width", "trainable_backbone_params",
                              "params_m", "reported_params_m"]
    assert "5242992" in line and "bottleneck=128" in line and line.rstrip().endswith("5.2")


def test_csv_format(capsys):
    assert main(["params", "--backbone", "vit-b", "--method", "parax", "full",
                 "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("backbone,method,task,width,trainable_backbone_params")
    assert len(lines) == 3


def test_full_grid_counts_on_meta(capsys):
    rows = params_json(capsys, "--backbone", "swin-b", "swin-l", "convnext-b", "convnext-l",
                       "vit-b", "vit-l", "--method", "parax", "full", "linear")
    assert len(rows) == 18
    assert all(isinstance(r["trainable_backbone_params"], int) for r in rows)


def test_methods_lists_registered(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert {"parax", "full", "linear"} <= set(names)
    assert all(len(line.split(None, 1)) == 2 for line in lines)


@pytest.mark.parametrize("args,message", [
    (["--backbone", "resnet-50", "--method", "parax"],
     "argument --backbone: invalid choice: 'resnet-50'"),
    (["--backbone", "swin-b", "--method", "nope"], "unknown method 'nope'; registered methods:"),
    (["--backbone", "swin-b", "--method", "parax", "--task", "mnist"],
     "argument --task: invalid choice: 'mnist'"),
    (["--backbone", "swin-b", "--method", "parax", "--set", "kernel_sizes=[3,4]"],
     "kernel sizes must be odd"),
    (["--backbone", "swin-b", "--method", "parax", "--set", "top_k=19"],
     "top_k=19 exceeds the number of experts"),
    (["--backbone", "swin-b", "--method", "parax", "--set", "bogus=1"], "unknown option(s) ['bogus']"),
    (["--backbone", "swin-b", "--method", "parax", "--set", "novalue"], "--set expects KEY=VALUE"),
])
def test_bad_input_fails_clearly(capsys, args, message):
    assert main(["params", *args]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""
