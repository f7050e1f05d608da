"""DVC diagnose stages (``diagnose-ID`` in the generated dvc.yaml): the diagnostics of one
grid cell (benchmark/diagnostics.py) from the method state its cell stage kept, on the
profile's ``diagnostics.images`` validation images, on the grid's CPU threads (the same
numbers every run) -> results/diagnostics/PROFILE/ID.json and its figure, ID.svg.
"""
from __future__ import annotations

import argparse
import sys

from pipelines.grid import diagnosed, diagnostics_path, find_cell, load_params, result_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.diagnose", description=__doc__)
    parser.add_argument("cell", help="the cell's id: TASK.BACKBONE.METHOD.sSEED")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    try:
        cell = find_cell(params, args.cell)
    except KeyError as exc:  # an unknown method
        parser.error(f"{exc.args[0]} (cell '{args.cell}')")
    if cell is None or not diagnosed(params, cell):
        parser.error(f"no diagnosed cell '{args.cell}' in the grid of {args.params} (its "
                     f"`diagnostics` name the tasks and seeds)")
    import torch

    from benchmark.console import filter_noise
    from benchmark.diagnostics import diagnose_result, summary
    from pipelines.data import ensure

    filter_noise()
    ensure(params, cell.task)
    if params["grid"].get("threads") is not None:
        torch.set_num_threads(params["grid"]["threads"])
    out = diagnostics_path(params, cell)
    report = diagnose_result(result_path(params, cell), params["grid"]["diagnostics"]["images"], out)
    print(f"[diagnose] {summary(report, out)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
