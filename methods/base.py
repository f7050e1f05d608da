"""The one interface every PEFT method implements, and how a method is applied to a backbone.

A method is a config dataclass plus a :class:`PEFTMethod` subclass. ``attach`` adds modules
at named sites of a :class:`~methods.hosts.BackboneHost` (and registers any shared state on
it); ``trainable`` declares which parameters train. :func:`apply_method` freezes the backbone,
attaches, and unfreezes exactly what the method declares, so the freezing rule lives in one
place.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping

import torch
from torch import nn

from .hosts import Role, Site, get_family

if TYPE_CHECKING:
    from catalog import BackboneSpec, TaskSpec

    from .hosts import BackboneHost


class NotApplicableError(ValueError):
    """The method does not exist for this backbone family (a grid skips such cells)."""


class NotMergeableError(ValueError):
    """The method's update cannot be folded into the plain backbone."""


def width_field(default: Any, help: str = "",
                budget: tuple[float, float, float] | None = None) -> Any:
    """A config field that sets the method's width (shown by ``parax-bench params``).

    ``budget=(lo, hi, step)`` makes it the knob budget matching turns: the trainable count
    must grow with it, and its values are ``lo, lo + step, ..., hi``.
    """
    return dataclasses.field(default=default,
                             metadata={"width": True, "help": help, "budget": budget})


@dataclasses.dataclass
class MethodConfig:
    """Base of every method's configuration. Subclasses validate their own fields."""

    def validate(self) -> None:
        """Raise ValueError with a message that says what was expected."""

    def widths(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get("width")}

    @classmethod
    def budget_knob(cls) -> tuple[str, float, float, float] | None:
        """(field, lo, hi, step) of the knob budget matching turns, or None."""
        for f in dataclasses.fields(cls):
            if f.metadata.get("budget"):
                return (f.name, *f.metadata["budget"])
        return None


@dataclasses.dataclass
class SelectionBatch:
    """One training batch for a method that chooses what trains from the downstream data."""

    loss: Callable[[], torch.Tensor]  # the task's training loss on it (head and decoder as built)
    images: torch.Tensor | None = None  # classification: the images in [0, 1], (B, 3, H, W)
    labels: torch.Tensor | None = None  # and their classes, (B,)
    # classification: images in [0, 1] -> the backbone's pooled features (B, C)
    features: Callable[[torch.Tensor], torch.Tensor] | None = None


class PEFTMethod(ABC):
    """A parameter-efficient fine-tuning method behind one interface."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper_name: ClassVar[str | None] = None  # the method's name in the paper's tables
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    # Sites and placement roles it needs: on a family without one, it is not applicable.
    requires: ClassVar[tuple[Site | Role, ...]] = ()

    def __init__(self, config: MethodConfig | None = None, **overrides: Any):
        if config is None:
            config = self.config_class()
        elif not isinstance(config, self.config_class):
            raise TypeError(f"{self.name}: expected a {self.config_class.__name__}, "
                            f"got {type(config).__name__}")
        known = {f.name for f in dataclasses.fields(self.config_class)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {unknown}; options are {sorted(known)}")
        self.config = dataclasses.replace(config, **overrides)
        self.config.validate()

    @classmethod
    def paper_config(cls, backbone: "BackboneSpec", task: "TaskSpec | None") -> MethodConfig:
        """The configuration the paper's released code uses for (backbone, task)."""
        return cls.config_class()

    @classmethod
    def check_applicable(cls, family: str) -> None:
        host = get_family(family)
        missing = [need.value for need in cls.requires if not host.has(need)]
        if missing:
            raise NotApplicableError(f"{cls.name} is not applicable to {host.display_name} "
                                     f"backbones: the family has no {' / '.join(missing)} "
                                     f"placement")

    @abstractmethod
    def attach(self, host: "BackboneHost") -> None:
        """Add this method's modules at the host's sites (the backbone is already frozen)."""

    def trainable(self, host: "BackboneHost") -> Iterable[nn.Parameter]:
        """Parameters that train. Default: everything the method attached."""
        return host.added_parameters()

    def select(self, host: "BackboneHost", batches: Iterable[SelectionBatch]) -> None:
        """Choose what trains from the training data (SPT, GPS override this). The runner calls
        it once, after attaching and before training, with one shuffled pass over the training
        set, the model in training mode and the global RNG seeded by the cell's seed; it
        clears the gradients, restores the model's other buffers and unfreezes ``trainable``
        afterwards. A selection fills buffers, or attaches a structure it chose (SPT), which
        then needs ``planned_count`` and ``restore``."""

    def planned_count(self, host: "BackboneHost") -> int | None:
        """The trainable count a structure chosen by ``select`` is sized to (its budget), for
        counting before any data; None: count what ``attach`` built."""
        return None

    def restore(self, host: "BackboneHost", state: Mapping[str, torch.Tensor]) -> None:
        """Rebuild the structure ``select`` chose from a saved state dict (our naming), so that
        the state loads into it; nothing to do for a method whose shapes ``attach`` fixes."""

    def merge(self, host: "BackboneHost") -> None:
        """Fold the attached update into the frozen weights and remove the modules."""
        raise NotMergeableError(f"{self.name} has no merged form: its modules stay at inference")

    def official_keys(self, host: "BackboneHost") -> dict[str, str]:
        """Map of our state-dict keys to the method authors' released naming ({} if none)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def apply_method(host: "BackboneHost", method: PEFTMethod) -> "BackboneHost":
    """Freeze the backbone, attach ``method`` and unfreeze what it declares as trainable."""
    method.check_applicable(host.family)
    if host.method is not None:
        raise ValueError(f"{host.name} already has method '{host.method.name}' attached")
    host.freeze_backbone()
    method.attach(host)
    host.method = method
    unfreeze(host)
    return host


def unfreeze(host: "BackboneHost") -> None:
    """Unfreeze what the host's method declares as trainable (after attaching, selecting or
    restoring)."""
    for p in host.method.trainable(host):
        p.requires_grad_(True)


def restore(host: "BackboneHost", state: Mapping[str, torch.Tensor]) -> None:
    """Rebuild the host's data-chosen structure from ``state`` (``PEFTMethod.restore``) and
    unfreeze what trains in it, as after the selection."""
    if host.method is not None:
        host.method.restore(host, state)
        unfreeze(host)
