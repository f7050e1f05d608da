"""Write synthetic scenes in the real on-disk formats of the benchmark's datasets.

The loaders (OpenMMLab's dataset classes and ours) read these files exactly as they read the
real datasets; nothing downstream knows the data is synthetic.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from .scenes import class_styles, draw_scene

# ADE20K ids (1-based in the label PNGs; 0 = 'other', ignored) used for synthetic scenes.
ADE20K_STUFF = [3, 10, 7, 22]  # sky, grass, road, water
ADE20K_THINGS = [13, 21, 5, 20, 16]  # person, car, tree, chair, table


def fingerprint(root: str | Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def write_ade20k(root: str | Path, seed: int = 0, train: int = 64, val: int = 16,
                 size: int = 64) -> Path:
    """ADEChallengeData2016 layout: images/{training,validation}/ADE_*.jpg and
    annotations/{training,validation}/ADE_*.png (uint8 class ids, 0 = other)."""
    base = Path(root) / "ADEChallengeData2016"
    styles = class_styles(151)
    rng = np.random.default_rng(seed)
    for split, count, prefix in (("training", train, "ADE_train"), ("validation", val, "ADE_val")):
        (base / "images" / split).mkdir(parents=True, exist_ok=True)
        (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(1, count + 1):
            image, labels, _ = draw_scene(rng, size, size, styles, ADE20K_STUFF, ADE20K_THINGS)
            name = f"{prefix}_{i:08d}"
            Image.fromarray(image).save(base / "images" / split / f"{name}.jpg", quality=95)
            Image.fromarray(np.clip(labels, 0, 255).astype(np.uint8)).save(
                base / "annotations" / split / f"{name}.png")
    return base
