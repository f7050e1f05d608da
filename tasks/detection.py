"""COCO detection + instance segmentation: Mask R-CNN with FPN on mmdet.

The detector is mmdet's own Mask R-CNN base config (shipped inside the mmdet package), with
our backbone in place of the ResNet; the mini profile narrows the neck and heads.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from catalog import Cell, TaskSpec

from .coco import check_split
from .common import adamw, backbone_cfg, loader, stage_dims, warmup_multistep
from .registry import Kind, register_kind

PROFILES = {
    # Mini: validation 8 images a batch (the synthetic ones are all 128 x 128, so none is
    # padded; mixed sizes are padded to the largest, as in training).
    "mini": dict(scale=(128, 128), batch=4, val_batch=8, iters=44, warmup=8, width=64, fc=256,
                 lr=2e-3),
    # spec §5: Mask R-CNN 1x, 1333x800, batch 16, AdamW lr 1e-4 / wd 0.05, steps at 8 and 11;
    # mmdet tests one image at a time.
    "paper": dict(scale=(1333, 800), batch=16, val_batch=1, epochs=12, warmup=500, width=256,
                  fc=1024, lr=1e-4),
}
PAPER_DROP_PATH = {"swin-b": 0.15, "swin-l": 0.2, "convnext-b": 0.2, "convnext-l": 0.35}


def _register_metric() -> None:
    from mmdet.evaluation import CocoMetric
    from mmengine.registry import METRICS

    if "CocoInstanceMetric" in METRICS.module_dict:
        return

    @METRICS.register_module()
    class CocoInstanceMetric(CocoMetric):
        """mmdet's CocoMetric, except that a model without any detection scores 0 (mmdet
        returns no metrics at all then)."""

        def compute_metrics(self, results: list) -> dict[str, float]:
            out = super().compute_metrics(results)
            if not out:
                out = {f"{m}_{k}": 0.0 for m in self.metrics
                       for k in ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")}
            return out


def mmdet_model(name: str) -> dict[str, Any]:
    """The model of one of the configs mmdet ships inside its package."""
    import mmdet
    from mmengine.config import Config

    path = Path(mmdet.__file__).parent / ".mim" / "configs" / name
    return Config.fromfile(str(path)).model.to_dict()


def narrow(cfg: Any, width: int, fc: int) -> Any:
    """Replace the 256-channel neck/head widths (and the 1024-wide FCs) of a base config."""
    if isinstance(cfg, dict):
        out = {}
        for k, v in cfg.items():
            if k in ("in_channels", "out_channels", "feat_channels", "conv_out_channels") and v == 256:
                out[k] = width
            elif k == "fc_out_channels" and v == 1024:
                out[k] = fc
            else:
                out[k] = narrow(v, width, fc)
        return out
    if isinstance(cfg, list):
        return [narrow(v, width, fc) for v in cfg]
    return cfg


def lighten(model: dict[str, Any]) -> dict[str, Any]:
    """Mini profile: fewer proposals and 32 sampled RoIs per image, one sampling point per
    RoIAlign bin, and a two-conv mask head on 7 x 7 RoI features predicting 14 x 14 masks
    (objects in 128 x 128 images are at most a few dozen pixels across). On CPU the RoI heads
    dominate a micro model's step: these took a linear-probe cell's 100 iterations from
    15.8 s to 11.1 s. (Panoptic FPN takes the proposal and sampling-point settings only.)"""
    model["train_cfg"]["rpn_proposal"].update(nms_pre=400, max_per_img=200)
    model["train_cfg"]["rcnn"]["sampler"]["num"] = 32
    model["test_cfg"]["rpn"].update(nms_pre=300, max_per_img=100)
    for extractor in ("bbox_roi_extractor", "mask_roi_extractor"):
        model["roi_head"][extractor]["roi_layer"]["sampling_ratio"] = 1
    model["roi_head"]["mask_head"]["num_convs"] = 2
    model["roi_head"]["mask_roi_extractor"]["roi_layer"]["output_size"] = 7
    model["roi_head"]["mask_head"]["roi_feat_size"] = 7
    model["train_cfg"]["rcnn"]["mask_size"] = 14
    return model


def coco_classes() -> tuple[str, ...]:
    from mmdet.datasets import CocoDataset

    return tuple(CocoDataset.METAINFO["classes"])


def check_splits(spec: TaskSpec, root: str) -> list[Path]:
    """Both splits' annotation files (completed copies where needed), checked: COCO's class
    names, a mask for every object, every image decodes."""
    return [check_split(root, spec.layout, split, allowed=coco_classes(), masks=True)
            for split in spec.layout.splits]


def check(spec: TaskSpec, root: str) -> None:
    check_splits(spec, root)


def build_config(spec: TaskSpec, cell: Cell) -> dict[str, Any]:
    _register_metric()
    p = PROFILES[cell.profile]
    train_ann, val_ann = check_splits(spec, cell.data_root)
    model = narrow(mmdet_model("_base_/models/mask-rcnn_r50_fpn.py"), p["width"], p["fc"])
    if cell.profile == "mini":
        model = lighten(model)
    load = dict(type="LoadAnnotations", with_bbox=True, with_mask=True)
    evaluator = dict(type="CocoInstanceMetric", ann_file=str(val_ann), metric=["bbox", "segm"])
    return coco_config(spec, cell, model, "CocoDataset", train_ann, val_ann, load, evaluator)


def coco_config(spec: TaskSpec, cell: Cell, model: dict[str, Any], dataset: str, train_ann: Path,
                val_ann: Path, load: dict[str, Any], evaluator: dict[str, Any],
                seg_prefix: str | None = None, meta_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Runner config shared by the COCO detection-style tasks (Mask R-CNN, Panoptic FPN)."""
    p = PROFILES[cell.profile]
    paper = cell.profile == "paper"
    model["backbone"] = backbone_cfg(cell, PAPER_DROP_PATH.get(cell.backbone, 0.0) if paper else 0.0)
    model["neck"]["in_channels"] = stage_dims(cell)
    train_pipeline = [
        dict(type="LoadImageFromFile"),
        load,
        dict(type="Resize", scale=p["scale"], keep_ratio=True),
        dict(type="RandomFlip", prob=0.5),
        dict(type="PackDetInputs"),
    ]
    test_pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=p["scale"], keep_ratio=True),
        load,
        dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape",
                                              "scale_factor") + meta_keys),
    ]
    root = f"{cell.data_root}/{spec.layout.base}"

    def split_loader(split: str, ann: Path, train: bool) -> dict[str, Any]:
        prefix = dict(img=f"{split}/")
        if seg_prefix:
            prefix["seg"] = seg_prefix.format(split=split)
        return loader(p["batch"] if train else p["val_batch"],
                      dict(type=dataset, data_root=root, ann_file=str(ann.resolve()),
                           data_prefix=prefix,
                           filter_cfg=dict(filter_empty_gt=True, min_size=4) if train else None,
                           pipeline=train_pipeline if train else test_pipeline,
                           test_mode=not train),
                      train, paper,
                      batch_sampler=dict(type="AspectRatioBatchSampler") if train and paper else None)

    loop, schedule = warmup_multistep(cell, p, milestones=[8, 11],
                                      epochs=PROFILES["paper"]["epochs"])
    train_split, val_split = spec.layout.splits
    return dict(
        default_scope="mmdet",
        model=model,
        train_dataloader=split_loader(train_split, train_ann, True),
        val_dataloader=split_loader(val_split, val_ann, False),
        val_evaluator=evaluator,
        train_cfg=loop,
        val_cfg=dict(type="ValLoop"),
        optim_wrapper=dict(type="OptimWrapper",
                           optimizer=adamw(p["lr"], 0.05, betas=(0.9, 0.999)),
                           paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={
                               "relative_position_bias_table": dict(decay_mult=0.0),
                               "absolute_pos_embed": dict(decay_mult=0.0)})),
        param_scheduler=schedule,
    )


def write(spec: TaskSpec, root: Path, seed: int = 0, **sizes: int) -> Path:
    from .synthetic.writers import write_coco_instances

    return write_coco_instances(root, seed=seed, **sizes)


# A smoke run trains one 1333x800 image at a time (memory).
register_kind("instance_segmentation", Kind(build_config, check, write, smoke_batch=1))
