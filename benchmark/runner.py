"""Run one cell end to end through mmengine's Runner and write its result file."""
from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from tasks.cell import Cell
from tasks.synthetic.writers import fingerprint

from .io import write_json_atomic

PACKAGES = ("torch", "timm", "mmengine", "mmcv", "mmsegmentation", "mmdet", "mmpose")


def _task_config(cell: Cell) -> dict[str, Any]:
    from tasks import segmentation

    builders = {"ade20k": segmentation.build_config}
    if cell.task not in builders:
        raise ValueError(f"task '{cell.task}' has no training configuration yet; "
                         f"available: {sorted(builders)}")
    return builders[cell.task](cell)


def _git() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=root,
                                    capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def run_cell(cell: Cell, out: str | os.PathLike) -> dict[str, Any]:
    """Train and evaluate ``cell``; write the result JSON to ``out`` (atomically) and return it."""
    import tasks.backbone  # noqa: F401  (registers ParaXBackbone)
    from mmengine.config import Config
    from mmengine.runner import Runner

    data_root = Path(cell.data_root)
    if not data_root.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_root}")
    cfg = _task_config(cell)
    cfg.update(
        work_dir=cell.work_dir,
        randomness=dict(seed=cell.seed, deterministic=False),
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo")),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=10, log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", by_epoch=False,
                            interval=max(1, cfg["train_cfg"]["max_iters"] // 2), max_keep_ckpts=2),
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),
        log_level="INFO",
        resume=True,
    )
    start = time.monotonic()
    # The runner resumes only from checkpoints it wrote itself into work_dir; they hold
    # mmengine's logging state, which torch's weights-only loading refuses.
    previous = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        runner = Runner.from_cfg(Config(cfg))
        runner.train()
        metrics = {k: float(v) for k, v in runner.val_loop.run().items()}
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = previous
    wall = time.monotonic() - start
    host = runner.model.backbone.host
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {
        "cell": {k: v for k, v in vars(cell).items() if k != "work_dir"},
        "config_hash": cell.config_hash(),
        "metrics": metrics,
        "trainable_backbone_params": host.num_trainable(),
        "trainable_params": sum(p.numel() for p in runner.model.parameters() if p.requires_grad),
        "wall_time_s": round(wall, 2),
        "peak_memory_mb": round(
            torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "dataset_fingerprint": fingerprint(data_root),
        "versions": {p: version(p) for p in PACKAGES},
        "git": _git(),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
    }
    write_json_atomic(out, result)
    return result
