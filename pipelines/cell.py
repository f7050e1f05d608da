"""DVC cell stages (`dense@...`, `classification@...`, `pose@...`, `remote_sensing@...`,
`ablation@...`): one grid cell, run through the launcher params.yaml names.

The cell's method options are the method's entry in params.yaml, sized to the profile's
budget; an ablation cell sizes the default ParaX the same way and then applies its variant
(the paper's ablations change the count on purpose). A method that cannot run on the
backbone (VPT on ConvNeXt) gets a result file saying so instead of failing the pipeline.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmark.io import write_json_atomic
from pipelines.grid import ABLATION_METHOD, GridCell, load_params, not_applicable, result_path


def train_args(params: dict[str, Any], cell: GridCell) -> list[str]:
    """The `parax-bench train` arguments of a cell."""
    from benchmark.budget import parse_budget
    from benchmark.params import sized_options

    grid = params["grid"]
    options = dict(params["methods"][cell.method] or {})
    budget = grid["budget"]
    if cell.variant is not None:
        options = sized_options(cell.backbone, cell.method, cell.task, options,
                                parse_budget(budget) if budget else None)
        options.update(params["ablations"][cell.variant]["set"])
        budget = None
    args = ["--task", cell.task, "--backbone", cell.backbone, "--method", cell.method,
            "--seed", str(cell.seed), "--profile", grid["profile"],
            "--data", str(Path(grid["data_root"]) / cell.task),
            "--pretrained", str(Path(grid["pretrained_root"]) / f"{cell.backbone}.pth"),
            "--out", str(result_path(params, cell)),
            "--work-dir", str(Path("work") / grid["profile"] / cell.id)]
    for key, value in options.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    if budget:
        args += ["--budget", str(budget)]
    iters = (grid["tasks"].get(cell.task) or {}).get("iters")
    if iters is not None:
        args += ["--iters", str(iters)]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", required=True)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--variant", help="an entry of `ablations` (ParaX only)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    for kind, name, known in (("task", args.task, params["grid"]["tasks"]),
                              ("method", args.method, params["methods"])):
        if name not in known:
            parser.error(f"unknown {kind} '{name}' in {args.params}; known: {', '.join(known)}")
    if args.variant is not None and args.method != ABLATION_METHOD:
        parser.error(f"--variant applies to {ABLATION_METHOD} only")
    if args.variant is not None and args.variant not in params["ablations"]:
        parser.error(f"unknown ablation variant '{args.variant}'; known: "
                     f"{', '.join(params['ablations'])}")
    cell = GridCell("", args.task, args.backbone, args.method, args.seed, args.variant)
    out = result_path(params, cell)
    reason = not_applicable(cell)
    if reason is not None:
        grid = params["grid"]
        write_json_atomic(out, {"cell": {"task": cell.task, "backbone": cell.backbone,
                                         "method": cell.method, "seed": cell.seed,
                                         "profile": grid["profile"], "options": {}},
                                "not_applicable": reason})
        print(f"[cell] {cell.id}: not applicable ({reason}) -> {out}", flush=True)
        return 0
    from benchmark.launch import launch
    from pipelines.data import ensure

    ensure(params, cell.task)
    print(f"[cell] {cell.id} via {params['launcher']['kind']}", flush=True)
    return launch(train_args(params, cell), params["launcher"],
                  Path("work") / params["grid"]["profile"] / cell.id)


if __name__ == "__main__":
    sys.exit(main())
