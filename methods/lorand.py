"""LoRand (Yin et al., 2023, "1% vs 100%"): low-rank-synthesised adapters.

No official release was found. From the first author's later code (DongshuoYin/CoLin,
MMDetection ``swin_lorand.py``): a LoRand projection is W = sum over branches i of
A_i G_i B_i (A_i: in x k, G_i: k x k, B_i: k x out) plus a bias, 4 branches, k = 8, all three
factors kaiming-uniform(a=sqrt 5), the bias uniform(+-1/sqrt(in)); the module is
LoRand(C, C/2) -> GELU -> LoRand(C/2, C) plus the identity, placed on Swin inside the
residual branch after attention and after the MLP, after the branch's drop path (OpenMMLab's
attention and FFN apply it inside): x = x + LoRand(DropPath(branch)).
Our choices: ViT uses the Swin placement; ConvNeXt gets one module on its MLP branch (after
layer scale and drop path, before the residual sum). Budget matching turns the hidden width
(``hidden_ratio`` x C).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import MethodConfig, PEFTMethod, width_field
from .hosts import BackboneHost, Role
from .registry import register_method


@dataclasses.dataclass
class LoRandConfig(MethodConfig):
    hidden_ratio: float = width_field(0.5, "hidden width / C", budget=(1 / 64, 16.0, 1 / 64))
    branches: int = width_field(4, "number of A G B branches")
    kernel: int = width_field(8, "k: inner size of each branch")

    def validate(self) -> None:
        if not self.hidden_ratio > 0:
            raise ValueError(f"lorand: hidden_ratio must be > 0, got {self.hidden_ratio!r}")
        for name in ("branches", "kernel"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"lorand: {name} must be a positive integer, got {value!r}")


class LoRandProjection(nn.Module):
    """x -> x W + b with W = sum_i A_i G_i B_i."""

    def __init__(self, in_features: int, out_features: int, branches: int, kernel: int):
        super().__init__()
        self.A = nn.Parameter(torch.empty(branches, in_features, kernel))
        self.G = nn.Parameter(torch.empty(branches, kernel, kernel))
        self.B = nn.Parameter(torch.empty(branches, kernel, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        if self.bias.is_meta:  # counting: nothing to initialise
            return
        for factor in (self.A, self.G, self.B):
            for branch in factor:
                nn.init.kaiming_uniform_(branch, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def weight(self) -> torch.Tensor:
        return torch.einsum("nik,nkl,nlo->io", self.A, self.G, self.B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight() + self.bias


class LoRandModule(nn.Module):
    def __init__(self, dim: int, cfg: LoRandConfig):
        super().__init__()
        hidden = max(1, round(cfg.hidden_ratio * dim))
        self.down = LoRandProjection(dim, hidden, cfg.branches, cfg.kernel)
        self.up = LoRandProjection(hidden, dim, cfg.branches, cfg.kernel)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))


@register_method
class LoRand(PEFTMethod):
    name = "lorand"
    paper_name = "LoRand"
    description = "LoRand: adapters whose projections are sums of low-rank A G B products"
    config_class = LoRandConfig
    requires = (Role.BRANCH,)  # inside every residual branch, after its drop path

    def attach(self, host: BackboneHost) -> None:
        sites = host.sites_of(Role.BRANCH, method=self.name)
        for block in host.blocks:
            for site in sites:
                host.add(site, LoRandModule(block.dim, self.config), block=block)
