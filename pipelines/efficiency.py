"""DVC stage `efficiency`: the profile's efficiency setting (Table 15's measurement) for its
methods, with their params.yaml overrides, into results/efficiency/PROFILE.json."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from benchmark.efficiency import Setting, run
from benchmark.io import write_json_atomic
from pipelines.grid import load_params


def setting_of(params: dict) -> tuple[Setting, list[str]]:
    """(the Setting, the method entries) of ``grid.efficiency``; the profile's budget applies."""
    section = dict(params["grid"]["efficiency"])
    entries = section.pop("methods")
    known = {f.name for f in fields(Setting)} - {"budget"}
    unknown = sorted(set(section) - known)
    if unknown:
        raise ValueError(f"grid.efficiency: unknown key '{unknown[0]}'; known: "
                         f"methods, {', '.join(sorted(known))}")
    return Setting(budget=params["grid"]["budget"], **section), entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", help="result JSON (default: results/efficiency/PROFILE.json)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    setting, entries = setting_of(params)
    print(f"[efficiency] {setting.describe()}: {len(entries)} methods", flush=True)
    result = run(setting, entries, overrides=params["methods"],
                 log=lambda line: print(line, flush=True))
    out = Path(args.out or f"results/efficiency/{params['grid']['profile']}.json")
    write_json_atomic(out, result)
    print(f"[efficiency] wrote {len(result['rows'])} rows to {out}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyError, ValueError, FileNotFoundError) as exc:
        print(f"efficiency: error: {exc}", file=sys.stderr)
        sys.exit(2)
