"""AdaptFormer (Chen et al., 2022): a scaled bottleneck in parallel to the MLP.

From the authors' release: Linear(C, d) -> ReLU -> dropout 0.1 -> Linear(d, C), output
times 0.1; down projection kaiming-uniform(a=sqrt 5), up projection and both biases zero
(the model is unchanged at initialisation); x = x + drop_path(MLP(norm2(x))) + adapter(x)
with x the stream after the attention residual; one per block. From the Mona authors' Swin
version: GELU instead of ReLU on Swin.
Our choices: ConvNeXt, and any other family, get the same bottleneck with GELU (as Swin) in
parallel to its MLP branch, fed with the block input.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .base import MethodConfig, PEFTMethod, width_field
from .hosts import BackboneHost, Site
from .registry import register_method

RELEASE_ACTIVATION = {"vit": nn.ReLU}  # AdaptFormer's own ViT; GELU elsewhere


@dataclasses.dataclass
class AdaptFormerConfig(MethodConfig):
    bottleneck: int = width_field(64, "d: bottleneck width", budget=(1, 4096, 1))
    scale: float = 0.1
    dropout: float = 0.1

    def validate(self) -> None:
        if not (isinstance(self.bottleneck, int) and self.bottleneck > 0):
            raise ValueError(f"adaptformer: bottleneck must be a positive integer, "
                             f"got {self.bottleneck!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"adaptformer: dropout must be in [0, 1), got {self.dropout!r}")


class AdaptFormerAdapter(nn.Module):
    def __init__(self, dim: int, cfg: AdaptFormerConfig, act: type[nn.Module]):
        super().__init__()
        self.down_proj = nn.Linear(dim, cfg.bottleneck)
        self.act = act()
        self.dropout = nn.Dropout(cfg.dropout)
        self.up_proj = nn.Linear(cfg.bottleneck, dim)
        self.scale = cfg.scale
        nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return self.up_proj(self.dropout(self.act(self.down_proj(x)))) * self.scale


@register_method
class AdaptFormer(PEFTMethod):
    name = "adaptformer"
    paper_name = "AdaptFormer"
    description = "AdaptFormer: a scaled bottleneck in parallel to each block's MLP"
    config_class = AdaptFormerConfig
    requires = (Site.MLP_PARALLEL,)

    def attach(self, host: BackboneHost) -> None:
        host.require(Site.MLP_PARALLEL, method=self.name)
        act = RELEASE_ACTIVATION.get(host.family, nn.GELU)
        for block in host.blocks:
            host.add(Site.MLP_PARALLEL, AdaptFormerAdapter(block.dim, self.config, act),
                     block=block)
