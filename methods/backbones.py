"""Backbone names used throughout the suite, mapped to timm architectures and hosts."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import timm
import torch

from .hosts import HOSTS, BackboneHost


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # swin | convnext | vit
    arch: str  # timm architecture
    paper_name: str | None = None  # how the paper's tables name it
    default_task: str = "ade20k"  # task whose settings apply when none is given
    kwargs: dict[str, Any] = field(default_factory=dict)


class UnknownBackboneError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


_MICRO_SWIN = dict(patch_size=4, window_size=4, embed_dim=16, depths=(2, 2, 3, 2),
                   num_heads=(1, 2, 2, 4), img_size=64)
_MICRO_CONVNEXT = dict(depths=(2, 2, 3, 2), dims=(16, 32, 48, 64))
_MICRO_VIT = dict(patch_size=8, embed_dim=32, depth=4, num_heads=2, img_size=32)

BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in [
    BackboneSpec("swin-b", "swin", "swin_base_patch4_window7_224", "Swin-B"),
    BackboneSpec("swin-l", "swin", "swin_large_patch4_window7_224", "Swin-L"),
    BackboneSpec("convnext-b", "convnext", "convnext_base", "ConvNeXt-B"),
    BackboneSpec("convnext-l", "convnext", "convnext_large", "ConvNeXt-L"),
    BackboneSpec("vit-b", "vit", "vit_base_patch16_224", "ViT-B/16 (MAE)", "cifar100"),
    BackboneSpec("vit-l", "vit", "vit_large_patch16_224", "ViT-L (SETR-PUP)"),
    # Miniatures with the same structure, for tests and the embedded CPU profile.
    BackboneSpec("swin-micro", "swin", "swin_base_patch4_window7_224", kwargs=_MICRO_SWIN),
    BackboneSpec("convnext-micro", "convnext", "convnext_base", kwargs=_MICRO_CONVNEXT),
    BackboneSpec("vit-micro", "vit", "vit_base_patch16_224", "", "cifar100", kwargs=_MICRO_VIT),
]}


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UnknownBackboneError(
            f"unknown backbone '{name}'; known backbones: {', '.join(BACKBONES)}") from None


def create_backbone(name: str, *, device: str | torch.device | None = None,
                    dense: bool = True, num_classes: int = 0, drop_path_rate: float = 0.0,
                    img_size: int | None = None) -> BackboneHost:
    """Build a randomly initialised backbone (no download) and wrap it in its host.

    ``device='meta'`` allocates nothing, for counting. ``dense`` selects the settings dense
    heads need: Swin accepts any input size (padding to the window, shifted windows always,
    as the original detection/segmentation code does) and ViT resizes its position table.
    """
    spec = get_backbone(name)
    kwargs: dict[str, Any] = dict(spec.kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    if dense and spec.family == "swin":
        kwargs.update(strict_img_size=False, always_partition=True)
    if dense and spec.family == "vit":
        kwargs.update(dynamic_img_size=True)
    model = timm.create_model(spec.arch, pretrained=False, num_classes=num_classes,
                              drop_path_rate=drop_path_rate, device=device, **kwargs)
    return HOSTS[spec.family](model, spec.name, dense=dense)


@lru_cache(maxsize=None)
def stage_dims(name: str) -> tuple[int, ...]:
    """Channel width of each stage (counted on the meta device)."""
    return tuple(s.dim for s in create_backbone(name, device="meta").stages)
