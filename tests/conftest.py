"""Shared fixtures: deterministic CPU runs on the micro backbones."""
from __future__ import annotations

import pytest
import torch

MICRO = {"swin": "swin-micro", "convnext": "convnext-micro", "vit": "vit-micro",
         "vmamba": "vmamba-micro"}
MICRO_INPUT = {"swin-micro": 64, "convnext-micro": 64, "vit-micro": 32, "vmamba-micro": 64}


@pytest.fixture(autouse=True, scope="session")
def _own_cache(tmp_path_factory):
    """Data checks and completed COCO copies go to a cache of the test session's own."""
    import os

    previous = os.environ.get("PARAX_BENCH_CACHE")
    os.environ["PARAX_BENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("PARAX_BENCH_CACHE")
    else:
        os.environ["PARAX_BENCH_CACHE"] = previous


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def micro_input(backbone: str, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    size = MICRO_INPUT[backbone]
    return torch.randn(batch, 3, size, size, generator=g)


def run(host, x: torch.Tensor) -> list[torch.Tensor]:
    """Dense hosts: multi-scale features; classification hosts: pooled features."""
    return host.forward_features(x) if host.dense else [host.forward_pooled(x)]


def paper_budget_rows(capsys, method: str, backbone: str, tasks: list[str]) -> list[dict]:
    """``params --budget paper`` rows of ``method``, each asserted within 0.1 M of the count
    the paper reports for it."""
    import json

    from benchmark.cli import main

    assert main(["params", "--backbone", backbone, "--method", method, "--task", *tasks,
                 "--budget", "paper", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(tasks)
    for r in rows:
        assert r["reported_params_m"] is not None, r
        assert abs(r["params_m"] - r["reported_params_m"]) <= 0.1, r
    return rows
