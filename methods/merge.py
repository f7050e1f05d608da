"""Merging: fold a method's update into the frozen backbone and return the plain timm model."""
from __future__ import annotations

from torch import nn

from .hosts import BackboneHost


def merge_in_place(host: BackboneHost) -> None:
    """Fold ``host.method`` into the frozen weights and detach it; the host keeps running
    (its forward is then the backbone's alone, e.g. to time the merged model)."""
    method = host.method
    if method is None:
        raise ValueError(f"{host.name} has no method attached")
    method.merge(host)
    left = sorted(host.added_state_keys())
    if left:
        raise RuntimeError(f"{method.name}.merge left {len(left)} weights attached, e.g. {left[:3]}")
    host.detach_all()


def merge(host: BackboneHost) -> nn.Module:
    """The plain timm backbone with ``host.method`` folded in (same outputs, no extra params)."""
    merge_in_place(host)
    return host.to_timm()
