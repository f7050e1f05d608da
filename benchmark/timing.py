"""Wall-clock timing shared by the benchmarks: warm-up, interleaved timed calls (CUDA
synchronised around each), median and quartiles, and the device's name for the record."""
from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(steps: dict[str, Callable[[], object]], device: torch.device, warmup: int,
            iters: int) -> dict[str, list[float]]:
    """Milliseconds per call of each step. The steps take turns (in a rotating order), so a
    slow spell of the machine hits them alike and their ratios stay fair."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    names = list(steps)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i in range(iters):
        for name in names[i % len(names):] + names[:i % len(names)]:
            _sync(device)
            start = time.perf_counter()
            steps[name]()
            _sync(device)
            out[name].append((time.perf_counter() - start) * 1e3)
    return out


def summarise(samples: list[float]) -> dict[str, float]:
    """Median, quartiles, IQR and minimum of at least two samples (milliseconds)."""
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1,
            "min_ms": min(samples), "n": len(samples)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
