"""Metrics on hand-built predictions with known answers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch


def test_top1_accuracy():
    from tasks.classification import TopOneAccuracy

    metric = TopOneAccuracy()
    metric.process(None, [(1, 1), (2, 3), (0, 0), (4, 4)])
    metric.process(None, [(5, 6)])
    assert metric.compute_metrics(metric.results) == {"top1": 60.0}


def test_miou_from_mmseg_on_known_maps():
    from mmseg.evaluation import IoUMetric
    from mmseg.structures import SegDataSample
    from mmengine.structures import PixelData

    # 2x4 maps, classes 0..2, 255 ignored.
    gt = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]])
    # class 0: inter 1, union 3 (pred {00,11,12 ignored->no}) -> computed below by hand
    # valid pixels exclude gt 255: pred at (1,2) is dropped.
    # class 0: gt {(0,0),(0,1)}, pred {(0,0),(1,1)} -> inter 1, union 3 -> 1/3
    # class 1: gt {(0,2),(0,3),(1,3)}, pred {(0,1),(0,2),(0,3),(1,3)} -> 3/4
    # class 2: gt {(1,0),(1,1)}, pred {(1,0)} -> 1/2
    expected = 100 * (1 / 3 + 3 / 4 + 1 / 2) / 3
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=gt[None])
    sample.pred_sem_seg = PixelData(data=pred[None])
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": ("a", "b", "c")}
    metric.process({}, [sample.to_dict()])
    result = metric.compute_metrics(metric.results)
    assert result["mIoU"] == pytest.approx(round(expected, 2), abs=0.01)


def test_coco_box_ap_against_pycocotools(tmp_path):
    """Perfect boxes give AP 1; one of two boxes missed gives the pycocotools value."""
    from mmdet.evaluation import CocoMetric

    gt = {"images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 100}],
          "annotations": [
              {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900,
               "iscrowd": 0},
              {"id": 2, "image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "area": 900,
               "iscrowd": 0}],
          "categories": [{"id": 1, "name": "person"}]}
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps(gt))

    def evaluate(boxes, scores):
        metric = CocoMetric(ann_file=str(ann), metric=["bbox"])
        metric.dataset_meta = {"classes": ("person",)}
        pred = {"img_id": 1, "ori_shape": (100, 100),
                "pred_instances": {"bboxes": torch.tensor(boxes, dtype=torch.float32),
                                   "scores": torch.tensor(scores), "labels": torch.zeros(len(boxes),
                                                                                         dtype=torch.long)}}
        metric.process({}, [pred])
        return metric.compute_metrics(metric.results)["bbox_mAP"]

    assert evaluate([[10, 10, 40, 40], [60, 60, 90, 90]], [0.9, 0.8]) == pytest.approx(1.0)
    # One box found: recall 0.5 at every threshold -> COCO's 101-point AP = 51/101.
    assert evaluate([[10, 10, 40, 40]], [0.9]) == pytest.approx(round(51 / 101, 3), abs=1e-3)
