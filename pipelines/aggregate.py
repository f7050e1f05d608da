"""DVC stage `aggregate`: every result file of the grid, validated, into the paper's table
layouts (results/tables/PROFILE: tables.json for the leaderboard, CSV and markdown per table)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.aggregate import Aggregator, load_runs, write_tables
from benchmark.efficiency import load as load_efficiency
from pipelines.grid import expand, grid_methods, load_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--runs", help="result folder (default: results/runs/PROFILE)")
    parser.add_argument("--out", help="tables folder (default: results/tables/PROFILE)")
    parser.add_argument("--efficiency", help="efficiency result (default: "
                                             "results/efficiency/PROFILE.json); 'none' leaves "
                                             "the efficiency table out")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    profile = params["grid"]["profile"]
    runs_dir = Path(args.runs or f"results/runs/{profile}")
    runs, stale = load_runs(expand(params), runs_dir)
    for path in stale:
        print(f"[aggregate] not in the current grid, left out: {path}", flush=True)
    efficiency = None if args.efficiency == "none" else load_efficiency(
        args.efficiency or f"results/efficiency/{profile}.json")
    tables = Aggregator(params, runs, grid_methods(params), efficiency).tables()
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
