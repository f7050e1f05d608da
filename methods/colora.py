"""CoLoRA (Ran et al., NeurIPS 2025): correlated low-rank adaptation for ConvNets.

Following the authors' release (github.com/VISION-SJTU/CoLoRA,
``object_detection/backbone/convnext_colora.py``: ``Block.compute_delta_w``, ``LoRA``,
``BilateralModule``, ``ConvNeXtCoLoRA.freeze_backbone``; ``configs/convnext/convnext_peft.py``):

- each ConvNeXt block's pointwise linears W1 (4C x C) and W2 (C x 4C) get correlated updates.
  A shared pair A_s (r_s x C), B_s (C x r_s) enters both through the other layer's weight, and
  each layer has its own pair (A_i, B_i) of rank r_i:
  ``dW1 = (W2^T B_s) A_s / s_1 + B_1 A_1 / t_1`` and ``dW2 = B_s (A_s W1^T) / s_2 + B_2 A_2 / t_2``,
  with the release's variance-matching scales ``s_1 = (r_s C)^(1/4) (std(W2^T B_s) + std(A_s))``,
  ``s_2 = (r_s C)^(1/4) (std(A_s W1^T) + std(B_s))`` and ``t = sqrt(r_i) (std(A) + std(B))``.
  Here r = C // 16 and r_s = floor(r / 2), r_i = r - r_s;
- a low-rank branch beside the depthwise conv, on its input: a 1x1 conv C -> r, then a
  parameter-free edge-preserving filter of its output, then a 3x3 conv r -> C in r groups,
  added to the depthwise conv's output. The filter is a bilateral filter with a Gaussian
  spatial kernel (window 11, sigma 1) and a cosine range kernel, in its four-convolution
  form, so the output is ``y + 0.2 * filtered(y)``;
- the B factors and the branch's output conv start at zero, so the model is unchanged at
  initialisation. The A factors start kaiming-uniform (a = sqrt 5);
- besides the adapters, every bias and every norm of the backbone trains. The release freezes
  every parameter not named lora, bias or norm, so its layer scales stay frozen.

Our choices:
- W1 and W2 in the correlated terms are the frozen pretrained weights. The release reads the
  previous forward's effective weights (detached), so its output depends on how many
  forwards came before; the two agree at initialisation and differ by second-order terms.
- The width knob is ``rank_ratio``: each block's pointwise rank is floor(ratio * C). The
  release's C // 16 is ratio 1/16. The depthwise branch keeps the release's C // 16, as its
  grouped conv needs a rank that divides C. With a single reduction, no setting lands on the
  paper's counts (ConvNeXt-B 6.4 M, -L 9.4 M): those need integer reductions of 12 and 18,
  which the grouped conv refuses. Finer pointwise ranks let the budget solver land on both.
- The filter runs in the input's precision (the release casts it to fp16 under CUDA autocast).
  On a map smaller than its window (micro backbones), the window shrinks to fit the map,
  because reflect padding needs a pad below the size.
- The periodic merge and restart (the release's ``MergeWeightHook``) is not used: the released
  training script leaves it commented out.

Not mergeable: the branch beside the depthwise conv is a dense 3x3 conv across channels,
after a nonlinear filter, which no depthwise conv can absorb. ConvNeXt only.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from .base import MethodConfig, NotMergeableError, PEFTMethod, width_field
from .hosts import BackboneHost, LayerDelta, Site
from .registry import register_method

CONV_REDUCTION = 16  # the depthwise branch's rank: C // 16 (the release's lora_reduction)
FILTER_WINDOW, FILTER_SIGMA, FILTER_SCALE = 11, 1.0, 0.2  # the release's Block settings


@dataclasses.dataclass
class CoLoRAConfig(MethodConfig):
    rank_ratio: float = width_field(1 / 16, "pointwise rank per channel: each block's "
                                    "correlated updates have rank floor(ratio * C)",
                                    budget=(0.005, 0.5, 0.0005))
    share_ratio: float = 0.5  # of each block's rank in the shared pair (the release's)
    filter: bool = True  # the edge-preserving filter in the depthwise branch

    def validate(self) -> None:
        if not 0 < self.rank_ratio <= 1:
            raise ValueError(f"colora: rank_ratio must be in (0, 1], got {self.rank_ratio!r}")
        if not 0 <= self.share_ratio <= 1:
            raise ValueError(f"colora: share_ratio must be in [0, 1], got {self.share_ratio!r}")


def rank_of(channels: int, ratio: float) -> int:
    """floor(ratio * C), at least 1 (the small epsilon keeps 1/12 * 96 at 8, not 7.999...)."""
    return max(1, math.floor(channels * ratio + 1e-9))


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    """The filter's normalised 2D Gaussian, centred on the window's middle (size, size)."""
    grid = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    line = torch.exp(-grid ** 2 / (2 * sigma ** 2))
    window = line[:, None] * line[None, :]
    return window / window.sum()


class EdgePreservingFilter(nn.Module):
    """``x + scale * bilateral(x)`` per channel (no parameters): Gaussian spatial weights and the
    range kernel cos(g (x - y)), split by cos(a - b) = cos a cos b + sin a sin b into four
    depthwise convolutions. g = pi / (2 T), with T the channel's range over the map, keeps
    every phase in [0, pi / 2]. The phase maps are detached, as in the release."""

    def __init__(self, window: int = FILTER_WINDOW, sigma: float = FILTER_SIGMA,
                 scale: float = FILTER_SCALE):
        super().__init__()
        self.scale = scale
        self.register_buffer("window", gaussian_window(window, sigma), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        size = self.window.shape[-1]
        pad = min(size // 2, h - 1, w - 1)
        cut = size // 2 - pad
        window = self.window[cut:size - cut, cut:size - cut]
        kernel = (window / window.sum()).to(x.dtype).expand(c, 1, -1, -1)
        extent = (x.amax(dim=(-2, -1), keepdim=True) - x.amin(dim=(-2, -1), keepdim=True))
        phase = (math.pi / (2 * extent.clamp(min=1e-5)) * x).detach()
        cos, sin = phase.cos().clamp(min=0), phase.sin().clamp(min=0)

        def padded(t: torch.Tensor) -> torch.Tensor:
            return F.pad(t, (pad, pad, pad, pad), mode="reflect") if pad else t

        def smooth(t: torch.Tensor) -> torch.Tensor:
            return F.conv2d(t, kernel, groups=c)

        x_pad, cos_pad, sin_pad = padded(x), padded(cos), padded(sin)
        num = cos * smooth(cos_pad * x_pad) + sin * smooth(sin_pad * x_pad)
        den = cos * smooth(cos_pad) + sin * smooth(sin_pad)
        return x + self.scale * num / (den + 1e-5)


class DepthwiseBranch(nn.Module):
    """Beside the depthwise conv: 1x1 conv C -> r, the filter, 3x3 conv r -> C in r groups."""

    def __init__(self, channels: int, rank: int, use_filter: bool):
        super().__init__()
        if channels % rank:
            raise ValueError(f"colora: the depthwise branch's rank {rank} must divide the "
                             f"block's {channels} channels (its 3x3 conv has {rank} groups)")
        self.lora_A = nn.Conv2d(channels, rank, 1, bias=False)
        self.lora_B = nn.Conv2d(rank, channels, 3, padding=1, groups=rank, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.filter = EdgePreservingFilter() if use_filter else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lora_A(x)
        return self.lora_B(self.filter(y) if self.filter is not None else y)


def _factor(rows: int, cols: int, zero: bool) -> nn.Parameter:
    p = nn.Parameter(torch.empty(rows, cols))
    nn.init.zeros_(p) if zero else nn.init.kaiming_uniform_(p, a=math.sqrt(5))
    return p


class CorrelatedPair(nn.Module):
    """One block's shared and independent factors for fc1 (W1) and fc2 (W2); ``delta(0)`` is
    dW1 and ``delta(1)`` dW2 (module docstring). The layers are referenced, not registered."""

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear, rank: int, share_ratio: float):
        super().__init__()
        object.__setattr__(self, "layers", (fc1, fc2))
        c, hidden = fc1.in_features, fc1.out_features
        self.shared_rank = int(rank * share_ratio)
        self.own_rank = rank - self.shared_rank
        if self.shared_rank:
            self.lora_pw_share_A = _factor(self.shared_rank, c, zero=False)
            self.lora_pw_share_B = _factor(c, self.shared_rank, zero=True)
        if self.own_rank:
            self.lora_pw_A1 = _factor(self.own_rank, c, zero=False)
            self.lora_pw_B1 = _factor(hidden, self.own_rank, zero=True)
            self.lora_pw_A2 = _factor(self.own_rank, hidden, zero=False)
            self.lora_pw_B2 = _factor(c, self.own_rank, zero=True)

    def delta(self, which: int) -> torch.Tensor:
        fc1, fc2 = self.layers
        terms = []
        if self.shared_rank:
            a, b = self.lora_pw_share_A, self.lora_pw_share_B
            factor = (self.shared_rank * fc1.in_features) ** 0.25
            if which == 0:
                through = fc2.weight.t() @ b  # (4C, r_s)
                terms.append(through @ (a / (factor * (through.std() + a.std()))))
            else:
                through = a @ fc1.weight.t()  # (r_s, 4C)
                terms.append((b / (factor * (through.std() + b.std()))) @ through)
        if self.own_rank:  # rank >= 1, so at least one term
            a, b = ((self.lora_pw_A1, self.lora_pw_B1) if which == 0
                    else (self.lora_pw_A2, self.lora_pw_B2))
            terms.append((b @ a) / (math.sqrt(self.own_rank) * (a.std() + b.std())))
        return sum(terms[1:], terms[0])


class PointwiseDelta(LayerDelta):
    """fc1's or fc2's branch: the layer with its correlated update (the pair is owned by the
    host's shared state, so both branches read one set of factors)."""

    def __init__(self, layer: nn.Linear, pair: CorrelatedPair, which: int):
        super().__init__(layer)
        object.__setattr__(self, "pair", pair)
        self.which = which

    def delta_weight(self) -> torch.Tensor:
        return self.pair.delta(self.which)


def _tuned(key: str) -> bool:
    """The release's freezing rule on a backbone key in its naming: biases and norms train."""
    return "bias" in key or "norm" in key


@register_method
class CoLoRA(PEFTMethod):
    name = "colora"
    paper_name = "CoLoRA"
    description = ("CoLoRA: correlated low-rank updates of each ConvNeXt block's pointwise "
                   "pair, a filtered low-rank branch beside its depthwise conv, biases and norms")
    config_class = CoLoRAConfig
    requires = (Site.DWCONV, Site.FC1, Site.FC2)

    def attach(self, host: BackboneHost) -> None:
        cfg = self.config
        pairs = nn.ModuleList()
        for block in host.blocks:
            fc1, fc2 = host.linear(block, Site.FC1), host.linear(block, Site.FC2)
            pair = CorrelatedPair(fc1, fc2, rank_of(block.dim, cfg.rank_ratio), cfg.share_ratio)
            pairs.append(pair)
            host.add(Site.FC1, PointwiseDelta(fc1, pair, 0), block=block)
            host.add(Site.FC2, PointwiseDelta(fc2, pair, 1), block=block)
            host.add(Site.DWCONV, DepthwiseBranch(block.dim, max(1, block.dim // CONV_REDUCTION),
                                                  cfg.filter), block=block)
        host.add_shared("colora", pairs)

    def trainable(self, host: BackboneHost) -> Iterable[nn.Parameter]:
        """The adapters, and every backbone parameter the release's rule keeps (biases, norms)."""
        added = host.added_parameters()
        ids = {id(p) for p in added}
        return added + [p for name, p in host.model.named_parameters()
                        if id(p) not in ids and _tuned(host.release_key(name))]

    def merge(self, host: BackboneHost) -> None:
        raise NotMergeableError(
            "colora has no merged form: its branch beside the depthwise conv is a dense 3x3 "
            "conv across channels after a nonlinear filter, which the depthwise conv cannot "
            "absorb (its pointwise updates alone would fold)")
