"""One grid cell: what is computed, from the grid to the result file (serialised once)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

PROFILES = ("mini", "paper")


@dataclass(frozen=True)
class Cell:
    task: str
    backbone: str
    method: str
    seed: int = 0
    variant: str | None = None  # an entry of params.yaml's `ablations` (a ParaX variant)
    profile: str = "mini"
    options: dict[str, Any] = field(default_factory=dict)  # method options as run (sized)
    budget: str | None = None  # the budget that sized ``options`` (a record)
    data_root: str = ""
    pretrained: str | None = None
    iters: int | None = None  # overrides the profile's schedule length
    smoke: bool = False  # the profile's model, pipelines and evaluator, two steps (runner.py)
    sweep: bool = False  # a point of a budget sweep: its budget is not the grid's, and its id says it
    threads: int | None = None  # CPU threads of the run (CPU results depend on it); None: torch's

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {self.profile!r}")
        if self.threads is not None and not (isinstance(self.threads, int) and self.threads >= 1):
            raise ValueError(f"threads must be a positive integer or None, got {self.threads!r}")

    @property
    def id(self) -> str:
        """The result file's stem: task.backbone.method[~variant|~BUDGET].sSEED (a sweep
        point's budget with % written pct: ``lora~3pct``)."""
        method = self.method
        if self.variant is not None:
            method += f"~{self.variant}"
        elif self.sweep:
            method += "~" + str(self.budget).replace("%", "pct")
        return f"{self.task}.{self.backbone}.{method}.s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        """The result file's ``cell`` record (no ``variant`` / ``smoke`` / ``sweep`` /
        ``threads`` keys where unset)."""
        out = asdict(self)
        for key in ("variant", "threads"):
            if out[key] is None:
                del out[key]
        for flag in ("smoke", "sweep"):
            if not out[flag]:
                del out[flag]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Cell":
        return cls(**data)

    def config_hash(self) -> str:
        """Identity of what is computed (not where): the data path is left out."""
        key = {k: v for k, v in self.to_dict().items() if k != "data_root"}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
