"""Tasks as declarative specs: kind, the paper's dataset and table, on-disk layout, metrics.

A spec is data only. Its kind's module in ``tasks/`` turns it into a training configuration,
checks and loads its files and writes synthetic data in its layout, all from the same
``layout``; aggregation reads its ``metrics`` and ``paper_table``. A dataset of an existing
kind is one ``register_task(TaskSpec(...))``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .registry import Registry

KINDS = ("semantic_segmentation", "instance_segmentation", "panoptic_segmentation",
         "pose_estimation", "classification")


@dataclass(frozen=True)
class Metric:
    key: str  # the metric's key in a result file
    label: str  # its column (the paper's name for it)
    scale: float = 1.0  # table value = result value x scale (COCO APs are fractions)
    higher_is_better: bool = True


KIND_METRICS: dict[str, tuple[Metric, ...]] = {  # the first is the primary metric
    "semantic_segmentation": (Metric("mIoU", "mIoU"),),
    "instance_segmentation": (
        Metric("coco/bbox_mAP", "AP_box", 100.0), Metric("coco/bbox_mAP_50", "AP50_box", 100.0),
        Metric("coco/bbox_mAP_75", "AP75_box", 100.0), Metric("coco/segm_mAP", "AP_mask", 100.0),
        Metric("coco/segm_mAP_50", "AP50_mask", 100.0),
        Metric("coco/segm_mAP_75", "AP75_mask", 100.0)),
    "panoptic_segmentation": (Metric("coco_panoptic/PQ", "PQ"), Metric("coco_panoptic/SQ", "SQ"),
                              Metric("coco_panoptic/RQ", "RQ")),
    "pose_estimation": (Metric("coco/AP", "AP", 100.0), Metric("coco/AR", "AR", 100.0)),
    "classification": (Metric("top1", "top1"),),
}


@dataclass(frozen=True)
class SegmentationLayout:
    """mmseg's layouts: ``base/images/{split}/*img_suffix`` with ``base/labels/{split}/*.png``
    (uint8 class ids, 0 ignored)."""

    dataset_type: str  # the mmseg dataset class (BaseSegDataset for a dataset of our own)
    num_classes: int
    base: str  # folder under the data root
    images: str  # '{split}' is replaced by the split folder
    labels: str
    img_suffix: str
    splits: tuple[str, str]  # (train, val) folder names
    classes: tuple[str, ...] | None = None  # class names (BaseSegDataset needs them)


@dataclass(frozen=True)
class CocoLayout:
    """COCO 2017: ``coco/{split}/*.jpg`` and ``coco/annotations/{annotations}_{split}.json``
    (panoptic: PNGs in ``coco/annotations/panoptic_{split}/``)."""

    annotations: str  # instances | panoptic | person_keypoints
    base: str = "coco"
    splits: tuple[str, str] = ("train2017", "val2017")


@dataclass(frozen=True)
class ClassificationLayout:
    """One of the classification release formats (``tasks/classification.py`` reads each)."""

    format: str  # cifar100 | svhn | food101 | imagenet_r
    num_classes: int


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # one of KINDS (the paper table's task column)
    paper_dataset: str  # the paper table's dataset column
    description: str
    paper_table: str | None = None  # the paper's comparison table holding it ("1", "4", ...)
    layout: Any = None  # SegmentationLayout | CocoLayout | ClassificationLayout
    metrics: tuple[Metric, ...] = ()  # default: the kind's (KIND_METRICS)
    synthetic: Mapping[str, Any] = field(default_factory=dict)  # the kind writer's scene options

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if not self.metrics:
            object.__setattr__(self, "metrics", KIND_METRICS[self.kind])

    @property
    def dense(self) -> bool:
        """Dense tasks feed multi-scale backbone features to a neck/decoder."""
        return self.kind != "classification"

    @property
    def primary(self) -> Metric:
        return self.metrics[0]


class UnknownTaskError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


TASKS: Registry[TaskSpec] = Registry("task", UnknownTaskError)
register_task = TASKS.register
get_task = TASKS.lookup


_ADE_SCENES = dict(stuff=(3, 10, 7, 22), things=(13, 21, 5, 20, 16),  # sky grass road water |
                   prefixes=("ADE_train", "ADE_val"))  # person car tree chair table
for _spec in [
    TaskSpec("ade20k", "semantic_segmentation", "ADE20K", "ADE20K semantic segmentation, UperNet",
             "1", SegmentationLayout("ADE20KDataset", 150, "ADEChallengeData2016", "images/{split}",
                                     "annotations/{split}", ".jpg", ("training", "validation")),
             synthetic=_ADE_SCENES),
    TaskSpec("coco_instance", "instance_segmentation", "COCO2017",
             "COCO detection + instance segmentation, Mask R-CNN 1x", "2", CocoLayout("instances")),
    TaskSpec("coco_panoptic", "panoptic_segmentation", "COCO2017", "COCO panoptic, Panoptic FPN 1x",
             "3", CocoLayout("panoptic")),
    TaskSpec("coco_pose", "pose_estimation", "COCO2017 keypoints", "COCO keypoints, top-down heatmap",
             "9", CocoLayout("person_keypoints")),
    # mmsegmentation's converted layouts of the ISPRS Potsdam and LoveDA releases
    TaskSpec("potsdam", "semantic_segmentation", "ISPRS Potsdam", "ISPRS Potsdam, UperNet", "10",
             SegmentationLayout("PotsdamDataset", 6, "potsdam", "img_dir/{split}", "ann_dir/{split}",
                                ".png", ("train", "val")),
             synthetic=dict(stuff=(1, 3, 6), things=(2, 4, 5), prefixes=("2_10_0", "2_13_0"))),
    TaskSpec("loveda", "semantic_segmentation", "LoveDA", "LoveDA, UperNet", "10",
             SegmentationLayout("LoveDADataset", 7, "loveDA", "img_dir/{split}", "ann_dir/{split}",
                                ".png", ("train", "val")),
             synthetic=dict(stuff=(1, 3, 6, 7), things=(2, 4, 5), prefixes=("train", "val"))),
    TaskSpec("cifar100", "classification", "CIFAR-100", "CIFAR-100 classification", "4",
             ClassificationLayout("cifar100", 100)),
    TaskSpec("svhn", "classification", "SVHN", "SVHN classification", "4",
             ClassificationLayout("svhn", 10)),
    TaskSpec("food101", "classification", "Food-101", "Food-101 classification", "4",
             ClassificationLayout("food101", 101)),
    TaskSpec("imagenet_r", "classification", "ImageNet-R", "ImageNet-R classification", "4",
             ClassificationLayout("imagenet_r", 200)),
]:
    register_task(_spec)
