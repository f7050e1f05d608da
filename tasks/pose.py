"""COCO keypoints: top-down heatmap pose estimation on mmpose (the paper's appendix setting:
HRFormer training settings with a simple heatmap head, 256x192 input)."""
from __future__ import annotations

from typing import Any

from .cell import Cell, warmup_multistep
from .detection import check_coco

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
PROFILES = {
    "mini": dict(input=(64, 96), heatmap=(16, 24), sigma=1, batch=16, iters=80, warmup=10,
                 deconv=(64, 64, 64), lr=1e-3),
    "paper": dict(input=(192, 256), heatmap=(48, 64), sigma=2, batch=256, epochs=210,
                  warmup=500, deconv=(256, 256, 256), lr=5e-4),
}


def build_config(cell: Cell) -> dict[str, Any]:
    p = dict(PROFILES[cell.profile])
    paper = cell.profile == "paper"
    train_ann = check_coco(cell.data_root, "train2017", kind="person_keypoints")
    val_ann = check_coco(cell.data_root, "val2017", kind="person_keypoints")
    codec = dict(type="MSRAHeatmap", input_size=p["input"], heatmap_size=p["heatmap"],
                 sigma=p["sigma"])
    model = dict(
        type="TopdownPoseEstimator",
        data_preprocessor=dict(type="PoseDataPreprocessor", mean=MEAN, std=STD, bgr_to_rgb=True),
        backbone=cell.backbone_cfg(0.3 if paper else 0.0),
        head=dict(type="HeatmapHead", in_channels=cell.stage_dims()[-1], out_channels=17,
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
    root = f"{cell.data_root}/coco"

    def loader(split: str, ann, train: bool) -> dict[str, Any]:
        return dict(batch_size=p["batch"], num_workers=0, persistent_workers=False,
                    sampler=dict(type="InfiniteSampler" if train and not paper else "DefaultSampler",
                                 shuffle=train),
                    dataset=dict(type="CocoDataset", data_root=root, data_mode="topdown",
                                 ann_file=str(ann.relative_to(root)),
                                 data_prefix=dict(img=f"{split}/"),
                                 pipeline=train_pipeline if train else val_pipeline,
                                 test_mode=not train))

    loop, schedule = warmup_multistep(cell, p, milestones=[170, 200])
    return dict(
        default_scope="mmpose",
        model=model,
        train_dataloader=loader("train2017", train_ann, True),
        val_dataloader=loader("val2017", val_ann, False),
        val_evaluator=dict(type="CocoMetric", ann_file=str(val_ann)),
        train_cfg=loop,
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=p["lr"],
                                                               weight_decay=0.01)),
        param_scheduler=schedule,
    )
