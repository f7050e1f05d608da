"""Data as other projects write it: every quirk either loads, trains and evaluates, or fails
before training with one line naming the file and what was expected (exit 2, no result
file, no work folder).

The fixtures are our synthetic datasets in the real formats, then changed the way real data
differs: mixed image sizes, suffixes in capitals, greyscale / palette / RGBA / 16-bit images,
missing height / width, box-only or foreign annotations, sparse ids, empty splits, files
that do not decode.
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.cli import main
from tasks.synthetic import generate

from .quirks import pad_one_val_image

BACKBONE = {"ade20k": "swin-micro", "coco_instance": "convnext-micro",
            "coco_panoptic": "convnext-micro", "coco_pose": "swin-micro", "cifar100": "vit-micro",
            "food101": "vit-micro", "imagenet_r": "vit-micro"}
SIZES = {"ade20k": dict(train=4, val=3), "coco_instance": dict(train=4, val=3),
         "coco_panoptic": dict(train=4, val=3), "coco_pose": dict(train=4, val=3),
         "cifar100": dict(train=16, val=8), "food101": dict(train=12, val=6),
         "imagenet_r": dict(train=12, val=6)}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    return {task: generate(task, root / task, seed=0, **sizes) for task, sizes in SIZES.items()}


@pytest.fixture
def copy(pristine, tmp_path):
    made = []

    def make(task: str) -> Path:
        made.append(task)
        return Path(shutil.copytree(pristine[task], tmp_path / f"{task}-data{len(made)}"))
    return make


def train(tmp_path: Path, task: str, data: Path, iters: int = 1) -> tuple[int, Path]:
    out = tmp_path / f"{task}.json"
    code = main(["train", "--from-scratch", "--task", task, "--backbone", BACKBONE[task], "--method", "parax",
                 "--data", str(data), "--out", str(out), "--iters", str(iters)])
    return code, out


def refused(tmp_path: Path, capsys, task: str, data: Path, *expected: str) -> str:
    """The cell fails before training: exit 2, one line naming what is wrong, nothing left."""
    code, out = train(tmp_path, task, data)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("parax-bench: error:")]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out.exists() and not out.with_suffix(".work").exists()
    return lines[0]


def trained(tmp_path: Path, task: str, data: Path, metric: str) -> dict:
    code, out = train(tmp_path, task, data)
    assert code == 0
    result = json.loads(out.read_text())
    assert metric in result["metrics"] and all(v != -1 for v in result["metrics"].values())
    return result


def resize(path: Path, size: tuple[int, int], resample=Image.NEAREST) -> None:
    with Image.open(path) as img:
        img.resize(size, resample).save(path)


def coco_json(data: Path, split: str, kind: str = "instances") -> tuple[Path, dict]:
    ann = data / "coco" / "annotations" / f"{kind}_{split}.json"
    return ann, json.loads(ann.read_text())


# -- semantic segmentation ------------------------------------------------------------------------
def test_segmentation_takes_mixed_sizes_capital_suffixes_and_any_image_mode(tmp_path, copy):
    """Real ADE20K: validation images of different sizes (one at a time), '.JPG' files,
    greyscale / palette / RGBA / 16-bit images and palette-mode label maps."""
    data = copy("ade20k")
    base = data / "ADEChallengeData2016"
    for i, img in enumerate(sorted((base / "images/validation").glob("*.jpg"))):
        label = base / "annotations/validation" / f"{img.stem}.png"
        size = [(80, 48), (40, 72), (64, 64)][i % 3]
        resize(img, size, Image.BILINEAR)
        resize(label, size)
    for i, img in enumerate(sorted((base / "images/training").glob("*.jpg"))):
        with Image.open(img) as im:
            mode = ["L", "P", "RGBA", "I;16"][i % 4]
            converted = (Image.fromarray((np.asarray(im.convert("L"), np.uint16) * 257))
                         if mode == "I;16" else im.convert(mode))
        img.unlink()
        converted.save(img.with_suffix(".JPG") if mode in ("L",) else img.with_suffix(".png"))
    for split in ("training", "validation"):  # one spelling per folder: rename them all
        for img in (base / "images" / split).iterdir():
            img.rename(img.with_name(img.stem + ".JPG"))
    for label in list((base / "annotations/training").glob("*.png"))[:2]:
        with Image.open(label) as im:
            im.convert("P").save(label)
    assert "mIoU" in trained(tmp_path, "ade20k", data, "mIoU")["metrics"]


def test_segmentation_refusals(tmp_path, copy, capsys):
    data = copy("ade20k")
    base = data / "ADEChallengeData2016"
    for img in (base / "images/training").iterdir():
        img.unlink()
    refused(tmp_path, capsys, "ade20k", data, "images/training: no images: expected *.jpg")

    data = copy("ade20k")
    label = sorted((data / "ADEChallengeData2016/annotations/validation").glob("*.png"))[0]
    label.write_bytes(label.read_bytes()[:60])  # a truncated PNG
    refused(tmp_path, capsys, "ade20k", data, str(label), "does not decode")

    data = copy("ade20k")
    base = data / "ADEChallengeData2016/images/validation"
    first = sorted(base.glob("*.jpg"))[0]
    first.rename(first.with_suffix(".JPG"))
    refused(tmp_path, capsys, "ade20k", data, "files end in .JPG and .jpg")

    data = copy("ade20k")
    label = sorted((data / "ADEChallengeData2016/annotations/training").glob("*.png"))[0]
    with Image.open(label) as im:
        im.convert("RGB").save(label)
    refused(tmp_path, capsys, "ade20k", data, str(label), "single-channel label map")


# -- COCO detection and instance segmentation ----------------------------------------------------
def test_coco_takes_rle_crowds_sparse_ids_missing_sizes_and_mixed_sizes(tmp_path, copy):
    data = copy("coco_instance")
    for split in ("train2017", "val2017"):
        ann, coco = coco_json(data, split)
        for n, img in enumerate(coco["images"]):
            img["id"] = img["id"] * 7 + 3  # non-contiguous ids
            del img["height"], img["width"]  # read from the image
        for a in coco["annotations"]:
            a["image_id"] = a["image_id"] * 7 + 3
        crowd = dict(coco["annotations"][0], id=10**9 + 7, iscrowd=1)  # crowd, id above 2^31
        coco["annotations"].append(crowd)
        ann.write_text(json.dumps(coco))
    first = data / "coco" / "val2017" / coco["images"][0]["file_name"]
    ann, coco = coco_json(data, "val2017")
    resize(first, (96, 160), Image.BILINEAR)  # one validation image of another size
    for a in coco["annotations"]:  # its objects: boxes only matter for the size check
        if a["image_id"] == coco["images"][0]["id"]:
            a["bbox"] = [1.0, 1.0, 20.0, 20.0]
            a["segmentation"] = [[1.0, 1.0, 21.0, 1.0, 21.0, 21.0, 1.0, 21.0]]
    ann.write_text(json.dumps(coco))
    result = trained(tmp_path, "coco_instance", data, "coco/bbox_mAP")
    assert result["metrics"]["coco/bbox_mAP"] >= 0


@pytest.mark.parametrize("quirk, expected", [
    ("box_only", ["annotations have no segmentation", "Mask R-CNN needs a mask"]),
    ("unknown_category", ["category_id 777 is not among the file's categories"]),
    ("foreign_names", ["are not among the 80 classes of the model"]),
    ("empty_train", ["instances_train2017.json: no images (an empty split)"]),
    ("empty_val_annotations", ["instances_val2017.json: no annotations"]),
    ("broken_val_image", ["val2017", "does not decode"]),
    ("duplicate_ids", ["expected a unique 'id'"]),
    ("size_mismatch", ["the file is", "the entry says"]),
])
def test_coco_refusals(tmp_path, copy, capsys, quirk, expected):
    data = copy("coco_instance")
    split = "train2017" if quirk in ("box_only", "empty_train", "foreign_names") else "val2017"
    ann, coco = coco_json(data, split)
    if quirk == "box_only":
        for a in coco["annotations"][:3]:
            del a["segmentation"]
    elif quirk == "unknown_category":
        coco["annotations"][0]["category_id"] = 777
    elif quirk == "foreign_names":
        coco["categories"][0]["name"] = "widget"
    elif quirk == "empty_train":
        coco["images"], coco["annotations"] = [], []
    elif quirk == "empty_val_annotations":
        coco["annotations"] = []
    elif quirk == "broken_val_image":
        image = data / "coco" / split / coco["images"][-1]["file_name"]
        image.write_bytes(b"\xff\xd8\xff not a jpeg")
    elif quirk == "duplicate_ids":
        coco["annotations"][1]["id"] = coco["annotations"][0]["id"]
    elif quirk == "size_mismatch":
        coco["images"][0]["width"] += 5
    ann.write_text(json.dumps(coco))
    line = refused(tmp_path, capsys, "coco_instance", data, *expected)
    assert str(ann) in line or "does not decode" in line
    if quirk == "box_only":
        assert "3 of" in line


# -- COCO panoptic --------------------------------------------------------------------------------
def test_panoptic_completes_segments_and_refuses_unknown_categories(tmp_path, copy, capsys):
    data = copy("coco_panoptic")
    pad_one_val_image("coco_panoptic", data)  # and one validation image of another size
    for split in ("train2017", "val2017"):
        ann, coco = coco_json(data, split, "panoptic")
        for a in coco["annotations"]:
            for seg in a["segments_info"]:
                del seg["area"], seg["iscrowd"]  # completed from the PNG
        for img in coco["images"]:
            del img["height"], img["width"]
        ann.write_text(json.dumps(coco))
    trained(tmp_path, "coco_panoptic", data, "coco_panoptic/PQ")

    ann, coco = coco_json(data, "val2017", "panoptic")
    coco["annotations"][0]["segments_info"][0]["category_id"] = 777
    ann.write_text(json.dumps(coco))
    (tmp_path / "again").mkdir()
    refused(tmp_path / "again", capsys, "coco_panoptic", data,
            "category_id 777 is not among the file's")


# -- COCO keypoints -------------------------------------------------------------------------------
def test_pose_takes_missing_counts_and_refuses_other_keypoint_sets(tmp_path, copy, capsys):
    data = copy("coco_pose")
    pad_one_val_image("coco_pose", data)  # and one validation image of another size
    for split in ("train2017", "val2017"):
        ann, coco = coco_json(data, split, "person_keypoints")
        for a in coco["annotations"]:
            del a["num_keypoints"], a["area"]  # CrowdPose writes neither
        ann.write_text(json.dumps(coco))
    trained(tmp_path, "coco_pose", data, "coco/AP")

    ann, coco = coco_json(data, "val2017", "person_keypoints")
    coco["categories"][0]["keypoints"] = coco["categories"][0]["keypoints"][:14]  # CrowdPose
    ann.write_text(json.dumps(coco))
    (tmp_path / "again").mkdir()
    refused(tmp_path / "again", capsys, "coco_pose", data, "has 14 keypoints: expected COCO's 17")


# -- classification -------------------------------------------------------------------------------
def test_folder_datasets_take_capital_suffixes_and_any_image_mode(tmp_path, copy):
    data = copy("food101")
    for i, img in enumerate(sorted((data / "food-101/images").rglob("*.jpg"))):
        with Image.open(img) as im:
            if i % 3 == 0:
                im = Image.fromarray(np.asarray(im.convert("L"), np.uint16) * 257)  # 16-bit
                img.unlink()
                im.save(img.with_suffix(".png"))
                img.with_suffix(".png").rename(img.with_suffix(".JPG"))  # the loader decodes
            elif i % 3 == 1:
                im.resize((70, 30)).convert("L").save(img)
    trained(tmp_path, "food101", data, "top1")


def test_classification_refusals(tmp_path, copy, capsys):
    data = copy("cifar100")
    (data / "cifar-100-python/meta").write_bytes(pickle.dumps({b"coarse_label_names": []}))
    refused(tmp_path, capsys, "cifar100", data, "cifar-100-python/meta: not a CIFAR-100 meta "
                                                "file: no fine_label_names")

    data = copy("imagenet_r")
    split = json.loads((data / "imagenet-r/split.json").read_text())
    broken = data / "imagenet-r" / split["test"][0]
    broken.write_bytes(b"garbage")
    refused(tmp_path, capsys, "imagenet_r", data, str(broken), "does not decode")

    data = copy("imagenet_r")
    split = json.loads((data / "imagenet-r/split.json").read_text())
    split["test"] = []
    (data / "imagenet-r/split.json").write_text(json.dumps(split))
    refused(tmp_path, capsys, "imagenet_r", data, "split.json: no images (an empty split)")


def test_unmeasurable_metrics_are_left_out_and_the_primary_must_be_measured():
    from benchmark.runner import measured
    from catalog import Cell

    cell = Cell(task="coco_instance", backbone="swin-micro", method="parax")
    kept, unmeasured = measured(cell, {"coco/bbox_mAP": 0.25, "coco/bbox_mAP_l": -1.0})
    assert kept == {"coco/bbox_mAP": 0.25} and unmeasured == ["coco/bbox_mAP_l"]
    with pytest.raises(ValueError, match="could not measure coco/bbox_mAP .*no ground truth"):
        measured(cell, {"coco/bbox_mAP": -1.0})


def test_a_dataset_is_decoded_once_and_a_changed_file_again(tmp_path, copy, monkeypatch):
    import tasks.segmentation as segmentation
    from tasks import DataFormatError, check_dataset

    data = copy("ade20k")
    check_dataset("ade20k", data)
    opened = []
    real = segmentation.open_image
    monkeypatch.setattr(segmentation, "open_image", lambda p: opened.append(p) or real(p))
    check_dataset("ade20k", data)
    assert opened == []  # every pair checked before and unchanged since
    label = sorted((data / "ADEChallengeData2016/annotations/validation").glob("*.png"))[0]
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(label)
    with pytest.raises(DataFormatError, match="label value 200"):
        check_dataset("ade20k", data)
    assert [p.name for p in opened] == [label.with_suffix(".jpg").name, label.name]


@pytest.mark.parametrize("task", ["coco_instance", "coco_panoptic", "coco_pose"])
def test_coco_tasks_take_a_relative_data_root(tmp_path, copy, monkeypatch, task):
    """As the pipeline passes them (data/mini/TASK): the loaders must not join the root twice."""
    data = copy(task)
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--from-scratch", "--task", task, "--backbone", BACKBONE[task], "--method", "linear",
                 "--data", data.name, "--out", "rel.json", "--iters", "1"])
    assert code == 0 and (tmp_path / "rel.json").is_file()
