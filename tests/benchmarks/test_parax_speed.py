"""Module-level timings (pytest-benchmark): ParaX vs the straightforward forward vs Mona.

    python -m pytest tests/benchmarks --benchmark-enable

One module at a time, batch 1, at the Swin-B stage shapes of a 512x512 and a 1280x800 input
(stages 1 and 3: the widest maps and the deepest stage), forward (inference) and forward +
backward (a training step), on CUDA when available, else CPU. The three modules and the two
modes are those of `python -m benchmark.bench_parax`, which prints the ratios. Under the
default `--benchmark-disable` each test runs its call once: a smoke test of the harness.
"""
from __future__ import annotations

import pytest
import torch

from benchmark.bench_parax import MODES, Case, build_module, make_step

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = [Case("512x512", 0), Case("512x512", 2), Case("1280x800", 0), Case("1280x800", 2)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["parax", "straightforward", "mona"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_module_speed(benchmark, case, kind, mode):
    benchmark.group = f"{case.name} {mode}"
    step = make_step(build_module(kind, case, DEVICE), case, mode, batch=1, device=DEVICE)

    def call() -> torch.Tensor:
        out = step()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize(DEVICE)
        return out

    out = benchmark.pedantic(call, rounds=5, warmup_rounds=1)
    assert out.shape == (1, case.hw[0] * case.hw[1], case.dim)
    assert torch.isfinite(out).all()
