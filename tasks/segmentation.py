"""Semantic segmentation (ADE20K; Potsdam and LoveDA reuse its settings): UperNet on mmseg."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .cell import Cell
from .registry import DataFormatError

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]

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


def dataset_cfg(root: str, spec: SegDataset, train: bool, crop: int) -> dict[str, Any]:
    split = spec.splits[0 if train else 1]
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
    return dict(type=spec.type, data_root=f"{root}/{spec.base}",
                data_prefix=dict(img_path=spec.images.format(split=split),
                                 seg_map_path=spec.labels.format(split=split)),
                pipeline=pipeline)


@dataclass(frozen=True)
class SegDataset:
    """Where a dataset's files live (mmseg's layouts) and how many classes it has."""

    type: str
    num_classes: int
    base: str  # folder under the data root
    images: str  # '{split}' is replaced by the split folder
    labels: str
    img_suffix: str
    splits: tuple[str, str]  # (train, val) folder names


DATASETS = {
    "ade20k": SegDataset("ADE20KDataset", 150, "ADEChallengeData2016", "images/{split}",
                         "annotations/{split}", ".jpg", ("training", "validation")),
    # mmsegmentation's converted layouts of the ISPRS Potsdam and LoveDA releases
    "potsdam": SegDataset("PotsdamDataset", 6, "potsdam", "img_dir/{split}", "ann_dir/{split}",
                          ".png", ("train", "val")),
    "loveda": SegDataset("LoveDADataset", 7, "loveDA", "img_dir/{split}", "ann_dir/{split}",
                         ".png", ("train", "val")),
}


def check_dataset(root: str, spec: SegDataset) -> None:
    """Every image has a label map of its size with values in [0, num_classes] (0 = ignored)."""
    base = Path(root) / spec.base
    for split in spec.splits:
        img_dir = base / spec.images.format(split=split)
        ann_dir = base / spec.labels.format(split=split)
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise DataFormatError(f"{spec.type}: directory not found: expected {d}")
        images = sorted(p.name[: -len(spec.img_suffix)] for p in img_dir.glob(f"*{spec.img_suffix}"))
        labels = sorted(p.stem for p in ann_dir.glob("*.png"))
        if images != labels:
            unmatched = sorted(set(images) ^ set(labels))[:3]
            raise DataFormatError(f"{ann_dir}: {len(images)} images but {len(labels)} label maps "
                                  f"(unmatched: {unmatched})")
        for stem in labels:
            path = ann_dir / f"{stem}.png"
            with Image.open(path) as png, Image.open(img_dir / f"{stem}{spec.img_suffix}") as img:
                label, size = np.asarray(png), img.size
            if label.ndim != 2 or (label.shape[1], label.shape[0]) != size:
                raise DataFormatError(f"{path}: expected a single-channel map of the image's "
                                      f"size {size}, got shape {label.shape}")
            if label.max() > spec.num_classes:
                raise DataFormatError(f"{path}: label value {int(label.max())} outside "
                                      f"0..{spec.num_classes} (0 = ignored)")


def build_config(cell: Cell) -> dict[str, Any]:
    spec = DATASETS[cell.task]
    check_dataset(cell.data_root, spec)
    p = dict(PROFILES[cell.profile])
    if cell.iters is not None:
        p["iters"] = cell.iters
    backbone = cell.backbone_cfg(drop_path=PAPER_DROP_PATH.get(cell.backbone, 0.0)
                                 if cell.profile == "paper" else 0.0)
    dims = cell.stage_dims()
    num_classes = spec.num_classes
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
    lr = PAPER_LR.get(cell.backbone, 6e-5) if cell.profile == "paper" else MINI_LR
    return dict(
        default_scope="mmseg",
        model=model,
        train_dataloader=dict(batch_size=p["batch"], num_workers=0, persistent_workers=False,
                              sampler=dict(type="InfiniteSampler", shuffle=True),
                              dataset=dataset_cfg(cell.data_root, spec, True, p["crop"])),
        val_dataloader=dict(batch_size=p["val_batch"], num_workers=0, persistent_workers=False,
                            sampler=dict(type="DefaultSampler", shuffle=False),
                            dataset=dataset_cfg(cell.data_root, spec, False, p["crop"])),
        val_evaluator=dict(type="IoUMetric", iou_metrics=["mIoU"]),
        # Validation runs once, after training (the runner calls it).
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=p["iters"], val_begin=p["iters"] + 1),
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=dict(type="OptimWrapper",
                           optimizer=dict(type="AdamW", lr=lr, betas=(0.9, 0.999), weight_decay=0.01)),
        param_scheduler=[
            dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0,
                 end=max(1, min(p["warmup"], p["iters"]))),
        ] + ([dict(type="PolyLR", eta_min=0.0, power=1.0, begin=p["warmup"], end=p["iters"],
                   by_epoch=False)] if p["iters"] > p["warmup"] else []),
    )
