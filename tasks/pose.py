"""COCO keypoints: top-down heatmap pose estimation on mmpose (the paper's appendix setting:
HRFormer training settings with a simple heatmap head, 256x192 input)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from catalog import Cell, TaskSpec

from .coco import check_split
from .common import MEAN, STD, adamw, backbone_cfg, loader, stage_dims, warmup_multistep
from .registry import Kind, register_kind

KEYPOINTS = 17  # COCO's: the heatmap head, flip pairs and OKS sigmas are built for them

PROFILES = {
    "mini": dict(input=(64, 96), heatmap=(16, 24), sigma=1, batch=16, iters=112, warmup=10,
                 deconv=(64, 64, 64), lr=1e-3),
    "paper": dict(input=(192, 256), heatmap=(48, 64), sigma=2, batch=256, epochs=210,
                  warmup=500, deconv=(256, 256, 256), lr=5e-4),
}


def check_splits(spec: TaskSpec, root: str) -> list[Path]:
    return [check_split(root, spec.layout, split, keypoints=KEYPOINTS)
            for split in spec.layout.splits]


def check(spec: TaskSpec, root: str) -> None:
    check_splits(spec, root)


def build_config(spec: TaskSpec, cell: Cell) -> dict[str, Any]:
    p = dict(PROFILES[cell.profile])
    paper = cell.profile == "paper"
    train_ann, val_ann = check_splits(spec, cell.data_root)
    codec = dict(type="MSRAHeatmap", input_size=p["input"], heatmap_size=p["heatmap"],
                 sigma=p["sigma"])
    model = dict(
        type="TopdownPoseEstimator",
        data_preprocessor=dict(type="PoseDataPreprocessor", mean=MEAN, std=STD, bgr_to_rgb=True),
        backbone=backbone_cfg(cell, 0.3 if paper else 0.0),
        head=dict(type="HeatmapHead", in_channels=stage_dims(cell)[-1], out_channels=KEYPOINTS,
                  deconv_out_channels=p["deconv"], deconv_kernel_sizes=(4, 4, 4),
                  loss=dict(type="KeypointMSELoss", use_target_weight=True), decoder=codec),
        test_cfg=dict(flip_test=True, flip_mode="heatmap", shift_heatmap=True))
    train_pipeline = [
        dict(type="LoadImage"),
        dict(type="GetBBoxCenterScale"),
        dict(type="RandomFlip", direction="horizontal"),
        dict(type="RandomBBoxTransform"),
        dict(type="TopdownAffine", input_size=codec["input_size"]),
        dict(type="GenerateTarget", encoder=codec),
        dict(type="PackPoseInputs"),
    ]
    val_pipeline = [
        dict(type="LoadImage"),
        dict(type="GetBBoxCenterScale"),
        dict(type="TopdownAffine", input_size=codec["input_size"]),
        dict(type="PackPoseInputs"),
    ]
    root = f"{cell.data_root}/{spec.layout.base}"

    def split_loader(split: str, ann: Path, train: bool) -> dict[str, Any]:
        return loader(p["batch"],
                      dict(type="CocoDataset", data_root=root, data_mode="topdown",
                           ann_file=str(ann.resolve()), data_prefix=dict(img=f"{split}/"),
                           pipeline=train_pipeline if train else val_pipeline,
                           test_mode=not train),
                      train, paper)

    loop, schedule = warmup_multistep(cell, p, milestones=[170, 200],
                                      epochs=PROFILES["paper"]["epochs"])
    train_split, val_split = spec.layout.splits
    return dict(
        default_scope="mmpose",
        model=model,
        train_dataloader=split_loader(train_split, train_ann, True),
        val_dataloader=split_loader(val_split, val_ann, False),
        val_evaluator=dict(type="CocoMetric", ann_file=str(val_ann)),
        train_cfg=loop,
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=dict(type="OptimWrapper", optimizer=adamw(p["lr"], 0.01)),
        param_scheduler=schedule,
    )


def write(spec: TaskSpec, root: Path, seed: int = 0, **sizes: int) -> Path:
    from .synthetic.writers import write_coco_keypoints

    return write_coco_keypoints(root, seed=seed, **sizes)


register_kind("pose_estimation", Kind(build_config, check, write))
