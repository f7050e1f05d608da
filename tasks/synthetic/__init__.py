"""Synthetic datasets in the real on-disk formats, written deterministically from a seed."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .writers import (fingerprint, write_ade20k, write_cifar100, write_coco_instances, write_coco_keypoints,
                      write_coco_panoptic,
                      write_food101,
                      write_imagenet_r,
                      write_loveda, write_potsdam, write_source, write_svhn)

WRITERS: dict[str, Callable[..., Path]] = {
    "ade20k": write_ade20k,
    "potsdam": write_potsdam,
    "loveda": write_loveda,
    "cifar100": write_cifar100,
    "svhn": write_svhn,
    "food101": write_food101,
    "imagenet_r": write_imagenet_r,
    "source": write_source,
    "coco_instance": write_coco_instances,
    "coco_pose": write_coco_keypoints,
    "coco_panoptic": write_coco_panoptic,
}


def generate(dataset: str, out: str | Path, seed: int = 0, **sizes) -> Path:
    """Write ``dataset`` under ``out`` (replacing it only once the new copy is complete)."""
    if dataset not in WRITERS:
        raise ValueError(f"unknown synthetic dataset '{dataset}'; known: {', '.join(WRITERS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        WRITERS[dataset](tmp, seed=seed, **sizes)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = ["WRITERS", "fingerprint", "generate"]
