"""scripts/gpu-check.sh, tried on CPU with a tiny setting: every part runs and writes its
JSON, and the summary reads them (on the lent GPU the same script runs Table 15's setting)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_every_part_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DEVICE": "cpu",
           "GPU_CHECK_BACKBONE": "swin-micro", "GPU_CHECK_SIZE": "64x64", "GPU_CHECK_BATCH": "2",
           "GPU_CHECK_BUDGET": "14%", "GPU_CHECK_ITERS": "2", "GPU_CHECK_BENCH_INPUT": "512x512",
           "GPU_CHECK_BENCH_STAGES": "4"}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for amp in ("none", "bf16"):
        result = json.loads((tmp_path / f"table15-{amp}.json").read_text())
        assert result["setting"]["amp"] == amp and result["setting"]["backbone"] == "swin-micro"
        assert {"full", "linear", "parax"} <= {r["name"] for r in result["rows"]}
    bench = json.loads((tmp_path / "bench-parax.json").read_text())
    assert set(bench["summary"]) == {"512x512"}
    assert (tmp_path / "cuda-tests.xml").is_file()
    goals = json.loads((tmp_path / "summary.json").read_text())["goals"]
    assert [g["goal"] for g in goals][:4] == [
        "amp none: parax / full train_img_s >= 1.0", "amp none: parax / full peak_memory <= 0.85",
        "amp bf16: parax / full train_img_s >= 1.0", "amp bf16: parax / full peak_memory <= 0.85"]
    assert all(g["value"] is not None for g in goals)  # every part ran
