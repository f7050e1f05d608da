"""Run one cell: in this process, with torchrun, or as a Slurm job.

The DVC stage calls :func:`launch` with the cell and the ``launcher:`` section of params.yaml.
``local`` trains in the calling process (a DVC stage is one cell's process). torchrun and
Slurm are the only places a cell becomes a command line: the cell is written once as JSON
into ``job_dir`` and ``python -m benchmark.runner CELL.json`` trains it, in the repository
root, so relative paths mean the repository root's everywhere, as in DVC stages.
:func:`command` and :func:`slurm_script` are pure, so tests can check exactly what runs.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from catalog import Cell

LAUNCHERS = ("local", "torchrun", "slurm")
ROOT = Path(__file__).resolve().parent.parent
LAUNCHER_KEYS = ("kind", "nproc_per_node", "slurm")
SLURM_DEFAULTS: dict[str, Any] = dict(partition=None, nodes=1, gpus_per_node=1, cpus_per_task=None,
                                      mem=None, time=None, account=None, extra_args=[], setup=[])
RUNNER = ["-m", "benchmark.runner"]


def _int(value: Any, key: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"launcher: '{key}' must be an integer >= {low}, got {value!r}")
    return value


def _kind(launcher: dict[str, Any]) -> str:
    unknown = sorted(set(launcher) - set(LAUNCHER_KEYS))
    if unknown:
        raise ValueError(f"launcher: unknown key '{unknown[0]}'; known: {', '.join(LAUNCHER_KEYS)}")
    kind = launcher.get("kind")
    if kind not in LAUNCHERS:
        raise ValueError(f"launcher: unknown kind {kind!r}; one of: {', '.join(LAUNCHERS)}")
    return kind


def slurm_settings(launcher: dict[str, Any]) -> dict[str, Any]:
    """The ``slurm`` section with defaults filled in; unknown keys and a missing partition
    are errors naming the key."""
    section = launcher.get("slurm") or {}
    unknown = sorted(set(section) - set(SLURM_DEFAULTS))
    if unknown:
        raise ValueError(f"launcher.slurm: unknown key '{unknown[0]}'; "
                         f"known: {', '.join(SLURM_DEFAULTS)}")
    s = {**SLURM_DEFAULTS, **section}
    if not s["partition"]:
        raise ValueError("launcher.slurm: 'partition' is required")
    # One node: torchrun runs --standalone inside the job (no multi-node rendezvous).
    if _int(s["nodes"], "slurm.nodes") != 1:
        raise ValueError(f"launcher.slurm: 'nodes' must be 1 (multi-node jobs are not "
                         f"supported), got {s['nodes']!r}")
    _int(s["gpus_per_node"], "slurm.gpus_per_node", low=0)
    for key in ("extra_args", "setup"):
        if not isinstance(s[key], list) or not all(isinstance(x, str) for x in s[key]):
            raise ValueError(f"launcher.slurm: '{key}' must be a list of strings")
    return s


def _torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc_per_node", str(nproc)]


def runner_args(cell_file: str | Path, out: str | Path, work_dir: str | Path) -> list[str]:
    return [str(cell_file), "--out", str(out), "--work-dir", str(work_dir)]


def command(args: list[str], launcher: dict[str, Any]) -> list[str]:
    """The command line that trains a cell from ``runner_args`` (for ``slurm``: the one run
    inside the job); ``local`` runs in-process and has none."""
    kind = _kind(launcher)
    if kind == "local":
        raise ValueError("launcher: a local cell runs in this process, not as a command")
    if kind == "torchrun":
        nproc = _int(launcher.get("nproc_per_node"), "nproc_per_node")
        return [*_torchrun(nproc), *RUNNER, *args, "--launcher", "pytorch"]
    gpus = slurm_settings(launcher)["gpus_per_node"]
    if gpus <= 1:
        return [sys.executable, *RUNNER, *args]
    return [*_torchrun(gpus), *RUNNER, *args, "--launcher", "pytorch"]


def slurm_script(name: str, args: list[str], launcher: dict[str, Any], job_dir: str | Path) -> str:
    """The batch script: #SBATCH lines, the setup lines, then the training from the repo root."""
    s = slurm_settings(launcher)
    job_dir = (ROOT / job_dir).resolve()
    options = [f"--job-name={name}", f"--partition={s['partition']}", f"--nodes={s['nodes']}"]
    if s["gpus_per_node"]:
        options.append(f"--gres=gpu:{s['gpus_per_node']}")
    options += [f"--{flag}={s[key]}" for flag, key in (
        ("cpus-per-task", "cpus_per_task"), ("mem", "mem"), ("time", "time"),
        ("account", "account")) if s[key] is not None]
    options += [f"--output={job_dir / name}.out", f"--error={job_dir / name}.err", *s["extra_args"]]
    lines = ["#!/bin/bash", *(f"#SBATCH {o}" for o in options), "set -e", *s["setup"],
             f"cd {shlex.quote(str(ROOT))}", shlex.join(command(args, launcher))]
    return "\n".join(lines) + "\n"


def launch(cell: Cell, launcher: dict[str, Any], out: str | Path, work_dir: str | Path,
           job_dir: str | Path) -> int:
    """Train ``cell`` with ``launcher`` and return the exit code of the training (for Slurm:
    of ``sbatch --wait``, which is the job's). ``job_dir`` holds the cell's JSON and, for
    Slurm, the job script and its logs; local runs leave it unused."""
    kind = _kind(launcher)
    if kind == "local":
        from .runner import train

        # In this process: a DVC stage is a process of its own already, and a second Python
        # start-up would cost seconds per cell.
        return train(cell, out, work_dir)
    job_dir = ROOT / job_dir
    job_dir.mkdir(parents=True, exist_ok=True)
    cell_file = job_dir / f"{cell.id}.cell.json"
    cell_file.write_text(json.dumps(cell.to_dict(), indent=1) + "\n")
    cmd = command(runner_args(cell_file, out, work_dir), launcher)
    if "torch.distributed.run" in cmd and importlib.util.find_spec("torch.distributed.run") is None:
        raise FileNotFoundError(f"torchrun not found: {sys.executable} cannot import "
                                f"torch.distributed.run")
    if kind == "torchrun":
        return subprocess.run(cmd, cwd=ROOT).returncode
    sbatch = os.environ.get("PARAX_BENCH_SBATCH", "sbatch")
    if shutil.which(sbatch) is None:
        raise FileNotFoundError(f"sbatch not found: '{sbatch}' is not an executable on PATH "
                                f"(override with PARAX_BENCH_SBATCH)")
    script = job_dir / f"{cell.id}.sbatch"
    script.write_text(slurm_script(cell.id, runner_args(cell_file, out, work_dir), launcher, job_dir))
    return subprocess.run([sbatch, "--wait", "--parsable", str(script)], cwd=ROOT).returncode
