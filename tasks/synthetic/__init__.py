"""Synthetic datasets in the real on-disk formats, written deterministically from a seed.

Every task's dataset is written by its kind (``tasks.registry``) in the layout of its spec;
``source`` is the mini profile's pretraining set (CIFAR-100's format, 100 classes of their own).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from catalog import TASKS

from ..registry import fingerprint, write_dataset
from .writers import write_source

SOURCE = "source"


def datasets() -> list[str]:
    """The names :func:`generate` writes: every registered task, and the source set."""
    return [*TASKS, SOURCE]


def generate(dataset: str, out: str | Path, seed: int = 0, **sizes) -> Path:
    """Write ``dataset`` under ``out`` (replacing it only once the new copy is complete)."""
    if dataset not in datasets():
        raise ValueError(f"unknown synthetic dataset '{dataset}'; known: {', '.join(datasets())}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if dataset == SOURCE:
            write_source(tmp, seed=seed, **sizes)
        else:
            write_dataset(dataset, tmp, seed=seed, **sizes)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = ["SOURCE", "datasets", "fingerprint", "generate"]
