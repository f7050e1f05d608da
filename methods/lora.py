"""LoRA (Hu et al., 2022): a low-rank update (alpha / r) * B A added to chosen linear layers.

From the authors' release: A kaiming-uniform(a=sqrt 5), B zero (the model is unchanged at
initialisation), scaling alpha / r, mergeable into W. From the Mona authors' dense-prediction
Swin code: LoRA on the attention qkv projection, q and v only, alpha 1.
Our choices: the same q/v placement on ViT; on a family without a fused qkv (ConvNeXt has no
attention), the first pointwise MLP linear (fc1). Both pointwise linears (``targets=("fc1", "fc2")``), as
LoRA-for-ConvNets work does, cannot land on the paper's ConvNeXt counts at any rank (steps of
0.18 M / 0.27 M), while fc1 at rank 65 gives exactly its 5.9 M and 8.8 M: the paper's
ConvNeXt LoRA spends 5C parameters per rank per block.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import MethodConfig, PEFTMethod, width_field
from .hosts import BackboneHost, Site, check_targets
from .registry import register_method


@dataclasses.dataclass
class LoRAConfig(MethodConfig):
    rank: int = width_field(4, "r: rank of each update", budget=(1, 1024, 1))
    alpha: float = 1.0
    targets: tuple[str, ...] | None = None  # hosts.LINEAR_TARGETS names; None: q, v on a fused
    # qkv, else fc1 (see above)

    def validate(self) -> None:
        if not (isinstance(self.rank, int) and self.rank > 0):
            raise ValueError(f"lora: rank must be a positive integer, got {self.rank!r}")
        if self.targets is not None:
            self.targets = check_targets("lora", self.targets)


class LoRABranch(nn.Module):
    """(alpha / r) * B A x, written into rows [start, start + out) of a linear's output."""

    def __init__(self, in_features: int, out_features: int, total_out: int, start: int,
                 rank: int, alpha: float):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.pad = (start, total_out - start - out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling
        return F.pad(delta, self.pad) if any(self.pad) else delta

    def delta_weight(self) -> torch.Tensor:
        delta = (self.lora_B @ self.lora_A) * self.scaling
        return F.pad(delta, (0, 0, *self.pad)) if any(self.pad) else delta


@register_method
class LoRA(PEFTMethod):
    name = "lora"
    paper_name = "LoRA"
    description = "LoRA: low-rank updates on attention q/v (Swin, ViT) or the MLP's fc1 (ConvNeXt)"
    config_class = LoRAConfig

    def attach(self, host: BackboneHost) -> None:
        cfg = self.config
        targets = cfg.targets or (("q", "v") if host.has(Site.QKV) else ("fc1",))
        for block in host.blocks:
            for site, (linear, rows) in host.target_rows(block, targets, self.name).items():
                for start, out in rows:
                    host.add(site, LoRABranch(linear.in_features, out, linear.out_features, start,
                                              cfg.rank, cfg.alpha), block=block)

    def merge(self, host: BackboneHost) -> None:
        host.fold_branches()
