"""Task kinds: each turns a task spec (``catalog``) into a training configuration, checks a
dataset in the spec's layout before anything is built, and writes synthetic data in it.

A kind's module registers itself with :func:`register_kind`; ``task_config``,
``check_dataset`` and ``synthesize`` look the kind up from the task's spec, so runner, data
stage and synthetic writer read one description of every dataset.
"""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from catalog import Cell, TaskSpec, get_task

# kind -> the module of tasks/ that implements it (imported on first use)
KIND_MODULES = {
    "semantic_segmentation": "segmentation",
    "instance_segmentation": "detection",
    "panoptic_segmentation": "panoptic",
    "pose_estimation": "pose",
    "classification": "classification",
}


class DataFormatError(ValueError):
    """A dataset file is missing or not in the expected format; the message names it."""


@dataclass(frozen=True)
class Kind:
    build_config: Callable[[TaskSpec, Cell], dict[str, Any]]  # checks the data, then builds
    check: Callable[[TaskSpec, str], Any]  # the data check alone (the paper's data stage)
    write: Callable[..., Path]  # (spec, root, seed=0, train=, val=, size=): synthetic data
    # A smoke run's training batch: 2 where a layer normalises over the batch (a decoder's
    # pyramid pooling, a classifier's BatchNorm1d), 1 where memory is the limit.
    smoke_batch: int = 2


_KINDS: dict[str, Kind] = {}


def register_kind(name: str, kind: Kind) -> Kind:
    _KINDS[name] = kind
    return kind


def kind_of(task: str | TaskSpec) -> Kind:
    spec = get_task(task) if isinstance(task, str) else task
    if spec.kind not in _KINDS:
        importlib.import_module(f"{__package__}.{KIND_MODULES[spec.kind]}")
    return _KINDS[spec.kind]


def task_config(cell: Cell) -> dict[str, Any]:
    """The mmengine runner configuration of ``cell`` (after checking its data)."""
    spec = get_task(cell.task)
    return kind_of(spec).build_config(spec, cell)


def check_dataset(task: str, root: str | Path) -> None:
    spec = get_task(task)
    kind_of(spec).check(spec, str(root))


def write_dataset(task: str, root: str | Path, seed: int = 0, **sizes: int) -> Path:
    spec = get_task(task)
    return kind_of(spec).write(spec, Path(root), seed=seed, **sizes)


CONTENT_HASH_LIMIT = 256 * 2**20  # bytes; larger datasets are fingerprinted by name and size


def fingerprint(root: str | Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order; for datasets over
    CONTENT_HASH_LIMIT (the real ones) over paths and sizes only, prefixed 'meta:'."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    sizes = [p.stat().st_size for p in files]
    by_content = sum(sizes) <= CONTENT_HASH_LIMIT
    digest = hashlib.sha256()
    for path, size in zip(files, sizes):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes() if by_content else str(size).encode())
    return digest.hexdigest() if by_content else "meta:" + digest.hexdigest()
