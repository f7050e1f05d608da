"""One-cell training on synthetic data in real formats: learning, determinism, resume, bad data."""
from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from benchmark import runner as runner_module
from benchmark.cli import main
from catalog import Cell
from tasks import DataFormatError, task_config
from tasks.synthetic import fingerprint, generate


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {name: generate(name, root / name, seed=0)
            for name in ("ade20k", "cifar100", "svhn", "food101", "imagenet_r")}


def train(tmp_path, task, data_root, method="parax", backbone=None, iters=None, seed=0,
          name="run", work_dir=None):
    backbone = backbone or ("swin-micro" if task == "ade20k" else "vit-micro")
    out = tmp_path / f"{name}.json"
    cell = Cell(task=task, backbone=backbone, method=method, data_root=str(data_root),
                seed=seed, iters=iters)
    return runner_module.run_cell(cell, out, work_dir or tmp_path / f"{name}.work"), out


def test_synthetic_data_is_deterministic(tmp_path, data):
    again = generate("cifar100", tmp_path / "again", seed=0)
    assert fingerprint(again) == fingerprint(data["cifar100"])
    other = generate("cifar100", tmp_path / "other", seed=1)
    assert fingerprint(other) != fingerprint(data["cifar100"])


@pytest.mark.slow
def test_segmentation_cell_learns(tmp_path, data):
    untrained, _ = train(tmp_path, "ade20k", data["ade20k"], iters=0, name="untrained")
    trained, out = train(tmp_path, "ade20k", data["ade20k"], iters=60, name="trained")
    assert trained["metrics"]["mIoU"] > untrained["metrics"]["mIoU"] + 5
    saved = json.loads(out.read_text())
    assert saved["metrics"] == trained["metrics"]
    for key in ("trainable_backbone_params", "wall_time_s", "peak_memory_mb", "config_hash",
                "dataset_fingerprint", "versions", "git", "device"):
        assert key in saved, key
    assert saved["trainable_backbone_params"] > 0 and saved["trainable_params"] > saved[
        "trainable_backbone_params"]


@pytest.mark.parametrize("task", ["cifar100", "svhn", "food101", "imagenet_r"])
def test_classification_cell_learns(tmp_path, data, task):
    untrained, _ = train(tmp_path, task, data[task], iters=0, name="untrained")
    trained, _ = train(tmp_path, task, data[task], iters=80, name="trained")
    assert trained["metrics"]["top1"] > max(untrained["metrics"]["top1"], 10.0) + 5  # chance 10%


@pytest.mark.parametrize("task", ["food101", "imagenet_r"])
def test_image_folder_datasets_decode_at_the_backbone_input_size(data, task):
    """Food-101 and ImageNet-R are JPEG trees: a cell reads them at its backbone's input size
    (vit-b: 224), not at the 32 x 32 of the array formats."""
    from mmengine.registry import DATASETS

    cfg = task_config(Cell(task=task, backbone="vit-b", method="full", data_root=str(data[task]),
                           profile="paper"))
    dataset = DATASETS.build(cfg["train_dataloader"]["dataset"])
    assert dataset[0]["inputs"].shape == (3, 224, 224)


def test_same_seed_same_metrics(tmp_path, data):
    a, _ = train(tmp_path, "cifar100", data["cifar100"], iters=20, name="a")
    b, _ = train(tmp_path, "cifar100", data["cifar100"], iters=20, name="b")
    c, _ = train(tmp_path, "cifar100", data["cifar100"], iters=20, name="c", seed=1)
    assert a["metrics"] == b["metrics"]
    assert a["config_hash"] == b["config_hash"] != c["config_hash"]


def test_a_cell_runs_on_its_own_thread_count_and_restores_the_callers(tmp_path, data,
                                                                      monkeypatch):
    """CPU results depend on the thread count, so a cell fixes it (the grid's `threads`)."""
    import torch

    seen, measured = [], runner_module.measured
    monkeypatch.setattr(runner_module, "measured",
                        lambda *a: seen.append(torch.get_num_threads()) or measured(*a))
    before = torch.get_num_threads()
    cell = Cell(task="cifar100", backbone="vit-micro", method="linear",
                data_root=str(data["cifar100"]), iters=2, threads=1)
    result = runner_module.run_cell(cell, tmp_path / "one.json", tmp_path / "one.work")
    assert seen == [1] and torch.get_num_threads() == before
    assert result["cell"]["threads"] == 1
    with pytest.raises(ValueError, match="threads must be a positive integer or None, got 0"):
        Cell(task="cifar100", backbone="vit-micro", method="linear", threads=0)


class Killed(RuntimeError):
    pass


def test_kill_after_checkpoint_and_resume_gives_identical_metrics(tmp_path, data, monkeypatch):
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    @HOOKS.register_module(force=True)
    class KillAtIter(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            if runner.iter + 1 == 13:  # after the checkpoint at iteration 10
                raise Killed("simulated kill")

    straight, _ = train(tmp_path, "cifar100", data["cifar100"], iters=20, name="straight")
    original = runner_module.task_config

    def with_kill(cell):
        cfg = original(cell)
        cfg.setdefault("custom_hooks", []).append(dict(type="KillAtIter"))
        return cfg

    monkeypatch.setattr(runner_module, "task_config", with_kill)
    work = tmp_path / "resumed.work"
    with pytest.raises(Killed):
        train(tmp_path, "cifar100", data["cifar100"], iters=20, name="resumed", work_dir=work)
    assert not (tmp_path / "resumed.json").exists()
    [checkpoint] = work.glob("*/iter_10.pth")  # work_dir/CONFIG_HASH-CODE_HASH/
    monkeypatch.setattr(runner_module, "task_config", original)
    resumed, _ = train(tmp_path, "cifar100", data["cifar100"], iters=20, name="resumed",
                       work_dir=work)
    assert resumed["metrics"] == straight["metrics"]
    assert checkpoint.parent.name == f"{resumed['config_hash']}-{runner_module.code_fingerprint()}"
    # Another configuration in the same work folder starts afresh instead of resuming.
    other, _ = train(tmp_path, "cifar100", data["cifar100"], iters=20, name="other",
                     work_dir=work, seed=1)
    assert len(list(work.glob(f"{other['config_hash']}-*/iter_20.pth"))) == 1


def test_training_time_is_the_original_runs_after_a_resume(tmp_path, data):
    work = tmp_path / "timed.work"
    first, _ = train(tmp_path, "cifar100", data["cifar100"], iters=6, name="timed", work_dir=work)
    assert 0 < first["train_time_s"] <= first["wall_time_s"]
    # Run again: it resumes from its final checkpoint, trains nothing and keeps the time.
    again, _ = train(tmp_path, "cifar100", data["cifar100"], iters=6, name="timed", work_dir=work)
    assert again["train_time_s"] == first["train_time_s"]
    assert again["metrics"] == first["metrics"]


def test_a_diverging_run_stops_with_an_error_and_writes_no_result(tmp_path, data, monkeypatch):
    import tasks.classification as classification

    monkeypatch.setitem(classification.PROFILES, "mini",
                        {**classification.PROFILES["mini"], "lr": 1e12, "warmup": 0.0})
    with pytest.raises(runner_module.TrainingDiverged, match=r"the loss is (nan|inf) at iteration \d+"):
        train(tmp_path, "cifar100", data["cifar100"], iters=10, name="diverged")
    assert not (tmp_path / "diverged.json").exists()


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_bad_data_fails_clearly_without_a_result(tmp_path, data, capsys):
    def cli(task, root):
        out = tmp_path / f"bad_{task}.json"
        code = main(["train", "--from-scratch", "--task", task, "--backbone",
                     "swin-micro" if task == "ade20k" else "vit-micro", "--method", "parax",
                     "--data", str(root), "--out", str(out), "--iters", "1"])
        assert code == 2 and not out.exists()
        return capsys.readouterr().err

    assert "data directory not found" in cli("cifar100", tmp_path / "nowhere")

    ade = _copy(data["ade20k"], tmp_path / "ade_missing")
    next((ade / "ADEChallengeData2016/annotations/training").glob("*.png")).unlink()
    assert "images but" in cli("ade20k", ade)

    ade = _copy(data["ade20k"], tmp_path / "ade_range")
    label = next((ade / "ADEChallengeData2016/annotations/validation").glob("*.png"))
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(label)
    assert f"{label}: label value 200 outside 0..150" in cli("ade20k", ade)

    cifar = _copy(data["cifar100"], tmp_path / "cifar_bad")
    (cifar / "cifar-100-python/train").write_bytes(b"garbage")
    assert "not a CIFAR-100 python batch" in cli("cifar100", cifar)

    cifar = _copy(data["cifar100"], tmp_path / "cifar_range")
    path = cifar / "cifar-100-python/test"
    batch = pickle.loads(path.read_bytes())
    batch[b"fine_labels"][0] = 100
    path.write_bytes(pickle.dumps(batch))
    assert "labels must lie in [0, 100)" in cli("cifar100", cifar)

    cifar = _copy(data["cifar100"], tmp_path / "cifar_count")
    batch = pickle.loads((cifar / "cifar-100-python/test").read_bytes())
    batch[b"fine_labels"] = batch[b"fine_labels"][:-3]
    (cifar / "cifar-100-python/test").write_bytes(pickle.dumps(batch))
    assert "128 images but 125 labels" in cli("cifar100", cifar)


def test_pretrained_backbone_survives_runner_init_and_loads_downstream(tmp_path, data):
    import torch

    from methods.checkpoints import export_official, read_state_dict
    from tasks.classification import PooledClassifier

    source = generate("source", tmp_path / "source", seed=0, train=64, val=16)
    ckpt = tmp_path / "vit-micro.pth"
    assert main(["pretrain", "--backbone", "vit-micro", "--data", str(source), "--out", str(ckpt),
                 "--iters", "5"]) == 0
    assert ckpt.exists() and ckpt.with_suffix(".json").exists()
    state = read_state_dict(ckpt)
    model = PooledClassifier("vit-micro", "parax", "cifar100", 100, 32, pretrained=str(ckpt))
    model.init_weights()  # what the runner does: must not re-initialise the backbone
    ours = export_official(model.host)  # in the release naming the checkpoint was written in
    assert all(torch.equal(ours[k], v) for k, v in state.items())

    with pytest.raises(FileNotFoundError, match="expected the file .*missing.pth"):
        PooledClassifier("vit-micro", "parax", "cifar100", 100, 32,
                         pretrained=str(tmp_path / "missing.pth"))


@pytest.mark.slow
def test_pose_cell_learns(tmp_path):
    coco = generate("coco_pose", tmp_path / "pose", seed=0)
    untrained, _ = train(tmp_path, "coco_pose", coco, backbone="convnext-micro", iters=0,
                         name="untrained")
    trained, _ = train(tmp_path, "coco_pose", coco, backbone="convnext-micro", iters=60,
                       name="trained")
    assert trained["metrics"]["coco/AP .5"] > untrained["metrics"]["coco/AP .5"] + 0.1


@pytest.mark.slow
def test_panoptic_cell_learns(tmp_path):
    coco = generate("coco_panoptic", tmp_path / "pan", seed=0, train=32, val=8)
    untrained, _ = train(tmp_path, "coco_panoptic", coco, backbone="convnext-micro", iters=0,
                         name="untrained")
    trained, _ = train(tmp_path, "coco_panoptic", coco, backbone="convnext-micro", iters=40,
                       name="trained")
    assert trained["metrics"]["coco_panoptic/PQ"] > untrained["metrics"]["coco_panoptic/PQ"] + 2


@pytest.mark.slow
def test_instance_segmentation_cell_learns_from_a_pretrained_backbone(tmp_path):
    source = generate("source", tmp_path / "source", seed=0)
    ckpt = tmp_path / "convnext-micro.pth"
    assert main(["pretrain", "--backbone", "convnext-micro", "--data", str(source),
                 "--out", str(ckpt)]) == 0
    coco = generate("coco_instance", tmp_path / "coco", seed=0)

    def cell(iters, name):
        c = Cell(task="coco_instance", backbone="convnext-micro", method="parax",
                 data_root=str(coco), iters=iters, pretrained=str(ckpt))
        return runner_module.run_cell(c, tmp_path / f"{name}.json",
                                      tmp_path / f"{name}.work")["metrics"]

    untrained, trained = cell(0, "untrained"), cell(100, "trained")
    assert trained["coco/bbox_mAP_50"] > untrained["coco/bbox_mAP_50"] + 0.02


@pytest.mark.slow
def test_instance_segmentation_cell_runs_end_to_end(tmp_path):
    coco = generate("coco_instance", tmp_path / "coco", seed=0, train=8, val=4)
    result, out = train(tmp_path, "coco_instance", coco, backbone="convnext-micro", iters=4)
    for key in ("coco/bbox_mAP", "coco/segm_mAP", "coco/bbox_mAP_50"):
        assert key in result["metrics"]
    assert json.loads(out.read_text())["metrics"] == result["metrics"]


def test_malformed_coco_fails_clearly(tmp_path, capsys):
    coco = generate("coco_instance", tmp_path / "coco", seed=0, train=4, val=2)
    ann = coco / "coco" / "annotations" / "instances_val2017.json"
    ann.write_text("{not json")
    out = tmp_path / "bad.json"
    assert main(["train", "--from-scratch", "--task", "coco_instance", "--backbone", "convnext-micro", "--method",
                 "parax", "--data", str(tmp_path / "coco"), "--out", str(out), "--iters", "1"]) == 2
    assert f"{ann}: not a COCO instances file" in capsys.readouterr().err
    assert not out.exists()
    data = {"images": [{"id": 1, "file_name": "missing.jpg", "height": 8, "width": 8}],
            "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    ann.write_text(json.dumps(data))
    assert main(["train", "--from-scratch", "--task", "coco_instance", "--backbone", "convnext-micro", "--method",
                 "parax", "--data", str(tmp_path / "coco"), "--out", str(out), "--iters", "1"]) == 2
    assert "val2017/missing.jpg: image not found" in capsys.readouterr().err


FAMILY_CELLS = {  # task -> (backbone family used, dataset sizes)
    "ade20k": ("swin", dict(train=4, val=2)),
    "coco_instance": ("swin", dict(train=4, val=2)),
    "coco_panoptic": ("convnext", dict(train=4, val=2)),
    "coco_pose": ("vit", dict(train=4, val=2)),
    "cifar100": ("vit", dict(train=16, val=8)),
}
METHODS = ["full", "linear", "parax", "lora", "adaptformer", "mona", "lorand", "repadapter", "vpt",
           "snell", "gps", "spt-lora", "colora"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {task: generate(task, root / task, seed=0, **sizes)
            for task, (_, sizes) in FAMILY_CELLS.items()}


@pytest.mark.slow
@pytest.mark.parametrize("task", list(FAMILY_CELLS))
def test_every_method_runs_in_every_task_family(tmp_path, tiny_data, task):
    family, _ = FAMILY_CELLS[task]
    for method in METHODS:
        # VPT has no ConvNeXt form and CoLoRA only one: each is refused where it has none
        backbones = {"vpt": (f"{family}-micro", "convnext-micro"),
                     "colora": ("convnext-micro", "swin-micro")}.get(method, (f"{family}-micro",))
        for backbone in backbones:
            if task == "coco_pose" and backbone == "vit-micro":
                backbone = "swin-micro"  # top-down pose needs a spatial last stage
            args = ["train", "--from-scratch", "--task", task, "--backbone", backbone, "--method", method,
                    "--data", str(tiny_data[task]), "--out", str(tmp_path / f"{method}-{backbone}.json"),
                    "--iters", "1"]
            code = main(args)
            if (method, backbone.startswith("convnext")) in (("vpt", True), ("colora", False)):
                assert code == 2  # not applicable: refused with a message, nothing written
                assert not (tmp_path / f"{method}-{backbone}.json").exists()
            else:
                assert code == 0, (task, method, backbone)


def test_imagenet_r_split_command(tmp_path, data, capsys):
    out = tmp_path / "split.json"
    assert main(["split-imagenet-r", "--data", str(data["imagenet_r"]), "--out", str(out),
                 "--train", "200", "--test", "100"]) == 0
    split = json.loads(out.read_text())
    assert len(split["train"]) == 200 and len(split["test"]) == 100
    assert not set(split["train"]) & set(split["test"])
    again = tmp_path / "again.json"
    main(["split-imagenet-r", "--data", str(data["imagenet_r"]), "--out", str(again),
          "--train", "200", "--test", "100"])
    assert again.read_text() == out.read_text()
    assert main(["split-imagenet-r", "--data", str(data["imagenet_r"]), "--out",
                 str(tmp_path / "big.json")]) == 2
    assert "fewer than 24000 + 6000" in capsys.readouterr().err
    assert not (tmp_path / "big.json").exists()
