"""The grid of params.yaml as cells: the same expansion dvc.yaml's matrix stages make.

`grid` in params.yaml is the active profile (`grid: *mini` or `grid: *paper`). Its groups
(``dense``, ``classification``, ``pose``, ``remote_sensing``) are products of tasks x
backbones x methods x seeds, one per paper table family; ``ablation`` runs ParaX variants
(named in the top-level ``ablations``) on one (task, backbone).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

GROUPS = ("dense", "classification", "pose", "remote_sensing")
ABLATION_METHOD = "parax"


@dataclass(frozen=True)
class GridCell:
    group: str
    task: str
    backbone: str
    method: str
    seed: int
    variant: str | None = None

    @property
    def id(self) -> str:
        """The result file's stem: task.backbone.method[~variant].sSEED."""
        method = self.method if self.variant is None else f"{self.method}~{self.variant}"
        return f"{self.task}.{self.backbone}.{method}.s{self.seed}"


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    params = yaml.safe_load(path.read_text())
    for key in ("grid", "methods", "ablations", "launcher"):
        if key not in params:
            raise ValueError(f"{path}: missing top-level key '{key}'")
    return params


def expand(params: dict[str, Any]) -> list[GridCell]:
    """Every cell of the active grid, in dvc.yaml's order (cells a method cannot run, VPT on
    ConvNeXt, are included: their stage records them as not applicable)."""
    grid = params["grid"]
    cells = []
    for group in GROUPS:
        spec = grid[group]
        for task in spec["tasks"]:
            for backbone in spec["backbones"]:
                for method in grid["methods"]:
                    for seed in grid["seeds"]:
                        cells.append(GridCell(group, task, backbone, method, seed))
    ablation = grid["ablation"]
    for variant in ablation["variants"]:
        if variant not in params["ablations"]:
            raise ValueError(f"grid.ablation.variants names '{variant}', which is not in "
                             f"ablations: {', '.join(params['ablations'])}")
        for seed in grid["seeds"]:
            cells.append(GridCell("ablation", ablation["task"], ablation["backbone"],
                                  ABLATION_METHOD, seed, variant))
    return cells


def not_applicable(cell: GridCell) -> str | None:
    """Why the cell's method cannot run on its backbone, or None."""
    from methods import get_backbone, get_method
    from methods.base import NotApplicableError

    try:
        get_method(cell.method).check_applicable(get_backbone(cell.backbone).family)
    except NotApplicableError as exc:
        return str(exc)
    return None


def result_path(params: dict[str, Any], cell: GridCell) -> Path:
    return Path("results/runs") / params["grid"]["profile"] / f"{cell.id}.json"


def command(cell: GridCell) -> str:
    """The cell stage's command line (as dvc.yaml runs it)."""
    variant = "" if cell.variant is None else f" --variant {cell.variant}"
    return (f"python -m pipelines.cell --task {cell.task} --backbone {cell.backbone} "
            f"--method {cell.method} --seed {cell.seed}{variant}")


def main(argv: list[str] | None = None) -> int:
    """Print the grid's cell commands, for running independent cells in parallel outside DVC
    (then `dvc commit -f` records their results and `dvc repro` aggregates)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--missing", action="store_true", help="only cells without a result file")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    for cell in expand(params):
        if not (args.missing and result_path(params, cell).is_file()):
            print(command(cell))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
