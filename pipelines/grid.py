"""The grid of params.yaml as cells: the one description dvc.yaml is generated from.

`grid` in params.yaml is the active profile (`grid: *mini` or `grid: *paper`). Its groups
(``dense``, ``vit_dense``, ``vmamba_dense``, ``classification``, ``pose``, ``remote_sensing``),
one per paper table family, are products of tasks x backbones x methods x seeds, or lists of
such products. A product runs the methods it names (``methods``: Table 8's on VMamba), else
every registered method but those the profile excludes (``exclude``), in the order of the
top-level ``methods`` overrides, then by name. ``ablation`` runs ParaX variants (named in the
top-level ``ablations``; the method benchmark/paper_tables.yaml names) on one (task, backbone),
with its own ``seeds`` if it names them; ``sweep`` sizes every method with a width knob to more
budgets on some (task, backbone) pairs (the params-vs-score curves).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from benchmark.tables import ablation_method
from catalog import Cell

GROUPS = ("dense", "vit_dense", "vmamba_dense", "classification", "pose", "remote_sensing")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    params = yaml.safe_load(path.read_text())
    for key in ("grid", "methods", "ablations", "launcher"):
        if key not in params:
            raise ValueError(f"{path}: missing top-level key '{key}'")
    return params


def grid_methods(params: dict[str, Any]) -> list[str]:
    """Every method the grid runs: those of the products that name none (below), then those
    only a product names, in the order they are named."""
    default = _default_methods(params)
    named = [m for spec in _products(params["grid"]) for m in spec.get("methods") or []]
    return default + [m for m in dict.fromkeys(named) if m not in default]


def _default_methods(params: dict[str, Any]) -> list[str]:
    """Every registered method the profile does not exclude (overrides' order, then names)."""
    from methods import available_methods

    registered = available_methods()
    exclude = params["grid"].get("exclude") or []
    named = [m for spec in _products(params["grid"]) for m in spec.get("methods") or []]
    for name in [*exclude, *(params["methods"] or {}), *named]:
        if name not in registered:
            raise ValueError(f"params.yaml names method '{name}', which is not registered; "
                             f"registered: {', '.join(registered)}")
    ordered = [*(params["methods"] or {}), *sorted(set(registered) - set(params["methods"] or {}))]
    return [m for m in ordered if m not in exclude]


def _products(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Every product (tasks x backbones [x methods]) of the grid's groups, in group order (a
    group the profile leaves out has none)."""
    specs = [grid.get(group) or [] for group in GROUPS]
    return [spec for group in specs for spec in (group if isinstance(group, list) else [group])]


def _cell(params: dict[str, Any], task: str, backbone: str, method: str, seed: int,
          variant: str | None = None, budget: str | None = None) -> Cell:
    grid = params["grid"]
    return Cell(task=task, backbone=backbone, method=method, seed=seed, variant=variant,
                profile=grid["profile"], options=dict(params["methods"].get(method) or {}),
                budget=budget or grid["budget"], sweep=budget is not None,
                data_root=str(Path(grid["data_root"]) / task),
                pretrained=str(Path(grid["pretrained_root"]) / f"{backbone}.pth"),
                iters=(grid["tasks"].get(task) or {}).get("iters"), threads=grid.get("threads"))


def expand(params: dict[str, Any], methods: list[str] | None = None) -> list[Cell]:
    """Every cell of the active grid, its method options as params.yaml sets them (the budget
    sizes them when the cell runs: :func:`resolve`). Cells a method cannot run, VPT on
    ConvNeXt, are included: their stage records them as not applicable. ``methods``: only
    these methods' cells (no other method is imported)."""
    grid = params["grid"]
    exclude = grid.get("exclude") or []
    if methods is None:
        methods = _default_methods(params)
        wanted = None
    else:
        from methods import get_method

        wanted = [get_method(m).name for m in methods]
        methods = [m for m in wanted if m not in exclude]
    cells = []
    for spec in _products(grid):
        chosen = methods if spec.get("methods") is None else [
            m for m in spec["methods"] if wanted is None or m in wanted]
        for task in spec["tasks"]:
            for backbone in spec["backbones"]:
                for method in chosen:
                    for seed in grid["seeds"]:
                        cells.append(_cell(params, task, backbone, method, seed))
    ablation, method = grid["ablation"], ablation_method()
    for variant in ablation["variants"] if method in methods else ():
        if variant not in params["ablations"]:
            raise ValueError(f"grid.ablation.variants names '{variant}', which is not in "
                             f"ablations: {', '.join(params['ablations'])}")
        for seed in ablation.get("seeds", grid["seeds"]):
            cells.append(_cell(params, ablation["task"], ablation["backbone"], method, seed,
                               variant))
    cells += sweep_cells(params, methods)
    return cells


def sweep_cells(params: dict[str, Any], methods: list[str]) -> list[Cell]:
    """The profile's ``sweep``: every method with a width knob at each of its ``budgets``
    beside the grid's own, on each of its (task, backbone) pairs, for its ``seeds``."""
    from methods import get_method

    sweep = params["grid"].get("sweep") or {}
    knobbed = [m for m in methods if get_method(m).config_class.budget_knob() is not None]
    return [_cell(params, task, backbone, method, seed, budget=budget)
            for task in sweep.get("tasks", []) for backbone in sweep.get("backbones", [])
            for method in knobbed for budget in sweep.get("budgets", [])
            for seed in sweep.get("seeds", params["grid"]["seeds"])]


def find_cell(params: dict[str, Any], cell_id: str) -> Cell | None:
    """The grid's cell of this id (TASK.BACKBONE.METHOD[~VARIANT].sSEED), or None; only its
    method is looked up (no other method's module is imported). KeyError: an unknown method."""
    parts = cell_id.split(".")
    if len(parts) != 4:
        return None
    return next((c for c in expand(params, [parts[2].split("~")[0]]) if c.id == cell_id), None)


def resolve(params: dict[str, Any], cell: Cell) -> Cell:
    """The cell as it runs: its width knob sized to the budget. An ablation sizes the default
    ParaX the same way and then applies its variant (the paper's ablations change the count
    on purpose), so its options are final and it carries no budget."""
    from benchmark.budget import parse_budget
    from benchmark.params import sized_options

    budget = parse_budget(cell.budget) if cell.budget else None
    options = sized_options(cell.backbone, cell.method, cell.task, dict(cell.options), budget)
    if cell.variant is None:
        return dataclasses.replace(cell, options=options)
    options.update(params["ablations"][cell.variant]["set"])
    return dataclasses.replace(cell, options=options, budget=None)


def not_applicable(cell: Cell) -> str | None:
    """Why the cell's method cannot run on its backbone (or, for a sweep point, cannot be
    sized to its budget there), or None."""
    from benchmark.budget import BudgetOutOfRange, parse_budget
    from benchmark.params import sized_options
    from methods import get_backbone, get_method
    from methods.base import NotApplicableError

    try:
        get_method(cell.method).check_applicable(get_backbone(cell.backbone).family)
        if cell.sweep:
            sized_options(cell.backbone, cell.method, cell.task, dict(cell.options),
                          parse_budget(cell.budget))
    except (NotApplicableError, BudgetOutOfRange) as exc:
        return str(exc)
    return None


def result_path(params: dict[str, Any], cell: Cell) -> Path:
    return Path("results/runs") / params["grid"]["profile"] / f"{cell.id}.json"


def diagnosed(params: dict[str, Any], cell: Cell) -> bool:
    """Whether the profile's ``diagnostics`` cover the cell: a main-grid cell (no sweep point or
    ablation) of one of its tasks, at one of its seeds. Such a cell keeps its trained method
    state beside its result, for its ``diagnose-`` stage."""
    spec = params["grid"].get("diagnostics") or {}
    return (not cell.sweep and cell.variant is None and cell.task in spec.get("tasks", [])
            and cell.seed in spec.get("seeds", params["grid"]["seeds"])
            and not_applicable(cell) is None)


def diagnostics_path(params: dict[str, Any], cell: Cell) -> Path:
    return Path("results/diagnostics") / params["grid"]["profile"] / f"{cell.id}.json"


def main(argv: list[str] | None = None) -> int:
    """Print the grid's cell ids, for running independent cells in parallel outside DVC
    (`python -m pipelines.cell ID` each; then `dvc commit -f` records their results and
    `dvc repro` aggregates)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--missing", action="store_true", help="only cells without a result file")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    for cell in expand(params):
        if not (args.missing and result_path(params, cell).is_file()):
            print(cell.id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
