"""The method registry: one decorator for built-in and third-party methods alike.

A method is one file. Every module of the ``methods`` package is imported when a listing needs
them all (a lookup by name imports ``methods/NAME.py`` first), so dropping a file in is all it
takes: no import line to add. Third-party packages expose methods through the entry-point
group ``parax_bench.methods``; each entry point names a module (importing it runs its
``@register_method``) or a :class:`~methods.base.PEFTMethod` subclass.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from importlib.metadata import entry_points
from pathlib import Path
from typing import TypeVar

from catalog import ENTRY_POINT_GROUP

from .base import PEFTMethod


_REGISTRY: dict[str, type[PEFTMethod]] = {}
_discovered = False
PACKAGE = __name__.rpartition(".")[0]  # "methods"

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


def _discover() -> None:
    """Import every module of the methods package, then the installed entry points (once)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(PACKAGE)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.ispkg and not info.name.startswith("_"):
            importlib.import_module(f"{PACKAGE}.{info.name}")
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if isinstance(obj, type) and issubclass(obj, PEFTMethod):
            register_method(obj)


def get_method(name: str) -> type[PEFTMethod]:
    if name not in _REGISTRY and importlib.util.find_spec(f"{PACKAGE}.{name}") is not None:
        importlib.import_module(f"{PACKAGE}.{name}")  # methods/NAME.py: no need to import all
    if name not in _REGISTRY:
        _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method '{name}'; registered methods: {', '.join(sorted(_REGISTRY))}") from None


def available_methods() -> dict[str, type[PEFTMethod]]:
    _discover()
    return dict(sorted(_REGISTRY.items()))


def source_file(name: str) -> Path:
    """The file defining method ``name`` (its cells depend on it, wherever it lives)."""
    module = importlib.import_module(get_method(name).__module__)
    return Path(module.__file__).resolve()
