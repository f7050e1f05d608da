"""Fidelity to the releases the paper's numbers come from.

- Our Swin host equals OpenMMLab's own Swin (mmdet's and mmseg's ``SwinTransformer``, the
  backbone of the paper's detection and segmentation code) given the same weights, at the
  dense tasks' sizes, where stages are not multiples of the window.
- Golden checkpoints in the ParaX authors' naming (small, synthetic, ``tests/golden/``) load
  with ``load_official`` and reproduce the outputs the authors' code computed for them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from methods import build
from methods.checkpoints import export_official, load_official
from methods.hosts import SwinHost

GOLDEN = Path(__file__).parent / "golden"

# A narrow Swin with the released window (7) and patch (4), so that 512x512 and 1333x800 run
# in seconds; every code path of Swin-B/L (padding, shifts, merging) is exercised.
NARROW_SWIN = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)


def narrow_swin_host(seed: int) -> SwinHost:
    torch.manual_seed(seed)
    model = timm.create_model("swin_base_patch4_window7_224", pretrained=False, num_classes=0,
                              strict_img_size=False, always_partition=True, **NARROW_SWIN)
    host = SwinHost(model, "swin-narrow", dense=True)
    with torch.no_grad():  # off the init, so that norms and biases matter too
        for p in host.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return host.model.eval() and host


def openmmlab_swin(kind: str, host: SwinHost) -> torch.nn.Module:
    """mmdet's / mmseg's SwinTransformer with the host's weights, through mmdet's converter
    of the original Swin release (the path the paper's backbones were loaded by)."""
    from mmdet.models.backbones.swin import swin_converter

    if kind == "mmdet":
        from mmdet.models.backbones import SwinTransformer
    else:
        from mmseg.models.backbones import SwinTransformer
    model = SwinTransformer(embed_dims=NARROW_SWIN["embed_dim"], depths=NARROW_SWIN["depths"],
                            num_heads=NARROW_SWIN["num_heads"], window_size=7,
                            drop_path_rate=0.0, out_indices=(0, 1, 2, 3))
    release = export_official(host)  # the original Swin release's naming
    norms = {k.replace("out_norms.", "norm"): release.pop(k) for k in list(release)
             if k.startswith("out_norms.")}
    state = {k[len("backbone."):]: v for k, v in swin_converter(release).items()}
    missing, unexpected = model.load_state_dict({**state, **norms}, strict=False)
    assert not unexpected and all(k.endswith("relative_position_index") for k in missing)
    model.eval()  # (OpenMMLab's Swin.train() returns None)
    return model


@pytest.mark.parametrize("kind", ["mmdet", "mmseg"])
@pytest.mark.parametrize("size", [(512, 512), (800, 1333)], ids=["512x512", "1333x800"])
def test_swin_host_equals_openmmlab_swin(kind, size):
    """Stage sizes 128/64/32/16 (512) and 200x334/100x167/50x84/25x42 (1333x800, padded to the
    patch first): most are not multiples of 7, so the window padding order matters."""
    host = narrow_swin_host(seed=0)
    theirs = openmmlab_swin(kind, host)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, reference = host.forward_features(x), theirs(x)
    assert len(ours) == len(reference) == 4
    for i, (a, b) in enumerate(zip(ours, reference)):
        assert a.shape == b.shape, i
        diff = float((a - b).abs().max())
        assert diff < 1e-5, f"stage {i} {tuple(a.shape)}: max |diff| {diff:.2e}"


@pytest.mark.parametrize("backbone", ["swin-micro", "convnext-micro"])
def test_roi_heads_read_the_features_the_backbone_computed(backbone):
    """mmcv's RoIAlign (under every RoI head: Mask R-CNN, Panoptic FPN) reads its input's
    memory as contiguous NCHW whatever the strides; the hosts compute channels-last, so the
    OpenMMLab backbone must hand over contiguous tensors. Reference: torchvision's RoIAlign,
    which honours strides."""
    import torchvision
    from mmcv.ops import RoIAlign

    from tasks.backbone import ParaXBackbone

    torch.manual_seed(0)
    model = ParaXBackbone(backbone, "linear", "coco_instance").eval()
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    rois = torch.tensor([[0, 4.0, 6.0, 40.0, 50.0], [0, 20.0, 2.0, 90.0, 60.0]])
    with torch.no_grad():
        feats = model(x)
    for feat, stride in zip(feats, (4, 8, 16, 32)):
        ours = RoIAlign((7, 7), 1 / stride, 0, aligned=True)(feat, rois)
        reference = torchvision.ops.roi_align(feat, rois, (7, 7), 1 / stride, 0, aligned=True)
        assert float((ours - reference).abs().max()) < 1e-5, f"stride {stride}"


def test_swin_host_differs_from_timms_window_order_where_it_should():
    """The check above has teeth: timm's own block (shift, then pad) gives other numbers at a
    size whose stages need padding, and the same numbers where none does."""
    host = narrow_swin_host(seed=2)
    plain = timm.create_model("swin_base_patch4_window7_224", pretrained=False, num_classes=0,
                              strict_img_size=False, always_partition=True, **NARROW_SWIN)
    missing, _ = plain.load_state_dict(host.model.state_dict(), strict=False)
    assert missing == ["norm.weight", "norm.bias"]  # the classifier's norm: not a stage output
    plain.eval()
    for size, same in (((224, 224), True), ((160, 160), False)):
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            ours = host._forward_stages(x)
            theirs = plain.forward_intermediates(x, intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs)) == same, size


def golden_cases() -> list[str]:
    return sorted(p.name[: -len(".json")] for p in GOLDEN.glob("*.json"))


def test_every_released_configuration_has_a_golden_checkpoint():
    assert golden_cases() == ["convnext_ade20k", "convnext_coco", "swin_ade20k",
                              "swin_mask_rcnn", "vit_cifar100"]


@pytest.mark.parametrize("case", golden_cases())
def test_golden_release_checkpoint_reproduces_the_release(case):
    """Each golden file is what the authors' training code saves (an OpenMMLab model
    checkpoint for the dense tasks, MAE's ``{'model': ...}`` for ViT), written for a micro
    backbone of the same structure; the expected features were computed by the authors'
    modules in float64 (tests/golden/README.md)."""
    meta = json.loads((GOLDEN / f"{case}.json").read_text())
    expected = torch.load(GOLDEN / f"{case}.expected.pt", weights_only=True)
    host = build(meta["backbone"], "parax", meta["task"], **meta["options"])
    report = load_official(host, GOLDEN / f"{case}.pth")
    assert report.method_keys == len(host.added_state_keys()) == meta["method_keys"]
    assert host.num_trainable() == meta["trainable"]
    host.model.double().eval()
    with torch.no_grad():
        x = expected["input"]
        ours = host.forward_features(x) if host.dense else [host.forward_pooled(x)]
    assert len(ours) == len(expected["outputs"])
    for i, (a, b) in enumerate(zip(ours, expected["outputs"])):
        assert a.shape == b.shape, i
        diff = float((a - b).abs().max())
        assert diff < 1e-5, f"{case} output {i}: max |diff| {diff:.2e}"
