"""Adding a method from outside the package: one file, one registration call, works everywhere."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from methods import PEFTMethod, available_methods, build, register_method
from methods import registry

from .conftest import MICRO, micro_input, run

EXAMPLES = Path(__file__).parent / "examples"


@pytest.fixture
def clean_registry():
    available_methods()  # every method file imported first: the snapshot is the whole registry
    before = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)
    sys.modules.pop("toy_bias", None)


def test_one_file_method_trains_on_every_family(clean_registry, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    importlib.import_module("toy_bias")
    assert "toy_bias" in available_methods()
    for family, backbone in MICRO.items():
        host = build(backbone, "toy_bias")
        assert host.num_trainable() == sum(b.dim for b in host.blocks)
        params = host.trainable_parameters()
        optimizer = torch.optim.SGD(params, lr=1e-5)
        x = micro_input(backbone)
        losses = []
        for _ in range(2):  # one training step, then the loss it produced
            loss = sum((f[:, 0] - 1).square().mean() for f in run(host, x))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        assert losses[1] < losses[0], family


def test_entry_point_group_registers_an_installed_method(tmp_path):
    dist = tmp_path / "toy_bias-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-bias\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[parax_bench.methods]\ntoy_bias = toy_bias\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(EXAMPLES)])}
    exe = Path(sys.executable).parent / "parax-bench"
    listing = subprocess.run([exe, "methods"], env=env, capture_output=True, text=True, check=True)
    assert any(line.startswith("toy_bias ") for line in listing.stdout.splitlines())
    table = subprocess.run([exe, "params", "--backbone", "vit-micro", "--method", "toy_bias",
                            "--budget", "384", "--format", "csv"],
                           env=env, capture_output=True, text=True, check=True)
    row = table.stdout.splitlines()[1].split(",")
    assert row[5] == str(3 * 4 * 32)  # solved: 3 copies x 4 blocks x 32 channels


def test_registration_errors(clean_registry):
    with pytest.raises(TypeError, match="expects a PEFTMethod subclass"):
        register_method(nn.Linear)

    class Clash(PEFTMethod):
        name = "parax"

        def attach(self, host):
            pass

    with pytest.raises(ValueError, match="method name 'parax' is already registered"):
        register_method(Clash)

    class Unnamed(PEFTMethod):
        def attach(self, host):
            pass

    with pytest.raises(ValueError, match="must be a non-empty identifier"):
        register_method(Unnamed)
