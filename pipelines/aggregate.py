"""DVC stage `aggregate`: every result file of the grid, validated, into the paper's table
layouts (results/tables/PROFILE: tables.json for the leaderboard, CSV and markdown per table),
with the efficiency measurement, the GPU check's (if any) and the diagnose reports."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.aggregate import (Aggregator, load_diagnostics, load_gpu_efficiency, load_runs,
                                 write_tables)
from benchmark.efficiency import load as load_efficiency
from pipelines.grid import diagnosed, expand, grid_methods, load_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--runs", help="result folder (default: results/runs/PROFILE)")
    parser.add_argument("--out", help="tables folder (default: results/tables/PROFILE)")
    parser.add_argument("--efficiency", help="efficiency result (default: "
                                             "results/efficiency/PROFILE.json); 'none' leaves "
                                             "the efficiency table out")
    parser.add_argument("--diagnostics", help="diagnose reports folder (default: "
                                              "results/diagnostics/PROFILE); 'none' leaves the "
                                              "diagnostics sections out")
    parser.add_argument("--gpu", default="results/gpu",
                        help="the GPU check's results (scripts/gpu-check.sh), shown as Table 15 "
                             "(GPU) where there are any (default: results/gpu)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    profile = params["grid"]["profile"]
    runs_dir = Path(args.runs or f"results/runs/{profile}")
    cells = expand(params)
    runs, stale = load_runs(cells, runs_dir)
    for path in stale:
        print(f"[aggregate] not in the current grid, left out: {path}", flush=True)
    efficiency = None if args.efficiency == "none" else load_efficiency(
        args.efficiency or f"results/efficiency/{profile}.json")
    diagnostics = {} if args.diagnostics == "none" else load_diagnostics(
        [c.id for c in cells if diagnosed(params, c)],
        Path(args.diagnostics or f"results/diagnostics/{profile}"))
    tables = Aggregator(params, runs, grid_methods(params), efficiency, diagnostics,
                        load_gpu_efficiency(Path(args.gpu))).tables()
    written = write_tables(tables, args.out or f"results/tables/{profile}")
    print(f"[aggregate] {len(runs)} cells -> {len(tables['sections'])} tables, "
          f"{len(written)} files in {written[-1].parent}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as exc:
        print(f"aggregate: error: {exc}", file=sys.stderr)
        sys.exit(2)
