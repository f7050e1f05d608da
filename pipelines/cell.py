"""DVC cell stages (``cell-ID`` in the generated dvc.yaml): one grid cell, by its id, run
through the launcher params.yaml names.

The cell comes from the grid (pipelines/grid.py), its method options sized to the profile's
budget when it runs. A method that cannot run on the backbone (VPT on ConvNeXt) gets a
result file saying so instead of failing the pipeline. A cell the profile's ``diagnostics``
cover also writes its trained method state beside its result (RESULT.adapter.pth, as
``parax-bench train`` does), which its ``diagnose-`` stage reads.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.io import write_json_atomic
from pipelines.grid import diagnosed, find_cell, load_params, not_applicable, resolve, result_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.cell", description=__doc__)
    parser.add_argument("cell", help="the cell's id: TASK.BACKBONE.METHOD[~VARIANT].sSEED")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    try:
        cell = find_cell(params, args.cell)
    except KeyError as exc:  # an unknown method
        parser.error(f"{exc.args[0]} (cell '{args.cell}')")
    if cell is None:
        parser.error(f"no cell '{args.cell}' in the grid of {args.params} "
                     f"(`python -m pipelines.grid` lists them)")
    out = result_path(params, cell)
    reason = not_applicable(cell)
    if reason is not None:
        write_json_atomic(out, {"cell": cell.to_dict(), "not_applicable": reason})
        print(f"[cell] {cell.id}: not applicable ({reason}) -> {out}", flush=True)
        return 0
    from benchmark.launch import launch
    from pipelines.data import ensure

    ensure(params, cell.task)
    print(f"[cell] {cell.id} via {params['launcher']['kind']}", flush=True)
    work = Path("work") / params["grid"]["profile"] / cell.id
    resolved = resolve(params, cell)
    code = launch(resolved, params["launcher"], out, work, work)
    if code == 0 and diagnosed(params, cell):
        from benchmark.export import adapter_path, export_cell

        n = export_cell(resolved, work, adapter_path(out))
        print(f"[cell] {cell.id}: method state ({n} tensors) -> {adapter_path(out)}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
