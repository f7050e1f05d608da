"""Checkpoints in the original releases' naming.

A checkpoint written by a method's authors holds the frozen backbone in the original Swin /
ConvNeXt / ViT release naming plus the method's modules in the authors' naming. Loading
splits the two: the frozen part goes through the family's conversions and timm's checkpoint
filter (the same path loads the original ImageNet-22K checkpoints), the method part through
the method's ``official_keys`` map. Exporting is the inverse, so a round trip is lossless.
The naming itself belongs to each family's host (``methods/hosts``).

Accepted wrappers: a bare state dict, one under ``model`` or ``state_dict``, DDP's
``module.`` prefix, and OpenMMLab's whole-model checkpoints (the backbone under
``backbone.``; necks, decoders and heads are left to the task).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from .base import restore
from .hosts import BackboneHost, CheckpointError


@dataclass
class LoadReport:
    backbone_keys: int = 0
    method_keys: int = 0
    # classifier weights of the source task; dense output norms a method of ours replaces
    dropped: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # dense output norms a release lacks
    outside: list[str] = field(default_factory=list)  # an OpenMMLab model's non-backbone keys


def _method_keys(host: BackboneHost) -> dict[str, str]:
    return host.method.official_keys(host) if host.method is not None else {}


def export_official(host: BackboneHost) -> dict[str, torch.Tensor]:
    """The model's state dict: the backbone in release naming, the method in its authors'
    naming where the method has one (else in ours)."""
    ours_to_theirs = _method_keys(host)
    added = host.added_state_keys()
    out = {}
    for key, value in host.model.state_dict().items():
        name = ours_to_theirs.get(key, key) if key in added else host.release_key(key)
        out[name] = value.detach().clone()
    return host.to_release(out)


def read_state_dict(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if isinstance(source, Mapping):
        state = dict(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt files
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state.get(wrapper), Mapping):
            state = dict(state[wrapper])
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError("expected a state dict of tensors (optionally under 'model' or "
                              "'state_dict')")
    if state and all(k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _split_backbone(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """An OpenMMLab model's checkpoint: its ``backbone.`` keys, and the keys of the rest."""
    if not any(k.startswith("backbone.") for k in state):
        return state, []
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return backbone, sorted(k for k in state if not k.startswith("backbone."))


def load_official(host: BackboneHost,
                  source: str | os.PathLike | Mapping[str, torch.Tensor]) -> LoadReport:
    """Load a release-format checkpoint (authors' method checkpoint or a pretrained backbone).

    Backbone weights must be complete (but for dense output norms, which a classification
    release lacks); method weights may be absent altogether (a plain pretrained backbone) but
    not partially present.
    """
    state, outside = _split_backbone(read_state_dict(source))
    state = host.from_release(state)
    restore(host, state)
    theirs_to_ours = {v: k for k, v in _method_keys(host).items()}
    added = host.added_state_keys()
    method_part = {theirs_to_ours.get(k, k): v for k, v in state.items()
                   if k in theirs_to_ours or k in added}
    backbone_part = {k: v for k, v in state.items() if k not in theirs_to_ours and k not in added}
    ours = host.model.state_dict()
    report = LoadReport(outside=outside)

    try:
        converted = host.checkpoint_filter(backbone_part, host.model)
    except (KeyError, RuntimeError, ValueError, AttributeError, IndexError, TypeError) as exc:
        # foreign keys trip timm's filter, each in its own way
        hint = ""
        if any(".w_msa." in k or k.startswith("stages.") for k in backbone_part):
            hint = ("; its keys are OpenMMLab's Swin naming (stages.N...attn.w_msa), a "
                    "conversion: pass the release's own file (layers.N...attn)")
        raise CheckpointError(f"checkpoint does not match backbone '{host.name}': the "
                              f"{host.family} release naming does not fit ({exc!r}){hint}") from exc
    backbone_keys = set(ours) - added
    # A dense export (full fine-tuning's, say) holds output norms that a method which brings
    # its own (ParaX's extra norms) has taken off the model: like a classifier, they go.
    for key in list(converted):
        if key not in ours and key.startswith((*host.classifier_prefixes, "out_norms.")):
            report.dropped.append(key)
            del converted[key]
    unexpected = sorted(set(converted) - backbone_keys)
    missing = sorted(backbone_keys - set(converted))
    # Dense output norms are new in the dense model (as in OpenMMLab): kept at their init.
    report.fresh = [k for k in missing if k.startswith("out_norms.")]
    missing = [k for k in missing if k not in report.fresh]
    if unexpected or missing:
        raise CheckpointError(
            f"checkpoint does not match backbone '{host.name}': "
            f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}")
    if method_part and set(method_part) != added:
        missing_m = sorted(added - set(method_part))
        raise CheckpointError(f"checkpoint has only part of the method's weights: "
                              f"{len(missing_m)} missing, e.g. {missing_m[:5]}")
    to_load = {**converted, **method_part}
    for key, value in to_load.items():
        if value.shape != ours[key].shape:
            if value.numel() != ours[key].numel():
                raise CheckpointError(f"shape mismatch for {key}: checkpoint {tuple(value.shape)}, "
                                      f"model {tuple(ours[key].shape)}")
            to_load[key] = value.reshape(ours[key].shape)
    host.model.load_state_dict(to_load, strict=bool(method_part) and not report.fresh)
    report.backbone_keys, report.method_keys = len(converted), len(method_part)
    return report
