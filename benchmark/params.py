"""Trainable-parameter table: counted on the meta device, next to the paper's figures."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

from methods import count_trainable, get_backbone, get_method, method_for
from methods.base import NotApplicableError
from catalog import get_task

from .budget import Budget, counted_head_params, solve, target_count
from .reported import reported_params_m


@dataclass
class ParamRow:
    backbone: str
    method: str
    task: str
    width: dict[str, Any]
    trainable_backbone_params: int
    reported_params_m: float | None
    budget: str | None = None
    budget_target: int | None = None
    head_params: int = 0  # the task heads' parameters the paper's count includes (Tables 7, 8)

    @property
    def width_text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.width.items()) or "-"

    @property
    def params_m(self) -> float:
        """The count as the paper's table counts it (millions)."""
        return (self.trainable_backbone_params + self.head_params) / 1e6

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "params_m": round(self.params_m, 4)}


def count_row(backbone: str, method: str, task: str | None = None,
              overrides: dict[str, Any] | None = None, budget: Budget | None = None) -> ParamRow:
    """One cell; with a budget, the method's width knob is solved to meet it.

    ``--budget paper`` keeps the released width when its count already rounds to the paper's
    figure (e.g. ParaX r = 128, VPT n = 10) and solves otherwise.
    """
    spec = get_backbone(backbone)
    task_spec = get_task(task or spec.default_task)
    reported = reported_params_m(spec.paper_name, get_method(method).paper_name,
                                 task_spec.kind, task_spec.paper_dataset)
    instance = method_for(method, backbone, task_spec.name, **(overrides or {}))
    n = count_trainable(backbone, instance, task_spec.name)
    heads = counted_head_params(backbone, task_spec.name, method)
    target = None
    if budget is not None and instance.config.budget_knob() is not None:
        target = target_count(budget, backbone, method, task_spec.name)
        keep = budget.kind == "paper" and round((n + heads) / 1e6, 1) == reported
        if not keep:
            solution = solve(method, backbone, task_spec.name, target, overrides)
            instance, n = solution.method, solution.count
    return ParamRow(
        backbone=backbone, method=method, task=task_spec.name,
        width=instance.config.widths(),
        trainable_backbone_params=n,
        # The paper's figure belongs to the released configuration, not to overridden widths.
        reported_params_m=None if overrides and budget is None else reported,
        budget=None if budget is None else str(budget),
        budget_target=target,
        head_params=heads,
    )


def sized_options(backbone: str, method: str, task: str, overrides: dict[str, Any],
                  budget: Budget | None) -> dict[str, Any]:
    """A cell's method options: the overrides plus, under a budget, the solved width knob.

    A knob the overrides set explicitly (an ablation's bottleneck) is kept as given.
    """
    knob = get_method(method).config_class.budget_knob()
    if budget is None or knob is None or knob[0] in overrides:
        return dict(overrides)
    return {**overrides, **count_row(backbone, method, task, overrides, budget).width}


def param_table(backbones: Iterable[str], methods: Iterable[str], tasks: Iterable[str | None],
                overrides: dict[str, Any] | None = None,
                budget: Budget | None = None) -> tuple[list[ParamRow], list[str]]:
    """All rows of the grid; cells where a method does not apply are skipped with a note."""
    rows, skipped = [], []
    for backbone in backbones:
        for method in methods:
            for task in tasks:
                try:
                    rows.append(count_row(backbone, method, task, overrides, budget))
                except NotApplicableError as exc:
                    skipped.append(str(exc))
    return rows, skipped
