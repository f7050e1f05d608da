"""The ConvNeXt family: timm's model, one residual sum per block (depthwise conv -> norm ->
MLP); the original release's checkpoint naming."""
from __future__ import annotations

import re
from typing import Iterator

import torch
from torch import nn
from timm.models import convnext
from timm.models.convnext import ConvNeXtBlock

from .base import BackboneHost, BlockInfo, Role, Site, SiteMixin, StageInfo, register_family


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def _spatial(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *hw)


class ConvNeXtSiteBlock(SiteMixin, ConvNeXtBlock):
    """timm's ConvNeXtBlock.forward with site calls; the depthwise conv plays the token mixer.

    Sites: attn_in (block input, before the depthwise conv), mlp_in (after the norm),
    mlp_branch (after layer scale and drop path), mlp_parallel (f(block input) added to
    the residual sum), block_out, fc1 / fc2 (the pointwise linears, linear-MLP blocks only),
    dwconv (branches beside the depthwise conv, on its input).
    """

    plain_class = ConvNeXtBlock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hw = (x.shape[2], x.shape[3])
        shortcut = x
        if self._has(Site.ATTN_IN):
            x = _spatial(self._site(Site.ATTN_IN, _tokens(x), hw), hw)
        x = self.conv_dw(x)
        if self.use_conv_mlp:
            x = self.norm(x)
            if self._has(Site.MLP_IN):
                x = _spatial(self._site(Site.MLP_IN, _tokens(x), hw), hw)
            x = self.mlp(x)
        else:
            x = x.permute(0, 2, 3, 1)
            x = self.norm(x)
            if self._has(Site.MLP_IN):
                x = self._site(Site.MLP_IN, x.flatten(1, 2), hw).reshape(x.shape)
            x = self.mlp(x)
            x = x.permute(0, 3, 1, 2)
        if self.gamma is not None:
            x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        x = self.drop_path(x)
        if self._has(Site.MLP_BRANCH):
            x = _spatial(self._site(Site.MLP_BRANCH, _tokens(x), hw), hw)
        parallel = self._parallel(_tokens(shortcut), hw) if self._has(Site.MLP_PARALLEL) else None
        x = x + self.shortcut(shortcut)
        if parallel is not None:
            x = x + _spatial(parallel, hw)
        if self._has(Site.BLOCK_OUT):
            x = _spatial(self._site(Site.BLOCK_OUT, _tokens(x), hw), hw)
        return x


@register_family
class ConvNeXtHost(BackboneHost):
    family = "convnext"
    display_name = "ConvNeXt"
    norm_eps = 1e-6
    dense_out_norms = True
    sites = frozenset({
        Site.ATTN_IN, Site.MLP_IN, Site.MLP_BRANCH, Site.MLP_PARALLEL, Site.BLOCK_OUT,
        Site.FC1, Site.FC2, Site.DWCONV, Site.STAGE_OUT,
    })
    roles = {Role.SERIAL: (Site.BLOCK_OUT,), Role.BRANCH: (Site.MLP_BRANCH,)}
    linear_paths = {Site.FC1: "mlp.fc1", Site.FC2: "mlp.fc2", Site.DWCONV: "conv_dw"}
    block_class = ConvNeXtSiteBlock
    checkpoint_filter = staticmethod(convnext.checkpoint_filter_fn)

    @staticmethod
    def release_key(key: str) -> str:
        key = re.sub(r"^stem\.", "downsample_layers.0.", key)
        key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
        key = key.replace(".conv_dw.", ".dwconv.").replace(".mlp.fc", ".pwconv")
        key = re.sub(r"^head\.norm\.", "norm.", key)
        return re.sub(r"^head\.fc\.", "head.", key)

    def _describe_stages(self) -> list[StageInfo]:
        return [StageInfo(i, info["num_chs"], len(stage.blocks), info["reduction"])
                for i, (stage, info) in enumerate(zip(self.model.stages, self.model.feature_info))]

    def _iter_blocks(self) -> Iterator[BlockInfo]:
        for i, stage in enumerate(self.model.stages):
            for j, block in enumerate(stage.blocks):
                yield BlockInfo(i, j, self.stages[i].dim, block)

    def _drop_classifier_norm(self) -> None:
        self.model.head = nn.Identity()

    def _forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.model.stem(x)
        outs = []
        for stage in self.model.stages:
            x = stage(x)
            outs.append(x)
        return outs
