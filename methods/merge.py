"""Merging: fold a method's update into the frozen backbone and return the plain timm model."""
from __future__ import annotations

from torch import nn

from .hosts import BackboneHost


def merge(host: BackboneHost) -> nn.Module:
    """The plain timm backbone with ``host.method`` folded in (same outputs, no extra params)."""
    method = host.method
    if method is None:
        raise ValueError(f"{host.name} has no method attached")
    method.merge(host)
    left = sorted(host.added_state_keys())
    if left:
        raise RuntimeError(f"{method.name}.merge left {len(left)} weights attached, e.g. {left[:3]}")
    host.detach_all()
    return host.to_timm()
