"""SPT-LoRA (He et al., ICCV 2023): sensitivity-aware tuning, LoRA where a matrix is sensitive.

Following the authors' release (github.com/ziplab/SPT: ``engine.py``, ``get_sensitivity``;
``train_spt.py``; ``model/vision_transformer_timm.py``, ``StructuredTuningModule``,
``LinearSPTSparseGrad``; ``configs/vtab_*_spt_lora*.sh``):

- before training, each backbone weight's sensitivity is its squared gradient of the task's
  training loss (head as initialised), summed over the first 16 training batches;
- the tau most sensitive weights over the whole backbone are selected (the patch embedding,
  position embedding and class token are not candidates); per weight matrix (q, k, v, proj,
  fc1, fc2: the thirds of a fused qkv count as the release's separate q, k, v) holding at
  least r (in + out) / alpha of them (r 8, alpha 10), a rank-r LoRA trains in its place
  (its A and B drawn trunc-normal std 0.02 like every timm linear, scaling 1, input dropout
  0.1 and drop path 0.1 on its output); elsewhere the selected entries train as a sparse
  update; a bias or norm vector holding at least 1 / beta (beta 5) of its entries trains in
  full; the class token trains;
- tau is swept for the trainable count closest to the budget (the release's 0.02 M grid is
  here a bisection over tau: the count only grows with tau).

Our choices: selected entries of a norm vector below the 1 / beta rule are dropped (the
release counts them but its sparse updates exist only on linears, so they never train); a
backbone weight other than those matrices (Swin's patch merging, ConvNeXt's depthwise and
downsampling convs) is a candidate for a sparse update only, as the release's ViT has none;
relative-position tables and layer scales are not candidates. The chosen structure depends on
the data, so its plan (which layer gets what, how many entries) is a buffer, ``plan``, from
which ``restore`` rebuilds it to load a saved state; counts before selection are the budget.
Mergeable: both updates fold into the weights. The budget is the width knob: ViT-B's 3.7 M
(Table 4), ViT-L's 14.6 M (Table 7, which counts SETR-PUP's 13.14 M of heads too).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Iterable, Mapping

import torch
from timm.layers import DropPath, trunc_normal_
from torch import nn

from .base import MethodConfig, PEFTMethod, SelectionBatch, width_field
from .hosts import LINEAR_TARGETS, BackboneHost, LayerDelta
from .lora import LoRABranch
from .registry import register_method

NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
FROZEN = ("patch_embed.", "stem.")  # the patch embedding (ConvNeXt's stem) is no candidate
# Table 4's 3.7 M on ViT-B is out of reach at the release's rank 8 (ViT-B's whole structure is
# 1.43 M): our choice is the smallest power of two that reaches it.
PAPER_RANK = {"vit-b": 32}
PLAN = "spt_lora"  # the plan's name among the host's shared state
LORA, SPARSE, VECTOR = 0, 1, 2  # plan row kinds: (kind, layer or vector index, a, b)


@dataclasses.dataclass
class SPTLoRAConfig(MethodConfig):
    budget: int = width_field(20000, "trainable parameters the selection is sized to "
                              "(the class token included)", budget=(1, 10 ** 9, 1))
    rank: int = 8
    alpha: float = 10.0  # a matrix holding >= r (in + out) / alpha selected weights gets LoRA
    beta: float = 5.0  # a vector holding >= len / beta selected entries trains in full
    batches: int = 16  # training batches the sensitivity is summed over

    def validate(self) -> None:
        for name in ("budget", "rank", "batches"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"spt-lora: {name} must be a positive integer, got {value!r}")
        for name in ("alpha", "beta"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"spt-lora: {name} must be at least 1, got {getattr(self, name)!r}")


class SPTLowRank(LoRABranch):
    """The release's structured module: B A x on rows [start, start + out) of a linear's output,
    A and B trunc-normal std 0.02, input dropout 0.1 and drop path 0.1 on the update."""

    def __init__(self, in_features: int, out_features: int, total_out: int, start: int, rank: int):
        super().__init__(in_features, out_features, total_out, start, rank, alpha=rank)
        trunc_normal_(self.lora_A, std=0.02)
        trunc_normal_(self.lora_B, std=0.02)
        self.dropout = nn.Dropout(0.1)
        self.drop_path = DropPath(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(super().forward(self.dropout(x)))


class SparseEntries(LayerDelta):
    """Trainable values at chosen flat positions of a layer's weight and of its bias; the
    positions are buffers the selection fills (zero values: the model is unchanged)."""

    def __init__(self, layer: nn.Module, weight_entries: int, bias_entries: int):
        super().__init__(layer)
        self.weight_values = nn.Parameter(torch.zeros(weight_entries))
        self.register_buffer("weight_index", torch.zeros(weight_entries, dtype=torch.long))
        self.bias_values = nn.Parameter(torch.zeros(bias_entries))
        self.register_buffer("bias_index", torch.zeros(bias_entries, dtype=torch.long))

    def delta_weight(self) -> torch.Tensor:
        flat = self.weight_values.new_zeros(self.weight_numel)
        return flat.scatter(0, self.weight_index, self.weight_values).view(self.shape)

    def delta_bias(self) -> torch.Tensor | None:
        if not self.bias_values.numel():
            return None
        return self.bias_values.new_zeros(self.shape[0]).scatter(0, self.bias_index,
                                                                 self.bias_values)


class Plan(nn.Module):
    """The selected structure, one row per module: (kind, index, a, b) with kind LORA (index a
    layer, rows [a, a + b)), SPARSE (a layer, a weight and b bias entries) or VECTOR (index a
    norm vector trained in full)."""

    def __init__(self, rows: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("rows", torch.zeros(0, 4, dtype=torch.long) if rows is None else rows)


@dataclasses.dataclass
class Unit:
    """A group of candidate weights the rules judge together: a matrix (or a qkv third), a
    bias (or its third), a norm vector, or another layer weight."""

    kind: str  # "matrix", "bias", "norm" or "weight"
    param: nn.Parameter
    layer: int  # index in the candidate layers (norm vectors: in the candidate vectors)
    first: int  # its first entry in the flattened parameter
    size: int
    start: int = 0  # matrices: first output row, rows, and the LoRA's cost
    rows: int = 0
    cost: int = 0


def candidate_layers(host: BackboneHost) -> list[tuple[str, nn.Module]]:
    """The backbone's Linear and Conv2d layers that selection may update, in module order."""
    skip = (*host.classifier_prefixes, *FROZEN)
    return [(name, m) for name, m in host.model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d)) and "peft_" not in name
            and not (name + ".").startswith(skip)]


def candidate_vectors(host: BackboneHost) -> list[nn.Parameter]:
    """The backbone's norm weights and biases, in module order."""
    skip = (*host.classifier_prefixes, *FROZEN)
    return [p for name, m in host.model.named_modules()
            if isinstance(m, NORMS) and "peft_" not in name and not (name + ".").startswith(skip)
            for p in m.parameters(recurse=False)]


def units(host: BackboneHost, rank: int) -> list[Unit]:
    """Every candidate group, in a fixed order (layers, then norm vectors)."""
    targets = tuple(t for t in LINEAR_TARGETS if host.has(LINEAR_TARGETS[t][0]))
    matrices: dict[int, list[tuple[int, int]]] = {}  # id(linear) -> its target row ranges
    for block in host.blocks:
        for linear, rows in host.target_rows(block, targets).values():
            matrices[id(linear)] = rows
    out = []
    for index, (_, layer) in enumerate(candidate_layers(host)):
        width = layer.weight[0].numel()
        for start, rows in matrices.get(id(layer), [(0, layer.weight.shape[0])]):
            if id(layer) in matrices:
                out.append(Unit("matrix", layer.weight, index, start * width, rows * width,
                                start, rows, rank * (width + rows)))
            else:
                out.append(Unit("weight", layer.weight, index, 0, layer.weight.numel()))
            if layer.bias is not None:
                out.append(Unit("bias", layer.bias, index, start, rows))
    out += [Unit("norm", p, index, 0, p.numel()) for index, p in enumerate(candidate_vectors(host))]
    return out


def reachable(host: BackboneHost, rank: int) -> int:
    """The count of selecting everything: every matrix a LoRA, every vector and other weight
    in full, the class token."""
    return sum(g.cost if g.kind == "matrix" else g.size for g in units(host, rank)) + (
        token_count(host))


def token_count(host: BackboneHost) -> int:
    """The class token's size (it trains in full), 0 without one."""
    token = getattr(host.model, "cls_token", None)
    return token.numel() if token is not None else 0


class Counts:
    """The trainable count of the top-tau selection for any tau, from the sorted sensitivities."""

    def __init__(self, groups: list[Unit], scores: list[torch.Tensor], cfg: SPTLoRAConfig,
                 fixed: int):
        flat = torch.cat(scores)
        self.unit = torch.cat([torch.full((s.numel(),), i, dtype=torch.long)
                               for i, s in enumerate(scores)])
        self.order = flat.sort(descending=True, stable=True).indices
        self.offsets = torch.tensor([0] + [s.numel() for s in scores]).cumsum(0)
        self.groups, self.cfg, self.fixed = groups, cfg, fixed
        kinds = [g.kind for g in groups]
        self.size = torch.tensor([g.size for g in groups], dtype=torch.float64)
        self.cost = torch.tensor([g.cost for g in groups], dtype=torch.float64)
        self.matrix = torch.tensor([k == "matrix" for k in kinds])
        self.vector = torch.tensor([k in ("bias", "norm") for k in kinds])
        self.norm = torch.tensor([k == "norm" for k in kinds])

    def per_unit(self, tau: int) -> torch.Tensor:
        return torch.bincount(self.unit[self.order[:tau]], minlength=len(self.groups)).double()

    def decide(self, tau: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(selected per unit, LoRA units, vectors in full) at ``tau``."""
        c = self.per_unit(tau)
        lora = self.matrix & (c >= self.cost / self.cfg.alpha)
        full = self.vector & (c >= self.size / self.cfg.beta)
        return c, lora, full

    def total(self, tau: int) -> int:
        c, lora, full = self.decide(tau)
        count = torch.where(lora, self.cost, torch.where(full, self.size, c))
        count = torch.where(self.norm & ~full, 0.0, count)
        return int(count.sum().item()) + self.fixed

    def closest(self, target: int) -> int:
        """The tau whose count is closest to ``target`` (the larger on a tie, as the release;
        all of them when even that falls short)."""
        lo, hi = 0, len(self.order)
        if self.total(hi) <= target:  # everything selected is as close as it gets
            return hi
        while lo < hi:  # the smallest tau reaching the target
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if self.total(mid) < target else (lo, mid)
        if lo and target - self.total(lo - 1) < self.total(lo) - target:
            return lo - 1
        return lo

    def entries(self, tau: int) -> list[torch.Tensor]:
        """Per unit, the positions in its parameter of its selected entries, ascending."""
        chosen = self.order[:tau].sort().values  # units are contiguous: grouped by unit
        per = torch.bincount(self.unit[chosen], minlength=len(self.groups)).tolist()
        return [part - self.offsets[i] + g.first
                for i, (part, g) in enumerate(zip(chosen.split(per), self.groups))]


@register_method
class SPTLoRA(PEFTMethod):
    name = "spt-lora"
    paper_name = "SPT-LoRA"
    description = ("SPT-LoRA: LoRA on the matrices most sensitive to the task, sparse updates "
                   "on the other sensitive weights")
    config_class = SPTLoRAConfig

    def attach(self, host: BackboneHost) -> None:
        host.add_shared(PLAN, Plan())

    @classmethod
    def paper_config(cls, backbone, task) -> SPTLoRAConfig:
        return SPTLoRAConfig(rank=PAPER_RANK.get(backbone.name, 8))

    def planned_count(self, host: BackboneHost) -> int | None:
        """The budget, or the most the selection can reach when it is beyond that."""
        return min(self.config.budget, reachable(host, self.config.rank))

    def trainable(self, host: BackboneHost) -> Iterable[nn.Parameter]:
        """The attached updates, the norm vectors the plan trains in full, the class token."""
        vectors = candidate_vectors(host)
        out = list(host.added_parameters())
        plan = self._plan(host)
        if plan.numel():  # (a plan on the meta device, as attached for counting, is empty)
            out += [vectors[row[1]] for row in plan.tolist() if row[0] == VECTOR]
        token = getattr(host.model, "cls_token", None)
        return out + ([token] if token is not None else [])

    def _plan(self, host: BackboneHost) -> torch.Tensor:
        return host.model.peft_shared[PLAN].rows

    def select(self, host: BackboneHost, batches: Iterable[SelectionBatch]) -> None:
        groups = units(host, self.config.rank)
        params = list({id(g.param): g.param for g in groups}.values())
        squared = {id(p): torch.zeros_like(p) for p in params}
        for p in params:
            p.requires_grad_(True)
        seen = 0
        for batch in itertools.islice(batches, self.config.batches):
            for p in params:
                p.grad = None
            batch.loss().backward()
            for p in params:
                if p.grad is not None:
                    squared[id(p)] += p.grad.detach() ** 2
            seen += 1
        if not seen:
            raise ValueError("spt-lora: the selection saw no training batch (an empty training set?)")
        for p in params:
            p.grad = None
            p.requires_grad_(False)
        scores = [squared[id(g.param)].flatten()[g.first:g.first + g.size] for g in groups]
        counts = Counts(groups, scores, self.config, token_count(host))
        tau = counts.closest(self.config.budget)
        self._build(host, self._rows(counts, tau), counts, tau)

    def _rows(self, counts: Counts, tau: int) -> torch.Tensor:
        selected, lora, full = counts.decide(tau)
        rows: list[list[int]] = []
        sparse: dict[int, list[int]] = {}  # layer -> [weight entries, bias entries]
        for i, g in enumerate(counts.groups):
            if g.kind == "norm":
                if full[i]:
                    rows.append([VECTOR, g.layer, 0, 0])
            elif lora[i]:
                rows.append([LORA, g.layer, g.start, g.rows])
            elif selected[i]:
                n = g.size if full[i] else int(selected[i])
                sparse.setdefault(g.layer, [0, 0])[g.kind == "bias"] += n
        rows += [[SPARSE, layer, *n] for layer, n in sparse.items()]
        rows.sort(key=lambda r: (r[0] == VECTOR, r[1], r[0], r[2]))
        return torch.tensor(rows, dtype=torch.long).view(-1, 4)

    def _build(self, host: BackboneHost, rows: torch.Tensor, counts: Counts | None = None,
               tau: int = 0) -> None:
        """Attach the modules ``rows`` plan; with the selection's ``counts``, fill the sparse
        positions (a restore leaves them to the state it loads)."""
        layers = candidate_layers(host)
        plan = host.model.peft_shared[PLAN]
        plan.rows = rows.clone()  # real, even on a meta-device model being counted
        positions = self._positions(counts, tau) if counts is not None else {}
        for kind, index, a, b in rows.tolist():
            if kind == VECTOR:
                continue
            path, layer = layers[index]
            with torch.device(layer.weight.device):
                if kind == LORA:
                    module = SPTLowRank(layer.weight[0].numel(), b, layer.weight.shape[0], a,
                                        self.config.rank)
                else:
                    module = SparseEntries(layer, a, b)
            host.add_to_layer(path, module)
            if kind == SPARSE and positions:
                with torch.no_grad():
                    module.weight_index.copy_(positions[index][0])
                    module.bias_index.copy_(positions[index][1])

    @staticmethod
    def _positions(counts: Counts, tau: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the (weight, bias) positions of its sparse update."""
        _, lora, full = counts.decide(tau)
        found: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for i, (g, entries) in enumerate(zip(counts.groups, counts.entries(tau))):
            if g.kind == "norm" or lora[i]:
                continue
            if full[i]:  # a bias in full: all of its (third's) entries
                entries = torch.arange(g.first, g.first + g.size)
            found.setdefault(g.layer, ([], []))[g.kind == "bias"].append(entries)
        return {layer: tuple(torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
                             for parts in pair) for layer, pair in found.items()}

    def restore(self, host: BackboneHost, state: Mapping[str, torch.Tensor]) -> None:
        key = f"peft_shared.{PLAN}.rows"
        if key not in state:
            return
        current = self._plan(host)
        if current.numel():
            if not torch.equal(current.cpu(), state[key].cpu()):
                raise ValueError("spt-lora: this model already holds another selected structure")
            return
        self._build(host, state[key].long().cpu())

    def merge(self, host: BackboneHost) -> None:
        host.fold_branches()
        host.remove_shared(PLAN)
