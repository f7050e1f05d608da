"""Changes that make a synthetic dataset look like data other projects write."""
from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from catalog import CocoLayout, SegmentationLayout, get_task


def pad(path: Path, extra: tuple[int, int]) -> None:
    """Grow an image (or label map) to the right and bottom; what it shows stays in place,
    the new area is 0 (ignored / void in label maps)."""
    with Image.open(path) as img:
        canvas = Image.new(img.mode, (img.width + extra[0], img.height + extra[1]))
        if img.mode == "P":
            canvas.putpalette(img.getpalette())
        canvas.paste(img, (0, 0))
    canvas.save(path)


def pad_one_val_image(task: str, root: Path, extra: tuple[int, int] = (24, 40)) -> None:
    """One validation image of another size than the rest (its annotations still hold)."""
    layout = get_task(task).layout
    if isinstance(layout, SegmentationLayout):
        base = root / layout.base
        image = sorted((base / layout.images.format(split=layout.splits[1])).iterdir())[0]
        pad(image, extra)
        pad(base / layout.labels.format(split=layout.splits[1]) / f"{image.stem}.png", extra)
        return
    assert isinstance(layout, CocoLayout), task
    base, split = root / layout.base, layout.splits[1]
    ann = base / "annotations" / f"{layout.annotations}_{split}.json"
    coco = json.loads(ann.read_text())
    img = coco["images"][0]
    pad(base / split / img["file_name"], extra)
    img["width"], img["height"] = img["width"] + extra[0], img["height"] + extra[1]
    if layout.annotations == "panoptic":
        png = next(a["file_name"] for a in coco["annotations"] if a["image_id"] == img["id"])
        pad(base / "annotations" / f"panoptic_{split}" / png, extra)
    for a in coco["annotations"]:
        if a["image_id"] == img["id"] and isinstance(a.get("segmentation"), dict):
            a["segmentation"] = _padded_rle(a["segmentation"], extra)
    ann.write_text(json.dumps(coco))


def _padded_rle(rle: dict, extra: tuple[int, int]) -> dict:
    import numpy as np
    from pycocotools import mask as mask_utils

    mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    mask = np.pad(mask, ((0, extra[1]), (0, extra[0])))
    out = mask_utils.encode(np.asfortranarray(mask))
    return {"size": out["size"], "counts": out["counts"].decode()}
