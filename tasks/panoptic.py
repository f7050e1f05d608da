"""COCO panoptic segmentation: Panoptic FPN on mmdet, scored by panoptic quality.

mmdet's own panoptic metric needs the ``panopticapi`` package, which is not on PyPI, so
:class:`PanopticQuality` computes PQ / SQ / RQ here from the definition (Kirillov et al.,
2019): a predicted and a ground-truth segment of the same category match when their IoU,
with void pixels left out of the prediction's area, exceeds 0.5; unmatched ground truth is a
false negative; an unmatched prediction is a false positive unless more than half of it
lies on void or on a crowd region of its category.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS
from PIL import Image

from catalog import Cell, CocoLayout, TaskSpec

from .common import CheckCache
from .coco import categories, completed_copy, decode, images, read_json
from .detection import PROFILES, coco_config, lighten, mmdet_model, narrow
from .registry import DataFormatError, Kind, register_kind

INSTANCE_OFFSET = 1000  # mmdet's panoptic id = instance * 1000 + label


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colours to segment ids: R + 256 G + 256^2 B."""
    rgb = np.asarray(rgb, np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def _register_transform() -> None:
    from mmdet.datasets.transforms import LoadAnnotations, LoadPanopticAnnotations
    from mmdet.registry import TRANSFORMS

    if "LoadPanopticPNG" in TRANSFORMS.module_dict:
        return

    @TRANSFORMS.register_module()
    class LoadPanopticPNG(LoadPanopticAnnotations):
        """mmdet's panoptic annotation loader without its panopticapi import (for rgb2id)."""

        def __init__(self, with_bbox: bool = True, with_label: bool = True,
                     with_mask: bool = True, with_seg: bool = True, **kwargs):
            LoadAnnotations.__init__(self, with_bbox=with_bbox, with_label=with_label,
                                     with_mask=with_mask, with_seg=with_seg,
                                     with_keypoints=False, **kwargs)
            self.rgb2id = rgb2id


@METRICS.register_module()
class PanopticQuality(BaseMetric):
    """PQ, SQ, RQ (percent) over all, thing and stuff categories."""

    default_prefix = "coco_panoptic"

    def __init__(self, num_things: int, num_stuff: int, **kwargs):
        super().__init__(**kwargs)
        self.num_things, self.num_classes = num_things, num_things + num_stuff

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            pred = np.asarray(sample["pred_panoptic_seg"]["sem_seg"].cpu())[0].astype(np.int64)
            gt = rgb2id(Image.open(sample["seg_map_path"]).convert("RGB"))
            segments = {s["id"]: (s["category"], s["category"] < self.num_things and not s["is_thing"])
                        for s in sample["segments_info"]}
            self.results.append(self.match(pred, gt, segments))

    def match(self, pred: np.ndarray, gt: np.ndarray,
              segments: dict[int, tuple[int, bool]]) -> np.ndarray:
        """(num_classes, 4) rows of [tp, fp, fn, iou_sum] for one image.

        ``pred``: panoptic ids (instance * 1000 + label, label == num_classes is void);
        ``gt``: segment ids (0 or unlisted = void); ``segments``: id -> (label, is_crowd).
        """
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
        stats = np.zeros((self.num_classes, 4))
        void = ~np.isin(gt, list(segments))
        gt_area = {g: int((gt == g).sum()) for g in segments}
        pred_ids, pred_area = np.unique(pred, return_counts=True)
        preds = {int(p): int(a) for p, a in zip(pred_ids, pred_area)
                 if p % INSTANCE_OFFSET != self.num_classes}
        pairs, counts = np.unique(np.stack([gt.ravel(), pred.ravel()]), axis=1, return_counts=True)
        inter = {(int(g), int(p)): int(c) for (g, p), c in zip(pairs.T, counts)}
        void_inter = {p: int((void & (pred == p)).sum()) for p in preds}
        matched_gt, matched_pred = set(), set()
        for (g, p), n in inter.items():
            if g not in segments or p not in preds:
                continue
            label, crowd = segments[g]
            if crowd or label != p % INSTANCE_OFFSET:
                continue
            iou = n / (preds[p] + gt_area[g] - n - void_inter[p])
            if iou > 0.5:
                stats[label, 0] += 1
                stats[label, 3] += iou
                matched_gt.add(g)
                matched_pred.add(p)
        for g, (label, crowd) in segments.items():
            if not crowd and g not in matched_gt:
                stats[label, 2] += 1
        for p, area in preds.items():
            if p in matched_pred:
                continue
            label = p % INSTANCE_OFFSET
            on_crowd = sum(n for (g, q), n in inter.items()
                           if q == p and g in segments and segments[g] == (label, True))
            if (void_inter[p] + on_crowd) / area > 0.5:
                continue
            stats[label, 1] += 1
        return stats

    def compute_metrics(self, results: list) -> dict[str, float]:
        total = np.sum(results, axis=0) if results else np.zeros((self.num_classes, 4))
        tp, fp, fn, iou = total.T
        seen = tp + fp + fn > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            pq = np.where(seen, iou / (tp + 0.5 * fp + 0.5 * fn), 0.0)
            sq = np.where(tp > 0, iou / np.maximum(tp, 1), 0.0)
            rq = np.where(seen, tp / (tp + 0.5 * fp + 0.5 * fn), 0.0)
        out = {}
        things = np.arange(self.num_classes) < self.num_things
        for name, sel in (("", np.ones_like(things)), ("_th", things), ("_st", ~things)):
            n = int((seen & sel).sum())
            for metric, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
                out[f"{metric}{name}"] = 100.0 * float(values[seen & sel].sum() / n) if n else 0.0
        return out


def check_panoptic(root: str, layout: CocoLayout, split: str) -> Path:
    """The panoptic JSON and its PNGs, entry by entry: COCO panoptic's category names, every
    image and PNG decodes, PNGs of their image's size, every segment of a known category
    (area, iscrowd completed where left out). Returns the file the loaders read."""
    from mmdet.datasets import CocoPanopticDataset

    base = Path(root) / layout.base
    ann = base / "annotations" / f"{layout.annotations}_{split}.json"
    data = read_json(ann, "COCO panoptic file")
    cats = categories(data, ann, CocoPanopticDataset.METAINFO["classes"])
    with CheckCache("coco-images", base / split) as cache:
        imgs, completed = images(data, ann, base / split, cache)
    annotations = data.get("annotations")
    if not isinstance(annotations, list) or not annotations:
        raise DataFormatError(f"{ann}: no annotations: the split has no ground truth")
    png_dir = base / "annotations" / f"{layout.annotations}_{split}"
    with CheckCache("panoptic-pngs", png_dir) as cache:
        completed |= _check_segments(ann, annotations, imgs, cats, png_dir, cache)
    return completed_copy(ann, data) if completed else ann


def _check_segments(ann: Path, annotations: list[dict], imgs: dict, cats: dict, png_dir: Path,
                    cache: CheckCache) -> bool:
    """Every PNG and its segments (see check_panoptic); whether any segment was completed."""
    completed = False
    for a in annotations:
        img = imgs.get(a.get("image_id"))
        if img is None:
            raise DataFormatError(f"{ann}: annotation of {a.get('file_name')!r}: image_id "
                                  f"{a.get('image_id')!r} is not among the file's images")
        png = a.get("file_name", "")
        if img["file_name"].replace(".jpg", ".png") != png:  # the name mmdet derives
            raise DataFormatError(f"{ann}: image {img['file_name']}: expected its PNG to be named "
                                  f"{img['file_name'].replace('.jpg', '.png')!r}, got {png!r}")
        if decode(png_dir / png, cache) != (img["width"], img["height"]):
            raise DataFormatError(f"{png_dir / png}: expected the image's size "
                                  f"{img['width']}x{img['height']}")
        ids = None
        for seg in a.get("segments_info") or []:
            where = f"{ann}: segment {seg.get('id')!r} of {png}"
            if "id" not in seg or seg.get("category_id") not in cats:
                raise DataFormatError(f"{where}: category_id {seg.get('category_id')!r} is not "
                                      f"among the file's categories {sorted(cats)[:10]}")
            if not (isinstance(seg.get("bbox"), list) and len(seg["bbox"]) == 4):
                raise DataFormatError(f"{where}: bbox must be [x, y, w, h]")
            if "area" not in seg:
                if ids is None:
                    ids = rgb2id(Image.open(png_dir / png).convert("RGB"))
                seg["area"] = int((ids == seg["id"]).sum())
                completed = True
            if "iscrowd" not in seg:
                seg["iscrowd"] = 0
                completed = True
    return completed


def check(spec: TaskSpec, root: str) -> None:
    for split in spec.layout.splits:
        check_panoptic(root, spec.layout, split)


def build_config(spec: TaskSpec, cell: Cell) -> dict[str, Any]:
    p = PROFILES[cell.profile]
    train_ann, val_ann = (check_panoptic(cell.data_root, spec.layout, s) for s in spec.layout.splits)
    model = narrow(mmdet_model("panoptic_fpn/panoptic-fpn_r50_fpn_1x_coco.py"), p["width"], p["fc"])
    if cell.profile == "mini":  # tiny images: keep small stuff regions
        model = lighten(model)
        # 32 sampled RoIs left the PEFT methods' PQ spread at 1.5x their seed std (3.92 vs
        # 2.62); 64 separate them. The mask head keeps lighten()'s 14 x 14 masks: 28 x 28
        # ones cost a quarter of every step (80 class logits a pixel) for the same PQ.
        model["train_cfg"]["rcnn"]["sampler"]["num"] = 64
        model["test_cfg"]["panoptic"]["stuff_area_limit"] = 64
    _register_transform()
    load = dict(type="LoadPanopticPNG", with_bbox=True, with_mask=True, with_seg=True)
    evaluator = dict(type="PanopticQuality", num_things=80, num_stuff=53)
    return coco_config(spec, cell, model, "CocoPanopticDataset", train_ann, val_ann, load, evaluator,
                       seg_prefix=f"annotations/{spec.layout.annotations}_{{split}}/",
                       meta_keys=("seg_map_path", "segments_info"))


def write(spec: TaskSpec, root: Path, seed: int = 0, **sizes: int) -> Path:
    from .synthetic.writers import write_coco_panoptic

    return write_coco_panoptic(root, seed=seed, **sizes)


# A smoke run trains one 1333x800 image at a time (memory).
register_kind("panoptic_segmentation", Kind(build_config, check, write, smoke_batch=1))
