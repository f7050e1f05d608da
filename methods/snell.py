"""SNELL (Shen et al., NeurIPS 2024): sparse tuning of a kernelised low-rank update.

Following the authors' release (github.com/ssfgunner/SNELL, ``model/swin_timm.py``:
``KLoRA``, ``SNELL``, ``TuningModule``, ``WindowAttention``, ``Mlp``; the same in
``convnext_timm.py`` and ``vision_transformer_timm.py``):

- an adapted linear ``y = W x`` gains ``x @ S(K)``, where the update K (in x out) is a sum over
  two kernel heads of fixed signs, ``K = 0.1 * (cdist(A_0, B_0) - cdist(A_1, B_1))``
  (Euclidean distances between the rows of A_h, in x q/2, and of B_h, out x q/2): a
  distance kernel in place of LoRA's inner product, so K is not limited to rank q;
- S keeps the entries of |K| above its ``sparsity`` quantile and scales each kept entry by its
  own detached magnitude, ``S(K) = K * |K|.detach() * [|K| > t]`` (as released; sparsity 0
  is the plain kernel, the release's ``KLoRA``);
- each update reads its input through dropout 0.1 (one draw shared by q, k and v) and its
  output goes through a drop path of 0.1;
- A and B start kaiming-uniform (a = sqrt 5) over each (heads, rows, q/2) tensor, so the model
  is not unchanged at initialisation: K starts as a difference of two random distance maps.
- Swin and ViT adapt q, k, v, proj, fc1 and fc2; ConvNeXt its two pointwise linears.

Mergeable: at inference dropout and drop path are off and S(K) is a fixed matrix, so it folds
into W. Parameters: q (in + out) per adapted linear. Checkpoints load and export in the
release's naming (``SNELL.official_keys``).

The paper's counts (Tables 1-4) fix the placement: Swin-B 5.8 M / Swin-L 8.7 M are
16 C q per block at q = 30, i.e. q, k, v, fc1 and fc2 (the released six linears are 18 C q,
and no even q brings both within 0.1 M); ConvNeXt-B 6.4 M / -L 9.5 M are fc1 alone at q = 70
(5 C per q, as the paper's ConvNeXt LoRA); ViT-B's 3.7 M (Table 4) is the released six at
q = 22. VMamba-B's 5.0 M (Table 8; no release covers VMamba) is 16 C q at Swin's q = 30 on
its four block linears (SS2D's in_proj and out_proj, fc1, fc2): 5.04 M. ``paper_config`` places
it so.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from timm.layers import DropPath
from torch import nn
from torch.nn import functional as F

from .base import MethodConfig, PEFTMethod, width_field
from .hosts import LINEAR_TARGETS, BackboneHost, Site, check_targets
from .registry import register_method

HEAD_SIGNS = (1.0, -1.0)  # the release's two kernel heads, coefficients 0.1 * (-1)^h
KERNEL_SCALE = 0.1
# The paper's placement per family (module docstring); others keep the release's.
PAPER_TARGETS = {"swin": ("q", "k", "v", "fc1", "fc2"), "convnext": ("fc1",),
                 "vmamba": ("in_proj", "proj", "fc1", "fc2")}


@dataclasses.dataclass
class SNELLConfig(MethodConfig):
    rank: int = width_field(32, "q: factor width of each kernel update (q / 2 per kernel head)",
                            budget=(2, 1024, 2))
    sparsity: float = 0.9  # share of each update's entries zeroed (the release's init_thres)
    targets: tuple[str, ...] | None = None  # hosts.LINEAR_TARGETS names; None: q, k, v, proj,
    # fc1, fc2; ConvNeXt fc1, fc2
    dropout: float = 0.1  # on each update's input
    drop_path: float = 0.1  # on each update's output

    def validate(self) -> None:
        if not (isinstance(self.rank, int) and self.rank >= 2 and self.rank % 2 == 0):
            raise ValueError(f"snell: rank must be an even integer >= 2 (q / 2 per kernel "
                             f"head), got {self.rank!r}")
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"snell: sparsity must be in [0, 1), got {self.sparsity!r}")
        for name in ("dropout", "drop_path"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"snell: {name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.targets is not None:
            self.targets = check_targets("snell", self.targets)


def head_coefficients(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The kernel heads' fixed coefficients (heads, 1, 1), as the release's
    ``shared_coeff_fc``: 0.1 * (+1, -1)."""
    return KERNEL_SCALE * torch.tensor(HEAD_SIGNS, dtype=dtype).view(-1, 1, 1)


def kernel_update(in_factors: torch.Tensor, out_factors: torch.Tensor, sparsity: float,
                  coefficients: torch.Tensor) -> torch.Tensor:
    """S(K) (in x out) from the factors (heads, in, q/2) and (heads, out, q/2) and the heads'
    coefficients (heads, 1, 1)."""
    kernel = (coefficients * torch.cdist(in_factors, out_factors, p=2)).sum(dim=0)
    if sparsity == 0:
        return kernel
    magnitude = kernel.detach().abs()
    threshold = quantile(magnitude.flatten().float(), sparsity).to(magnitude.dtype)
    return kernel * F.threshold(magnitude, float(threshold), 0.0)


def quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(values, q)`` of a 1-D tensor, bit for bit (the same float32 rank and
    lerp), from a partial top-k instead of a full sort: 12x faster on a 64 x 256 update, where
    the sort was a fifth of a SNELL cell's time."""
    n = values.numel()
    rank = torch.tensor(q, dtype=values.dtype) * (n - 1)
    below, above = int(rank), int(torch.ceil(rank))
    top = values.topk(n - below).values  # descending: top[-1] is order statistic `below`
    return torch.lerp(top[-1], top[n - 1 - above], rank - below)


class KernelUpdate(nn.Module):
    """One sparse kernel update of ``out_features`` outputs (one of q, k, v, or a whole linear)."""

    def __init__(self, in_features: int, out_features: int, rank: int, sparsity: float,
                 drop_path: float):
        super().__init__()
        self.sparsity = sparsity
        self.in_factors = nn.Parameter(torch.empty(len(HEAD_SIGNS), in_features, rank // 2))
        self.out_factors = nn.Parameter(torch.empty(len(HEAD_SIGNS), out_features, rank // 2))
        for p in (self.in_factors, self.out_factors):
            if not p.is_meta:  # (meta: counting, nothing to initialise)
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        # fixed, but saved: the release's checkpoints carry them (a frozen parameter there)
        self.register_buffer("coefficients", head_coefficients())
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()

    def weight(self) -> torch.Tensor:
        """S(K) as a linear weight (out, in)."""
        return kernel_update(self.in_factors, self.out_factors, self.sparsity,
                             self.coefficients).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(F.linear(x, self.weight()))


class SNELLBranch(nn.Module):
    """The updates of one linear: one dropout draw of its input, then each part's update
    written into its rows of the linear's output (q, k, v: thirds of a fused qkv)."""

    def __init__(self, in_features: int, total_out: int, parts: list[tuple[int, int]],
                 cfg: SNELLConfig):
        super().__init__()
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout else nn.Identity()
        self.starts = [start for start, _ in parts]
        self.total_out = total_out
        self.updates = nn.ModuleList(
            KernelUpdate(in_features, out, cfg.rank, cfg.sparsity, cfg.drop_path)
            for _, out in parts)

    def _place(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """Concatenate the parts' outputs along the last dim into their rows, zeros elsewhere."""
        out, at = [], 0
        for start, piece in zip(self.starts, pieces):
            if start > at:
                out.append(piece.new_zeros(*piece.shape[:-1], start - at))
            out.append(piece)
            at = start + piece.shape[-1]
        if at < self.total_out:
            out.append(pieces[0].new_zeros(*pieces[0].shape[:-1], self.total_out - at))
        return torch.cat(out, dim=-1) if len(out) > 1 else out[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        return self._place([update(x) for update in self.updates])

    def delta_weight(self) -> torch.Tensor:
        return self._place([update.weight().T for update in self.updates]).T


@register_method
class SNELL(PEFTMethod):
    name = "snell"
    paper_name = "SNELL"
    description = ("SNELL: sparse tuning of a kernelised low-rank update on the attention and "
                   "MLP linears")
    config_class = SNELLConfig

    @classmethod
    def paper_config(cls, backbone, task) -> SNELLConfig:
        cfg = SNELLConfig()
        cfg.targets = PAPER_TARGETS.get(backbone.family)
        return cfg

    def targets(self, host: BackboneHost) -> tuple[str, ...]:
        """The linears it adapts (LINEAR_TARGETS names): the config's, else the release's."""
        if self.config.targets is not None:
            return self.config.targets
        if host.has(Site.QKV):
            return ("q", "k", "v", "proj", "fc1", "fc2")
        return ("fc1", "fc2")

    def attach(self, host: BackboneHost) -> None:
        for block in host.blocks:
            for site, (linear, rows) in host.target_rows(block, self.targets(host),
                                                         self.name).items():
                host.add(site, SNELLBranch(linear.in_features, linear.out_features, rows,
                                           self.config), block=block)

    def official_keys(self, host: BackboneHost) -> dict[str, str]:
        """Our keys -> the release's: each update is a ``TuningModule`` named
        ``additional_<target>`` beside its linear (``attn.additional_q``,
        ``mlp.additional_fc1``; the release builds on timm, so the blocks keep timm's names),
        its factors ``learnable.In_Qs`` / ``Out_Qs`` (sparsity 0, the release's KLoRA:
        ``In_Qs_1`` / ``Out_Qs_1``) and the heads' coefficients ``learnable.shared_coeff_fc``."""
        suffix = "_1" if self.config.sparsity == 0 else ""
        names = {"in_factors": "In_Qs" + suffix, "out_factors": "Out_Qs" + suffix,
                 "coefficients": "shared_coeff_fc"}
        targets = self.targets(host)
        out = {}
        for block in host.blocks:
            for site in dict.fromkeys(LINEAR_TARGETS[t][0] for t in targets):
                path = host.linear_paths[site]
                parts = [t for t in LINEAR_TARGETS if t in targets and LINEAR_TARGETS[t][0] is site]
                theirs = f"{block.path}.{path.rpartition('.')[0]}.additional_"
                for index, branch in enumerate(host.linear(block, site).peft_branches):
                    if not isinstance(branch, SNELLBranch):  # (none once merged)
                        continue
                    ours = f"{block.path}.{path}.peft_branches.{index}.updates"
                    for j, target in enumerate(parts):
                        for name, release in names.items():
                            out[f"{ours}.{j}.{name}"] = f"{theirs}{target}.learnable.{release}"
        return out

    def merge(self, host: BackboneHost) -> None:
        host.fold_branches()
