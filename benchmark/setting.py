"""What an efficiency measurement (the paper's Table 15) measures, and where.

Free of torch and the methods at import, so that ``parax-bench --help`` can show its
defaults without loading the stack (benchmark/efficiency.py runs it).
"""
from __future__ import annotations

from dataclasses import dataclass

AMP_CHOICES = ("none", "fp16", "bf16")  # autocast dtypes (none: fp32)


@dataclass(frozen=True)
class Setting:
    """What is measured, where. The defaults are Table 15's (on a GPU)."""

    backbone: str = "swin-l"
    task: str = "coco_instance"  # whose paper configuration the methods take (and dense or not)
    height: int = 800
    width: int = 1280
    batch: int = 4
    budget: str | None = "paper"  # sizes each method's width knob, as `params --budget`
    device: str = "cuda"
    amp: str = "none"  # none | fp16 (CUDA) | bf16
    warmup: int = 3
    iters: int = 10  # timed training steps
    latency_batch: int = 1
    latency_iters: int = 30  # timed inference calls (cheap; more of them steady the median)
    seed: int = 0

    def validate(self) -> None:
        import torch

        from catalog import get_backbone, get_task

        from .budget import parse_budget

        for key in ("height", "width", "batch", "latency_batch"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"efficiency: {key} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"efficiency: warmup must be an integer >= 0, got {self.warmup!r}")
        for key in ("iters", "latency_iters"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"efficiency: {key} must be an integer >= 2 (a median and "
                                 f"quartiles need samples), got {value!r}")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"efficiency: amp must be one of {', '.join(AMP_CHOICES)}, "
                             f"got {self.amp!r}")
        get_backbone(self.backbone)
        get_task(self.task)
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"efficiency: unknown device {self.device!r} ({exc})") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"efficiency: device {self.device!r} requested but CUDA is not "
                             f"available here; use --device cpu (and a small backbone and size)")
        if self.amp == "fp16" and device.type != "cuda":
            raise ValueError("efficiency: fp16 autocast is for CUDA; use --amp bf16 on CPU")
        if self.budget is not None:
            parse_budget(str(self.budget))

    def describe(self) -> str:
        amp = "" if self.amp == "none" else f", {self.amp} autocast"
        return (f"{self.backbone}, {self.width}x{self.height}, batch {self.batch}, "
                f"{self.device}{amp}, backbone only")
