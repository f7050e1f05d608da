"""DVC stage `params_table`: the trainable-parameter grid of params.yaml, next to the paper's."""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from benchmark.io import write_json_atomic, write_text_atomic
from benchmark.params import param_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="results/params")
    args = parser.parse_args(argv)
    cfg = yaml.safe_load(Path(args.params).read_text())["params_table"]
    rows, skipped = [], []
    start = time.monotonic()
    backbones = cfg["backbones"]
    for i, backbone in enumerate(backbones, 1):
        r, s = param_table([backbone], cfg["methods"], cfg["tasks"])
        rows += r
        skipped += s
        elapsed = time.monotonic() - start
        eta = elapsed / i * (len(backbones) - i)
        print(f"[params_table] {i}/{len(backbones)} {backbone}: {len(r)} rows "
              f"({elapsed:.0f}s elapsed, ETA {eta:.0f}s)", flush=True)
    for note in skipped:
        print(f"[params_table] skipped: {note}", flush=True)
    records = [r.as_dict() for r in rows]
    frame = pd.DataFrame([{**record, "width": row.width_text} for record, row in zip(records, rows)])
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    out = Path(args.out)
    write_text_atomic(out / "params_table.csv", buf.getvalue())
    write_json_atomic(out / "params_table.json", records)
    print(f"[params_table] wrote {len(records)} rows to {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
