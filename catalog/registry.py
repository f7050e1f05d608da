"""A name -> spec table with one registration rule and one lookup error."""
from __future__ import annotations

from typing import Generic, TypeVar

S = TypeVar("S")


class Registry(dict, Generic[S]):
    def __init__(self, what: str, error: type[KeyError]):
        super().__init__()
        self.what, self.error = what, error

    def register(self, spec: S) -> S:
        """Make ``spec`` available under ``spec.name`` (the same spec twice is a no-op)."""
        if spec.name in self and self[spec.name] != spec:
            raise ValueError(f"{self.what} name '{spec.name}' is already registered")
        self[spec.name] = spec
        return spec

    def lookup(self, name: str) -> S:
        try:
            return self[name]
        except KeyError:
            raise self.error(f"unknown {self.what} '{name}'; known {self.what}s: "
                             f"{', '.join(self)}") from None
