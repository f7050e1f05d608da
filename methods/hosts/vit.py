"""The ViT family: timm's VisionTransformer, pre-norm blocks over [prefix tokens, patch
tokens]; checkpoints in timm's / MAE's naming or the ParaX release's (AdaptFormer's code
base: ``attn.q_proj / k_proj / v_proj`` and block-level ``fc1 / fc2``)."""
from __future__ import annotations

import math
import re
from typing import Any, Iterator, Sequence

import torch
from timm.models import vision_transformer
from timm.models.vision_transformer import Block

from .base import (BackboneHost, BlockInfo, CheckpointError, Role, Site, SiteMixin, StageInfo,
                   register_family)

_QKV = re.compile(r"^(blocks\.\d+\.attn\.)qkv\.(weight|bias)$")
# q_proj (AdaptFormer's and ParaX's releases) or q (SNELL's)
_QKV_SPLIT = re.compile(r"^(blocks\.\d+\.attn\.)([qkv])((?:_proj)?)\.(weight|bias)$")


class ViTSiteBlock(SiteMixin, Block):
    """timm's ViT Block.forward with site calls.

    Prompt tokens (site ``prompts``) are inserted after the prefix (class) tokens at the
    block's input and dropped from its output, i.e. deep prompting. Token sites see
    [prefix, prompts, patches]; the patch grid is square (H = W = sqrt(#patch tokens)).
    """

    plain_class = Block

    peft_num_prefix: int = 1

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        p = self.peft_num_prefix
        prompts = self._prompt_tokens(x.shape[0])
        n_prompts = 0 if prompts is None else prompts.shape[1]
        if prompts is not None:
            x = torch.cat([x[:, :p], prompts.to(x.dtype), x[:, p:]], dim=1)
        n_patch = x.shape[1] - p - n_prompts
        side = math.isqrt(n_patch)
        if side * side != n_patch:
            raise ValueError(f"ViT sites need a square patch grid, got {n_patch} patch tokens")
        hw = (side, side)
        h = self._site(Site.ATTN_IN, self.norm1(x), hw)
        h = self.drop_path1(self.ls1(self.attn(h, attn_mask=attn_mask, is_causal=is_causal)))
        x = x + self._site(Site.ATTN_BRANCH, h, hw)
        x = self._site(Site.ATTN_OUT, x, hw)
        h = self._site(Site.MLP_IN, self.norm2(x), hw)
        h = self._site(Site.MLP_BRANCH, self.drop_path2(self.ls2(self.mlp(h))), hw)
        parallel = self._parallel(x, hw)
        x = x + h
        if parallel is not None:
            x = x + parallel
        x = self._site(Site.BLOCK_OUT, x, hw)
        if n_prompts:
            x = torch.cat([x[:, :p], x[:, p + n_prompts:]], dim=1)
        return x


@register_family
class ViTHost(BackboneHost):
    family = "vit"
    display_name = "ViT"
    norm_eps = 1e-6
    sites = frozenset({
        Site.ATTN_IN, Site.ATTN_BRANCH, Site.ATTN_OUT, Site.MLP_IN, Site.MLP_BRANCH,
        Site.MLP_PARALLEL, Site.BLOCK_OUT, Site.QKV, Site.PROJ, Site.FC1, Site.FC2, Site.PROMPTS,
        Site.STAGE_OUT,
    })
    roles = {Role.SERIAL: (Site.BLOCK_OUT,), Role.BRANCH: (Site.ATTN_BRANCH, Site.MLP_BRANCH)}
    linear_paths = {Site.QKV: "attn.qkv", Site.PROJ: "attn.proj", Site.FC1: "mlp.fc1",
                    Site.FC2: "mlp.fc2"}
    block_class = ViTSiteBlock
    checkpoint_filter = staticmethod(vision_transformer.checkpoint_filter_fn)

    @classmethod
    def timm_kwargs(cls, dense: bool) -> dict[str, Any]:
        return dict(dynamic_img_size=True) if dense else {}  # resize the position table

    @staticmethod
    def release_key(key: str) -> str:
        return re.sub(r"^blocks\.(\d+)\.mlp\.fc", r"blocks.\1.fc", key)

    @classmethod
    def to_release(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """timm's fused qkv (3C, ...) -> the release's q_proj / k_proj / v_proj."""
        out = {}
        for key, value in state.items():
            match = _QKV.match(key)
            if match is None:
                out[key] = value
                continue
            for part, chunk in zip("qkv", value.chunk(3, dim=0)):
                out[f"{match[1]}{part}_proj.{match[2]}"] = chunk.clone()
        return out

    @classmethod
    def from_release(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The releases' q_proj / k_proj / v_proj (or SNELL's q / k / v) and block-level fc1 /
        fc2 -> timm's naming (timm's own and MAE's checkpoints pass unchanged)."""
        parts: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
        out = {}
        for key, value in state.items():
            match = _QKV_SPLIT.match(key)
            if match is None:
                out[re.sub(r"^blocks\.(\d+)\.fc([12])\.", r"blocks.\1.mlp.fc\2.", key)] = value
            else:
                parts.setdefault((match[1], match[3], match[4]), {})[match[2]] = value
        for (prefix, proj, kind), qkv in parts.items():
            if sorted(qkv) != ["k", "q", "v"]:
                missing = [f"{prefix}{p}{proj}.{kind}" for p in "qkv" if p not in qkv]
                raise CheckpointError(f"checkpoint has only part of a ViT attention projection: "
                                      f"missing {missing}")
            out[f"{prefix}qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
        return out

    def __init__(self, model, name, dense=True):
        super().__init__(model, name, dense)
        for info in self.blocks:
            info.module.peft_num_prefix = model.num_prefix_tokens

    def _describe_stages(self) -> list[StageInfo]:
        patch = self.model.patch_embed.patch_size[0]
        return [StageInfo(0, self.model.embed_dim, len(self.model.blocks), patch)]

    def _iter_blocks(self) -> Iterator[BlockInfo]:
        for j, block in enumerate(self.model.blocks):
            yield BlockInfo(0, j, self.model.embed_dim, block)

    def _forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens:]
        side = math.isqrt(tokens.shape[1])
        return [tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)]

    def forward_blocks(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        """The patch tokens (B, C, H, W) after each of the blocks ``indices``, as mmseg's
        VisionTransformer gives them to SETR's heads (its ``out_indices``, no final norm);
        the last block's output also goes through what a method attached at the stage output."""
        last = len(self.model.blocks) - 1
        if not indices or any(not 0 <= i <= last for i in indices):
            raise ValueError(f"{self.name}: block indices must be in 0..{last}, "
                             f"got {list(indices)}")
        feats = self.model.forward_intermediates(x, indices=list(indices), norm=False,
                                                 output_fmt="NCHW", intermediates_only=True)
        return [self._stage_out(0, f) if i == last else f for i, f in zip(indices, feats)]
