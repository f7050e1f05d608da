"""A PEFT method written outside the package, in one file: a learned channel bias after
every block. Registering it is one decorator; packages can also expose it through the
``parax_bench.methods`` entry-point group."""
import dataclasses

import torch
from torch import nn

from methods import MethodConfig, PEFTMethod, Site, register_method, width_field


@dataclasses.dataclass
class ToyBiasConfig(MethodConfig):
    copies: int = width_field(1, "bias vectors summed per block", budget=(1, 64, 1))


class ChannelBias(nn.Module):
    def __init__(self, dim: int, copies: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(copies, dim))

    def forward(self, x, hw):  # x: (B, N, C) tokens on an hw grid
        return x + self.bias.sum(0)


@register_method
class ToyBias(PEFTMethod):
    name = "toy_bias"
    description = "Toy: a learned channel bias after every block."
    config_class = ToyBiasConfig

    def attach(self, host):
        for block in host.blocks:
            host.add(Site.BLOCK_OUT, ChannelBias(block.dim, self.config.copies), block=block)
