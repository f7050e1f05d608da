"""Semantic segmentation (ADE20K; Potsdam and LoveDA reuse its settings): UperNet on mmseg.

Reads any dataset in mmseg's folder layouts (``SegmentationLayout``): images beside uint8
label maps of the same stem, 0 ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from catalog import Cell, TaskSpec

from .common import MEAN, STD, adamw, backbone_cfg, loader, stage_dims
from .registry import DataFormatError, Kind, register_kind

# Per profile: crop, batch, iterations, warm-up, decoder width, whether to use the FCN aux head.
PROFILES = {
    "mini": dict(crop=64, batch=4, iters=80, warmup=10, channels=32, aux=False, val_batch=4),
    "paper": dict(crop=512, batch=16, iters=160_000, warmup=1500, channels=512, aux=True,
                  val_batch=1),
}
# spec §5: lr and drop path per backbone for ADE20K, reused by Potsdam and LoveDA.
PAPER_LR = {"swin-b": 6e-5, "swin-l": 3e-4, "convnext-b": 3e-4, "convnext-l": 3e-4}
PAPER_DROP_PATH = {"swin-b": 0.15, "swin-l": 0.3, "convnext-b": 0.25, "convnext-l": 0.35}
MINI_LR = 1e-3


def dataset_cfg(root: str, spec: TaskSpec, train: bool, crop: int) -> dict[str, Any]:
    layout = spec.layout
    split = layout.splits[0 if train else 1]
    if train:
        pipeline = [
            dict(type="LoadImageFromFile"),
            dict(type="LoadAnnotations", reduce_zero_label=True),
            dict(type="RandomResize", scale=(crop * 4, crop), ratio_range=(0.5, 2.0), keep_ratio=True),
            dict(type="RandomCrop", crop_size=(crop, crop), cat_max_ratio=0.75),
            dict(type="RandomFlip", prob=0.5),
            dict(type="PhotoMetricDistortion"),
            dict(type="PackSegInputs"),
        ]
    else:
        pipeline = [
            dict(type="LoadImageFromFile"),
            dict(type="Resize", scale=(crop * 4, crop), keep_ratio=True),
            dict(type="LoadAnnotations", reduce_zero_label=True),
            dict(type="PackSegInputs"),
        ]
    cfg = dict(type=layout.dataset_type, data_root=f"{root}/{layout.base}",
               data_prefix=dict(img_path=layout.images.format(split=split),
                                seg_map_path=layout.labels.format(split=split)),
               pipeline=pipeline)
    if layout.classes is not None:  # a dataset of our own: mmseg's generic class
        cfg.update(img_suffix=layout.img_suffix, seg_map_suffix=".png", reduce_zero_label=True,
                   metainfo=dict(classes=list(layout.classes)))
    return cfg


def check(spec: TaskSpec, root: str) -> None:
    """Every image has a label map of its size with values in [0, num_classes] (0 = ignored)."""
    layout = spec.layout
    base = Path(root) / layout.base
    for split in layout.splits:
        img_dir = base / layout.images.format(split=split)
        ann_dir = base / layout.labels.format(split=split)
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise DataFormatError(f"{layout.dataset_type}: directory not found: expected {d}")
        images = sorted(p.name[: -len(layout.img_suffix)]
                        for p in img_dir.glob(f"*{layout.img_suffix}"))
        labels = sorted(p.stem for p in ann_dir.glob("*.png"))
        if images != labels:
            unmatched = sorted(set(images) ^ set(labels))[:3]
            raise DataFormatError(f"{ann_dir}: {len(images)} images but {len(labels)} label maps "
                                  f"(unmatched: {unmatched})")
        for stem in labels:
            path = ann_dir / f"{stem}.png"
            with Image.open(path) as png, Image.open(img_dir / f"{stem}{layout.img_suffix}") as img:
                label, size = np.asarray(png), img.size
            if label.ndim != 2 or (label.shape[1], label.shape[0]) != size:
                raise DataFormatError(f"{path}: expected a single-channel map of the image's "
                                      f"size {size}, got shape {label.shape}")
            if label.max() > layout.num_classes:
                raise DataFormatError(f"{path}: label value {int(label.max())} outside "
                                      f"0..{layout.num_classes} (0 = ignored)")


def build_config(spec: TaskSpec, cell: Cell) -> dict[str, Any]:
    check(spec, cell.data_root)
    p = dict(PROFILES[cell.profile])
    if cell.iters is not None:
        p["iters"] = cell.iters
    paper = cell.profile == "paper"
    backbone = backbone_cfg(cell, PAPER_DROP_PATH.get(cell.backbone, 0.0) if paper else 0.0)
    dims = stage_dims(cell)
    num_classes = spec.layout.num_classes
    model = dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=MEAN, std=STD, bgr_to_rgb=True,
                               pad_val=0, seg_pad_val=255, size=(p["crop"], p["crop"])),
        backbone=backbone,
        decode_head=dict(type="UPerHead", in_channels=dims, in_index=list(range(len(dims))),
                         pool_scales=(1, 2, 3, 6), channels=p["channels"], dropout_ratio=0.1,
                         num_classes=num_classes, norm_cfg=dict(type="BN", requires_grad=True),
                         align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode="whole"))
    if p["aux"]:
        model["auxiliary_head"] = dict(
            type="FCNHead", in_channels=dims[2], in_index=2, channels=256, num_convs=1,
            concat_input=False, dropout_ratio=0.1, num_classes=num_classes,
            norm_cfg=dict(type="BN", requires_grad=True), align_corners=False,
            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4))
    lr = PAPER_LR.get(cell.backbone, 6e-5) if paper else MINI_LR
    # Trained by iterations in both profiles (an infinite sampler); validation: one pass.
    train_loader = loader(p["batch"], dataset_cfg(cell.data_root, spec, True, p["crop"]),
                          train=True, paper=False)
    val_loader = loader(p["val_batch"], dataset_cfg(cell.data_root, spec, False, p["crop"]),
                        train=False, paper=False)
    return dict(
        default_scope="mmseg",
        model=model,
        train_dataloader=train_loader,
        val_dataloader=val_loader,
        val_evaluator=dict(type="IoUMetric", iou_metrics=["mIoU"]),
        # Validation runs once, after training (the runner calls it).
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=p["iters"], val_begin=p["iters"] + 1),
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=dict(type="OptimWrapper",
                           optimizer=adamw(lr, 0.01, betas=(0.9, 0.999))),
        param_scheduler=[
            dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0,
                 end=max(1, min(p["warmup"], p["iters"]))),
        ] + ([dict(type="PolyLR", eta_min=0.0, power=1.0, begin=p["warmup"], end=p["iters"],
                   by_epoch=False)] if p["iters"] > p["warmup"] else []),
    )


def write(spec: TaskSpec, root: Path, seed: int = 0, train: int = 64, val: int = 16,
          size: int = 64) -> Path:
    """Synthetic scenes in the spec's layout (its ``synthetic``: stuff and thing classes and
    the file-name prefix per split)."""
    from .synthetic.writers import write_segmentation

    layout, scenes = spec.layout, spec.synthetic
    prefixes = scenes.get("prefixes", ("train", "val"))
    return write_segmentation(
        Path(root) / layout.base, seed, dict(zip(layout.splits, (train, val))), size,
        list(scenes.get("stuff", (1, 2))), list(scenes.get("things", (3,))), layout.img_suffix,
        layout.images, layout.labels, dict(zip(layout.splits, prefixes)))


register_kind("semantic_segmentation", Kind(build_config, check, write))
