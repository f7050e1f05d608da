"""Backbone names: each maps to a timm architecture of a family (a host in methods/hosts)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .registry import Registry


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # the host family that wraps it (methods/hosts: swin, convnext, vit, ...)
    arch: str  # timm architecture
    paper_name: str | None = None  # how the paper's tables name it
    default_task: str = "ade20k"  # task whose settings apply when none is given
    kwargs: dict[str, Any] = field(default_factory=dict)  # timm model arguments of this size
    input_size: int = 224  # the side of the images it is pretrained at (classification input)
    reference: str | None = None  # a miniature's full-size backbone (its paper figures)


class UnknownBackboneError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


_MICRO_SWIN = dict(patch_size=4, window_size=4, embed_dim=16, depths=(2, 2, 3, 2),
                   num_heads=(1, 2, 2, 4), img_size=64)
_MICRO_CONVNEXT = dict(depths=(2, 2, 3, 2), dims=(16, 32, 48, 64))
_MICRO_VMAMBA = dict(dims=16, depths=(2, 2, 3, 2))
_MICRO_VIT = dict(patch_size=8, embed_dim=32, depth=4, num_heads=2, img_size=32)

BACKBONES: Registry[BackboneSpec] = Registry("backbone", UnknownBackboneError)
register_backbone = BACKBONES.register  # a family file registers the sizes it adds
get_backbone = BACKBONES.lookup


for _spec in [
    BackboneSpec("swin-b", "swin", "swin_base_patch4_window7_224", "Swin-B"),
    BackboneSpec("swin-l", "swin", "swin_large_patch4_window7_224", "Swin-L"),
    BackboneSpec("convnext-b", "convnext", "convnext_base", "ConvNeXt-B"),
    BackboneSpec("convnext-l", "convnext", "convnext_large", "ConvNeXt-L"),
    BackboneSpec("vit-b", "vit", "vit_base_patch16_224", "ViT-B/16 (MAE)", "cifar100"),
    BackboneSpec("vit-l", "vit", "vit_large_patch16_224", "ViT-L (SETR-PUP)"),
    BackboneSpec("vmamba-b", "vmamba", "vmamba_base", "VMamba-B"),
    # Miniatures with the same structure, for tests and the embedded CPU profile.
    BackboneSpec("swin-micro", "swin", "swin_base_patch4_window7_224", kwargs=_MICRO_SWIN,
                 input_size=64, reference="swin-b"),
    BackboneSpec("convnext-micro", "convnext", "convnext_base", kwargs=_MICRO_CONVNEXT,
                 input_size=64, reference="convnext-b"),
    BackboneSpec("vmamba-micro", "vmamba", "vmamba_base", kwargs=_MICRO_VMAMBA, input_size=64,
                 reference="vmamba-b"),
    BackboneSpec("vit-micro", "vit", "vit_base_patch16_224", "", "cifar100", kwargs=_MICRO_VIT,
                 input_size=32, reference="vit-b"),
]:
    register_backbone(_spec)
