"""Checkpoints in the authors' ParaX format and the original backbone releases' naming."""
from __future__ import annotations

import pytest
import torch

from methods import build
from methods.checkpoints import CheckpointError, export_official, load_official

from .conftest import MICRO, micro_input, run

TASK = {"swin": "ade20k", "convnext": "coco_instance", "vit": "cifar100", "vmamba": "ade20k"}

# A few keys of each family as the authors' code and the original releases name them.
OFFICIAL_KEYS = {
    "swin": ["layers.0.blocks.1.adapter1.router.0.weight", "layers.2.blocks.0.adapter2.attn.0.bias",
             "layers.3.blocks.1.adapter2.conv_res_scale", "layers.1.blocks.0.adapter1.logit_scale",
             "peft_params.2.projA_params", "peft_params.0.projB_params",
             "peft_params.1.conv7x7_params", "extra_norm3.weight",
             "layers.0.downsample.reduction.weight", "layers.0.blocks.0.attn.qkv.weight",
             "patch_embed.proj.weight", "layers.2.blocks.1.attn.relative_position_bias_table"],
    "convnext": ["stages.0.0.adapter.dwconv1.weight", "stages.2.2.adapter.norm_gamma",
                 "stages.1.1.adapter.layer_scale", "peft_params.3.conv3x3_params",
                 "extra_norm.0.weight", "downsample_layers.0.0.weight",
                 "downsample_layers.1.1.weight", "stages.0.0.dwconv.weight",
                 "stages.0.0.pwconv1.weight", "stages.3.1.gamma"],
    "vit": ["blocks.0.adapter.router.2.weight", "blocks.3.adapter.res_bias",
            "peft_params.projA_params", "peft_params.conv5x5_params", "cls_token",
            "blocks.1.attn.q_proj.weight", "blocks.1.attn.v_proj.bias", "blocks.2.fc1.weight"],
    "vmamba": ["layers.0.blocks.1.adapter1.router.0.weight", "layers.2.blocks.2.adapter2.res_bias",
               "peft_params.1.projA_params", "extra_norm.3.weight", "patch_embed.5.weight",
               "layers.0.downsample.1.weight", "layers.1.blocks.0.op.x_proj_weight"],
}


def randomized(family: str, seed: int):
    torch.manual_seed(seed)
    host = build(MICRO[family], "parax", TASK[family])
    with torch.no_grad():
        for p in host.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return host.model.eval() and host


@pytest.mark.parametrize("family", ["swin", "convnext", "vit", "vmamba"])
def test_official_round_trip_is_lossless(family, tmp_path):
    source = randomized(family, seed=1)
    official = export_official(source)
    for key in OFFICIAL_KEYS[family]:
        assert key in official, key
    assert not any("peft_" in k and not k.startswith("peft_params") for k in official)
    if family == "swin":
        assert "layers.3.downsample.reduction.weight" not in official  # release: end of stage
    path = tmp_path / "parax_official.pth"
    torch.save({"model": official}, path)

    target = randomized(family, seed=2)
    report = load_official(target, path)
    assert report.method_keys == len(target.added_state_keys())
    ours, theirs = source.model.state_dict(), target.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    x = micro_input(source.name)
    assert all(torch.equal(a, b) for a, b in zip(run(source, x), run(target, x)))
    assert export_official(target).keys() == official.keys()


def test_a_dense_export_loads_into_a_method_that_replaces_its_output_norms():
    """Full fine-tuning's dense backbone (with OpenMMLab-style output norms) as the pretrained
    checkpoint of a dense ParaX, which trains extra norms in their place."""
    torch.manual_seed(5)
    source = build(MICRO["swin"], "full", "ade20k")
    with torch.no_grad():
        for p in source.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    exported = export_official(source)
    norms = sorted(k for k in exported if k.startswith("out_norms."))
    assert norms
    target = build(MICRO["swin"], "parax", "ade20k")
    report = load_official(target, exported)
    assert sorted(k for k in report.dropped if k.startswith("out_norms.")) == norms
    state, trained = target.model.state_dict(), source.model.state_dict()
    frozen = [k for k in state if k not in target.added_state_keys()]
    assert frozen and all(torch.equal(state[k], trained[k]) for k in frozen)


@pytest.mark.parametrize("family", ["swin", "convnext"])
def test_original_pretrained_checkpoint_loads_the_frozen_part(family):
    """An ImageNet-22K release checkpoint: release naming, 21,841-way head, no method keys."""
    source = randomized(family, seed=3)
    release = {k: v for k, v in export_official(source).items()
               if not (k.startswith(("peft_params", "extra_norm")) or ".adapter" in k)}
    dim = source.stages[-1].dim
    release["head.weight"] = torch.randn(21841, dim)
    release["head.bias"] = torch.zeros(21841)
    for key in [k for k in release if k.startswith("out_norms.")]:
        del release[key]  # a classification release has no dense output norms
    if family == "swin":  # the release also stores buffers that timm recomputes
        release["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 16, 16)
        release["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16).long()
    release["norm.weight"] = torch.ones(dim)  # the classifier's final norm
    release["norm.bias"] = torch.zeros(dim)
    target = randomized(family, seed=4)
    adapters_before = {k: v.clone() for k, v in target.model.state_dict().items()
                       if k in target.added_state_keys()}
    fresh_before = {k: v.clone() for k, v in target.model.state_dict().items()
                    if k.startswith("out_norms.")}
    incomplete = {k: v for k, v in release.items()
                  if not k.startswith(("patch_embed.", "downsample_layers.0."))}
    with pytest.raises(CheckpointError, match="missing key"):
        load_official(target, {"model": incomplete})
    report = load_official(target, {"model": release})
    assert report.method_keys == 0 and "head.fc.weight" in report.dropped
    assert sorted(report.fresh) == sorted(fresh_before)
    state = target.model.state_dict()
    for key in source.model.state_dict():
        if key in adapters_before:
            assert torch.equal(state[key], adapters_before[key])  # untouched
        elif key in fresh_before:
            assert torch.equal(state[key], fresh_before[key])
        else:
            assert torch.equal(state[key], source.model.state_dict()[key]), key


def test_partial_method_weights_are_rejected():
    source = randomized("vit", seed=5)
    official = export_official(source)
    del official["blocks.2.adapter.proj.weight"]
    with pytest.raises(CheckpointError, match="only part of the method's weights"):
        load_official(randomized("vit", seed=6), official)


def test_wrong_backbone_is_rejected(tmp_path):
    official = export_official(randomized("swin", seed=7))
    with pytest.raises(CheckpointError, match="does not match backbone 'convnext-micro'"):
        load_official(randomized("convnext", seed=8), official)
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_official(randomized("swin", seed=9), bad)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_official(randomized("swin", seed=9), tmp_path / "missing.pth")


def test_openmmlab_converted_swin_naming_is_named_in_the_error():
    """mmseg / mmdet convert Swin to their own naming; a file in it is refused in one line
    that says so, not with a traceback from deep inside timm's filter."""
    official = export_official(randomized("swin", seed=7))
    converted = {k.replace("layers.", "stages.").replace(".attn.", ".attn.w_msa."): v
                 for k, v in official.items()}
    with pytest.raises(CheckpointError, match=r"OpenMMLab's Swin naming .*release's own file"):
        load_official(randomized("swin", seed=8), {"state_dict": {
            f"backbone.{k}": v for k, v in converted.items()}})


def test_openmmlab_and_ddp_wrappers_load(tmp_path):
    """A whole-model OpenMMLab checkpoint (backbone under 'backbone.', decoder keys beside it)
    and a DDP-saved one ('module.' prefix) load the same weights as the bare state dict."""
    source = randomized("swin", seed=10)
    official = export_official(source)
    mm = {"meta": {"epoch": 12}, "state_dict": {
        **{f"backbone.{k}": v for k, v in official.items()},
        "decode_head.conv_seg.weight": torch.zeros(150, 512, 1, 1),
        "auxiliary_head.conv_seg.bias": torch.zeros(150)}}
    path = tmp_path / "iter_160000.pth"
    torch.save(mm, path)
    target = randomized("swin", seed=11)
    report = load_official(target, path)
    assert report.outside == ["auxiliary_head.conv_seg.bias", "decode_head.conv_seg.weight"]
    assert report.method_keys == len(target.added_state_keys())
    assert all(torch.equal(a, b) for a, b in zip(source.model.state_dict().values(),
                                                 target.model.state_dict().values()))
    ddp = randomized("swin", seed=12)
    load_official(ddp, {"model": {f"module.{k}": v for k, v in official.items()}})
    assert all(torch.equal(a, b) for a, b in zip(source.model.state_dict().values(),
                                                 ddp.model.state_dict().values()))


def test_vit_loads_fused_and_split_attention_naming():
    """The release's q_proj / k_proj / v_proj (and block-level fc1 / fc2) and timm's / MAE's
    fused qkv (and mlp.fc1) are the same weights."""
    source = randomized("vit", seed=13)
    split = export_official(source)
    fused = dict(source.model.state_dict())
    fused = {k: v for k, v in fused.items() if k not in source.added_state_keys()}
    for naming in (split, fused):
        target = randomized("vit", seed=14)
        load_official(target, naming)
        backbone = [k for k in source.model.state_dict() if k not in source.added_state_keys()]
        assert all(torch.equal(source.model.state_dict()[k], target.model.state_dict()[k])
                   for k in backbone)
    broken = {k: v for k, v in split.items() if k != "blocks.3.attn.k_proj.weight"}
    with pytest.raises(CheckpointError, match=r"part of a ViT attention projection: missing "
                                              r"\['blocks.3.attn.k_proj.weight'\]"):
        load_official(randomized("vit", seed=15), broken)
