"""The paper profile's smoke mode: each task family's paper configuration (full-size backbone,
the paper's resolution pipeline, model and evaluator) trains two iterations and evaluates a
few images on this machine's CPU, within about 8 GB: what a cluster user runs before
launching the grid. Validation images come in two sizes, as in real data."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from catalog import get_task
from tasks.synthetic import generate

from .quirks import pad_one_val_image

# one cell per task family: Swin-B for the dense tasks, ViT-B for classification
FAMILIES = {"ade20k": "swin-b", "potsdam": "swin-b", "coco_instance": "swin-b",
            "coco_panoptic": "swin-b", "coco_pose": "swin-b", "cifar100": "vit-b"}
PEAK_MB = 9 * 1024  # measured 7.6-8.3 GB for the dense families on this 2-core machine


@pytest.mark.slow
@pytest.mark.parametrize("task", list(FAMILIES))
def test_paper_configuration_smoke_runs_on_a_cpu(tmp_path, task):
    data = generate(task, tmp_path / task, seed=0, train=2, val=4)
    if get_task(task).dense:
        pad_one_val_image(task, data)  # validation images of two sizes, as real data has
    out = tmp_path / "smoke.json"
    exe = Path(sys.executable).parent / "parax-bench"
    run = subprocess.run([exe, "train", "--from-scratch", "--task", task, "--backbone", FAMILIES[task],
                          "--method", "parax", "--profile", "paper", "--smoke", "--data", str(data),
                          "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["cell"]["profile"] == "paper" and result["cell"]["smoke"] is True
    assert get_task(task).primary.key in result["metrics"]
    assert result["peak_memory_mb"] < PEAK_MB, result["peak_memory_mb"]
