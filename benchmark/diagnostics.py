"""Diagnostics of a trained backbone: ParaX's routing, cross-layer CKA and the effective
receptive field (the paper's Figures 1c and 5, and what its reviewers asked for).

- Routing (any module with a ``gates(pooled) -> (B, G, M)`` method, ParaX's): per module and
  gate group (down, up, each kernel) the mean gate over the images, the entropy of each
  image's gate and of the mean gate, the share of experts that are ever an image's largest,
  the spread of the gates across images (input dependence), and collapse (every image's gate
  near one-hot on the same expert).
- Linear CKA (Kornblith et al. 2019) between the outputs of every pair of blocks, each image's
  output flattened, with a redundancy score per stage (the mean off-diagonal CKA).
- The effective receptive field of the last stage (Luo et al. 2016): the gradient of the
  centre output (the 2 or 4 positions around the middle of an even-sized map), rectified and
  summed over channels as RepLKNet's ERF code does (a plain channel sum of a LayerNorm-ed
  output is a constant), with respect to the input, in absolute value, averaged over images; summarised by the share of the input area that holds 20% / 50% / 90% of it.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

MASS_LEVELS = (0.2, 0.5, 0.9)
COLLAPSE_GATE = 0.9  # a gate whose largest weight is at least this is "near one-hot"


# -- CKA ------------------------------------------------------------------------------------------
def _centred_gram(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) features -> the n x n Gram matrix of their centred rows, in float64."""
    x = x.reshape(x.shape[0], -1).double()
    x = x - x.mean(dim=0, keepdim=True)
    return x @ x.T


def _cka_of_grams(k: torch.Tensor, l: torch.Tensor) -> float:
    hsic = (k * l).sum()
    norm = torch.sqrt((k * k).sum() * (l * l).sum())
    return float(hsic / norm) if norm > 0 else float("nan")


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of two representations of the same n examples, (n, d1) and (n, d2) (any
    trailing shape is flattened): 1 for equal ones, invariant to orthogonal transforms and
    isotropic scaling, near 0 for independent ones."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA compares representations of the same examples: got {x.shape[0]} "
                         f"and {y.shape[0]} rows")
    return _cka_of_grams(_centred_gram(x), _centred_gram(y))


def cka_matrix(features: Sequence[torch.Tensor]) -> list[list[float]]:
    """Linear CKA between every pair of ``features`` (each (n, ...), the same n examples)."""
    grams = [_centred_gram(f) for f in features]
    return [[_cka_of_grams(a, b) for b in grams] for a in grams]


def stage_redundancy(cka: list[list[float]], stages: Sequence[int]) -> list[float | None]:
    """Per stage, the mean CKA between distinct blocks of that stage (None for a stage of one
    block). ``stages[i]`` is block i's stage."""
    out: list[float | None] = []
    for stage in sorted(set(stages)):
        idx = [i for i, s in enumerate(stages) if s == stage]
        pairs = [cka[i][j] for i in idx for j in idx if i != j]
        out.append(sum(pairs) / len(pairs) if pairs else None)
    return out


# -- effective receptive field --------------------------------------------------------------------
def effective_receptive_field(features: Callable[[torch.Tensor], torch.Tensor],
                              images: torch.Tensor) -> torch.Tensor:
    """The (H, W) map of |d sum_c relu(out[c, centre]) / d input| (summed over input
    channels), averaged over ``images`` (N, C, H, W) and normalised to sum 1. ``features`` maps
    images to (N, C', h, w)."""
    x = images.detach().clone().requires_grad_(True)
    out = features(x)
    h, w = out.shape[-2:]
    # the centre: one position of an odd side, the two around the middle of an even one
    centre = out[..., (h - 1) // 2:h // 2 + 1, (w - 1) // 2:w // 2 + 1]
    torch.relu(centre).sum().backward()
    grad = x.grad.abs().sum(dim=1).mean(dim=0).double()
    total = grad.sum()
    return grad / total if total > 0 else grad


def mass_area(erf: torch.Tensor, level: float) -> float:
    """The smallest share of the map's pixels that holds ``level`` of its mass."""
    values = erf.flatten().sort(descending=True).values
    cumulative = values.cumsum(0) / values.sum()
    needed = int(torch.searchsorted(cumulative, torch.tensor(level, dtype=cumulative.dtype)))
    return (min(needed, values.numel() - 1) + 1) / values.numel()


# -- routing --------------------------------------------------------------------------------------
def _as_distribution(gates: torch.Tensor) -> torch.Tensor:
    """Gates (..., M) as distributions over experts (sigmoid / relu gates are not normalised)."""
    total = gates.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(gates, 1.0 / gates.shape[-1])
    return torch.where(total > 0, gates / total.clamp_min(1e-30), uniform)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dimension; 0 log 0 = 0."""
    return -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1)


def gate_summary(gates: torch.Tensor, sample_sizes: Sequence[int] = (20, 40, 80, 160)) -> dict:
    """Statistics of one gate group's gates over N images, (N, M).

    ``mean_gate``: the mean over all images, and over the first n images for each n of
    ``sample_sizes`` below N (the paper's Figure 5 at 20 / 40 / 80 / 160 images)."""
    gates = gates.double()
    n, m = gates.shape
    p = _as_distribution(gates)
    mean = p.mean(dim=0)
    top = p.argmax(dim=-1)
    near_one_hot = bool((p.max(dim=-1).values >= COLLAPSE_GATE).all())
    return {
        "experts": m,
        "images": n,
        "mean_gate": mean.tolist(),
        "mean_gate_at": {str(k): p[:k].mean(dim=0).tolist() for k in sample_sizes if k < n},
        "entropy_per_image": float(entropy(p).mean()),
        "entropy_of_mean": float(entropy(mean)),
        "max_entropy": math.log(m),
        "experts_ever_top": len(set(top.tolist())) / m,
        "spread_across_images": float(p.std(dim=0, unbiased=False).mean()),
        "collapsed": near_one_hot and len(set(top.tolist())) == 1,
    }


def routed_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules of ``model`` that route (a ``gates`` method and ``num_experts``)."""
    return [(name, m) for name, m in model.named_modules()
            if callable(getattr(m, "gates", None)) and hasattr(m, "num_experts")]


def gate_groups(module: nn.Module) -> list[str]:
    """Names of a routed module's gate groups, in the order its gates come."""
    return ["down", "up", *(f"k{k}" for k in getattr(module, "kernel_sizes", ()))]


@contextmanager
def recording_gates(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """While open, every routed module's gates (B, G, M) are appended to the yielded dict
    under the module's name."""
    records: dict[str, list[torch.Tensor]] = {}
    wrapped = []
    for name, module in routed_modules(model):
        original = module.gates
        records[name] = []

        def record(pooled, _original=original, _out=records[name]):
            gates = _original(pooled)
            _out.append(gates.detach().cpu())
            return gates

        module.gates = record  # an instance attribute shadows the method
        wrapped.append(module)
    try:
        yield records
    finally:
        for module in wrapped:
            del module.gates


def routing(model: nn.Module, run: Callable[[], object],
            sample_sizes: Sequence[int] = (20, 40, 80, 160)) -> list[dict]:
    """Per routed module, in model order: its name and each gate group's :func:`gate_summary`
    over the images ``run()`` feeds the model."""
    with recording_gates(model) as records:
        run()
    modules = dict(routed_modules(model))
    out = []
    for name, chunks in records.items():
        if not chunks:
            continue
        gates = torch.cat(chunks)  # (N, G, M)
        groups = gate_groups(modules[name])
        out.append({"module": name, "groups": {
            group: gate_summary(gates[:, i], sample_sizes) for i, group in enumerate(groups)}})
    return out


# -- block outputs --------------------------------------------------------------------------------
@contextmanager
def recording_outputs(blocks: Sequence[nn.Module]) -> Iterator[list[list[torch.Tensor]]]:
    """While open, each block's output is appended (detached) to its list."""
    records: list[list[torch.Tensor]] = [[] for _ in blocks]
    handles = [b.register_forward_hook(
        lambda _m, _i, out, _r=r: _r.append((out[0] if isinstance(out, tuple) else out).detach()))
        for b, r in zip(blocks, records)]
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


# -- a trained cell -------------------------------------------------------------------------------
def validation_images(cell, n: int) -> torch.Tensor:
    """The first ``n`` validation images of ``cell``'s task as its model sees them (through
    the task's validation pipeline and data preprocessor): (n, 3, H, W)."""
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS, MODELS, DefaultScope, init_default_scope

    import tasks.backbone  # noqa: F401  (registers the task models' parts)
    from tasks import task_config

    cfg = task_config(cell)
    scope = cfg.get("default_scope")
    with DefaultScope.overwrite_default_scope(scope):  # (None: as it is)
        if scope:
            init_default_scope(scope)
        dataset = DATASETS.build(cfg["val_dataloader"]["dataset"])
        preprocessor = MODELS.build(cfg["model"]["data_preprocessor"]) \
            if "data_preprocessor" in cfg["model"] else None
        batch = pseudo_collate([dataset[i] for i in range(min(n, len(dataset)))])
        if preprocessor is None:
            return torch.stack(batch["inputs"]).float()
        return preprocessor(batch, training=False)["inputs"]


def trained_host(result: dict, state_file) -> "object":
    """The backbone of a result's cell with its trained method state (``train``'s
    RESULT.adapter.pth) on the pretrained backbone it names."""
    from catalog import Cell
    from methods import build
    from methods.checkpoints import load_official

    from .export import on_backbone

    cell = Cell.from_dict(result["cell"])
    if not cell.pretrained and cell.method != "full":
        raise ValueError(f"{cell.id} trained from scratch: its method state was kept, the "
                         f"random backbone under it was not (diagnose a cell trained with "
                         f"--pretrained)")
    host = build(cell.backbone, cell.method, cell.task, **dict(cell.options))
    load_official(host, on_backbone(state_file, cell.pretrained))
    host.model.eval()
    return host


def diagnose(host, images: torch.Tensor, erf_images: int = 8) -> dict:
    """Every diagnostic of a dense ``host`` over ``images`` (N, 3, H, W)."""
    blocks = [b.module for b in host.blocks]
    with torch.no_grad(), recording_outputs(blocks) as outs:  # one pass records both
        gates = routing(host.model, lambda: host.forward_features(images))
    cka = cka_matrix([o[0] for o in outs])
    stages = [b.stage for b in host.blocks]
    erf = effective_receptive_field(lambda x: host.forward_features(x)[-1], images[:erf_images])
    return {
        "images": int(images.shape[0]),
        "blocks": [{"stage": b.stage, "index": b.index} for b in host.blocks],
        "cka": cka,
        "redundancy": stage_redundancy(cka, stages),
        # the map relative to its peak, for the figures; the areas from the map itself
        "erf": {"map": (erf / erf.max().clamp_min(1e-300)).round(decimals=4).tolist(),
                "images": int(min(erf_images, images.shape[0])),
                "mass_area": {str(q): mass_area(erf, q) for q in MASS_LEVELS}},
        "routing": gates,
        "collapsed": [f"{m['module']}.{g}" for m in gates for g, s in m["groups"].items()
                      if s["collapsed"]],
    }


def diagnose_result(result_file: str | Path, images: int, out: str | Path) -> dict:
    """Diagnose the cell of a result file from its method state beside it (RESULT.adapter.pth)
    on its first ``images`` validation images; write the report to ``out`` (JSON) and its
    figure beside it (.svg), atomically; return the report."""
    from catalog import Cell, get_task

    from .export import adapter_path
    from .figures import figure_svg
    from .io import write_json_atomic, write_text_atomic

    result = json.loads(Path(result_file).read_text())
    state_file = adapter_path(result_file)
    if not state_file.is_file():
        raise FileNotFoundError(f"no method state beside the result: expected {state_file} "
                                f"(`train` writes it)")
    cell = Cell.from_dict(result["cell"])
    if not get_task(cell.task).dense:
        raise ValueError(f"diagnose: {cell.task} is not a dense task (the diagnostics read "
                         f"multi-scale features)")
    report = {"cell": result["cell"],
              **diagnose(trained_host(result, state_file), validation_images(cell, images))}
    out = Path(out)
    write_json_atomic(out, report)
    write_text_atomic(out.with_suffix(".svg"), figure_svg(cell.id, report))
    return report


def summary(report: dict, out: str | Path) -> str:
    """One line: the redundancy per stage, the ERF's 50% area and any collapsed gates."""
    from catalog import Cell

    cell_id = Cell.from_dict(report["cell"]).id
    redundancy = ", ".join("-" if r is None else f"{r:.2f}" for r in report["redundancy"])
    return (f"{cell_id}: {report['images']} images, stage redundancy {redundancy}, ERF 50% in "
            f"{100 * report['erf']['mass_area']['0.5']:.1f}% of the input, collapsed gates: "
            f"{', '.join(report['collapsed']) or 'none'} -> {out} (figure: "
            f"{Path(out).with_suffix('.svg')})")
