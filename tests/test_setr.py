"""Table 7: a plain ViT on ADE20K with SETR-PUP - block outputs, the head as mmseg's config has
it, the paper's ParaX count on ViT-L, the table the cells land in, and a mini cell that learns."""
from __future__ import annotations

import json

import pytest
import torch

from benchmark.cli import main
from benchmark.tables import table_of
from catalog import Cell
from methods import build
from tasks import task_config
from tasks.backbone import ParaXBackbone
from tasks.synthetic import generate


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    return generate("ade20k", tmp_path_factory.mktemp("ade") / "ade20k", seed=0, train=16, val=8)


def test_block_outputs_are_the_blocks_tokens_before_the_final_norm():
    host = build("vit-micro", "lora", "ade20k")
    host.model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = host.forward_blocks(x, [0, 2])
        tokens = host.model.patch_embed(x)
        tokens = host.model.norm_pre(host.model._pos_embed(tokens))
        expected = []
        for i, block in enumerate(host.model.blocks[:3]):
            tokens = block(tokens)
            if i in (0, 2):
                patches = tokens[:, host.model.num_prefix_tokens:]
                expected.append(patches.transpose(1, 2).reshape(2, 32, 8, 8))
    assert all(torch.equal(a, b) for a, b in zip(feats, expected))
    with pytest.raises(ValueError, match=r"block indices must be in 0\.\.3"):
        host.forward_blocks(x, [4])


def test_the_last_block_goes_through_the_methods_stage_output_modules():
    """ParaX's trainable extra norm sits at the stage output: on the last block's output."""
    backbone = ParaXBackbone("vit-micro", "parax", "ade20k", block_outputs=(1, 3))
    backbone.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw = backbone.host.model.forward_intermediates(x, indices=[1, 3], norm=False,
                                                        output_fmt="NCHW", intermediates_only=True)
        out = backbone(x)
    assert backbone.out_channels == [32, 32]
    assert torch.equal(out[0], raw[0])
    assert torch.allclose(out[1], backbone.host._stage_out(0, raw[1]))
    assert not torch.allclose(out[1], raw[1])
    with pytest.raises(ValueError, match="only a plain ViT gives block outputs"):
        ParaXBackbone("swin-micro", "lora", "ade20k", block_outputs=(1,))


def test_the_paper_config_is_mmsegs_setr_pup_on_vit_l(ade):
    cfg = task_config(Cell(task="ade20k", backbone="vit-l", method="parax", data_root=str(ade),
                           profile="paper"))
    model = cfg["model"]
    assert model["backbone"]["block_outputs"] == (9, 14, 19, 23)
    head = model["decode_head"]
    assert (head["type"], head["in_index"], head["num_convs"], head["up_scale"],
            head["channels"], head["in_channels"], head["num_classes"]) == (
        "SETRUPHead", 3, 4, 2, 256, 1024, 150)
    assert [(h["in_index"], h["num_convs"], h["up_scale"], h["loss_decode"]["loss_weight"])
            for h in model["auxiliary_head"]] == [(i, 2, 4, 0.4) for i in range(3)]
    assert model["test_cfg"] == dict(mode="slide", crop_size=(512, 512), stride=(341, 341))
    assert cfg["optim_wrapper"]["optimizer"] == dict(type="SGD", lr=1e-3, momentum=0.9,
                                                     weight_decay=0.0)
    assert cfg["optim_wrapper"]["paramwise_cfg"]["custom_keys"]["decode_head"] == {"lr_mult": 10.0}
    (poly,) = cfg["param_scheduler"]
    assert (poly["type"], poly["power"], poly["eta_min"], poly["end"]) == ("PolyLR", 0.9, 1e-4,
                                                                           160_000)
    assert cfg["train_dataloader"]["batch_size"] == 16
    swin = task_config(Cell(task="ade20k", backbone="swin-b", method="parax", data_root=str(ade),
                            profile="paper"))
    assert swin["model"]["decode_head"]["type"] == "UPerHead"  # Tables 1 and 10 keep UperNet


# SETR-PUP's heads on ViT-L for ADE20K's 150 classes: the decode head (input LayerNorm, 3x3
# convs 1024 -> 256 and 3 x 256 -> 256, bias-free before their BN, the 1x1 classifier) and
# three auxiliary heads (LayerNorm, 1024 -> 256 and 256 -> 256 with BN, the classifier).
DECODE = 2_048 + 1024 * 256 * 9 + 3 * 256 * 256 * 9 + 4 * 512 + 256 * 150 + 150
AUX = 2_048 + 1024 * 256 * 9 + 256 * 256 * 9 + 2 * 512 + 256 * 150 + 150
VIT_L = 303_301_632  # timm's ViT-L/16 without its classifier


def test_table_7_counts_setr_puts_heads_beside_the_backbone(capsys):
    """Table 7's figures (from the SPT and GPS papers) include the heads: full fine-tuning's
    317.3 M is ViT-L with a 512-input position table (+0.85 M) plus 13.14 M of heads."""
    from benchmark.budget import counted_head_params

    assert counted_head_params("vit-l", "ade20k", "parax") == DECODE + 3 * AUX == 13_143_640
    assert counted_head_params("swin-b", "ade20k", "full") == 0
    assert counted_head_params("vit-b", "cifar100", "full") == 0
    assert VIT_L + (1025 - 197) * 1024 + DECODE + 3 * AUX == pytest.approx(317.3e6, abs=0.05e6)
    assert main(["params", "--backbone", "vit-l", "--method", "parax", "gps", "full", "--task",
                 "ade20k", "--budget", "paper", "--format", "json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["parax"]["reported_params_m"] == 14.7 and rows["gps"]["reported_params_m"] == 14.9
    for method in ("parax", "gps"):
        r = rows[method]
        assert r["head_params"] == 13_143_640
        assert r["params_m"] == pytest.approx((r["trainable_backbone_params"] + 13_143_640) / 1e6,
                                              abs=1e-4)
        assert abs(r["params_m"] - r["reported_params_m"]) <= 0.1, r
    # full fine-tuning keeps timm's 224 position table (interpolated per input): 0.85 M short
    assert rows["full"]["trainable_backbone_params"] == VIT_L


def test_plain_vit_segmentation_cells_fill_table_7():
    assert table_of("ade20k", "vit-l") == table_of("ade20k", "vit-micro") == "7"
    assert table_of("ade20k", "swin-b") == "1" and table_of("cifar100", "vit-b") == "4"


@pytest.mark.slow
def test_a_mini_setr_cell_learns(tmp_path, ade):
    def cell(iters, name):
        out = tmp_path / f"{name}.json"
        assert main(["train", "--task", "ade20k", "--backbone", "vit-micro", "--method", "parax",
                     "--data", str(ade), "--out", str(out), "--iters", str(iters),
                     "--from-scratch", "--threads", "1"]) == 0
        return json.loads(out.read_text())["metrics"]["mIoU"]

    assert cell(40, "trained") > cell(0, "untrained") + 5
