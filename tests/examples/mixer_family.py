"""A backbone family written outside the package, in one file: timm's MLP-Mixer.

The host re-classes each ``MixerBlock`` to a subclass whose forward adds the site calls,
says which sites realise the placement roles, and registers one backbone size. Methods need
no edit: ParaX and Mona ask for the serial role, LoRA finds no fused qkv and takes fc1.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from timm.models.mlp_mixer import MixerBlock

from catalog import BackboneSpec, register_backbone
from methods.hosts import BackboneHost, BlockInfo, Role, Site, SiteMixin, StageInfo, register_family


class MixerSiteBlock(SiteMixin, MixerBlock):
    """timm's MixerBlock.forward with site calls: the token-mixing MLP plays the attention."""

    plain_class = MixerBlock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(x.shape[1])
        hw = (side, side)
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        x = self._site(Site.ATTN_OUT, x, hw)
        h = self._site(Site.MLP_IN, self.norm2(x), hw)
        x = x + self._site(Site.MLP_BRANCH, self.drop_path(self.mlp_channels(h)), hw)
        return self._site(Site.BLOCK_OUT, x, hw)


@register_family
class MixerHost(BackboneHost):
    family = "mixer"
    display_name = "MLP-Mixer"
    sites = frozenset({Site.ATTN_OUT, Site.MLP_IN, Site.MLP_BRANCH, Site.BLOCK_OUT, Site.FC1,
                       Site.FC2, Site.STAGE_OUT})
    roles = {Role.SERIAL: (Site.ATTN_OUT, Site.BLOCK_OUT), Role.BRANCH: (Site.MLP_BRANCH,)}
    linear_paths = {Site.FC1: "mlp_channels.fc1", Site.FC2: "mlp_channels.fc2"}
    block_class = MixerSiteBlock

    def _describe_stages(self) -> list[StageInfo]:
        return [StageInfo(0, self.model.embed_dim, len(self.model.blocks),
                          self.model.stem.patch_size[0])]

    def _iter_blocks(self) -> Iterator[BlockInfo]:
        for j, block in enumerate(self.model.blocks):
            yield BlockInfo(0, j, self.model.embed_dim, block)


register_backbone(BackboneSpec("mixer-micro", "mixer", "mixer_s16_224", default_task="cifar100",
                               kwargs=dict(img_size=32), input_size=32))
