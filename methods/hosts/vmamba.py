"""The VMamba family (Liu et al., 2024): VSS blocks whose token mixer is SS2D, a selective
scan over the map in four directions, then an MLP; two residual sums per block, four stages.

The network follows the authors' release (MzeroMiko/VMamba, ``classification/models/vmamba.py``)
in the configuration its ADE20K UperNet configs use (``segmentation/configs/vssm1``, e.g.
``upernet_vssm_4xb4-160k_ade20k-512x512_base.py``: ``forward_type="v05_noz"``, d_state 1,
ssm_ratio 2, 3 x 3 depthwise conv without bias, dt rank ceil(C / 16), MLP ratio 4, the
two-conv patch embedding "v2" and the 3 x 3 stride-2 downsampling "v3"), and keeps the
release's parameter names, so its ImageNet-1K checkpoints (under ``model``) load as they are.
It runs channels-last; the release's ``ln2d`` models run channels-first with 1 x 1 convs
holding the same linear weights, the same function.

Everything is plain PyTorch: the selective scan is a parallel (log-depth) form of the
recurrence (``selective_scan``), equal to the sequential scan it replaces; no compiled kernel
is needed. The timm architecture is registered here (``vmamba_base``), so the catalog names
VMamba backbones like any other.
"""
from __future__ import annotations

import contextlib
import math
import re
from collections import OrderedDict
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import register_model

from .base import BackboneHost, BlockInfo, Role, Site, SiteMixin, StageInfo, register_family

K_DIRECTIONS = 4  # row-major, column-major, and both reversed


# -- the selective scan ----------------------------------------------------------------------
def linear_scan(decay: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """h_t = decay_t * h_{t-1} + x_t along the last dim, from h_{-1} = 0 (0 <= decay <= 1).

    A work-efficient parallel scan: each pair of steps composes into one step (its decay the
    product, so nothing overflows), the half-length recurrence gives the state after every
    pair, and one step more gives the state inside it; log2(L) levels of elementwise work.
    """
    length = x.shape[-1]
    if length == 1:
        return x
    if length % 2:  # a last step that keeps the state and adds nothing, cut off below
        decay, x = F.pad(decay, (0, 1), value=1.0), F.pad(x, (0, 1))
    d0, d1, x0, x1 = decay[..., 0::2], decay[..., 1::2], x[..., 0::2], x[..., 1::2]
    odd = linear_scan(d1 * d0, d1 * x0 + x1)  # h_1, h_3, ...
    even = d0 * F.pad(odd[..., :-1], (1, 0)) + x0  # h_0, h_2, ...
    return torch.stack([even, odd], dim=-1).flatten(-2)[..., :length]


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: torch.Tensor, delta_bias: torch.Tensor) -> torch.Tensor:
    """Mamba's selective scan with grouped B, C (the release's ``selective_scan_fn``, softplus
    on): u, delta (b, K*d, L); A (K*d, N); B, C (b, K, N, L); D, delta_bias (K*d).

    dt = softplus(delta + delta_bias); h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t;
    y_t = C_t . h_t + D u_t. In float32, as the release's kernels compute it.
    """
    b, kd, length = u.shape
    k, n = B.shape[1], B.shape[2]
    u, delta, A, B, C = u.float(), delta.float(), A.float(), B.float(), C.float()
    dt = F.softplus(delta + delta_bias.float()[:, None])
    grouped = (b, k, kd // k, 1, length)  # each direction's B, C serve its d channels
    dt_g, u_g = dt.view(grouped), u.view(grouped)
    decay = torch.exp(dt_g * A.view(1, k, kd // k, n, 1))
    h = linear_scan(decay, (dt_g * u_g) * B.unsqueeze(2))  # (b, k, d, N, L)
    return (h * C.unsqueeze(2)).sum(3).view(b, kd, length) + D.float()[:, None] * u


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(b, d, H, W) -> (b, 4, d, H*W): row-major, column-major, and both reversed."""
    y = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)
    return torch.cat([y, y.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(b, 4, d, H*W) in cross_scan's orders -> their sum (b, d, H*W) in row-major order."""
    y = y[:, :2] + y[:, 2:].flip(-1)
    return y[:, 0] + y[:, 1].unflatten(-1, (hw[1], hw[0])).transpose(2, 3).flatten(2)


# -- the network (the release's module names) ------------------------------------------------
class Permute(nn.Module):
    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class SS2D(nn.Module):
    """The release's SS2D, ``v05_noz``: in_proj (no gate) -> depthwise conv -> SiLU -> the
    four-direction selective scan -> out_norm -> out_proj. Channels-last in and out."""

    def __init__(self, dim: int, d_state: int = 1, ssm_ratio: float = 2.0):
        super().__init__()
        inner = int(ssm_ratio * dim)
        self.d_state, self.dt_rank = d_state, math.ceil(dim / 16)
        self.in_proj = nn.Linear(dim, inner, bias=False)
        self.act = nn.SiLU()
        self.conv2d = nn.Conv2d(inner, inner, 3, padding=1, groups=inner, bias=False)
        k, r = K_DIRECTIONS, self.dt_rank
        # One projection per direction to (dt, B, C), stacked; nn.Linear's default init.
        bound = inner ** -0.5
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * d_state, inner).uniform_(-bound, bound))
        # Mamba's dt init: weights U(+-rank^-0.5); softplus(bias) log-uniform in [1e-3, 0.1].
        self.dt_projs_weight = nn.Parameter(torch.empty(k, inner, r).uniform_(-r ** -0.5, r ** -0.5))
        dt = torch.exp(torch.rand(k, inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        dt = dt.clamp(min=1e-4)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        # S4D-real A = -(1..N) per channel (stored as log), D = 1.
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(k * inner, 1)
        self.A_logs = nn.Parameter(a.log())
        self.Ds = nn.Parameter(torch.ones(k * inner))
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        x = self.act(self.conv2d(self.in_proj(x).permute(0, 3, 1, 2)))
        k, d, n, r, length = K_DIRECTIONS, x.shape[1], self.d_state, self.dt_rank, h * w
        xs = cross_scan(x)  # (b, k, d, L)
        x_dbl = F.conv1d(xs.reshape(b, k * d, length), self.x_proj_weight.reshape(-1, d, 1), groups=k)
        dts, Bs, Cs = x_dbl.view(b, k, r + 2 * n, length).split([r, n, n], dim=2)
        dts = F.conv1d(dts.reshape(b, k * r, length), self.dt_projs_weight.reshape(k * d, r, 1),
                       groups=k)
        ys = selective_scan(xs.reshape(b, k * d, length), dts, -self.A_logs.float().exp(),
                            Bs, Cs, self.Ds, self.dt_projs_bias.reshape(-1))
        y = cross_merge(ys.view(b, k, d, length), (h, w)).transpose(1, 2).reshape(b, h, w, d)
        return self.out_proj(self.out_norm(y).to(x.dtype))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VSSBlock(nn.Module):
    """x = x + drop_path(op(norm(x))); x = x + drop_path(mlp(norm2(x))), channels-last."""

    def __init__(self, dim: int, drop_path: float = 0.0, mlp_ratio: float = 4.0, **ssm):
        super().__init__()
        self.dim = dim
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, **ssm)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VSSM(nn.Module):
    """The release's VSSM: patch embedding (two 3 x 3 stride-2 convs), stages of VSS blocks
    each followed by a 3 x 3 stride-2 conv downsampling (not after the last), classifier."""

    def __init__(self, dims: int = 128, depths: tuple[int, ...] = (2, 2, 15, 2),
                 num_classes: int = 1000, drop_path_rate: float = 0.0, in_chans: int = 3,
                 mlp_ratio: float = 4.0, d_state: int = 1, ssm_ratio: float = 2.0):
        super().__init__()
        self.dims = [dims * 2 ** i for i in range(len(depths))]
        self.num_features, self.num_classes = self.dims[-1], num_classes
        half = self.dims[0] // 2
        self.patch_embed = nn.Sequential(
            nn.Conv2d(in_chans, half, 3, stride=2, padding=1), Permute(0, 2, 3, 1),
            nn.LayerNorm(half), Permute(0, 3, 1, 2), nn.GELU(),
            nn.Conv2d(half, self.dims[0], 3, stride=2, padding=1), Permute(0, 2, 3, 1),
            nn.LayerNorm(self.dims[0]))
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            dim, first = self.dims[i], sum(depths[:i])
            blocks = nn.Sequential(*[VSSBlock(dim, rates[first + j], mlp_ratio, d_state=d_state,
                                              ssm_ratio=ssm_ratio) for j in range(depth)])
            downsample = nn.Identity() if i == len(depths) - 1 else nn.Sequential(
                Permute(0, 3, 1, 2), nn.Conv2d(dim, self.dims[i + 1], 3, stride=2, padding=1),
                Permute(0, 2, 3, 1), nn.LayerNorm(self.dims[i + 1]))
            self.layers.append(nn.Sequential(OrderedDict(blocks=blocks, downsample=downsample)))
        self.classifier = nn.Sequential(OrderedDict(
            norm=nn.LayerNorm(self.num_features), permute=Permute(0, 3, 1, 2),
            avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1),
            head=nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """The release's: linears trunc-normal(0.02) with zero bias, LayerNorms (1, 0); convs
        and the SSM parameters keep their own init."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        c = self.classifier
        x = c.flatten(c.avgpool(c.permute(c.norm(x))))
        return x if pre_logits else c.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create(pretrained: bool, arch: dict, kwargs: dict) -> VSSM:
    if pretrained:
        raise ValueError("VMamba weights are not downloaded: load the release's checkpoint "
                         "with methods.checkpoints.load_official")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # timm's factory's
        kwargs.pop(key, None)
    device = kwargs.pop("device", None)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return VSSM(**{**arch, **kwargs})


@register_model
def vmamba_base(pretrained: bool = False, **kwargs) -> VSSM:
    """VMamba-B (the release's ``vssm_base_0229``: dims 128, depths 2-2-15-2; ADE20K's UperNet
    backbone in Table 8)."""
    return _create(pretrained, dict(dims=128, depths=(2, 2, 15, 2)), kwargs)


# -- the host --------------------------------------------------------------------------------
class VSSSiteBlock(SiteMixin, VSSBlock):
    """VSSBlock.forward with site calls. Sites as Swin's, the SS2D playing attention:
    attn_in (after norm), attn_branch, attn_out (after the first residual sum), mlp_in,
    mlp_branch, mlp_parallel, block_out; in_proj / proj / fc1 / fc2 (its linears)."""

    plain_class = VSSBlock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        hw = (H, W)
        h = self.norm(x)
        if self._has(Site.ATTN_IN):
            h = self._site(Site.ATTN_IN, h.reshape(B, -1, C), hw).reshape(B, H, W, C)
        h = self.drop_path(self.op(h)).reshape(B, -1, C)
        x = x.reshape(B, -1, C) + self._site(Site.ATTN_BRANCH, h, hw)
        x = self._site(Site.ATTN_OUT, x, hw)
        h = self._site(Site.MLP_BRANCH, self.drop_path(self.mlp(self._site(Site.MLP_IN, self.norm2(x), hw))), hw)
        parallel = self._parallel(x, hw)
        x = x + h
        if parallel is not None:
            x = x + parallel
        return self._site(Site.BLOCK_OUT, x, hw).reshape(B, H, W, C)


# Checkpoints of the release's earlier code: its own _load_from_state_dict renames these.
_OLD_NAMES = [(r"^patch_embed\.proj\.", "patch_embed.0."), (r"^patch_embed\.norm\.", "patch_embed.2."),
              (r"\.ln_1\.", ".norm."), (r"\.self_attention\.", ".op."),
              (r"^norm\.", "classifier.norm."), (r"^head\.", "classifier.head.")]


@register_family
class VMambaHost(BackboneHost):
    family = "vmamba"
    display_name = "VMamba"
    norm_eps = 1e-5
    dense_out_norms = True
    classifier_prefixes = ("classifier.",)
    sites = frozenset({
        Site.ATTN_IN, Site.ATTN_BRANCH, Site.ATTN_OUT, Site.MLP_IN, Site.MLP_BRANCH,
        Site.MLP_PARALLEL, Site.BLOCK_OUT, Site.IN_PROJ, Site.PROJ, Site.FC1, Site.FC2,
        Site.STAGE_OUT,
    })
    roles = {Role.SERIAL: (Site.ATTN_OUT, Site.BLOCK_OUT),
             Role.BRANCH: (Site.ATTN_BRANCH, Site.MLP_BRANCH)}
    linear_paths = {Site.IN_PROJ: "op.in_proj", Site.PROJ: "op.out_proj", Site.FC1: "mlp.fc1",
                    Site.FC2: "mlp.fc2"}
    block_class = VSSSiteBlock

    @staticmethod
    def checkpoint_filter(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """The release's names are ours; its dense backbone (``Backbone_VSSM``) calls the
        stage-output norms ``outnorm{i}``, and its older checkpoints used older names."""
        out = {}
        for key, value in state.items():
            for old, new in _OLD_NAMES:
                key = re.sub(old, new, key)
            out[re.sub(r"^outnorm(\d+)\.", r"out_norms.\1.", key)] = value
        return out

    @staticmethod
    def release_key(key: str) -> str:
        return re.sub(r"^out_norms\.(\d+)\.", r"outnorm\1.", key)

    def _describe_stages(self) -> list[StageInfo]:
        return [StageInfo(i, dim, len(layer.blocks), 4 * 2 ** i)
                for i, (dim, layer) in enumerate(zip(self.model.dims, self.model.layers))]

    def _iter_blocks(self) -> Iterator[BlockInfo]:
        for i, layer in enumerate(self.model.layers):
            for j, block in enumerate(layer.blocks):
                yield BlockInfo(i, j, block.dim, block)

    def _drop_classifier_norm(self) -> None:
        self.model.classifier = nn.Identity()  # as Backbone_VSSM: no classifier at all

    def _forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.model.patch_embed(x)
        outs = []
        for layer in self.model.layers:
            x = layer.blocks(x)
            outs.append(x.permute(0, 3, 1, 2))
            x = layer.downsample(x)
        return outs
