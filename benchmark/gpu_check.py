"""The GPU check's summary (``scripts/gpu-check.sh``): its goals, read from the parts' JSON.

    python -m benchmark.gpu_check OUT

Goals (Table 15's setting, ParaX against full fine-tuning, each amp): training throughput at
least 1.0x, peak memory at most 0.85x; and the ParaX module bench's own goals (forward +
backward, one backbone's worth of modules). Writes OUT/summary.json and prints one line per
goal; a part that did not run is reported as missing, not as met.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .io import write_json_atomic

AMPS = ("none", "bf16")
TABLE15_GOALS = {"train_img_s": (">=", 1.0), "peak_memory": ("<=", 0.85)}  # ParaX / full


def _holds(value: float, op: str, bound: float) -> bool:
    return value >= bound if op == ">=" else value <= bound


def summarise(out: Path) -> dict:
    goals: list[dict] = []
    for amp in AMPS:
        path = out / f"table15-{amp}.json"
        rows = ({r["name"]: r for r in json.loads(path.read_text())["rows"]}
                if path.is_file() else {})
        for key, (op, bound) in TABLE15_GOALS.items():
            value = rows["parax"]["ratios"]["to_full"][key] if "parax" in rows else None
            goals.append({"goal": f"amp {amp}: parax / full {key} {op} {bound}", "value": value,
                          "met": None if value is None else _holds(value, op, bound)})
    bench = out / "bench-parax.json"
    if bench.is_file():
        from .bench_parax import GOALS, goals_met

        result = json.loads(bench.read_text())
        met = goals_met(result)
        for key, (op, bound) in GOALS.items():
            name = f"forward_backward {key} {op} {bound}"
            values = [v for s in result["summary"].values()
                      if (v := s["ratios"]["forward_backward"].get(key)) is not None]
            worst = max if op == "<=" else min  # the input furthest from the bound
            goals.append({"goal": f"module bench: {name}", "value": worst(values, default=None),
                          "met": met.get(name)})
    else:
        goals.append({"goal": "module bench", "value": None, "met": None})
    return {"goals": goals}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the folder scripts/gpu-check.sh wrote")
    args = parser.parse_args(argv)
    summary = summarise(args.out)
    write_json_atomic(args.out / "summary.json", summary)
    for g in summary["goals"]:
        state = {True: "met", False: "NOT met", None: "missing"}[g["met"]]
        value = "-" if g["value"] is None else f"{g['value']:.3f}"
        print(f"{g['goal']:60s} {value:>8s}  {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
