"""Shared fixtures: deterministic CPU runs on the micro backbones."""
from __future__ import annotations

import pytest
import torch

MICRO = {"swin": "swin-micro", "convnext": "convnext-micro", "vit": "vit-micro"}
MICRO_INPUT = {"swin-micro": 64, "convnext-micro": 64, "vit-micro": 32}


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
