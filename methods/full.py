"""Full fine-tuning: every backbone parameter trains (the paper's 'Full-tuning' rows)."""
from __future__ import annotations

from typing import Iterable

from torch import nn

from .base import PEFTMethod
from .registry import register_method


@register_method
class FullFineTuning(PEFTMethod):
    name = "full"
    paper_name = "Full-tuning"
    description = "Full fine-tuning: every backbone parameter trains."

    def attach(self, host) -> None:
        """Nothing to add."""

    def trainable(self, host) -> Iterable[nn.Parameter]:
        return host.model.parameters()
