"""Write synthetic scenes in the real on-disk formats of the benchmark's datasets.

The loaders (OpenMMLab's dataset classes and ours) read these files exactly as they read the
real datasets; nothing downstream knows the data is synthetic.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .scenes import class_styles, draw_scene


def write_segmentation(base: Path, seed: int, splits: dict[str, int], size: int,
                       stuff: list[int], things: list[int], img_suffix: str,
                       images: str, labels: str, prefix: dict[str, str]) -> Path:
    """Scenes of ``stuff`` regions and ``things`` objects: ``images/{split}/PREFIX_n.SUFFIX``
    beside uint8 label maps ``labels/{split}/PREFIX_n.png`` (the layout's patterns)."""
    styles = class_styles(151)
    rng = np.random.default_rng(seed)
    for split, count in splits.items():
        img_dir, ann_dir = base / images.format(split=split), base / labels.format(split=split)
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for i in range(1, count + 1):
            image, label, _ = draw_scene(rng, size, size, styles, stuff, things)
            name = f"{prefix[split]}_{i:08d}"
            if img_suffix == ".jpg":
                Image.fromarray(image).save(img_dir / f"{name}.jpg", quality=95)
            else:
                Image.fromarray(image).save(img_dir / f"{name}{img_suffix}")
            Image.fromarray(np.clip(label, 0, 255).astype(np.uint8)).save(ann_dir / f"{name}.png")
    return base


# Classification: object-centric images, the label is the object's class. Synthetic sets use
# the first CLASSIFICATION_CLASSES classes of each dataset's label space.
CLASSIFICATION_CLASSES = 10
_CLS_STUFF = [200, 201, 202, 203]  # style indices reserved for backgrounds
_CLS_OBJECT_SCALE = (0.25, 0.42)  # the object fills much of the frame, as in object-centric sets


def _object_images(seed: int, count: int, size: int, num_classes: int = CLASSIFICATION_CLASSES,
                   style_seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    styles = class_styles(204, seed=style_seed)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=count)
    images = np.stack([draw_scene(rng, size, size, styles, _CLS_STUFF, [int(c)], max_objects=1,
                                  object_scale=_CLS_OBJECT_SCALE)[0]
                       for c in labels]) if count else np.zeros((0, size, size, 3), np.uint8)
    return images, labels


def write_cifar100(root: str | Path, seed: int = 0, train: int = 512, val: int = 128,
                   size: int = 32, num_classes: int = CLASSIFICATION_CLASSES,
                   style_seed: int = 1) -> Path:
    """``cifar-100-python/{train,test,meta}`` pickles with the release's keys."""
    import pickle

    base = Path(root) / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    for name, count, offset in (("train", train, 0), ("test", val, 1)):
        images, labels = _object_images(seed * 2 + offset, count, 32, num_classes, style_seed)
        batch = {b"filenames": [f"img_{i}.png".encode() for i in range(count)],
                 b"batch_label": f"{name} batch".encode(),
                 b"fine_labels": [int(c) for c in labels],
                 b"coarse_labels": [int(c) // 5 for c in labels],
                 b"data": images.transpose(0, 3, 1, 2).reshape(count, -1)}
        with open(base / name, "wb") as fh:
            pickle.dump(batch, fh)
    meta = {b"fine_label_names": [f"class_{i:03d}".encode() for i in range(100)],
            b"coarse_label_names": [f"super_{i:02d}".encode() for i in range(20)]}
    with open(base / "meta", "wb") as fh:
        pickle.dump(meta, fh)
    return base


def write_svhn(root: str | Path, seed: int = 0, train: int = 512, val: int = 128,
               size: int = 32) -> Path:
    """``{train,test}_32x32.mat`` with X (32, 32, 3, N) and y (N, 1), 10 standing for 0."""
    from scipy.io import savemat

    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    for name, count, offset in (("train", train, 0), ("test", val, 1)):
        images, labels = _object_images(seed * 2 + offset, count, 32)
        y = labels.reshape(-1, 1).astype(np.uint8)
        y[y == 0] = 10
        path = base / f"{name}_32x32.mat"
        savemat(path, {"X": images.transpose(1, 2, 3, 0), "y": y})
        # The MAT header's 116 text bytes carry the creation time: fix them (deterministic).
        data = bytearray(path.read_bytes())
        data[:116] = b"MATLAB 5.0 MAT-file, written by parax-bench".ljust(116)
        path.write_bytes(bytes(data))
    return base


def write_food101(root: str | Path, seed: int = 0, train: int = 256, val: int = 64,
                  size: int = 48) -> Path:
    """``food-101/images/<class>/<id>.jpg`` with ``meta/classes.txt``, ``meta/{train,test}.txt``."""
    base = Path(root) / "food-101"
    classes = [f"dish_{i:03d}" for i in range(101)]
    (base / "meta").mkdir(parents=True, exist_ok=True)
    (base / "meta" / "classes.txt").write_text("\n".join(classes) + "\n")
    for name, count, offset in (("train", train, 0), ("test", val, 1)):
        images, labels = _object_images(seed * 2 + offset, count, size)
        lines = []
        for i, (img, c) in enumerate(zip(images, labels)):
            rel = f"{classes[c]}/{offset}{i:06d}"
            (base / "images" / classes[c]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(base / "images" / f"{rel}.jpg", quality=95)
            lines.append(rel)
        (base / "meta" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return base


def write_imagenet_r(root: str | Path, seed: int = 0, train: int = 256, val: int = 64,
                     size: int = 48) -> Path:
    """``imagenet-r/<wnid>/<file>.jpg`` plus ``split.json`` (classes, train and test paths)."""
    import json

    base = Path(root) / "imagenet-r"
    classes = [f"n{10000000 + i:08d}" for i in range(200)]
    split: dict[str, list[str]] = {"classes": classes, "train": [], "test": []}
    for name, count, offset in (("train", train, 0), ("test", val, 1)):
        images, labels = _object_images(seed * 2 + offset, count, size)
        for i, (img, c) in enumerate(zip(images, labels)):
            rel = f"{classes[c]}/{name}_{i:06d}.jpg"
            (base / classes[c]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(base / rel, quality=95)
            split[name].append(rel)
    (base / "split.json").write_text(json.dumps(split, indent=0) + "\n")
    return base


def write_source(root: str | Path, seed: int = 0, train: int = 4096, val: int = 256,
                 size: int = 32) -> Path:
    """The pretraining source task: 100 classes with looks of their own (another style seed
    than every downstream set), in the CIFAR-100 format."""
    return write_cifar100(root, seed, train, val, size, num_classes=100, style_seed=7)


CLASSIFICATION_WRITERS = {"cifar100": write_cifar100, "svhn": write_svhn, "food101": write_food101,
                          "imagenet_r": write_imagenet_r}  # by layout format


# COCO: the 80 detection categories keep their official, non-contiguous ids.
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
COCO_THINGS = [0, 2, 16, 56, 39]  # indices into the 80 names: person, car, dog, chair, bottle


def _coco_categories() -> list[dict]:
    from mmdet.datasets import CocoDataset

    names = CocoDataset.METAINFO["classes"]
    return [{"id": i, "name": n, "supercategory": "thing"} for i, n in zip(COCO_IDS, names)]


def _bbox(mask: np.ndarray) -> list[float]:
    """COCO box [x, y, w, h] of a mask's pixels."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)]


def _polygons(mask: np.ndarray) -> list[list[float]]:
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def write_coco_instances(root: str | Path, seed: int = 0, train: int = 64, val: int = 16,
                         size: int = 128) -> Path:
    """COCO 2017 layout: {train,val}2017/*.jpg and annotations/instances_{train,val}2017.json;
    masks as polygons, every third one as compressed RLE."""
    import json

    from pycocotools import mask as mask_utils

    base = Path(root) / "coco"
    styles = class_styles(204, seed=3)
    rng = np.random.default_rng(seed)
    categories = _coco_categories()
    stuff = [100, 101, 102, 103]  # backgrounds: styles no category uses
    ann_id = 1
    for split, count, offset in (("train2017", train, 0), ("val2017", val, 1_000_000)):
        (base / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(1, count + 1):
            image, _, objects = draw_scene(rng, size, size, styles, stuff, COCO_THINGS,
                                           max_objects=4)
            image_id = offset + i
            file_name = f"{image_id:012d}.jpg"
            Image.fromarray(image).save(base / split / file_name, quality=95)
            images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
            for obj in objects:
                polygons = _polygons(obj.mask)
                if not polygons:
                    continue
                if ann_id % 3 == 0:
                    rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
                    segmentation = {"size": rle["size"], "counts": rle["counts"].decode()}
                else:
                    segmentation = polygons
                annotations.append({
                    "id": ann_id, "image_id": image_id, "category_id": COCO_IDS[obj.label],
                    "bbox": _bbox(obj.mask),
                    "area": float(obj.mask.sum()), "iscrowd": 0, "segmentation": segmentation})
                ann_id += 1
        (base / "annotations").mkdir(exist_ok=True)
        (base / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))
    return base


# COCO's 17 person keypoints (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles;
# left before right) at image-frame angles, each left/right pair mirrored about the vertical.
_KEYPOINT_DEGREES = (-90, -70, -110, -50, -130, -25, -155, 0, 180, 20, 160, 45, 135, 65, 115, 80, 100)
KEYPOINT_ANGLES = tuple(float(np.deg2rad(d)) for d in _KEYPOINT_DEGREES)


def write_coco_keypoints(root: str | Path, seed: int = 0, train: int = 96, val: int = 24,
                         size: int = 96) -> Path:
    """COCO 2017 keypoints layout: {train,val}2017/*.jpg and
    annotations/person_keypoints_{train,val}2017.json (17 keypoints per person)."""
    import json

    base = Path(root) / "coco"
    names = _coco_keypoint_names()
    styles = class_styles(204, seed=4)
    rng = np.random.default_rng(seed)
    category = {"id": 1, "name": "person", "supercategory": "person", "keypoints": names,
                "skeleton": [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13],
                             [6, 7], [6, 8], [7, 9], [8, 10], [9, 11], [2, 3], [1, 2], [1, 3],
                             [2, 4], [3, 5], [4, 6], [5, 7]]}
    ann_id = 1
    for split, count, offset in (("train2017", train, 0), ("val2017", val, 1_000_000)):
        (base / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(1, count + 1):
            image, _, objects = draw_scene(rng, size, size, styles, [100, 101, 102], [0],
                                           max_objects=2, keypoint_angles=KEYPOINT_ANGLES)
            image_id = offset + i
            file_name = f"{image_id:012d}.jpg"
            Image.fromarray(image).save(base / split / file_name, quality=95)
            images.append({"id": image_id, "file_name": file_name, "height": size, "width": size})
            for obj in objects:
                kps = obj.keypoints.copy()
                inside = (kps[:, 0] >= 0) & (kps[:, 0] < size) & (kps[:, 1] >= 0) & (kps[:, 1] < size)
                kps[~inside] = 0  # outside the image: not labelled
                annotations.append({
                    "id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                    "bbox": _bbox(obj.mask),
                    "area": float(obj.mask.sum()), "segmentation": _polygons(obj.mask),
                    "keypoints": [round(float(v), 2) for v in kps.reshape(-1)],
                    "num_keypoints": int((kps[:, 2] > 0).sum())})
                ann_id += 1
        (base / "annotations").mkdir(exist_ok=True)
        (base / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": [category]}))
    return base


def _coco_keypoint_names() -> list[str]:
    sides = ("left", "right")
    parts = ("eye", "ear", "shoulder", "elbow", "wrist", "hip", "knee", "ankle")
    return ["nose"] + [f"{s}_{p}" for p in parts for s in sides]


# COCO panoptic's 53 stuff categories keep their official ids, in mmdet's class order.
COCO_STUFF_IDS = [92, 93, 95, 100, 107, 109, 112, 118, 119, 122, 125, 128, 130, 133, 138, 141,
                  144, 145, 147, 148, 149, 151, 154, 155, 156, 159, 161, 166, 168, 171, 175, 176,
                  177, 178, 180, 181, 184, 185, 186, 187, 188, 189, 190, 191, 192, 193, 194, 195,
                  196, 197, 198, 199, 200]
PANOPTIC_STUFF = [39, 45, 20, 23]  # sky-other-merged, grass-merged, road, sea


def write_coco_panoptic(root: str | Path, seed: int = 0, train: int = 64, val: int = 16,
                        size: int = 128) -> Path:
    """COCO panoptic layout: {train,val}2017/*.jpg, annotations/panoptic_{split}.json and
    annotations/panoptic_{split}/*.png (segment id = R + 256 G + 256^2 B, 0 = void)."""
    import json

    from mmdet.datasets import CocoPanopticDataset

    meta = CocoPanopticDataset.METAINFO
    assert len(COCO_STUFF_IDS) == len(meta["stuff_classes"]) == 53
    categories = [{"id": i, "name": n, "supercategory": "thing", "isthing": 1}
                  for i, n in zip(COCO_IDS, meta["thing_classes"])]
    categories += [{"id": i, "name": n, "supercategory": "stuff", "isthing": 0}
                   for i, n in zip(COCO_STUFF_IDS, meta["stuff_classes"])]
    base = Path(root) / "coco"
    styles = class_styles(133, seed=5)
    rng = np.random.default_rng(seed)
    stuff = [80 + s for s in PANOPTIC_STUFF]
    for split, count, offset in (("train2017", train, 0), ("val2017", val, 1_000_000)):
        (base / split).mkdir(parents=True, exist_ok=True)
        png_dir = base / "annotations" / f"panoptic_{split}"
        png_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(1, count + 1):
            image, labels, objects = draw_scene(rng, size, size, styles, stuff, COCO_THINGS)
            image_id = offset + i
            stem = f"{image_id:012d}"
            Image.fromarray(image).save(base / split / f"{stem}.jpg", quality=95)
            ids = np.zeros((size, size), np.int64)
            segments = []
            regions = [(80 + s, labels == 80 + s) for s in PANOPTIC_STUFF]
            regions += [(obj.label, obj.mask) for obj in objects]
            for n, (cls, mask) in enumerate(regions, start=1):
                mask = mask & (ids == 0)
                if mask.sum() == 0:
                    continue
                seg_id = n * 37  # spread ids over the colour space
                ids[mask] = seg_id
                segments.append({
                    "id": seg_id, "iscrowd": 0, "area": int(mask.sum()),
                    "category_id": COCO_IDS[cls] if cls < 80 else COCO_STUFF_IDS[cls - 80],
                    "bbox": _bbox(mask)})
            rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
            Image.fromarray(rgb).save(png_dir / f"{stem}.png")
            images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": size, "width": size})
            annotations.append({"image_id": image_id, "file_name": f"{stem}.png",
                                "segments_info": segments})
        (base / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))
    return base
