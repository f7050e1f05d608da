"""Linear probing: the backbone is frozen and only the task head trains."""
from __future__ import annotations

from .base import PEFTMethod
from .registry import register_method


@register_method
class LinearProbe(PEFTMethod):
    name = "linear"
    description = "Linear probing: frozen backbone, only the task head trains."

    def attach(self, host) -> None:
        """Nothing to add: the backbone stays frozen."""
