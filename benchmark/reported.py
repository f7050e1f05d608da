"""The paper's reported numbers (results/reported/paper_results.csv, Tables 1-15, long form)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

REPORTED_CSV = Path(__file__).resolve().parent.parent / "results" / "reported" / "paper_results.csv"
DATA_FILES = (REPORTED_CSV,)  # what this module reads (pipelines/stages.py makes it a dep)
COLUMNS = ["table", "task", "dataset", "backbone", "method", "params_m", "metric", "value"]


@lru_cache(maxsize=None)
def reported_table(path: Path = REPORTED_CSV) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"reported results not found at {path}")
    df = pd.read_csv(path, dtype={"table": str})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: expected columns {COLUMNS}, missing {missing}")
    return df


def reported_params_m(backbone_paper_name: str | None, method_paper_name: str | None,
                      task_kind: str, dataset: str) -> float | None:
    """The paper's '# P' (millions) for a cell, or None where the paper has no such cell."""
    if not backbone_paper_name or not method_paper_name:
        return None
    df = reported_table()
    rows = df[(df.backbone == backbone_paper_name) & (df.method == method_paper_name)
              & (df.task == task_kind) & (df.dataset == dataset)]
    values = sorted(set(rows.params_m.dropna()))
    if len(values) > 1:
        raise ValueError(f"the paper reports several counts for {backbone_paper_name} / "
                         f"{method_paper_name} / {dataset}: {values}")
    return float(values[0]) if values else None
