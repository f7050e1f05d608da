"""RepAdapter (Luo et al., 2023): linear adapters folded into the next layer after training.

From the authors' release: 1x1 conv C -> d (bias; weight xavier-uniform, bias zero),
dropout 0.1, grouped 1x1 conv d -> C with 2 groups (bias; weight and bias zero), scaled by s,
plus the identity; no nonlinearity, so it re-parameterises into the following linear layer.
Placed before attention (between norm1 and attention) and before the MLP (between norm2
and the MLP); official d = 8. The scale s is per dataset in luogen1996/RepAdapter: its
``configs/repblock`` (this placement) use CIFAR-100 0.1 and SVHN 10, its few-shot Food-101
config 1, and its segmentation code (``segmentation_task``) the module default 1.0.
Our choices: ImageNet-R (not in the release) and the detection, panoptic and pose tasks take
the module default 1.0, as segmentation does. On ConvNeXt, the modules go before the
depthwise conv and before the MLP; the first cannot fold into a depthwise conv (the adapter
mixes channels), so ConvNeXt models do not merge; nor do VMamba models, whose SS2D input
projection has no bias to take the adapter's.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .base import MethodConfig, NotMergeableError, PEFTMethod, width_field
from .hosts import BackboneHost, Site
from .registry import register_method

GROUPS = 2
RELEASED_SCALE = {"cifar100": 0.1, "svhn": 10.0, "food101": 1.0}  # per dataset; else 1.0
# adapter site -> the linear site it folds into
FOLDS_INTO = {Site.ATTN_IN: Site.QKV, Site.MLP_IN: Site.FC1}


@dataclasses.dataclass
class RepAdapterConfig(MethodConfig):
    bottleneck: int = width_field(8, "d: bottleneck width (even)", budget=(2, 4096, 2))
    scale: float = 1.0
    dropout: float = 0.1

    def validate(self) -> None:
        if not (isinstance(self.bottleneck, int) and self.bottleneck > 0
                and self.bottleneck % GROUPS == 0):
            raise ValueError(f"repadapter: bottleneck must be a positive multiple of {GROUPS}, "
                             f"got {self.bottleneck!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"repadapter: dropout must be in [0, 1), got {self.dropout!r}")


class RepAdapterModule(nn.Module):
    def __init__(self, dim: int, cfg: RepAdapterConfig):
        super().__init__()
        if dim % GROUPS:
            raise ValueError(f"repadapter: channel width {dim} is not divisible by {GROUPS}")
        self.conv_A = nn.Conv1d(dim, cfg.bottleneck, 1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv_B = nn.Conv1d(cfg.bottleneck, dim, 1, groups=GROUPS)
        self.scale = cfg.scale
        nn.init.xavier_uniform_(self.conv_A.weight)
        nn.init.zeros_(self.conv_A.bias)
        nn.init.zeros_(self.conv_B.weight)
        nn.init.zeros_(self.conv_B.bias)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        y = self.conv_B(self.dropout(self.conv_A(x.transpose(1, 2)))).transpose(1, 2)
        return x + y * self.scale

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, c) with module(x) = x M^T + c at inference."""
        w_a = self.conv_A.weight[:, :, 0]  # (d, C)
        c_out, d_in = self.conv_B.weight.shape[:2]
        w_b = torch.block_diag(*self.conv_B.weight[:, :, 0].split(c_out // GROUPS))  # (C, d)
        eye = torch.eye(w_a.shape[1], dtype=w_a.dtype, device=w_a.device)
        return eye + self.scale * w_b @ w_a, self.scale * (w_b @ self.conv_A.bias + self.conv_B.bias)


@register_method
class RepAdapter(PEFTMethod):
    name = "repadapter"
    paper_name = "RepAdapter"
    description = "RepAdapter: linear adapters before attention and MLP, foldable after training"
    config_class = RepAdapterConfig
    requires = (Site.ATTN_IN, Site.MLP_IN)

    @classmethod
    def paper_config(cls, backbone, task) -> RepAdapterConfig:
        cfg = RepAdapterConfig()
        if task is not None:
            cfg.scale = RELEASED_SCALE.get(task.name, cfg.scale)
        return cfg

    def attach(self, host: BackboneHost) -> None:
        host.require(Site.ATTN_IN, Site.MLP_IN, method=self.name)
        for block in host.blocks:
            for site in (Site.ATTN_IN, Site.MLP_IN):
                host.add(site, RepAdapterModule(block.dim, self.config), block=block)

    def merge(self, host: BackboneHost) -> None:
        if not all(host.has(target) for target in FOLDS_INTO.values()):
            raise NotMergeableError(f"repadapter: on {host.display_name} the adapter before "
                                    f"the token mixer is not followed by a linear layer with a "
                                    f"bias (ConvNeXt: a depthwise conv, while the adapter mixes "
                                    f"channels; VMamba: SS2D's bias-free in_proj) and cannot "
                                    f"fold into it")
        with torch.no_grad():
            for block in host.blocks:
                sites = block.module.peft_sites
                for site, target in FOLDS_INTO.items():
                    linear = host.linear(block, target)
                    for adapter in sites[site.value]:
                        m, c = adapter.affine()
                        linear.bias += linear.weight @ c
                        linear.weight.copy_(linear.weight @ m)
                    sites[site.value] = nn.ModuleList()
