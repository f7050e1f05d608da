"""Mona (Yin et al., 2025, "5% > 100%"): a multi-cognitive visual adapter.

From the authors' release (Swin only): x' = LN(x) * gamma + x * gammax (gamma 1e-6,
gammax 1); Linear(C, d); on the (d, H, W) map, depthwise 3x3 / 5x5 / 7x7 convs in parallel
on the same input, averaged and added to it, then z + Conv1x1(z); GELU; dropout 0.1;
Linear(d, C); plus the identity. Two modules per Swin block, after the attention residual and
after the MLP residual; official d = 64; per module 5C + 2Cd + d^2 + 88d parameters.
Initialisation (Leiyi-Hu/mona, the detection / segmentation Swin's ``init_weights``, run before
the backbone checkpoint loads): both Linear layers truncated normal (std 0.02), bias 0; the
convs and the LayerNorm keep PyTorch's defaults.
Our choices: ConvNeXt gets one module after each block and ViT one after each block on the
patch tokens (the class token bypasses it): ParaX's sites on those backbones; the same init.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn import functional as F

from .base import MethodConfig, PEFTMethod, width_field
from .hosts import BackboneHost, Role, split_patches
from .registry import register_method


@dataclasses.dataclass
class MonaConfig(MethodConfig):
    bottleneck: int = width_field(64, "d: bottleneck width", budget=(1, 2048, 1))
    dropout: float = 0.1

    def validate(self) -> None:
        if not (isinstance(self.bottleneck, int) and self.bottleneck > 0):
            raise ValueError(f"mona: bottleneck must be a positive integer, got {self.bottleneck!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"mona: dropout must be in [0, 1), got {self.dropout!r}")


class MonaOp(nn.Module):
    """Parallel depthwise 3/5/7 convs averaged plus identity, then z + Conv1x1(z)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv3 = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.projector = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (self.conv1(x) + self.conv2(x) + self.conv3(x)) / 3.0 + x
        return x + self.projector(x)


class MonaModule(nn.Module):
    def __init__(self, dim: int, cfg: MonaConfig):
        super().__init__()
        d = cfg.bottleneck
        self.norm = nn.LayerNorm(dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))
        self.gammax = nn.Parameter(torch.ones(dim))
        self.project1 = nn.Linear(dim, d)
        self.adapter_conv = MonaOp(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.project2 = nn.Linear(d, dim)
        for linear in (self.project1, self.project2):
            if not linear.weight.is_meta:  # (meta: counting, nothing to initialise)
                nn.init.trunc_normal_(linear.weight, std=0.02)
                nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        prefix, x = split_patches(x, hw)
        identity = x
        x = self.norm(x) * self.gamma + x * self.gammax
        z = self.project1(x)
        b, n, d = z.shape
        z = self.adapter_conv(z.transpose(1, 2).reshape(b, d, *hw)).flatten(2).transpose(1, 2)
        out = identity + self.project2(self.dropout(F.gelu(z)))
        return torch.cat([prefix, out], dim=1) if prefix.shape[1] else out


@register_method
class Mona(PEFTMethod):
    name = "mona"
    paper_name = "Mona"
    description = "Mona: multi-cognitive adapter with parallel multi-scale depthwise convs"
    config_class = MonaConfig
    requires = (Role.SERIAL,)  # after the residual sums, as ParaX (Swin: two per block)

    def attach(self, host: BackboneHost) -> None:
        sites = host.sites_of(Role.SERIAL, method=self.name)
        for block in host.blocks:
            for site in sites:
                host.add(site, MonaModule(block.dim, self.config), block=block)
