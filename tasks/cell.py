"""One cell of the grid: (task, backbone, method, options, seed, profile) and its data."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

PROFILES = ("mini", "paper")


@dataclass
class Cell:
    task: str
    backbone: str
    method: str
    data_root: str
    work_dir: str
    seed: int = 0
    profile: str = "mini"
    options: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    iters: int | None = None  # override the profile's schedule length
    budget: str | None = None  # the budget that sized ``options`` (a record; options hold the width)

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {self.profile!r}")

    def backbone_cfg(self, drop_path: float = 0.0) -> dict[str, Any]:
        return dict(type="ParaXBackbone", backbone=self.backbone, method=self.method,
                    task=self.task, options=dict(self.options), pretrained=self.pretrained,
                    drop_path_rate=drop_path)

    def stage_dims(self) -> list[int]:
        from methods.backbones import stage_dims

        return list(stage_dims(self.backbone))

    def config_hash(self) -> str:
        """Identity of what is computed (not where): paths are left out."""
        key = {k: v for k, v in asdict(self).items() if k not in ("data_root", "work_dir")}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def warmup_multistep(cell: Cell, profile: dict[str, Any],
                     milestones: list[int]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(train loop, LR schedule): the paper's epoch schedule (linear warm-up over
    ``profile['warmup']`` iterations, steps at ``milestones``) or, for mini, a short
    iteration schedule with the same warm-up. Validation runs once, after training."""
    warmup = dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0,
                  end=profile["warmup"])
    if cell.profile == "paper":
        epochs = profile["epochs"]
        return (dict(type="EpochBasedTrainLoop", max_epochs=epochs, val_begin=epochs + 1),
                [warmup, dict(type="MultiStepLR", begin=0, end=epochs, by_epoch=True,
                              milestones=milestones, gamma=0.1)])
    iters = cell.iters if cell.iters is not None else profile["iters"]
    return dict(type="IterBasedTrainLoop", max_iters=iters, val_begin=iters + 1), [warmup]
