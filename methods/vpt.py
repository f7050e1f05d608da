"""VPT (Jia et al., 2022): learnable prompt tokens at the input of every block (deep VPT).

From the authors' release: n prompts per block, inserted after the class token on ViT and
dropped after the block; init uniform(-v, v) with v = sqrt(6 / (3 p^2 + C)) for patch size p.
On Swin, prompts join every attention window, with the relative position bias and shift mask
zero-padded for them (the host's ``prompts`` site); prompt widths follow the stage
channels, so n prompts cost n x sum of C over blocks (12,032 n on Swin-B), but every stage's
prompts are drawn with the v of the stage-0 width C (KMnP/vpt, the Swin prompt model computes
it once). The paper keeps VPT's original configuration; its 0.1 M / 0.2 M correspond to n = 10.
So n is a width but not a budget knob: a budget leaves VPT at n = 10 (``--set num_prompts=N``
changes it).
Not applicable to a family without a ``prompts`` site: ConvNeXt has no token sequence, and
the paper omits it there.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from .base import MethodConfig, PEFTMethod, width_field
from .hosts import BackboneHost, Site
from .registry import register_method


@dataclasses.dataclass
class VPTConfig(MethodConfig):
    num_prompts: int = width_field(10, "n: prompt tokens per block")

    def validate(self) -> None:
        if not (isinstance(self.num_prompts, int) and self.num_prompts > 0):
            raise ValueError(f"vpt: num_prompts must be a positive integer, "
                             f"got {self.num_prompts!r}")


class Prompts(nn.Module):
    def __init__(self, num: int, dim: int, bound: float):
        super().__init__()
        self.prompt_embeddings = nn.Parameter(torch.empty(1, num, dim).uniform_(-bound, bound))

    def forward(self, batch: int) -> torch.Tensor:
        return self.prompt_embeddings.expand(batch, -1, -1)


@register_method
class VPT(PEFTMethod):
    name = "vpt"
    paper_name = "VPT"
    description = "VPT-deep: learnable prompt tokens at every block (every window on Swin)"
    config_class = VPTConfig
    requires = (Site.PROMPTS,)

    def attach(self, host: BackboneHost) -> None:
        host.require(Site.PROMPTS, method=self.name)
        patch = host.model.patch_embed.patch_size[0]
        bound = math.sqrt(6.0 / float(3 * patch * patch + host.stages[0].dim))
        for block in host.blocks:
            host.add(Site.PROMPTS, Prompts(self.config.num_prompts, block.dim, bound), block=block)
