"""The Swin Transformer (v1) family: timm's model with the original Swin's window order, two
residual sums per block, four stages; the original release's checkpoint naming."""
from __future__ import annotations

import re
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn import functional as F
from timm.models import swin_transformer
from timm.models.swin_transformer import SwinTransformerBlock, WindowAttention, window_partition, window_reverse

from .base import BackboneHost, BlockInfo, Role, Site, SiteMixin, StageInfo, register_family


class SwinSiteAttention(WindowAttention):
    """Window attention that can take prompt tokens into every window.

    The prompts join each window's sequence in front of its tokens; the relative position
    bias and the shift mask are zero-padded for the prompt rows and columns; the prompts'
    own outputs are dropped (deep prompting replaces them at the next block).
    """

    plain_class = WindowAttention

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                prompts: torch.Tensor | None = None) -> torch.Tensor:
        if prompts is None:
            return super().forward(x, mask)
        B_, N, C = x.shape
        n = prompts.shape[1]
        x = torch.cat([prompts.to(x.dtype), x], dim=1)
        qkv = self.qkv(x).reshape(B_, n + N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = F.pad(self._get_rel_pos_bias(), (n, 0, n, 0))  # (1, heads, n+N, n+N)
        if mask is not None:
            num_win = mask.shape[0]
            mask = F.pad(mask, (n, 0, n, 0)).view(1, num_win, 1, n + N, n + N)
            bias = (bias.unsqueeze(1) + mask).expand(B_ // num_win, -1, -1, -1, -1)
            bias = bias.reshape(B_, self.num_heads, n + N, n + N)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), dropout_p=self.attn_drop.p if self.training else 0.)
        out = out.transpose(1, 2).reshape(B_, n + N, -1)[:, n:]
        return self.proj_drop(self.proj(out))


class SwinSiteBlock(SiteMixin, SwinTransformerBlock):
    """timm's SwinTransformerBlock with site calls and the original Swin's window order.

    The token mixer pads the map to a multiple of the window first and then applies the
    cyclic shift, with the shift mask built on the padded size, as the original Swin and
    OpenMMLab's Swin do (timm shifts first and pads after, which differs whenever a stage
    size is not a multiple of the window). Where no padding is needed both orders agree, and
    with nothing attached the block is then bit-identical to timm's.

    Prompt tokens (site ``prompts``) pass through norm1 and join every attention window.
    """

    plain_class = SwinTransformerBlock

    def _attn(self, x: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        B, H, W, C = x.shape
        pad_h = (self.window_size[0] - H % self.window_size[0]) % self.window_size[0]
        pad_w = (self.window_size[1] - W % self.window_size[1]) % self.window_size[1]
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        _, Hp, Wp, _ = x.shape
        has_shift = any(self.shift_size)
        if has_shift:
            x = torch.roll(x, shifts=(-self.shift_size[0], -self.shift_size[1]), dims=(1, 2))
        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)
        mask = self.get_attn_mask(x) if self.dynamic_mask else self.attn_mask
        if prompts is None:
            out = self.attn(windows, mask=mask)
        else:  # batch-major window order: each sample's prompts go to its own windows
            per_window = prompts.repeat_interleave(windows.shape[0] // B, dim=0)
            out = self.attn(windows, mask=mask, prompts=per_window)
        x = window_reverse(out.view(-1, *self.window_size, C), self.window_size, Hp, Wp)
        if has_shift:
            x = torch.roll(x, shifts=self.shift_size, dims=(1, 2))
        return x[:, :H, :W, :].contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        hw = (H, W)
        h = self.norm1(x)
        if self._has(Site.ATTN_IN):
            h = self._site(Site.ATTN_IN, h.reshape(B, -1, C), hw).reshape(B, H, W, C)
        prompts = self._prompt_tokens(B)
        h = self.drop_path1(self._attn(h, None if prompts is None else self.norm1(prompts)))
        if self._has(Site.ATTN_BRANCH):
            h = self._site(Site.ATTN_BRANCH, h.reshape(B, -1, C), hw).reshape(B, H, W, C)
        x = x + h
        x = x.reshape(B, -1, C)
        x = self._site(Site.ATTN_OUT, x, hw)
        h = self._site(Site.MLP_IN, self.norm2(x), hw)
        h = self._site(Site.MLP_BRANCH, self.drop_path2(self.mlp(h)), hw)
        parallel = self._parallel(x, hw)
        x = x + h
        if parallel is not None:
            x = x + parallel
        x = self._site(Site.BLOCK_OUT, x, hw)
        return x.reshape(B, H, W, C)


@register_family
class SwinHost(BackboneHost):
    family = "swin"
    display_name = "Swin"
    norm_eps = 1e-5
    dense_out_norms = True
    classifier_prefixes = ("head.", "norm.")
    sites = frozenset({
        Site.ATTN_IN, Site.ATTN_BRANCH, Site.ATTN_OUT, Site.MLP_IN, Site.MLP_BRANCH,
        Site.MLP_PARALLEL, Site.BLOCK_OUT, Site.QKV, Site.PROJ, Site.FC1, Site.FC2, Site.PROMPTS,
        Site.STAGE_OUT,
    })
    roles = {Role.SERIAL: (Site.ATTN_OUT, Site.BLOCK_OUT),
             Role.BRANCH: (Site.ATTN_BRANCH, Site.MLP_BRANCH)}
    linear_paths = {Site.QKV: "attn.qkv", Site.PROJ: "attn.proj", Site.FC1: "mlp.fc1",
                    Site.FC2: "mlp.fc2"}
    block_class = SwinSiteBlock
    checkpoint_filter = staticmethod(swin_transformer.checkpoint_filter_fn)

    @classmethod
    def timm_kwargs(cls, dense: bool) -> dict[str, Any]:
        # Dense heads feed any size: pad to the window, shifted windows always, as the
        # original detection / segmentation code does.
        return dict(strict_img_size=False, always_partition=True) if dense else {}

    @staticmethod
    def release_key(key: str) -> str:
        # timm downsamples at the start of stage i+1; the release at the end of stage i.
        key = re.sub(r"^layers\.(\d+)\.downsample",
                     lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        return key.replace("head.fc.", "head.")

    @staticmethod
    def release_stage_attr(name: str, stage: int) -> str:
        return f"{name}{stage}"  # the original Swin detection code: norm0, norm1, ...

    def __init__(self, model, name, dense=True):
        super().__init__(model, name, dense)
        for info in self.blocks:
            info.module.attn.__class__ = SwinSiteAttention

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
        # As the original Swin: an input that is not a multiple of the patch is padded.
        p = self.model.patch_embed.patch_size
        x = F.pad(x, (0, (p[1] - x.shape[3] % p[1]) % p[1], 0, (p[0] - x.shape[2] % p[0]) % p[0]))
        x = self.model.patch_embed(x)
        outs = []
        for layer in self.model.layers:
            x = layer(x)
            outs.append(x.permute(0, 3, 1, 2))
        return outs
