"""The paper's table layouts (benchmark/paper_tables.yaml): which tables the leaderboard has,
their titles, the ablation tables' default rows and Table 15's measurement and extra rows."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from catalog import TASKS

SPEC = Path(__file__).with_name("paper_tables.yaml")
DATA_FILES = (SPEC,)


@lru_cache(maxsize=1)
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC.read_text())


def comparison_tables() -> dict[str, tuple[str, list[str]]]:
    """table -> (title, its tasks, in registration order)."""
    out = {}
    for table, entry in spec()["comparison"].items():
        if isinstance(entry, str):
            out[table] = (entry, [t.name for t in TASKS.values() if t.paper_table == table])
        else:
            out[table] = (entry["title"], list(entry["tasks"]))
    return out


def table_of(task: str, backbone: str) -> str:
    """The comparison table a (task, backbone) cell belongs to: a table given for the
    backbone's family on that task (Table 7: ADE20K on a plain ViT), else the task's own."""
    from catalog import get_backbone, get_task

    family = get_backbone(backbone).family
    for table, entry in spec()["comparison"].items():
        if not isinstance(entry, str) and task in entry["tasks"] and family in entry["families"]:
            return table
    return get_task(task).paper_table


def counts_heads(table: str, method: str) -> bool:
    """Whether the table's parameter count of ``method`` includes the task's heads
    (``counts_heads``: true for every row, or the methods whose rows do)."""
    entry = spec()["comparison"].get(table)
    rows = entry.get("counts_heads") if isinstance(entry, dict) else None
    return rows is True or (isinstance(rows, list) and method in rows)


def ablation_tables() -> dict[str, dict[str, Any]]:
    """table -> {title, default}."""
    return dict(spec()["ablations"])


def ablation_method() -> str:
    """The method whose variants the ablation tables hold."""
    return spec()["ablation_method"]


def efficiency_table() -> dict[str, Any]:
    return dict(spec()["efficiency"])
