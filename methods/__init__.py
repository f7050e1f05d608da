"""PEFT methods behind one interface.

Public API::

    from methods import build, register_method, PEFTMethod, MethodConfig, Site

    host = build("swin-b", "parax", task="ade20k", device="meta")   # counting, no weights
    host.num_trainable()

A method is one file: a config dataclass, a PEFTMethod subclass decorated with
``@register_method``, in ``methods/`` (found without an import line) or anywhere through the
``parax_bench.methods`` entry-point group.
"""
from .base import (MethodConfig, NotApplicableError, NotMergeableError, PEFTMethod,
                   SelectionBatch, apply_method, width_field)
from .backbones import BACKBONES, BackboneSpec, UnknownBackboneError, create_backbone, get_backbone
from .build import build, count_trainable, method_for
from .hosts import BackboneHost, Role, Site, SiteNotSupported, register_family
from .merge import merge, merge_in_place
from .registry import ENTRY_POINT_GROUP, UnknownMethodError, available_methods, get_method, register_method

__all__ = [
    "BACKBONES", "BackboneHost", "BackboneSpec", "ENTRY_POINT_GROUP", "MethodConfig",
    "NotApplicableError", "NotMergeableError", "PEFTMethod", "Role", "SelectionBatch", "Site",
    "SiteNotSupported", "UnknownBackboneError", "UnknownMethodError", "apply_method", "available_methods", "build",
    "count_trainable", "create_backbone", "get_backbone", "get_method", "merge", "merge_in_place",
    "method_for", "register_family", "register_method", "width_field",
]
