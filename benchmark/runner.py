"""Run one cell end to end through mmengine's Runner and write its result file."""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from catalog import Cell
from tasks import fingerprint, kind_of, task_config

from . import console
from .io import write_json_atomic

PACKAGES = ("torch", "timm", "mmengine", "mmcv", "mmsegmentation", "mmdet", "mmpose")


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite: the run has no result worth recording."""


def _json_config(cfg: dict[str, Any]) -> Any:
    """``cfg`` as an mmengine Config whose text (in the log, the work dir's dump and every
    checkpoint's meta) is JSON: mmengine formats its Python text with yapf, 2 s a run."""
    from mmengine.config import Config

    class JsonConfig(Config):
        @property
        def pretty_text(self) -> str:
            return json.dumps(self.to_dict(), indent=1, default=str)

        def dump(self, file: str | os.PathLike | None = None) -> str | None:
            if file is None:
                return self.pretty_text
            Path(file).with_suffix(".json").write_text(self.pretty_text)
            return None

    return JsonConfig(cfg)


def _register_hooks() -> None:
    """The loop and hook every cell trains with: an iteration loop whose resume continues every
    random stream where the checkpoint left it (an interrupted and resumed run ends with the
    same metrics as a straight one), training time that a resume carries on from the
    checkpoint, and a stop with :class:`TrainingDiverged` at the first non-finite loss."""
    import random

    import numpy as np
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS, LOOPS
    from mmengine.runner import IterBasedTrainLoop

    if "ExactResumeIterLoop" in LOOPS.module_dict:
        return

    @HOOKS.register_module()
    class ResumeStateHook(Hook):
        """Saves the torch / numpy / random states and the training time with each
        checkpoint; checks every iteration's loss."""
        priority = "NORMAL"  # before the checkpoint hook (VERY_LOW) in after_train_iter

        def __init__(self) -> None:
            self.train_time_s = 0.0
            self._start = 0.0

        def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
            runner.train_loop.pending_rng_state = checkpoint.get("rng_state")
            self.train_time_s = float(checkpoint.get("train_time_s", 0.0))

        def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
            self._start = time.perf_counter()

        def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
            self.train_time_s += time.perf_counter() - self._start
            loss = (outputs or {}).get("loss")
            if loss is not None and not torch.isfinite(loss := torch.as_tensor(loss).detach()).all():
                raise TrainingDiverged(
                    f"training diverged: the loss is {loss.item()} at iteration {runner.iter + 1}"
                    f" (lower the learning rate, or check the data)")

        def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
            checkpoint["rng_state"] = {"torch": torch.get_rng_state(),
                                       "numpy": np.random.get_state(), "random": random.getstate()}
            checkpoint["train_time_s"] = self.train_time_s

    @LOOPS.register_module()
    class ExactResumeIterLoop(IterBasedTrainLoop):
        pending_rng_state = None

        def run(self):
            self.runner.call_hook("before_train")
            self.runner.call_hook("before_train_epoch")
            for _ in range(self._iter):  # skip the batches trained before the checkpoint
                next(self.dataloader_iterator)
            if self.pending_rng_state is not None:
                state = self.pending_rng_state
                torch.set_rng_state(state["torch"])
                np.random.set_state(state["numpy"])
                random.setstate(state["random"])
            while self._iter < self._max_iters and not self.stop_training:
                self.runner.model.train()
                self.run_iter(next(self.dataloader_iterator))
            self.runner.call_hook("after_train_epoch")
            self.runner.call_hook("after_train")
            return self.runner.model


SMOKE_ITERS, SMOKE_VAL_IMAGES = 2, 4


def smoke_config(cfg: dict[str, Any], batch: int) -> None:
    """A smoke run of a configuration: its model, pipelines and evaluator as they are;
    training cut to two iterations at a batch of ``batch`` (its kind's: 1 or 2; constant
    learning rate) and validation to a few images, one at a time, without loader workers,
    so that a cluster configuration can be tried out on a CPU first."""
    train = cfg["train_dataloader"]
    train["batch_size"] = batch
    train["sampler"] = dict(type="InfiniteSampler", shuffle=True)
    cfg["train_cfg"] = dict(type="IterBasedTrainLoop", max_iters=SMOKE_ITERS,
                            val_begin=SMOKE_ITERS + 1)
    cfg["param_scheduler"] = []
    cfg["val_dataloader"]["batch_size"] = 1
    cfg["val_dataloader"]["dataset"]["indices"] = SMOKE_VAL_IMAGES
    for split in ("train_dataloader", "val_dataloader"):  # a few images: no workers
        cfg[split].update(num_workers=0, persistent_workers=False)


def measured(cell: Cell, metrics: dict[str, float]) -> tuple[dict[str, float], list[str]]:
    """(the metrics, the keys left out): a COCO-style evaluator reports -1 where the ground
    truth has nothing of the kind (no small objects, say); such a value is not a score. The
    task's primary metric must be measured."""
    from catalog import get_task

    unmeasured = sorted(k for k, v in metrics.items() if v == -1.0)
    kept = {k: v for k, v in metrics.items() if v != -1.0}
    primary = get_task(cell.task).primary.key
    if primary not in kept:
        raise ValueError(f"{cell.id}: the evaluator could not measure {primary} (reported "
                         f"{'-1: no ground truth of that kind' if primary in unmeasured else 'nothing'}"
                         f"); no result is written")
    return kept, unmeasured


# What the pipeline writes: changes there do not make the code that computes a cell dirty
# (`dvc repro` rewrites dvc.lock and results while it runs).
PIPELINE_OUTPUTS = ("dvc.yaml", "dvc.lock", "pretrained", "results/runs", "results/tables",
                    "results/leaderboard", "results/data", "results/params", "results/diagnostics")


def _git() -> dict[str, Any]:
    """The commit, and whether the working tree differs from it outside the pipeline's outputs."""
    root = Path(__file__).resolve().parent.parent
    exclude = [f":(exclude){p}" for p in PIPELINE_OUTPUTS]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", ".", *exclude],
                                    cwd=root, capture_output=True, text=True,
                                    check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def code_fingerprint() -> str:
    """A short hash of the code that computes a cell (catalog/, methods/, tasks/, benchmark/)."""
    import hashlib

    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in ("catalog", "methods", "tasks", "benchmark"):
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def select(runner, cell: Cell) -> None:
    """The method's data-driven selection (``PEFTMethod.select``), if it has one: one pass
    over the training set in an order fixed by the cell's seed (every DDP rank sees all of
    it, so all ranks select alike), with the RNGs seeded for it and restored after, so that
    training starts from the state it would have had without it."""
    import copy
    import functools
    import random

    import numpy as np
    from mmengine.model import is_model_wrapper
    from mmengine.registry import DATASETS, FUNCTIONS
    from tqdm import tqdm

    from methods import PEFTMethod, SelectionBatch
    from methods.base import unfreeze

    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    host = model.backbone.host
    if type(host.method).select is PEFTMethod.select:
        return
    cfg = copy.deepcopy(runner._train_dataloader)  # a config until train() builds it
    collate = dict(cfg.get("collate_fn") or dict(type="pseudo_collate"))
    dataset = DATASETS.build(cfg["dataset"])
    loader = torch.utils.data.DataLoader(  # whole batches, as the releases, unless there is none
        dataset, batch_size=cfg["batch_size"], shuffle=True,
        drop_last=len(dataset) >= cfg["batch_size"],
        generator=torch.Generator().manual_seed(cell.seed),
        collate_fn=functools.partial(FUNCTIONS.get(collate.pop("type")), **collate))
    preprocessor = model.data_preprocessor
    pooled = getattr(model, "pooled", None)  # a classifier's backbone features

    def batches():
        for data in tqdm(loader, desc=f"{cell.id} select", unit="batch", file=sys.stderr,
                         mininterval=0.5, dynamic_ncols=True, leave=False):
            data = preprocessor(data, True)
            batch = SelectionBatch(functools.partial(
                lambda d: model.parse_losses(model(**d, mode="loss"))[0], data))
            if pooled is not None:
                mean, std = preprocessor.mean, preprocessor.std
                batch.images = (data["inputs"] * std + mean) / 255
                batch.labels = data["data_samples"]
                batch.features = lambda images: pooled((images * 255 - mean) / std)
            yield batch

    added = host.added_state_keys()
    own = {id(b) for k, b in host.model.named_buffers() if k in added}
    buffers = [(b, b.clone()) for b in model.buffers() if id(b) not in own]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    states = random.getstate(), np.random.get_state()
    model.train()
    with torch.random.fork_rng():
        torch.manual_seed(cell.seed)
        random.seed(cell.seed)
        np.random.seed(cell.seed)
        host.method.select(host, batches())
    random.setstate(states[0])
    np.random.set_state(states[1])
    with torch.no_grad():
        for buffer, saved in buffers:
            buffer.copy_(saved)
    for p, requires_grad in grads:
        p.grad = None
        p.requires_grad_(requires_grad)
    unfreeze(host)
    if is_model_wrapper(runner.model):  # DDP registers parameters once: wrap what was selected
        runner.model = runner.wrap_model(runner.cfg.get("model_wrapper_cfg"), model)


def per_process_batch(global_batch: int, world_size: int) -> int:
    """Each DDP process loads global batch / world size, so every world size trains on the
    same global batch (the samplers deal rank r the items r::world of one seeded order)."""
    if global_batch % world_size:
        raise ValueError(f"the training batch of {global_batch} does not divide evenly over "
                         f"{world_size} processes; choose a process count that divides it")
    return global_batch // world_size


def _setup_distributed(cfg: dict[str, Any], cuda: bool) -> None:
    """DDP settings for launcher "pytorch". On CUDA, BatchNorm becomes SyncBatchNorm so batch
    statistics cover the global batch; torch's SyncBatchNorm refuses CPU tensors, so CPU runs
    keep per-process statistics. On CPU two mmengine defaults fail: its init_dist always
    calls torch.cuda.set_device (so the gloo group is joined here, from torchrun's
    environment, and the runner finds it initialised), and its DDP wrapper passes
    ``device_ids``, which torch refuses for CPU modules."""
    if cuda:
        cfg["sync_bn"] = "torch"
        return
    cfg["model_wrapper_cfg"] = dict(type="MMDistributedDataParallel", device_ids=None,
                                    forward_sync_buffers=False)  # as mmengine's default
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")


def run_cell(cell: Cell, out: str | os.PathLike, work_dir: str | os.PathLike,
             export_backbone: str | os.PathLike | None = None,
             launcher: str = "none", verbose: bool | None = None) -> dict[str, Any]:
    """Train and evaluate ``cell``; write the result JSON to ``out`` (atomically) and return it.

    ``work_dir``: checkpoints and logs, keyed inside by the cell's configuration and the code's
    fingerprint (a run resumes only its own checkpoints).
    ``export_backbone``: also save the trained backbone in the release naming, loadable as a
    pretrained checkpoint (the mini profile's stand-in for ImageNet pretraining).
    ``launcher``: "none" (one process) or "pytorch" (one process of a torchrun job, joining
    the process group from torchrun's environment). Under DDP every rank returns the result;
    only rank 0 writes files (checkpoints too: mmengine saves them on rank 0).
    ``verbose``: mmengine's full console log instead of progress bars (its log file in the
    work dir has it either way); None reads ``PARAX_BENCH_VERBOSE``.
    """
    import tasks.backbone  # noqa: F401  (registers ParaXBackbone)
    import tasks.classification  # noqa: F401  (registers datasets, model, metric)
    from mmengine.dist import get_dist_info
    from mmengine.model import is_model_wrapper

    if launcher not in ("none", "pytorch"):
        raise ValueError(f"launcher must be 'none' or 'pytorch', got {launcher!r}")

    data_root = Path(cell.data_root)
    if not data_root.is_dir():
        raise FileNotFoundError(f"data directory not found: {data_root}")
    cfg = task_config(cell)
    if cell.smoke:
        smoke_config(cfg, kind_of(cell.task).smoke_batch)
    iteration_based = cfg["train_cfg"]["type"] == "IterBasedTrainLoop"
    _register_hooks()
    if verbose is None:
        verbose = console.verbose_default()
    if iteration_based:
        cfg["train_cfg"]["type"] = "ExactResumeIterLoop"
    cfg.setdefault("custom_hooks", []).append(dict(type="ResumeStateHook"))
    if not verbose:
        console.register_progress_hook()
        cfg["custom_hooks"].append(dict(type="ProgressHook", desc=cell.id))
    max_iters = cfg["train_cfg"].get("max_iters")
    cuda = torch.cuda.is_available()
    if launcher == "pytorch":
        _setup_distributed(cfg, cuda)
    cfg.update(
        # checkpoints of another configuration or code version are never resumed from
        work_dir=str(Path(work_dir) / f"{cell.config_hash()}-{code_fingerprint()}"),
        randomness=dict(seed=cell.seed, deterministic=False),
        launcher=launcher,
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend="nccl" if cuda else "gloo")),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=10, log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", by_epoch=not iteration_based,
                            interval=max(1, (max_iters or 2) // 2), max_keep_ckpts=2),
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),
        log_level="INFO",
        log_processor=dict(by_epoch=not iteration_based),  # "Iter(train) [10/320]"
        # unique per run: mmengine keys its logger and visualizer instances by this name
        experiment_name=f"{cell.task}-{cell.backbone}-{cell.method}-s{cell.seed}-{uuid.uuid4().hex[:8]}",
        resume=True,
    )
    start = time.monotonic()
    # The runner resumes only from checkpoints it wrote itself into work_dir; they hold
    # mmengine's logging state, which torch's weights-only loading refuses.
    previous = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    created = [p for p in (Path(work_dir), Path(cfg["work_dir"])) if not p.exists()]
    threads = torch.get_num_threads()
    if cell.threads is not None:
        torch.set_num_threads(cell.threads)
    try:
        with console.console(verbose) as runner_class:
            runner = runner_class.from_cfg(_json_config(cfg))
            rank, world_size = get_dist_info()
            train_loader = runner._train_dataloader  # a config until train() builds it
            train_loader["batch_size"] = per_process_batch(train_loader["batch_size"], world_size)
            if max_iters != 0:  # zero iterations: evaluate the untrained model
                select(runner, cell)
                runner.train()
            scores = runner.val_loop.run()
        metrics, unmeasured = measured(cell, {k: float(v) for k, v in scores.items()})
    except BaseException:
        # A run that fails before its first checkpoint (data the loaders refuse while they are
        # built, say) leaves no work folder behind.
        if not any(Path(cfg["work_dir"]).glob("*.pth")):
            for path in reversed(created):
                shutil.rmtree(path, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads)
        if previous is None:
            os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = previous
    wall = time.monotonic() - start
    # the training loop's own time, summed over the runs that trained it (a resume adds on)
    train_time = next(h.train_time_s for h in runner.hooks if type(h).__name__ == "ResumeStateHook")
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    host = model.backbone.host
    device = "cuda" if cuda else "cpu"
    result = {
        "cell": cell.to_dict(),
        "config_hash": cell.config_hash(),
        "metrics": metrics,
        **({"unmeasured": unmeasured} if unmeasured else {}),
        "trainable_backbone_params": host.num_trainable(),
        "trainable_params": sum(p.numel() for p in runner.model.parameters() if p.requires_grad),
        "wall_time_s": round(wall, 2),
        "train_time_s": round(train_time, 2),
        "peak_memory_mb": round(
            torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "dataset_fingerprint": fingerprint(data_root),
        "versions": {p: version(p) for p in PACKAGES},
        "git": _git(),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "world_size": world_size,
        "finished_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if rank == 0 and export_backbone is not None:
        import io

        from methods.checkpoints import export_official

        from .io import write_bytes_atomic

        buf = io.BytesIO()
        torch.save(export_official(host), buf)
        write_bytes_atomic(export_backbone, buf.getvalue())
    if rank == 0:
        write_json_atomic(out, result)
    if launcher == "pytorch":  # leave the group on every rank (NCCL warns at exit otherwise)
        torch.distributed.destroy_process_group()
    return result


def pretrain(backbone: str, data_root: str | os.PathLike, out: str | os.PathLike,
             iters: int = 600, seed: int = 0,
             work_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Pretrain ``backbone`` (full fine-tuning, classification) on a source dataset in
    CIFAR-100's format and save it at ``out`` in the release naming; the result JSON goes
    beside it (the mini profile's stand-in for ImageNet-22K pretraining)."""
    out = Path(out)
    cell = Cell(task="cifar100", backbone=backbone, method="full", data_root=str(data_root),
                seed=seed, iters=iters)
    return run_cell(cell, out.with_suffix(".json"), work_dir or str(out.with_suffix("")) + ".work",
                    export_backbone=out)


def train(cell: Cell, out: str | os.PathLike, work_dir: str | os.PathLike,
          launcher: str = "none", verbose: bool | None = None) -> int:
    """:func:`run_cell` as a command: a one-line summary, or one error line and exit 2."""
    try:
        result = run_cell(cell, out, work_dir, launcher=launcher, verbose=verbose)
    except (KeyError, ValueError, FileNotFoundError, TrainingDiverged) as exc:  # CheckpointError: ValueError
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"parax-bench: error: {message}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # every rank returns the result
        print(console.summary(cell, result, out), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Train one cell written as JSON (the torchrun and Slurm launchers' command)."""
    parser = argparse.ArgumentParser(prog="python -m benchmark.runner", description=main.__doc__)
    parser.add_argument("cell", help="the cell, as JSON (catalog.Cell.to_dict)")
    parser.add_argument("--out", required=True, help="result JSON path")
    parser.add_argument("--work-dir", required=True, help="checkpoints and logs")
    parser.add_argument("--launcher", choices=("none", "pytorch"), default="none",
                        help="pytorch: one process of a torchrun job (DDP; rank 0 writes)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="mmengine's full log on the console (default: progress bars)")
    args = parser.parse_args(argv)
    try:
        cell = Cell.from_dict(json.loads(Path(args.cell).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        parser.error(f"cannot read the cell {args.cell}: {exc}")
    return train(cell, args.out, args.work_dir, args.launcher, verbose=args.verbose or None)


if __name__ == "__main__":
    sys.exit(main())
