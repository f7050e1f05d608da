"""Task names and what the paper calls them (dataset, task kind) for reported-number lookups."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str  # semantic_segmentation | instance_segmentation | panoptic_segmentation |
    #            pose_estimation | classification (the paper table's task column)
    paper_dataset: str  # the paper table's dataset column
    description: str

    @property
    def dense(self) -> bool:
        """Dense tasks feed multi-scale backbone features to a neck/decoder."""
        return self.kind != "classification"


class DataFormatError(ValueError):
    """A dataset file is missing or not in the expected format; the message names it."""


class UnknownTaskError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("ade20k", "semantic_segmentation", "ADE20K", "ADE20K semantic segmentation, UperNet"),
    TaskSpec("coco_instance", "instance_segmentation", "COCO2017",
             "COCO detection + instance segmentation, Mask R-CNN 1x"),
    TaskSpec("coco_panoptic", "panoptic_segmentation", "COCO2017", "COCO panoptic, Panoptic FPN 1x"),
    TaskSpec("coco_pose", "pose_estimation", "COCO2017 keypoints", "COCO keypoints, top-down heatmap"),
    TaskSpec("potsdam", "semantic_segmentation", "ISPRS Potsdam", "ISPRS Potsdam, UperNet"),
    TaskSpec("loveda", "semantic_segmentation", "LoveDA", "LoveDA, UperNet"),
    TaskSpec("cifar100", "classification", "CIFAR-100", "CIFAR-100 classification"),
    TaskSpec("svhn", "classification", "SVHN", "SVHN classification"),
    TaskSpec("food101", "classification", "Food-101", "Food-101 classification"),
    TaskSpec("imagenet_r", "classification", "ImageNet-R", "ImageNet-R classification"),
]}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}") from None
