"""Budget matching: choose a method's width so its trainable backbone count meets a target.

Method-independent: a method declares its width knob (``width_field(..., budget=(lo, hi,
step))``) and counts are taken on the meta device. Trainable counts are polynomials of degree
at most two in one width knob for every method here, so three counts fit the curve and the
counts at the nearest knob values confirm it; where a knob is not polynomial (rounded
widths) a bisection over the knob's values takes over.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from methods import count_trainable, get_backbone, get_method, method_for
from methods.base import PEFTMethod
from catalog import get_task

from .reported import reported_params_m
from .tables import counts_heads, table_of

_NUMBER = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(?:e(\d+))?([kKmM]?)$")




class BudgetOutOfRange(ValueError):
    """No width of the method's knob gives the budget's count on that backbone."""

@dataclass(frozen=True)
class Budget:
    kind: str  # absolute | fraction | match | paper
    value: float | str | None = None

    def __str__(self) -> str:
        return {"absolute": lambda: f"{self.value / 1e6:g}M", "fraction": lambda: f"{self.value * 100:g}%",
                "match": lambda: f"match:{self.value}", "paper": lambda: "paper"}[self.kind]()


def parse_budget(text: str) -> Budget:
    """'5.2M', '5200000', '800k', '3%', 'match:parax' or 'paper'."""
    t = text.strip()
    if t == "paper":
        return Budget("paper")
    if t.startswith("match:") and t[6:]:
        get_method(t[6:])
        return Budget("match", t[6:])
    if t.endswith("%"):
        try:
            pct = float(t[:-1])
        except ValueError:
            pct = -1.0
        if 0 < pct <= 100:
            return Budget("fraction", pct / 100)
        if pct > 100:
            raise ValueError(f"--budget {text}: a fraction of the backbone is at most 100%")
    m = _NUMBER.match(t)
    if m:
        value = float(m.group(1)) * 10 ** int(m.group(2) or 0)
        value *= {"": 1, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6}[m.group(3)]
        if value > 0:
            return Budget("absolute", value)
    raise ValueError(f"--budget expects a count (5.2M, 800k, 5200000), a fraction of the "
                     f"backbone (3%), match:METHOD or paper; got {text!r}")


@functools.lru_cache(maxsize=None)
def counted_head_params(backbone: str, task: str, method: str) -> int:
    """The task heads' parameters that the paper's count for a (backbone, task, method) cell
    includes (``counts_heads``): SETR-PUP's on Table 7, UperNet's for Table 8's full
    fine-tuning, none elsewhere."""
    if not counts_heads(table_of(task, backbone), method):
        return 0
    from tasks.segmentation import head_params

    return head_params(backbone, get_task(task).layout.num_classes)


def target_count(budget: Budget, backbone: str, method: str, task: str) -> int:
    if budget.kind == "absolute":
        return round(budget.value)
    if budget.kind == "fraction":
        return round(budget.value * count_trainable(backbone, method_for("full", backbone, task), task))
    if budget.kind == "match":
        return count_trainable(backbone, method_for(budget.value, backbone, task), task)
    spec, task_spec = get_backbone(backbone), get_task(task)
    reported = reported_params_m(spec.paper_name, get_method(method).paper_name,
                                 task_spec.kind, task_spec.paper_dataset)
    if reported is None:
        raise ValueError(f"the paper reports no count for {method} on {backbone} "
                         f"({task_spec.paper_dataset}); use a number, a % or match:METHOD")
    return round(reported * 1e6) - counted_head_params(backbone, task, method)


@dataclass
class Solution:
    method: PEFTMethod
    count: int
    target: int


def solve(method: str, backbone: str, task: str, target: int,
          overrides: dict[str, Any] | None = None) -> Solution:
    """The knob value whose count is closest to ``target`` (ties: the smaller width)."""
    cls = get_method(method)
    knob = cls.config_class.budget_knob()
    if knob is None:
        raise ValueError(f"{method} has no width knob to match a budget with")
    name, lo, hi, step = knob
    steps = round((hi - lo) / step)
    integral = float(lo).is_integer() and float(step).is_integer()

    def value(i: int) -> Any:
        v = lo + i * step
        return int(round(v)) if integral else round(v, 12)  # no float noise (0.0875, not ...01)

    cache: dict[int, tuple[PEFTMethod, int]] = {}

    def at(i: int) -> int:
        if i not in cache:
            inst = method_for(method, backbone, task, **{**(overrides or {}), name: value(i)})
            cache[i] = (inst, count_trainable(backbone, inst, task))
        return cache[i][1]

    def out_of_range() -> BudgetOutOfRange:
        low, high = at(0), at(steps)
        return BudgetOutOfRange(
            f"budget {target / 1e6:.3f}M is outside what {method} reaches on {backbone}: "
            f"{low / 1e6:.3f}M ({name}={value(0)}) to {high / 1e6:.3f}M ({name}={value(steps)})")

    if target < at(0):
        raise out_of_range()
    poly = _quadratic(at, steps)
    if poly is not None:
        a, b, c = poly
        root = _increasing_root(a, b, c - target)
        near = set() if root is None else {
            j for j in (math.floor(root), math.ceil(root)) if 0 <= j <= steps}
        if near and all(at(j) == round(a * j * j + b * j + c) for j in near):
            best = min(near, key=lambda j: (abs(at(j) - target), j))
            return Solution(cache[best][0], at(best), target)
    if target > at(steps):
        raise out_of_range()
    best = _bisect(at, target, steps)
    return Solution(cache[best][0], at(best), target)


def _quadratic(at: Callable[[int], int], steps: int) -> tuple[float, float, float] | None:
    """(a, b, c) of a x^2 + b x + c through the counts at 0, 1, 2."""
    if steps < 3:
        return None
    f0, f1, f2 = at(0), at(1), at(2)
    a = (f2 - 2 * f1 + f0) / 2
    return a, f1 - f0 - a, float(f0)


def _increasing_root(a: float, b: float, c: float) -> float | None:
    if a == 0:
        return -c / b if b > 0 else None
    disc = b * b - 4 * a * c
    return None if disc < 0 else (-b + math.sqrt(disc)) / (2 * a)


def _bisect(at: Callable[[int], int], target: int, steps: int) -> int:
    lo, hi = 0, steps
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if at(mid) < target:
            lo = mid
        else:
            hi = mid
    return lo if abs(target - at(lo)) <= abs(at(hi) - target) else hi
