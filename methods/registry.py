"""The method registry: one decorator for built-in and third-party methods alike.

Third-party packages expose methods through the entry-point group ``parax_bench.methods``;
each entry point names a module (importing it runs its ``@register_method``) or a
:class:`~methods.base.PEFTMethod` subclass. Entry points are loaded on first lookup.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import TypeVar

from .base import PEFTMethod

ENTRY_POINT_GROUP = "parax_bench.methods"

_REGISTRY: dict[str, type[PEFTMethod]] = {}
_entry_points_loaded = False

M = TypeVar("M", bound=type[PEFTMethod])


class UnknownMethodError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register_method(cls: M) -> M:
    """Class decorator: make a PEFTMethod subclass available under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, PEFTMethod)):
        raise TypeError(f"register_method expects a PEFTMethod subclass, got {cls!r}")
    if not cls.name or not cls.name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"{cls.__name__}.name must be a non-empty identifier, got {cls.name!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name '{cls.name}' is already registered by "
                         f"{_REGISTRY[cls.name].__module__}.{_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, PEFTMethod):
            register_method(obj)


def get_method(name: str) -> type[PEFTMethod]:
    _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method '{name}'; registered methods: {', '.join(sorted(_REGISTRY))}") from None


def available_methods() -> dict[str, type[PEFTMethod]]:
    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))
