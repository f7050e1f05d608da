"""What a cell shows on the console: a progress bar, warnings, and a one-line summary.

OpenMMLab logs its environment, the whole config and hook order before the first iteration,
then a line per logging interval. By default all of that goes only to the run's log file
(mmengine's, ``WORK_DIR/CONFIG-CODE/TIMESTAMP/TIMESTAMP.log``), with whatever the evaluators
print; the console gets a progress bar per phase, warnings and a summary line. Verbose (``-v``, or ``PARAX_BENCH_VERBOSE=1`` for grid cells)
restores mmengine's console log as it is.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import warnings
from typing import Any, Iterator

from catalog import Cell, get_task

VERBOSE_ENV = "PARAX_BENCH_VERBOSE"

# Warnings raised on import or on every run by the stack's own code, about the stack's own
# use of its dependencies: nothing a user of this suite can act on.
_NOISE = (
    ("ignore", r".*", DeprecationWarning),
    ("ignore", r".*", FutureWarning),
    ("ignore", r"On January 1, 2023, MMCV will release v2\.0\.0", UserWarning),
    ("ignore", r"``build_loss`` would be deprecated", UserWarning),
    ("ignore", r"Default ``avg_non_ignore`` is False", UserWarning),
    ("ignore", r"`reduce_zero_label` will be deprecated", UserWarning),
    ("ignore", r"Failed to search registry with scope", UserWarning),
    ("ignore", r".*torch\.meshgrid", UserWarning),
)


# mmengine's own logged warnings of the same kind (its console handler drops them; the log
# file keeps them).
_LOGGED_NOISE = re.compile("|".join((
    r"The prefix is not set in metric class",
    r"\"FileClient\" will be deprecated",
    r"\"HardDiskBackend\" is the alias",
    r"is skipped since its requires_grad=False",  # the frozen backbone, one line a tensor
    r"has no metainfo",
)))


def _not_noise(record: logging.LogRecord) -> bool:
    return not _LOGGED_NOISE.search(record.getMessage())


def filter_noise() -> None:
    for action, message, category in _NOISE:
        warnings.filterwarnings(action, message=message, category=category)


def verbose_default() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class _ToLog(io.TextIOBase):
    """A stdout whose lines go into the run's log at INFO (its file, not the console); lines
    written before the runner has its logger wait for it."""

    def __init__(self) -> None:
        self.logger: logging.Logger | None = None
        self._pending: list[str] = []
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if line.strip():
                self._pending.append(line)
        if self.logger is not None:
            for line in self._pending:
                self.logger.info(line)
            self._pending.clear()
        return len(text)


@contextlib.contextmanager
def console(verbose: bool) -> Iterator[type]:
    """The Runner class to build a cell's runner with, and the console it runs under.

    Verbose: mmengine's Runner as it is. Otherwise a Runner whose console handler shows only
    warnings and errors, while what third-party code prints (pycocotools' tables, say) and the
    Python warnings it raises go to the run's log file. Known noise is filtered either way.
    """
    from mmengine.runner import Runner

    filter_noise()
    if verbose:
        yield Runner
        return
    terminal, sink = sys.stdout, _ToLog()

    class QuietRunner(Runner):
        def build_logger(self, *args, **kwargs):
            logger = super().build_logger(*args, **kwargs)
            for handler in logger.handlers:
                if type(handler) is logging.StreamHandler:
                    handler.setStream(terminal)
                    handler.setLevel(max(handler.level, logging.WARNING))
                    handler.addFilter(_not_noise)
            sink.logger = logger
            return logger

    def to_log(message, category, filename, lineno, file=None, line=None):
        sink.write(warnings.formatwarning(message, category, filename, lineno, line))

    with contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.showwarning = to_log
        yield QuietRunner
    sink.write("\n")


def register_progress_hook() -> None:
    """``ProgressHook``: a tqdm bar of the training iterations (loss, rate, ETA) and one of the
    validation images, on rank 0's stderr."""
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS
    from tqdm import tqdm

    if "ProgressHook" in HOOKS.module_dict:
        return

    @HOOKS.register_module()
    class ProgressHook(Hook):
        priority = "LOWEST"

        def __init__(self, desc: str) -> None:
            self.desc = desc
            self.bar = None

        def _open(self, runner, total: int, initial: int, what: str, leave: bool) -> None:
            from mmengine.dist import get_rank

            self.bar = tqdm(total=total, initial=initial, desc=f"{self.desc} {what}",
                            unit="it" if what == "train" else "img", leave=leave,
                            file=sys.stderr, mininterval=0.5, dynamic_ncols=True,
                            disable=get_rank() != 0)

        def _close(self) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

        def before_train(self, runner) -> None:
            self._open(runner, runner.max_iters, runner.iter, "train", leave=True)

        def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
            loss = (outputs or {}).get("loss")
            if loss is not None:
                self.bar.set_postfix_str(f"loss {float(loss):.3f}", refresh=False)
            self.bar.update(1)

        def after_train(self, runner) -> None:
            self._close()

        def before_val(self, runner) -> None:
            self._open(runner, len(runner.val_loop.dataloader), 0, "eval", leave=False)

        def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
            self.bar.update(1)

        def after_val(self, runner) -> None:
            self._close()


def summary(cell: Cell, result: dict[str, Any], out: str | os.PathLike) -> str:
    """One line: the cell, its metrics in the tables' labels and units, time, result file."""
    metrics = result["metrics"]
    shown = [f"{m.label} {metrics[m.key] * m.scale:.2f}"
             for m in get_task(cell.task).metrics if m.key in metrics]
    return f"{cell.id}: {', '.join(shown)} ({result['wall_time_s']:.0f} s) -> {out}"
