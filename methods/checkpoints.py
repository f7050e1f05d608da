"""Checkpoints in the original releases' naming.

A checkpoint written by a method's authors holds the frozen backbone in the original Swin /
ConvNeXt / ViT release naming plus the method's modules in the authors' naming. Loading
splits the two: the frozen part goes through timm's own checkpoint filter for the family
(the same path loads the original ImageNet-22K checkpoints), the method part through the
method's ``official_keys`` map. Exporting is the inverse, so a round trip is lossless.

Accepted wrappers: a bare state dict, one under ``model`` or ``state_dict``, DDP's
``module.`` prefix, and OpenMMLab's whole-model checkpoints (the backbone under
``backbone.``; necks, decoders and heads are left to the task). ViT checkpoints of the
release name the attention projections ``attn.q_proj / k_proj / v_proj`` and the MLP
``fc1 / fc2`` at block level (AdaptFormer's code base); timm's fused ``attn.qkv`` and
``mlp.fc1`` naming (MAE, timm) loads as well.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from timm.models import convnext, swin_transformer, vision_transformer

from .hosts import BackboneHost

_TIMM_FILTERS = {
    "swin": swin_transformer.checkpoint_filter_fn,
    "convnext": convnext.checkpoint_filter_fn,
    "vit": vision_transformer.checkpoint_filter_fn,
}


class CheckpointError(ValueError):
    """The checkpoint does not fit the model; the message says which keys and why."""


@dataclass
class LoadReport:
    backbone_keys: int = 0
    method_keys: int = 0
    dropped: list[str] = field(default_factory=list)  # classifier weights of the source task
    fresh: list[str] = field(default_factory=list)  # dense output norms a release lacks
    outside: list[str] = field(default_factory=list)  # an OpenMMLab model's non-backbone keys


def _swin_to_release(key: str) -> str:
    # timm downsamples at the start of stage i+1; the release at the end of stage i.
    key = re.sub(r"^layers\.(\d+)\.downsample",
                 lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
    return key.replace("head.fc.", "head.")


def _convnext_to_release(key: str) -> str:
    key = re.sub(r"^stem\.", "downsample_layers.0.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
    key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
    key = key.replace(".conv_dw.", ".dwconv.").replace(".mlp.fc", ".pwconv")
    key = re.sub(r"^head\.norm\.", "norm.", key)
    return re.sub(r"^head\.fc\.", "head.", key)


def _vit_to_release(key: str) -> str:
    return re.sub(r"^blocks\.(\d+)\.mlp\.fc", r"blocks.\1.fc", key)


_TO_RELEASE = {"swin": _swin_to_release, "convnext": _convnext_to_release, "vit": _vit_to_release}
_VIT_QKV = re.compile(r"^(blocks\.\d+\.attn\.)qkv\.(weight|bias)$")
_VIT_QKV_SPLIT = re.compile(r"^(blocks\.\d+\.attn\.)([qkv])_proj\.(weight|bias)$")


def _vit_split_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's fused qkv (3C, ...) -> the release's q_proj / k_proj / v_proj."""
    out = {}
    for key, value in state.items():
        match = _VIT_QKV.match(key)
        if match is None:
            out[key] = value
            continue
        for part, chunk in zip("qkv", value.chunk(3, dim=0)):
            out[f"{match[1]}{part}_proj.{match[2]}"] = chunk.clone()
    return out


def _vit_fuse_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release's q_proj / k_proj / v_proj and block-level fc1 / fc2 -> timm's naming."""
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    out = {}
    for key, value in state.items():
        match = _VIT_QKV_SPLIT.match(key)
        if match is None:
            out[re.sub(r"^blocks\.(\d+)\.fc([12])\.", r"blocks.\1.mlp.fc\2.", key)] = value
        else:
            parts.setdefault((match[1], match[3]), {})[match[2]] = value
    for (prefix, kind), qkv in parts.items():
        if sorted(qkv) != ["k", "q", "v"]:
            missing = [f"{prefix}{p}_proj.{kind}" for p in "qkv" if p not in qkv]
            raise CheckpointError(f"checkpoint has only part of a ViT attention projection: "
                                  f"missing {missing}")
        out[f"{prefix}qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


_FROM_RELEASE = {"vit": _vit_fuse_qkv}  # before timm's filter; the others need timm's only


def _method_keys(host: BackboneHost) -> dict[str, str]:
    return host.method.official_keys(host) if host.method is not None else {}


def export_official(host: BackboneHost) -> dict[str, torch.Tensor]:
    """The model's state dict: the backbone in release naming, the method in its authors'
    naming where the method has one (else in ours)."""
    ours_to_theirs = _method_keys(host)
    added = host.added_state_keys()
    to_release = _TO_RELEASE[host.family]
    out = {}
    for key, value in host.model.state_dict().items():
        name = ours_to_theirs.get(key, key) if key in added else to_release(key)
        out[name] = value.detach().clone()
    return _vit_split_qkv(out) if host.family == "vit" else out


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
    if host.family in _FROM_RELEASE:
        state = _FROM_RELEASE[host.family](state)
    theirs_to_ours = {v: k for k, v in _method_keys(host).items()}
    added = host.added_state_keys()
    method_part = {theirs_to_ours.get(k, k): v for k, v in state.items()
                   if k in theirs_to_ours or k in added}
    backbone_part = {k: v for k, v in state.items() if k not in theirs_to_ours and k not in added}
    ours = host.model.state_dict()
    report = LoadReport(outside=outside)

    try:
        converted = _TIMM_FILTERS[host.family](backbone_part, host.model)
    except (KeyError, RuntimeError, ValueError) as exc:  # foreign keys trip timm's filter
        raise CheckpointError(f"checkpoint does not match backbone '{host.name}': the "
                              f"{host.family} release naming does not fit ({exc!r})") from exc
    backbone_keys = set(ours) - added
    for key in list(converted):
        if key not in ours and key.startswith(host.classifier_prefixes):
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
