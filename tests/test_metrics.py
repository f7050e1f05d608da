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


def test_panoptic_quality_on_known_segments():
    from tasks.panoptic import PanopticQuality, rgb2id

    metric = PanopticQuality(num_things=2, num_stuff=1)  # labels 0, 1 things; 2 stuff
    # Ground truth 4x4: segment 1 = thing 0 (left half), 2 = stuff 2 (right half, 2 rows),
    # 3 = crowd of thing 1 (bottom-right 2x2), void nowhere.
    gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 3, 3], [1, 1, 3, 3]])
    segments = {1: (0, False), 2: (2, False), 3: (1, True)}
    # Prediction: thing 0 instance 1 covers 6 of the 8 left pixels (IoU 6/8 > 0.5: TP);
    # stuff 2 covers its 4 pixels exactly plus 2 left pixels (IoU 4/6: TP);
    # thing 1 instance 2 lies on the crowd region of its class (not an FP).
    off = 1000
    pred = np.array([[1 * off + 0, 1 * off + 0, 2, 2],
                     [1 * off + 0, 1 * off + 0, 2, 2],
                     [1 * off + 0, 1 * off + 0, 2 * off + 1, 2 * off + 1],
                     [2, 2, 2 * off + 1, 2 * off + 1]])
    stats = metric.match(pred, gt, segments)
    assert stats[0].tolist() == [1, 0, 0, pytest.approx(6 / 8)]
    assert stats[2].tolist() == [1, 0, 0, pytest.approx(4 / 6)]
    assert stats[1].tolist() == [0, 0, 0, 0]
    result = metric.compute_metrics([stats])
    assert result["PQ"] == pytest.approx(100 * (6 / 8 + 4 / 6) / 2)
    assert result["RQ"] == pytest.approx(100.0)
    assert result["PQ_th"] == pytest.approx(75.0) and result["PQ_st"] == pytest.approx(400 / 6)

    # A missed segment and a wrong prediction: FN and FP halve RQ.
    pred_bad = np.full((4, 4), 2)  # everything predicted as stuff 2
    stats = metric.match(pred_bad, gt, segments)
    # stuff: IoU = 4 / (16 - 4 crowd... ) -> pred area 16, gt 4, inter 4, void 0 -> 0.25: FP+FN
    assert stats[2].tolist() == [0, 1, 1, 0]
    assert stats[0].tolist() == [0, 0, 1, 0]
    assert metric.compute_metrics([stats])["PQ"] == 0.0

    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 1] = (1, 2, 3)
    assert rgb2id(rgb).tolist() == [[0, 1 + 2 * 256 + 3 * 65536]]


def test_keypoint_ap_on_known_poses(tmp_path):
    """mmpose's CocoMetric (xtcocotools OKS): exact keypoints score AP 1, far-off ones 0."""
    from mmpose.datasets import CocoDataset
    from mmpose.datasets.datasets.utils import parse_pose_metainfo
    from mmpose.evaluation import CocoMetric

    rng = np.random.default_rng(0)
    kps = np.concatenate([rng.uniform(20, 80, (17, 2)), np.full((17, 1), 2)], 1)
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 100}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                           "bbox": [20, 20, 60, 60], "area": 3600, "num_keypoints": 17,
                           "keypoints": kps.reshape(-1).tolist()}],
          "categories": [{"id": 1, "name": "person"}]}
    ann = tmp_path / "kp.json"
    ann.write_text(json.dumps(gt))

    def evaluate(points):
        metric = CocoMetric(ann_file=str(ann), outfile_prefix=str(tmp_path / "out"))
        metric.dataset_meta = parse_pose_metainfo(CocoDataset.METAINFO)
        sample = {"id": 1, "img_id": 1, "category_id": 1, "gt_instances": {},
                  "pred_instances": {"keypoints": points[None, :, :2],
                                     "keypoint_scores": np.ones((1, 17)),
                                     "bbox_scores": np.ones(1)}}
        metric.process([], [sample])
        return metric.compute_metrics(metric.results)["AP"]

    assert evaluate(kps) == pytest.approx(1.0)
    assert evaluate(kps + 40) == pytest.approx(0.0)
