"""`dvc repro` with the grid's cells run N at a time (DVC itself runs stages one by one).

0. dvc.yaml is regenerated from params.yaml and the code (pipelines/stages.py);
1. the out-of-date stages the cells read (``data-``, ``pretrain-``) run their own commands,
   ``--jobs`` at a time, a stage once the stages whose outputs it reads are done (pretraining
   after its source data); forced, the table stages that read no cell (the parameter table)
   run beside them; unless forced, ``dvc repro`` of them then re-runs what a new output made
   stale;
2. every cell stage that is out of date (all of them with ``--force``) runs its own command,
   ``--jobs`` at a time, and so does each cell's ``diagnose-`` stage, once its cell is done;
3. the finished stages are recorded in dvc.lock as ``dvc commit`` records them, exactly as if
   DVC had run them, in one pass (every stage logs to ``work/PROFILE/logs/STAGE.log``);
4. what is left (efficiency table, aggregation, page): with ``--force`` each stage's own
   command, one at a time in dependency order, recorded as in 3 (``dvc repro`` rewrites the
   whole lock file after each stage, a minute in all); otherwise ``dvc repro``, which also
   re-runs what a new output made stale.

Each cell (and diagnose stage) runs in a process of its own, forked from a server process
that has imported the stack once (torch, timm, the OpenMMLab packages, their datasets and
hooks: 6-9 s a cell otherwise). A cell computes
the same numbers either way: cells do not share state, and each runs on the grid's
``threads`` (one in the mini profile, so two cells fill two cores; OMP_WAIT_POLICY=PASSIVE
only stops idle threads spinning). ``--jobs 1`` is plain ``dvc repro``. A failing stage
stops new launches; the stages that finished are still recorded, and the exit status is
non-zero.
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import math
import multiprocessing
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from multiprocessing import forkserver
from pathlib import Path, PurePosixPath
from typing import Callable
from unittest import mock

from pipelines import stages as generated
from pipelines.grid import load_params

UPSTREAM = ("data-", "pretrain-")
# Stages that use every core (pretraining trains on torch's default thread count): each runs
# with nothing beside it, as two of them side by side would fight over the cores.
ALONE = ("pretrain-",)
# Stages run in children of the fork server, by name prefix: the module their command runs.
FORKED = {"cell-": "pipelines.cell", "diagnose-": "pipelines.diagnose"}
CELLS = tuple(FORKED)
TIMED = ("efficiency",)  # stages that time themselves: run alone, after the cells
# What the cells import; the fork server imports it once (an import error shows in the cell).
PRELOAD = ["torch", "timm", "pandas", "mmengine.runner",
           *(f"{package}.{part}" for package in ("mmseg", "mmdet", "mmpose")
             for part in ("models", "datasets", "engine", "evaluation", "visualization")),
           "mmpose.apis", "methods", "tasks.backbone", "tasks.classification", "tasks.detection",
           "tasks.panoptic", "tasks.pose", "tasks.segmentation", "benchmark.runner",
           "benchmark.launch", "benchmark.diagnostics", *FORKED.values()]


def dvc(*args: str) -> None:
    cmd = [sys.executable, "-m", "dvc", *args]
    print(f"[parallel] {shlex.join(['dvc', *args])}", flush=True)
    start = time.monotonic()
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"[parallel] failed: {shlex.join(['dvc', *args])}")
    print(f"[parallel] dvc {args[0]} took {time.monotonic() - start:.0f}s", flush=True)


def commit(names: list[str]) -> None:
    """``dvc commit -f NAME...`` in one pass: each stage's dependency and output hashes are
    saved as the command saves them, and dvc.lock is written once (the command re-reads and
    rewrites the whole lock file per stage, about a second each)."""
    from dvc.dependency import param
    from dvc.repo import Repo, lock_repo

    start = time.monotonic()
    wanted = set(names)
    read: dict[tuple, object] = {}

    def read_once(fs, path, key_paths=None, flatten=False, **kwargs):
        """Each params.yaml lookup made once: DVC re-parses the file for every param
        dependency of each stage, and twice more for the run cache (in pure-Python YAML and
        dpath, half the time of recording a grid). The file does not change meanwhile."""
        key = (path, tuple(key_paths or ()), flatten, tuple(sorted(kwargs.items())))
        if key not in read:
            read[key] = read_param_file(fs, path, key_paths, flatten, **kwargs)
        return copy.deepcopy(read[key])

    read_param_file = param.read_param_file
    with Repo(".") as repo, lock_repo(repo), mock.patch.object(param, "read_param_file", read_once):
        found = [s for s in repo.index.stages if s.addressing in wanted]
        if len(found) != len(wanted):
            missing = sorted(wanted - {s.addressing for s in found})
            raise SystemExit(f"[parallel] no such stage(s) to commit: {', '.join(missing)}")
        for stage in found:
            stage.save()
            stage.commit()
        (dvcfile,) = {s.dvcfile.path: s.dvcfile for s in found}.values()  # all in dvc.yaml
        dvcfile.dump_stages(found, update_pipeline=False)
    print(f"[parallel] recorded {len(found)} stages in dvc.lock in {time.monotonic() - start:.0f}s",
          flush=True)


def recorded(names: list[str], done: list[str]) -> bool:
    """Record the stages that finished (``commit``); whether all of ``names`` did."""
    if done:
        commit(done)
    return len(done) == len(names)


def stages(force: bool = False) -> tuple[dict[str, str], set[str], dict[str, set[str]],
                                         dict[str, list[str]]]:
    """(stage name -> command, the names of the stages to run: out-of-date ones, or all of
    them when forced (no status check then, 20 s for the mini grid), stage name -> the stages
    whose outputs it reads, stage name -> its outputs)."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        commands = {s.addressing: s.cmd for s in repo.index.stages}
        stale = set(commands) if force else set(repo.status())
        deps = {s.addressing: [d.def_path for d in s.deps] for s in repo.index.stages}
        outs = {s.addressing: [o.def_path for o in s.outs] for s in repo.index.stages}
    return commands, stale, readers(deps, outs), outs


def readers(deps: dict[str, list[str]], outs: dict[str, list[str]]) -> dict[str, set[str]]:
    """Stage -> the stages whose outputs it reads, from each stage's dependency and output
    paths: an output a dependency names, the output folder it lies in, or the outputs inside
    the folder it names (the aggregate's results/runs/PROFILE)."""
    writer = {path: name for name, paths in outs.items() for path in paths}
    inside = collections.defaultdict(set)  # folder -> the stages writing something in it
    for path, name in writer.items():
        for folder in PurePosixPath(path).parents:
            inside[str(folder)].add(name)

    def read(path: str) -> set[str]:
        around = (str(p) for p in (PurePosixPath(path), *PurePosixPath(path).parents))
        return {writer[p] for p in around if p in writer} | inside[path]

    return {name: set().union(*map(read, paths)) for name, paths in deps.items()}


def before_cells(commands: dict[str, str], reads: dict[str, set[str]]) -> list[str]:
    """The table stages that read no cell's output, even through another stage, and do not
    time themselves: a forced run runs them beside the data stages, on the core those leave
    idle while the backbone pretrains."""
    early: list[str] = []
    candidates = [n for n in commands if not n.startswith(UPSTREAM + CELLS) and n not in TIMED]
    while new := [n for n in candidates if n not in early and all(
            r.startswith(UPSTREAM) or r in early for r in reads[n])]:
        early += new
    return [n for n in candidates if n in early]


def forked_argv(name: str, command: str) -> tuple[str, list[str]]:
    """(module, arguments) of a forked stage's command, ``python -m MODULE ARGS...``."""
    args = shlex.split(command)
    module = FORKED[next(p for p in FORKED if name.startswith(p))]
    if args[:3] != ["python", "-m", module]:
        raise ValueError(f"stage {name}: expected a command 'python -m {module} ...', "
                         f"got '{command}'")
    return module, args[3:]


def _forked(module: str, argv: list[str], log: str) -> None:
    """One stage's ``main(argv)``, in a child of the fork server, with its output in ``log``.

    The objects inherited from the server (the imported stack) are moved out of the garbage
    collector's sight: a full collection would otherwise walk all of them, a third of a second
    each time (mmengine collects twice while it builds a cell's datasets).
    """
    import gc
    import importlib

    gc.freeze()

    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    multiprocessing.set_start_method(None, force=True)  # unset, as in a fresh interpreter
    sys.exit(importlib.import_module(module).main(argv))


def longest_first(names: list[str], outs: dict[str, list[str]]) -> list[str]:
    """``names`` by the wall time their last result file records, longest first (a stage
    without one first, one with no time last), so the short cells fill the pool's tail and
    no core idles through a long last cell."""
    def last(name: str) -> float:
        for out in outs.get(name, []):
            if out.endswith(".json"):
                try:
                    return float(json.loads(Path(out).read_text()).get("wall_time_s", 0.0))
                except (OSError, ValueError, AttributeError):
                    return math.inf
        return math.inf

    return sorted(names, key=last, reverse=True)


def run_cells(argvs: dict[str, tuple[str, list[str]]], after: dict[str, set[str]], jobs: int,
              log_dir: Path) -> list[str]:
    """Run each forked stage (name -> its module and arguments) ``jobs`` at a time, a stage
    once the stages in ``after[stage]`` have succeeded; return the names that succeeded."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    # The server's OpenMP reads this when it loads; later stages (the efficiency timings)
    # must not inherit it, as idle threads that sleep make a lone process slower. mmengine's
    # package helpers import pkg_resources, whose deprecation notice would reach the console.
    with mock.patch.dict(os.environ, {"OMP_WAIT_POLICY": "PASSIVE",
                                      "PYTHONWARNINGS": "ignore:pkg_resources is deprecated"}):
        forkserver.ensure_running()

    def one(name: str, log: Path) -> int:
        process = context.Process(target=_forked, args=(*argvs[name], str(log)))
        process.start()
        process.join()
        return process.exitcode

    return run_pool(list(argvs), after, one, jobs, log_dir)


def run_commands(commands: dict[str, str], after: dict[str, set[str]], jobs: int,
                 log_dir: Path, outs: dict[str, list[str]] | None = None) -> list[str]:
    """Run each stage's own command (with this interpreter as its ``python``) ``jobs`` at a
    time, a stage once the stages in ``after[stage]`` have succeeded; return the names that
    succeeded. ``outs``: each stage's outputs, removed before it runs (as DVC does, so that
    nothing of an earlier run is left in an output folder)."""
    def one(name: str, log: Path) -> int:
        for out in (outs or {}).get(name, []):
            path = Path(out)
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        args = shlex.split(commands[name])
        if args[0] == "python":
            args[0] = sys.executable
        with log.open("a") as out:
            return subprocess.run(args, stdout=out, stderr=subprocess.STDOUT).returncode

    return run_pool(list(commands), after, one, jobs, log_dir)


def run_pool(names: list[str], after: dict[str, set[str]], one: Callable[[str, Path], int],
             jobs: int, log_dir: Path) -> list[str]:
    """``one(name, log)`` for each name, ``jobs`` at a time in this order, each name once the
    names in ``after[name]`` that are among ``names`` have succeeded (an ``ALONE`` stage by
    itself); a progress line per finished name with an ETA. A failure stops new launches.
    Returns the names that succeeded."""
    log_dir.mkdir(parents=True, exist_ok=True)
    pending, done, failed = list(names), [], []
    start = time.monotonic()

    def timed(name: str) -> tuple[str, int, float]:
        t0 = time.monotonic()
        log = log_dir / f"{name}.log"
        log.write_text("")
        return name, one(name, log), time.monotonic() - t0

    def ready(busy: bool) -> str | None:
        for name in pending:
            if not (after.get(name, set()) & set(names)) - set(done) and not (
                    busy and name.startswith(ALONE)):
                pending.remove(name)
                return name
        return None

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: set = set()
        alone: set = set()  # the running futures of ALONE stages

        def launch() -> None:
            while (len(running) < jobs and not failed and not alone
                   and (name := ready(busy=bool(running))) is not None):
                future = pool.submit(timed, name)
                running.add(future)
                if name.startswith(ALONE):
                    alone.add(future)

        launch()
        while running:
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            alone -= finished
            for future in finished:
                name, code, seconds = future.result()
                (done if code == 0 else failed).append(name)
                elapsed = time.monotonic() - start
                n = len(done) + len(failed)
                eta = elapsed / n * (len(names) - n)
                state = "ok" if code == 0 else f"FAILED (exit {code}, log {log_dir / name}.log)"
                print(f"[parallel] {n}/{len(names)} {name}: {state} in {seconds:.0f}s "
                      f"({elapsed:.0f}s elapsed, ETA {eta:.0f}s)", flush=True)
                if code != 0:
                    tail = (log_dir / f"{name}.log").read_text().splitlines()[-20:]
                    print("\n".join(tail), file=sys.stderr, flush=True)
            launch()
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("PARAX_BENCH_JOBS", 2)),
                        help="cells at a time (default: $PARAX_BENCH_JOBS or 2)")
    parser.add_argument("-f", "--force", action="store_true",
                        help="recompute every stage, as `dvc repro -f`")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    force = ["-f"] if args.force else []
    if generated.main(["--params", args.params]) != 0:
        return 1
    if args.jobs == 1:
        dvc("repro", *force)
        return 0
    params = load_params(args.params)
    log_dir = Path("work") / params["grid"]["profile"] / "logs"
    commands, stale, reads, outs = stages(args.force)
    upstream = [n for n in commands if n.startswith(UPSTREAM) and n in stale]
    cells = [n for n in commands if n.startswith(CELLS) and n in stale]
    early = before_cells(commands, reads) if args.force else []
    if upstream:
        print(f"[parallel] {len(upstream)} data and pretraining stages"
              f"{f' and {len(early)} table stages' if early else ''}, {args.jobs} at a time",
              flush=True)
        if not recorded(upstream + early, run_commands(
                {n: commands[n] for n in upstream + early}, reads, args.jobs, log_dir, outs)):
            return 1
        if not args.force:  # what a re-run stage's new output made stale
            dvc("repro", *(n for n in commands if n.startswith(UPSTREAM)))
            commands, stale, reads, outs = stages()
            cells = [n for n in commands if n.startswith(CELLS) and n in stale]
    if cells:
        from pipelines.data import ensure

        # A fresh clone has the synthetic datasets' stamps but not the data: write each once
        # here rather than from two cells at the same time.
        argvs = {n: forked_argv(n, commands[n]) for n in longest_first(cells, outs)}
        for task in dict.fromkeys(a[0].split(".")[0] for _, a in argvs.values()):
            ensure(params, task)
        diagnose = sum(n.startswith("diagnose-") for n in cells)
        print(f"[parallel] {len(cells) - diagnose} cells"
              f"{f' and {diagnose} diagnose stages' if diagnose else ''}, {args.jobs} at a time",
              flush=True)
        if not recorded(cells, run_cells(argvs, reads, args.jobs, log_dir)):
            return 1
    rest = [n for n in commands if not n.startswith(UPSTREAM + CELLS) and n not in early]
    if args.force:  # one at a time: the efficiency stage times itself
        print(f"[parallel] {len(rest)} table and page stages, one at a time", flush=True)
        if not recorded(rest, run_commands({n: commands[n] for n in rest}, reads, 1, log_dir, outs)):
            return 1
    elif cells or upstream or set(rest) & stale:
        dvc("repro")
    else:
        print("[parallel] every stage is up to date", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
