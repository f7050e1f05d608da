"""Procedural scenes with real structure: textured 'stuff' regions and shaped objects.

Every class has its own colour, texture and (for objects) shape, drawn with random pose,
scale and lighting, so that models learn and methods can differ. Deterministic for a seed.
Used by the writers that put the scenes into each real dataset's on-disk format.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("ellipse", "box", "triangle", "diamond", "ring", "cross")
TEXTURES = ("flat", "stripes", "checker", "dots", "noise", "gradient")


@dataclass(frozen=True)
class ClassStyle:
    colour: tuple[int, int, int]
    texture: str
    shape: str  # objects only
    period: int  # texture scale in pixels


def class_styles(num_classes: int, seed: int = 0) -> list[ClassStyle]:
    """A fixed, distinct look per class (the same for every dataset split)."""
    rng = np.random.default_rng(10_000 + seed)
    styles = []
    for i in range(num_classes):
        hue = (i * 0.61803398875) % 1.0
        colour = _hsv_to_rgb(hue, 0.55 + 0.4 * rng.random(), 0.5 + 0.45 * rng.random())
        styles.append(ClassStyle(colour, TEXTURES[i % len(TEXTURES)], SHAPES[(i * 5) % len(SHAPES)],
                                 int(rng.integers(3, 9))))
    return styles


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def _texture(style: ClassStyle, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) float image of the class's colour modulated by its texture."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    p = style.period
    if style.texture == "stripes":
        mod = 0.75 + 0.25 * np.sign(np.sin(2 * np.pi * u / (2 * p)))
    elif style.texture == "checker":
        mod = 0.75 + 0.25 * (((xx // p) + (yy // p)) % 2 * 2 - 1)
    elif style.texture == "dots":
        mod = 0.8 + 0.2 * ((np.hypot(xx % (2 * p) - p, yy % (2 * p) - p) < p / 2) * 2 - 1)
    elif style.texture == "noise":
        mod = 0.85 + 0.15 * rng.standard_normal((h, w)).astype(np.float32)
    elif style.texture == "gradient":
        mod = 0.6 + 0.4 * (u - u.min()) / max(float(np.ptp(u)), 1.0)
    else:
        mod = np.ones((h, w), np.float32)
    light = rng.uniform(0.8, 1.2)
    return np.asarray(style.colour, np.float32)[None, None] * (mod * light)[..., None]


def shape_mask(shape: str, h: int, w: int, cy: float, cx: float, ry: float, rx: float,
               angle: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = (dx * c + dy * s) / max(rx, 1e-3), (-dx * s + dy * c) / max(ry, 1e-3)
    if shape == "ellipse":
        return u * u + v * v <= 1
    if shape == "box":
        return (np.abs(u) <= 1) & (np.abs(v) <= 1)
    if shape == "triangle":
        return (v <= 1) & (v >= 2 * np.abs(u) - 1)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1
    if shape == "ring":
        r = u * u + v * v
        return (r <= 1) & (r >= 0.35)
    return ((np.abs(u) <= 0.35) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.35) & (np.abs(u) <= 1))


@dataclass
class SceneObject:
    label: int
    mask: np.ndarray  # (H, W) bool, the visible part
    keypoints: np.ndarray  # (K, 3): x, y, visibility (2 visible, 1 occluded)


def draw_scene(rng: np.random.Generator, height: int, width: int, styles: list[ClassStyle],
               stuff: list[int], things: list[int], max_objects: int = 4,
               keypoint_angles: tuple[float, ...] = (), min_objects: int = 1,
               object_scale: tuple[float, float] = (0.12, 0.3)) -> tuple[np.ndarray, np.ndarray, list[SceneObject]]:
    """An image (H, W, 3) uint8, its label map (H, W) int (-1 = unlabelled) and the objects.

    Stuff classes fill the frame in bands/blobs; objects of thing classes are pasted on top
    (later objects occlude earlier ones). Keypoint k of an object sits at image-frame angle
    ``keypoint_angles[k]`` on the ellipse through its extent, so mirrored angles make
    left/right keypoint pairs that swap under a horizontal flip; visibility 1 (occluded)
    where the point is off the object's visible mask, else 2. ``object_scale``: the range of
    an object's radii as fractions of the frame.
    """
    image = np.zeros((height, width, 3), np.float32)
    labels = np.full((height, width), -1, np.int64)
    # stuff: a horizon split plus a blob, each a stuff class
    horizon = int(rng.uniform(0.3, 0.7) * height)
    regions = [np.zeros((height, width), bool) for _ in range(2)]
    regions[0][:horizon] = True
    regions[1][horizon:] = True
    blob = shape_mask("ellipse", height, width, rng.uniform(0, height), rng.uniform(0, width),
                      rng.uniform(0.15, 0.35) * height, rng.uniform(0.2, 0.5) * width,
                      rng.uniform(0, np.pi))
    picks = rng.choice(stuff, size=3, replace=len(stuff) < 3)
    for region, cls in zip(regions + [blob], picks):
        image[region] = _texture(styles[cls], height, width, rng)[region]
        labels[region] = cls
    objects: list[SceneObject] = []
    lo, hi = object_scale
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        cls = int(rng.choice(things))
        style = styles[cls]
        ry, rx = rng.uniform(lo, hi) * height, rng.uniform(lo, hi) * width
        cy, cx = rng.uniform(ry, height - ry), rng.uniform(rx, width - rx)
        angle = rng.uniform(0, 2 * np.pi)
        mask = shape_mask(style.shape, height, width, cy, cx, ry, rx, angle)
        if mask.sum() < 16:
            continue
        image[mask] = _texture(style, height, width, rng)[mask]
        labels[mask] = cls
        for obj in objects:  # occlusion
            obj.mask &= ~mask
        kps = np.zeros((len(keypoint_angles), 3), np.float32)
        for k, t in enumerate(keypoint_angles):
            kps[k] = (cx + 0.8 * rx * np.cos(t), cy + 0.8 * ry * np.sin(t), 2)
        objects.append(SceneObject(cls, mask, kps))
    objects = [o for o in objects if o.mask.sum() >= 8]
    for obj in objects:
        for kp in obj.keypoints:
            x, y = int(np.clip(kp[0], 0, width - 1)), int(np.clip(kp[1], 0, height - 1))
            if not obj.mask[y, x]:
                kp[2] = 1
    image += rng.normal(0, 6, image.shape).astype(np.float32)  # sensor noise
    return np.clip(image, 0, 255).astype(np.uint8), labels, objects
