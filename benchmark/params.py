"""Trainable-parameter table: counted on the meta device, next to the paper's figures."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

from methods import build, get_backbone, get_method, method_for
from methods.base import NotApplicableError
from tasks import get_task

from .reported import reported_params_m


@dataclass
class ParamRow:
    backbone: str
    method: str
    task: str
    width: dict[str, Any]
    trainable_backbone_params: int
    reported_params_m: float | None

    @property
    def params_m(self) -> float:
        return self.trainable_backbone_params / 1e6

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "params_m": round(self.params_m, 4)}


def count_row(backbone: str, method: str, task: str | None = None,
              overrides: dict[str, Any] | None = None) -> ParamRow:
    spec = get_backbone(backbone)
    task_spec = get_task(task or spec.default_task)
    instance = method_for(method, backbone, task_spec.name, **(overrides or {}))
    host = build(backbone, instance, task_spec.name, device="meta")
    return ParamRow(
        backbone=backbone, method=method, task=task_spec.name,
        width=instance.config.widths(),
        trainable_backbone_params=host.num_trainable(),
        # The paper's figure belongs to the released configuration, not to overridden widths.
        reported_params_m=None if overrides else reported_params_m(
            spec.paper_name, get_method(method).paper_name, task_spec.kind,
            task_spec.paper_dataset),
    )


def param_table(backbones: Iterable[str], methods: Iterable[str], tasks: Iterable[str | None],
                overrides: dict[str, Any] | None = None) -> tuple[list[ParamRow], list[str]]:
    """All rows of the grid; cells where a method does not apply are skipped with a note."""
    rows, skipped = [], []
    for backbone in backbones:
        for method in methods:
            for task in tasks:
                try:
                    rows.append(count_row(backbone, method, task, overrides))
                except NotApplicableError as exc:
                    skipped.append(str(exc))
    return rows, skipped
