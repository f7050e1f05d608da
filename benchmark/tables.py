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
    return {table: (title, [t.name for t in TASKS.values() if t.paper_table == table])
            for table, title in spec()["comparison"].items()}


def ablation_tables() -> dict[str, dict[str, Any]]:
    """table -> {title, default}."""
    return dict(spec()["ablations"])


def ablation_method() -> str:
    """The method whose variants the ablation tables hold."""
    return spec()["ablation_method"]


def efficiency_table() -> dict[str, Any]:
    return dict(spec()["efficiency"])
