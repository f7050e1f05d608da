"""The suite's shared vocabulary: backbones and tasks by name, below methods/ and tasks/.

Everything here is declarative data (no torch, no OpenMMLab): what a backbone is (its timm
architecture, family, paper name) and what a task is (its kind, dataset layout, metrics and
paper table). ``methods`` and ``tasks`` both read it; neither imports the other to learn a
name. New backbones and tasks join with one registration call.
"""
ENTRY_POINT_GROUP = "parax_bench.methods"  # where installed packages expose their methods

from .backbones import BACKBONES, BackboneSpec, UnknownBackboneError, get_backbone, register_backbone
from .cell import Cell
from .tasks import (KIND_METRICS, TASKS, ClassificationLayout, CocoLayout, Metric, SegmentationLayout,
                    TaskSpec, UnknownTaskError, get_task, register_task)

__all__ = ["BACKBONES", "BackboneSpec", "Cell", "ClassificationLayout", "CocoLayout",
           "ENTRY_POINT_GROUP", "KIND_METRICS", "Metric", "SegmentationLayout", "TASKS", "TaskSpec",
           "UnknownBackboneError", "UnknownTaskError", "get_backbone", "get_task",
           "register_backbone", "register_task"]
