"""Building a backbone by name: its timm model, wrapped in its family's host."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import timm
import torch

from catalog import BACKBONES, BackboneSpec, UnknownBackboneError, get_backbone

from .hosts import BackboneHost, get_family

__all__ = ["BACKBONES", "BackboneSpec", "UnknownBackboneError", "create_backbone", "get_backbone",
           "stage_dims"]


def create_backbone(name: str, *, device: str | torch.device | None = None,
                    dense: bool = True, num_classes: int = 0, drop_path_rate: float = 0.0,
                    img_size: int | None = None) -> BackboneHost:
    """Build a randomly initialised backbone (no download) and wrap it in its host.

    ``device='meta'`` allocates nothing, for counting. ``dense`` selects the settings dense
    heads need (the family's: any input size).
    """
    spec = get_backbone(name)
    host_cls = get_family(spec.family)
    kwargs: dict[str, Any] = dict(spec.kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    kwargs.update(host_cls.timm_kwargs(dense))
    model = timm.create_model(spec.arch, pretrained=False, num_classes=num_classes,
                              drop_path_rate=drop_path_rate, device=device, **kwargs)
    return host_cls(model, spec.name, dense=dense)


@lru_cache(maxsize=None)
def stage_dims(name: str) -> tuple[int, ...]:
    """Channel width of each stage (counted on the meta device)."""
    return tuple(s.dim for s in create_backbone(name, device="meta").stages)
