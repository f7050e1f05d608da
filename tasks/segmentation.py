"""Semantic segmentation (ADE20K; Potsdam and LoveDA reuse its settings): UperNet on mmseg,
SETR-PUP on a plain ViT (Table 7).

Reads any dataset in mmseg's folder layouts (``SegmentationLayout``): images (any mode, any
size, the suffix in any case) beside single-channel label maps of the same stem, 0 ignored.
Validation runs one image at a time, so images of different sizes evaluate as they are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from catalog import Cell, TaskSpec, get_backbone

from .common import MEAN, STD, CheckCache, adamw, backbone_cfg, loader, open_image, stage_dims
from .registry import DataFormatError, Kind, register_kind

# Per profile: crop, batch, iterations, warm-up, decoder width, whether to use the FCN aux head,
# and the stride the training loss samples the labels at (None: mmseg's full resolution).
PROFILES = {
    "mini": dict(crop=64, batch=8, iters=160, warmup=5, channels=32, aux=False, val_batch=1,
                 loss_stride=4),
    "paper": dict(crop=512, batch=16, iters=160_000, warmup=1500, channels=512, aux=True,
                  val_batch=1, loss_stride=None),
}
# spec §5: lr and drop path per backbone for ADE20K, reused by Potsdam and LoveDA. VMamba-B
# (Table 8) takes the VMamba release's UperNet config (segmentation/configs/vssm1/
# upernet_vssm_4xb4-160k_ade20k-512x512_base.py, on mmseg's Swin-B schedule): lr 6e-5, drop path 0.6.
PAPER_LR = {"swin-b": 6e-5, "swin-l": 3e-4, "convnext-b": 3e-4, "convnext-l": 3e-4,
            "vmamba-b": 6e-5}
PAPER_DROP_PATH = {"swin-b": 0.15, "swin-l": 0.3, "convnext-b": 0.25, "convnext-l": 0.35,
                   "vmamba-b": 0.6}
MINI_LR = 3e-3  # AdamW; the decoder trains from scratch in a few hundred iterations
# Table 7: a plain ViT decodes with SETR-PUP, as mmseg's setr_vit-l_pup_8xb2-160k_ade20k-512x512:
# the outputs of blocks 9, 14, 19 and 23 of ViT-L (of another depth: its last four blocks),
# the progressive-upsampling head (4 convs, x2 each) on the last, three auxiliary heads
# (2 convs, x4) on the others, 256 channels; SGD lr 1e-3, momentum 0.9, no weight decay, the
# heads at 10x, poly decay (power 0.9, to 1e-4) over 160k iterations at batch 16, and a
# sliding-window test (512 crops, stride 341). The mini profile keeps its own schedule.
SETR_BLOCKS = {"vit-l": (9, 14, 19, 23)}
SETR_PAPER = dict(channels=256, lr=1e-3, head_lr_mult=10.0, min_lr=1e-4, power=0.9,
                  slide=(512, 341))


def _register_strided_head() -> None:
    """``StridedLossUPerHead``: UPerHead whose training loss is taken at its own output
    resolution (stride 4), against the label at the centre of each output cell, instead of
    on its logits upsampled to the label's size (mmseg's way). For the mini profile: with
    ADE20K's 150 classes, that upsampling and the loss over it were two thirds of a mini
    iteration. Prediction is unchanged (full resolution)."""
    from mmseg.models.decode_heads import UPerHead
    from mmseg.registry import MODELS

    if "StridedLossUPerHead" in MODELS.module_dict:
        return

    @MODELS.register_module()
    class StridedLossUPerHead(UPerHead):
        def __init__(self, loss_stride: int, **kwargs):
            super().__init__(**kwargs)
            self.loss_stride = loss_stride

        def _stack_batch_gt(self, batch_data_samples):  # (read by the training loss only)
            s = self.loss_stride
            return super()._stack_batch_gt(batch_data_samples)[..., s // 2::s, s // 2::s]


def dataset_cfg(root: str, spec: TaskSpec, train: bool, crop: int,
                suffixes: dict[str, str]) -> dict[str, Any]:
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
               img_suffix=suffixes[split], seg_map_suffix=suffixes[f"{split}:labels"],
               pipeline=pipeline)
    if layout.classes is not None:  # a dataset of our own: mmseg's generic class
        cfg.update(reduce_zero_label=True, metainfo=dict(classes=list(layout.classes)))
    return cfg


def _files(folder: Path, suffix: str) -> tuple[dict[str, Path], str]:
    """stem -> file of the folder's files with ``suffix`` in any case, and that suffix as
    the files spell it (mmseg lists one spelling)."""
    files = {p.name[: -len(suffix)]: p for p in folder.iterdir()
             if p.is_file() and p.name.lower().endswith(suffix.lower())}
    spellings = sorted({p.name[-len(suffix):] for p in files.values()})
    if len(spellings) > 1:
        raise DataFormatError(f"{folder}: files end in {' and '.join(spellings)}: expected one "
                              f"spelling of {suffix} (the loader lists one)")
    return files, spellings[0] if spellings else suffix


def check(spec: TaskSpec, root: str) -> dict[str, str]:
    """Every image decodes and has a single-channel label map of its size with values in
    [0, num_classes] (0 = ignored); no split is empty. Reads every file once (a later check
    skips the pairs unchanged since). Returns the suffixes as the files spell them, per split
    (``SPLIT``, ``SPLIT:labels``)."""
    layout = spec.layout
    base = Path(root) / layout.base
    suffixes: dict[str, str] = {}
    for split in layout.splits:
        img_dir = base / layout.images.format(split=split)
        ann_dir = base / layout.labels.format(split=split)
        for d in (img_dir, ann_dir):
            if not d.is_dir():
                raise DataFormatError(f"{layout.dataset_type}: directory not found: expected {d}")
        images, suffixes[split] = _files(img_dir, layout.img_suffix)
        labels, suffixes[f"{split}:labels"] = _files(ann_dir, ".png")
        if not images:
            others = sorted({p.suffix for p in img_dir.iterdir()} - {""})
            raise DataFormatError(f"{img_dir}: no images: expected *{layout.img_suffix} files"
                                  + (f" (found {', '.join(others)})" if others else ""))
        if sorted(images) != sorted(labels):
            unmatched = sorted(set(images) ^ set(labels))[:3]
            raise DataFormatError(f"{ann_dir}: {len(images)} images but {len(labels)} label maps "
                                  f"(unmatched: {unmatched})")
        with CheckCache("segmentation", base) as cache:
            for stem in sorted(labels):
                if cache.get(images[stem], labels[stem]) is None:
                    _check_pair(images[stem], labels[stem], layout.num_classes)
                    cache.put(True, images[stem], labels[stem])
    return suffixes


def _check_pair(image: Path, path: Path, num_classes: int) -> None:
    """The image decodes; its label map is single-channel, of its size, in range."""
    size = open_image(image).size
    png = open_image(path)
    if png.mode not in ("L", "P", "I;16", "I"):
        raise DataFormatError(f"{path}: expected a single-channel label map (class ids), "
                              f"got mode {png.mode}")
    label = np.asarray(png)
    if (label.shape[1], label.shape[0]) != size:
        raise DataFormatError(f"{path}: expected a map of the image's size {size}, got "
                              f"{label.shape[1]}x{label.shape[0]}")
    if label.max() > num_classes:
        raise DataFormatError(f"{path}: label value {int(label.max())} outside "
                              f"0..{num_classes} (0 = ignored)")


def build_config(spec: TaskSpec, cell: Cell) -> dict[str, Any]:
    suffixes = check(spec, cell.data_root)
    p = dict(PROFILES[cell.profile])
    if cell.iters is not None:
        p["iters"] = cell.iters
    paper = cell.profile == "paper"
    backbone = backbone_cfg(cell, PAPER_DROP_PATH.get(cell.backbone, 0.0) if paper else 0.0)
    dims = stage_dims(cell)
    num_classes = spec.layout.num_classes
    setr = get_backbone(cell.backbone).family == "vit"  # SETR-PUP replaces the heads below
    decode, aux = _upernet_heads(dims, p["channels"], num_classes, p["aux"] and not setr)
    model = dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=MEAN, std=STD, bgr_to_rgb=True,
                               pad_val=0, seg_pad_val=255, size=(p["crop"], p["crop"])),
        backbone=backbone,
        decode_head=decode, train_cfg=dict(), test_cfg=dict(mode="whole"))
    if p["loss_stride"] is not None:
        _register_strided_head()
        model["decode_head"].update(type="StridedLossUPerHead", loss_stride=p["loss_stride"])
    if aux:
        (model["auxiliary_head"],) = aux
    lr = PAPER_LR.get(cell.backbone, 6e-5) if paper else MINI_LR
    # Trained by iterations in both profiles (an infinite sampler); validation: one pass.
    train_loader = loader(p["batch"], dataset_cfg(cell.data_root, spec, True, p["crop"], suffixes),
                          train=True, paper=paper, infinite=True)
    val_loader = loader(p["val_batch"],
                        dataset_cfg(cell.data_root, spec, False, p["crop"], suffixes),
                        train=False, paper=paper)
    cfg = dict(
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
    if setr:
        _setr(cfg, cell, p, num_classes)
    return cfg


def _upernet_heads(dims: list[int], channels: int, num_classes: int, aux: bool
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """UperNet's decode head over every stage, and its FCN auxiliary head on stage 3."""
    bn = dict(type="BN", requires_grad=True)
    decode = dict(type="UPerHead", in_channels=dims, in_index=list(range(len(dims))),
                  pool_scales=(1, 2, 3, 6), channels=channels, dropout_ratio=0.1,
                  num_classes=num_classes, norm_cfg=bn, align_corners=False,
                  loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))
    return decode, [dict(
        type="FCNHead", in_channels=dims[2], in_index=2, channels=256, num_convs=1,
        concat_input=False, dropout_ratio=0.1, num_classes=num_classes, norm_cfg=bn,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4))] if aux else []


def _setr_layout(backbone: str) -> tuple[int, tuple[int, ...]]:
    """(token width, the blocks SETR reads) of a plain ViT (SETR_BLOCKS above)."""
    from methods.backbones import create_backbone

    (stage,) = create_backbone(backbone, device="meta").stages
    last_four = tuple(range(max(0, stage.depth - 4), stage.depth))
    return stage.dim, SETR_BLOCKS.get(backbone, last_four)


def _setr_heads(dim: int, channels: int, num_classes: int, blocks: tuple[int, ...],
                aux: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """SETR-PUP's decode head (on the last block) and its auxiliary heads (the others)."""
    def head(index: int, convs: int, up_scale: int, weight: float) -> dict[str, Any]:
        return dict(type="SETRUPHead", in_channels=dim, channels=channels, in_index=index,
                    num_classes=num_classes, dropout_ratio=0, num_convs=convs, up_scale=up_scale,
                    kernel_size=3, norm_cfg=dict(type="BN", requires_grad=True),
                    align_corners=False, loss_decode=dict(type="CrossEntropyLoss",
                                                          use_sigmoid=False, loss_weight=weight))

    return (head(len(blocks) - 1, 4, 2, 1.0),
            [head(i, 2, 4, 0.4) for i in range(len(blocks) - 1)] if aux else [])


def head_params(backbone: str, num_classes: int) -> int:
    """Parameters of the heads the paper profile builds on ``backbone`` (decode and auxiliary:
    SETR-PUP's on a plain ViT, else UperNet's and its FCN head), counted on the meta device:
    Table 7's counts and Table 8's full fine-tuning include them."""
    import warnings

    import torch
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    p = PROFILES["paper"]
    if get_backbone(backbone).family == "vit":
        dim, blocks = _setr_layout(backbone)
        decode, aux = _setr_heads(dim, SETR_PAPER["channels"], num_classes, blocks, p["aux"])
    else:
        from methods.backbones import stage_dims as dims

        decode, aux = _upernet_heads(list(dims(backbone)), p["channels"], num_classes, p["aux"])
    # mmseg's scope, whichever OpenMMLab package set the default one (else its registry is searched)
    with torch.device("meta"), warnings.catch_warnings(), DefaultScope.overwrite_default_scope("mmseg"):
        warnings.simplefilter("ignore")  # mmseg's notes on its loss builder, not about counts
        return sum(w.numel() for cfg in (decode, *aux) for w in MODELS.build(cfg).parameters())


def _setr(cfg: dict[str, Any], cell: Cell, p: dict[str, Any], num_classes: int) -> None:
    """Turn the UperNet configuration into SETR-PUP's on a plain ViT (SETR_BLOCKS above)."""
    paper = cell.profile == "paper"
    dim, blocks = _setr_layout(cell.backbone)
    channels = SETR_PAPER["channels"] if paper else p["channels"]
    decode, aux = _setr_heads(dim, channels, num_classes, blocks, p["aux"])
    model = cfg["model"]
    model["backbone"]["block_outputs"] = blocks
    model["decode_head"] = decode
    if aux:
        model["auxiliary_head"] = aux
    if paper:
        crop, stride = SETR_PAPER["slide"]
        model["test_cfg"] = dict(mode="slide", crop_size=(crop, crop), stride=(stride, stride))
        mult = dict(lr_mult=SETR_PAPER["head_lr_mult"])
        cfg["optim_wrapper"] = dict(
            type="OptimWrapper",
            optimizer=dict(type="SGD", lr=SETR_PAPER["lr"], momentum=0.9, weight_decay=0.0),
            paramwise_cfg=dict(custom_keys={"decode_head": mult, "auxiliary_head": mult}))
        cfg["param_scheduler"] = [dict(type="PolyLR", eta_min=SETR_PAPER["min_lr"],
                                       power=SETR_PAPER["power"], begin=0, end=p["iters"],
                                       by_epoch=False)]


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
