"""Backbone + method in one call, with the paper's per-task configuration."""
from __future__ import annotations

import copy
from contextlib import nullcontext
from functools import lru_cache
from typing import Any

import torch

from catalog import get_task

from .backbones import create_backbone, get_backbone
from .base import PEFTMethod, apply_method
from .hosts import BackboneHost
from .registry import get_method


def method_for(method: str, backbone: str, task: str | None = None,
               **overrides: Any) -> PEFTMethod:
    """Instantiate ``method`` with the paper's settings for (backbone, task), then overrides.

    ``task=None`` uses the backbone's default task (ADE20K for Swin/ConvNeXt, CIFAR-100 for ViT).
    """
    cls = get_method(method)
    spec = get_backbone(backbone)
    cls.check_applicable(spec.family)
    config = cls.paper_config(spec, get_task(task or spec.default_task))
    return cls(config, **overrides)


def build(backbone: str, method: str | PEFTMethod, task: str | None = None, *,
          device: str | torch.device | None = None, drop_path_rate: float = 0.0,
          num_classes: int = 0, img_size: int | None = None, **overrides: Any) -> BackboneHost:
    """Create ``backbone`` and attach ``method``. ``device='meta'`` allocates no weights."""
    spec = get_backbone(backbone)
    task_spec = get_task(task or spec.default_task)
    if not isinstance(method, PEFTMethod):
        method = method_for(method, backbone, task_spec.name, **overrides)
    elif overrides:
        raise ValueError("pass options either in the method instance or as overrides, not both")
    method.check_applicable(spec.family)
    with torch.device(device) if device is not None else nullcontext():
        if str(device) == "meta":  # counting: copy a cached skeleton instead of rebuilding
            host = copy.deepcopy(_meta_skeleton(backbone, task_spec.dense, num_classes, img_size))
        else:
            host = create_backbone(backbone, device=device, dense=task_spec.dense,
                                   num_classes=num_classes, drop_path_rate=drop_path_rate,
                                   img_size=img_size)
        apply_method(host, method)
    return host


def count_trainable(backbone: str, method: PEFTMethod, task: str | None = None) -> int:
    """Trainable backbone parameters of ``method`` on ``backbone``, allocating nothing.

    Attaches to a cached meta-device skeleton and detaches again: fast enough for budget
    solvers that count many widths.
    """
    spec = get_backbone(backbone)
    task_spec = get_task(task or spec.default_task)
    method.check_applicable(spec.family)
    key = (backbone, task_spec.dense, method.name, repr(method.config))
    if key not in _COUNTS:
        host = _meta_skeleton(backbone, task_spec.dense, 0, None)
        try:
            with torch.device("meta"):
                apply_method(host, method)
            planned = method.planned_count(host)
            _COUNTS[key] = host.num_trainable() if planned is None else planned
        finally:
            host.detach_all()
    return _COUNTS[key]


_COUNTS: dict[tuple, int] = {}


@lru_cache(maxsize=32)
def _meta_skeleton(backbone: str, dense: bool, num_classes: int, img_size: int | None) -> BackboneHost:
    return create_backbone(backbone, device="meta", dense=dense, num_classes=num_classes,
                           img_size=img_size)

