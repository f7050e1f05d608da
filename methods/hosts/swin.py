"""Host for timm Swin Transformer (v1): two residual sums per block, four stages."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from timm.models.swin_transformer import SwinTransformerBlock

from .base import BackboneHost, BlockInfo, Site, SiteMixin, StageInfo


class SwinSiteBlock(SiteMixin, SwinTransformerBlock):
    """timm's SwinTransformerBlock.forward with site calls; identical when nothing is attached."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        hw = (H, W)
        h = self.norm1(x)
        if self._has(Site.ATTN_IN):
            h = self._site(Site.ATTN_IN, h.reshape(B, -1, C), hw).reshape(B, H, W, C)
        h = self._attn(h)
        if self._has(Site.ATTN_BRANCH):
            h = self._site(Site.ATTN_BRANCH, h.reshape(B, -1, C), hw).reshape(B, H, W, C)
        x = x + self.drop_path1(h)
        x = x.reshape(B, -1, C)
        x = self._site(Site.ATTN_OUT, x, hw)
        h = self._site(Site.MLP_IN, self.norm2(x), hw)
        h = self._site(Site.MLP_BRANCH, self.mlp(h), hw)
        parallel = self._parallel(x, hw)
        x = x + self.drop_path2(h)
        if parallel is not None:
            x = x + parallel
        x = self._site(Site.BLOCK_OUT, x, hw)
        return x.reshape(B, H, W, C)


class SwinHost(BackboneHost):
    family = "swin"
    out_norm_eps = 1e-5
    classifier_prefixes = ("head.", "norm.")
    sites = frozenset({
        Site.ATTN_IN, Site.ATTN_BRANCH, Site.ATTN_OUT, Site.MLP_IN, Site.MLP_BRANCH,
        Site.MLP_PARALLEL, Site.BLOCK_OUT, Site.QKV, Site.FC1, Site.FC2, Site.STAGE_OUT,
    })
    linear_paths = {Site.QKV: "attn.qkv", Site.FC1: "mlp.fc1", Site.FC2: "mlp.fc2"}
    block_class = SwinSiteBlock

    def _describe_stages(self) -> list[StageInfo]:
        patch = self.model.patch_embed.patch_size[0]
        return [StageInfo(i, layer.blocks[0].dim, len(layer.blocks), patch * 2 ** i)
                for i, layer in enumerate(self.model.layers)]

    def _iter_blocks(self) -> Iterator[BlockInfo]:
        for i, layer in enumerate(self.model.layers):
            for j, block in enumerate(layer.blocks):
                yield BlockInfo(i, j, block.dim, block)

    def _drop_classifier_norm(self) -> None:
        self.model.norm = nn.Identity()

    def _forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.model.patch_embed(x)
        outs = []
        for layer in self.model.layers:
            x = layer(x)
            outs.append(x.permute(0, 3, 1, 2))
        return outs
