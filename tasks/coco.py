"""COCO annotation files as other projects write them, checked entry by entry before anything
is built (the images too: each is decoded once), and completed where OpenMMLab's loaders need
a field COCO allows to be left out.

A file that needs completing (an image without ``height`` / ``width``, an annotation
without ``area`` or ``iscrowd``) is rewritten, complete, into a cache folder and that copy is
what the loaders read; the original is never touched. Every problem is one line naming the
file, the entry and what was expected.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from catalog import CocoLayout

from .common import CheckCache, cache_dir, open_image, write_atomic
from .registry import DataFormatError


def decode(path: Path, cache: CheckCache) -> tuple[int, int]:
    """(width, height) of an image that decodes completely (any mode); an image decoded by
    an earlier check and unchanged since is not decoded again."""
    known = cache.get(path)
    return tuple(known if known is not None else cache.put(list(open_image(path).size), path))


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataFormatError(f"{what} not found: expected {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: not a {what} ({exc})") from None
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: not a {what}: expected a JSON object")
    return data


def _need_list(data: dict[str, Any], key: str, ann: Path) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list):
        raise DataFormatError(f"{ann}: expected a list under '{key}' (COCO format)")
    return value


def categories(data: dict[str, Any], ann: Path, allowed: Iterable[str] | None) -> dict[int, dict]:
    """id -> category; every name among ``allowed`` (the classes the model is built for)."""
    out: dict[int, dict] = {}
    for cat in _need_list(data, "categories", ann):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise DataFormatError(f"{ann}: category {cat!r}: expected 'id' and 'name'")
        out[cat["id"]] = cat
    if not out:
        raise DataFormatError(f"{ann}: no categories")
    if allowed is not None:
        allowed = set(allowed)
        foreign = sorted(c["name"] for c in out.values() if c["name"] not in allowed)
        if foreign:
            raise DataFormatError(f"{ann}: categories {foreign[:5]} are not among the "
                                  f"{len(allowed)} classes of the model (COCO's names, e.g. "
                                  f"{sorted(allowed)[:3]})")
    return out


def images(data: dict[str, Any], ann: Path, image_dir: Path,
           cache: CheckCache) -> tuple[dict[Any, dict], bool]:
    """id -> image (every file decoded; height / width read from it where the file has
    none); and whether any entry was completed."""
    out: dict[Any, dict] = {}
    completed = False
    for img in _need_list(data, "images", ann):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DataFormatError(f"{ann}: image {img!r}: expected 'id' and 'file_name'")
        if img["id"] in out:
            raise DataFormatError(f"{ann}: image id {img['id']} appears twice")
        width, height = decode(image_dir / img["file_name"], cache)
        if "width" not in img or "height" not in img:
            img["width"], img["height"] = width, height
            completed = True
        elif (img["width"], img["height"]) != (width, height):
            raise DataFormatError(f"{ann}: image {img['id']} ({img['file_name']}): the file is "
                                  f"{width}x{height}, the entry says {img['width']}x{img['height']}")
        out[img["id"]] = img
    if not out:
        raise DataFormatError(f"{ann}: no images (an empty split)")
    return out, completed


def _check_segmentation(seg: Any, where: str, img: dict) -> None:
    if isinstance(seg, list):
        if not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg):
            raise DataFormatError(f"{where}: expected polygons as lists of x, y pairs "
                                  f"(at least 3 points)")
    elif isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            raise DataFormatError(f"{where}: expected an RLE with 'size' and 'counts'")
        if list(seg["size"]) != [img["height"], img["width"]]:
            raise DataFormatError(f"{where}: RLE size {seg['size']} is not the image's "
                                  f"[{img['height']}, {img['width']}]")
    else:
        raise DataFormatError(f"{where}: expected polygons or an RLE, got {type(seg).__name__}")


def check_split(root: str | Path, layout: CocoLayout, split: str, *,
                allowed: Iterable[str] | None = None, masks: bool = False,
                keypoints: int | None = None) -> Path:
    """Check ``coco/annotations/{kind}_{split}.json`` and its images; return the file the
    loaders and the evaluator read (a completed copy where the original leaves fields out).

    ``allowed``: the category names the model is built for; ``masks``: every annotation
    needs a segmentation (Mask R-CNN); ``keypoints``: every category and annotation has
    that many keypoints (top-down pose).
    """
    base = Path(root) / layout.base
    ann = base / "annotations" / f"{layout.annotations}_{split}.json"
    data = read_json(ann, f"COCO {layout.annotations} file")
    cats = categories(data, ann, allowed)
    if keypoints is not None:
        for cat in cats.values():
            n = len(cat.get("keypoints") or [])
            if n != keypoints:
                raise DataFormatError(f"{ann}: category {cat['id']} ({cat['name']}) has {n} "
                                      f"keypoints: expected COCO's {keypoints}")
    with CheckCache("coco-images", base / split) as cache:
        imgs, completed = images(data, ann, base / split, cache)
    maskless, seen = 0, set()
    annotations = _need_list(data, "annotations", ann)
    for a in annotations:
        where = f"{ann}: annotation {a.get('id', '?')}"
        if "id" not in a or a["id"] in seen:
            raise DataFormatError(f"{where}: expected a unique 'id'")
        seen.add(a["id"])
        if a.get("image_id") not in imgs:
            raise DataFormatError(f"{where}: image_id {a.get('image_id')!r} is not among the "
                                  f"file's images")
        if a.get("category_id") not in cats:
            raise DataFormatError(f"{where}: category_id {a.get('category_id')!r} is not among "
                                  f"the file's categories {sorted(cats)[:10]}")
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) for v in bbox)):
            raise DataFormatError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
        if "area" not in a:
            a["area"] = float(bbox[2] * bbox[3])
            completed = True
        if "iscrowd" not in a:
            a["iscrowd"] = 0
            completed = True
        seg = a.get("segmentation")
        if seg:
            _check_segmentation(seg, where, imgs[a["image_id"]])
        elif masks:
            maskless += 1
        if keypoints is not None:
            kps = a.get("keypoints")
            if not isinstance(kps, list) or len(kps) != 3 * keypoints:
                raise DataFormatError(f"{where}: expected {keypoints} keypoints "
                                      f"({3 * keypoints} numbers), got "
                                      f"{len(kps) // 3 if isinstance(kps, list) else kps!r}")
    if maskless:
        raise DataFormatError(f"{ann}: {maskless} of {len(annotations)} annotations have no "
                              f"segmentation: Mask R-CNN needs a mask (polygons or RLE) for "
                              f"every object")
    if not annotations:
        raise DataFormatError(f"{ann}: no annotations: the split has no ground truth to train "
                              f"on or to score against")
    return completed_copy(ann, data) if completed else ann


def completed_copy(ann: Path, data: dict[str, Any]) -> Path:
    """The completed annotations, in a cache folder keyed by the original file's content."""
    digest = hashlib.sha256(ann.read_bytes()).hexdigest()[:16]
    out = cache_dir("coco") / f"{digest}-{ann.name}"
    if not out.is_file():
        write_atomic(out, json.dumps(data))
    return out
