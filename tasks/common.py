"""What every task's configuration shares: normalisation, the backbone entry, loaders, AdamW,
and the COCO-style warm-up / step schedule."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from PIL import Image

from catalog import Cell

from .registry import DataFormatError

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def backbone_cfg(cell: Cell, drop_path: float = 0.0) -> dict[str, Any]:
    return dict(type="ParaXBackbone", backbone=cell.backbone, method=cell.method,
                task=cell.task, options=dict(cell.options), pretrained=cell.pretrained,
                drop_path_rate=drop_path)


def stage_dims(cell: Cell) -> list[int]:
    from methods.backbones import stage_dims as dims

    return list(dims(cell.backbone))


PAPER_WORKERS = 8  # per process (per GPU)


def loader(batch: int, dataset: dict[str, Any], train: bool, paper: bool,
           infinite: bool | None = None, **extra: Any) -> dict[str, Any]:
    """A dataloader. ``infinite``: shuffled sampling without end, for a loop counted in
    iterations (default: a mini training loader); epochs otherwise. The paper profile decodes
    and augments in worker processes (a GPU waits for them otherwise); a mini run's one CPU
    thread does it in the training process."""
    if infinite is None:
        infinite = train and not paper
    return dict(batch_size=batch, num_workers=PAPER_WORKERS if paper else 0,
                persistent_workers=paper,
                sampler=dict(type="InfiniteSampler" if infinite else "DefaultSampler",
                             shuffle=train),
                **extra, dataset=dataset)


def adamw(lr: float, weight_decay: float, **optimizer: Any) -> dict[str, Any]:
    """torch's AdamW, fused: one kernel per step over all parameters instead of a dozen small
    ops per tensor (an eighth of a micro ParaX step on CPU went to the unfused one), same update."""
    return dict(type="AdamW", lr=lr, weight_decay=weight_decay, fused=True, **optimizer)


def warmup_multistep(cell: Cell, profile: dict[str, Any], milestones: list[int],
                     epochs: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(train loop, LR schedule): the paper's schedule of ``epochs`` epochs (linear warm-up
    over ``profile['warmup']`` iterations, x0.1 steps at the epochs ``milestones``) or, for
    mini, the same shape in iterations: the steps at the same fractions of the run.
    Validation runs once, after training."""
    warmup = dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0,
                  end=profile["warmup"])
    if cell.profile == "paper":
        return (dict(type="EpochBasedTrainLoop", max_epochs=epochs, val_begin=epochs + 1),
                [warmup, dict(type="MultiStepLR", begin=0, end=epochs, by_epoch=True,
                              milestones=milestones, gamma=0.1)])
    iters = cell.iters if cell.iters is not None else profile["iters"]
    steps = [round(iters * m / epochs) for m in milestones]
    return (dict(type="IterBasedTrainLoop", max_iters=iters, val_begin=iters + 1),
            [warmup, dict(type="MultiStepLR", begin=0, end=max(iters, 1), by_epoch=False,
                          milestones=steps, gamma=0.1)])


def open_image(path: Path) -> Image.Image:
    """The image at ``path``, decoded completely (any mode); a missing or broken file is a
    DataFormatError naming it."""
    try:
        img = Image.open(path)
        img.load()
        return img
    except FileNotFoundError:
        raise DataFormatError(f"{path}: image not found") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for broken files
        raise DataFormatError(f"{path}: the image does not decode ({exc})") from None


def cache_dir(*parts: str) -> Path:
    """A folder of the user's cache ($PARAX_BENCH_CACHE, default ~/.cache/parax-bench)."""
    root = Path(os.environ.get("PARAX_BENCH_CACHE", Path.home() / ".cache" / "parax-bench"))
    return root.joinpath(*parts)


class CheckCache:
    """What a data check established about files that have not changed since (same size and
    modification time), kept across runs: a dataset's files are decoded once, not once per
    cell. Entries are keyed by the files' absolute paths; ``with`` saves them."""

    def __init__(self, check: str, root: str | os.PathLike):
        root = str(Path(root).resolve())
        name = hashlib.sha256(f"{check}:{root}".encode()).hexdigest()[:16]
        self.path = cache_dir("checks", f"{check}-{name}.json")
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    @staticmethod
    def _stamp(paths: tuple[Path, ...]) -> list[list[int]]:
        return [[(st := p.stat()).st_size, st.st_mtime_ns] for p in paths]

    def get(self, *paths: Path) -> Any:
        entry = self.entries.get("|".join(str(p.resolve()) for p in paths))
        try:
            return entry["value"] if entry and entry["stamp"] == self._stamp(paths) else None
        except OSError:  # a file went missing: check it afresh
            return None

    def put(self, value: Any, *paths: Path) -> Any:
        self.entries["|".join(str(p.resolve()) for p in paths)] = {
            "stamp": self._stamp(paths), "value": value}
        self.changed = True
        return value

    def __enter__(self) -> "CheckCache":
        return self

    def __exit__(self, *exc) -> None:
        if self.changed:  # what was checked stays checked, even if a later file failed
            write_atomic(self.path, json.dumps(self.entries))


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file (readers see all or nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
