"""Registering methods from outside the package: the decorator and the entry-point group."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from methods import PEFTMethod, available_methods, build, register_method
from methods import registry

TOY_METHOD = '''
"""A toy method outside the package: a learned per-channel bias after every block."""
import torch
from torch import nn

from methods import PEFTMethod, Site, register_method


class ChannelBias(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x, hw):
        return x + self.bias


@register_method
class {cls}(PEFTMethod):
    name = "{name}"
    description = "Toy: a learned channel bias after every block."

    def attach(self, host):
        for block in host.blocks:
            host.add(Site.BLOCK_OUT, ChannelBias(block.dim), block=block)
'''


@pytest.fixture
def clean_registry():
    before = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)


def test_decorator_registers_a_method_that_works_everywhere(clean_registry, tmp_path):
    namespace: dict = {}
    exec(TOY_METHOD.format(cls="ToyBias", name="toy_bias"), namespace)
    assert "toy_bias" in available_methods()
    for backbone in ("swin-micro", "convnext-micro", "vit-micro"):
        host = build(backbone, "toy_bias")
        assert host.num_trainable() == sum(b.dim for b in host.blocks)
        feats = host.forward_features(torch.randn(1, 3, 64 if "vit" not in backbone else 32,
                                                  64 if "vit" not in backbone else 32))
        sum(f.sum() for f in feats).backward()


def test_entry_point_group_registers_an_installed_method(tmp_path):
    pkg = tmp_path / "toy_ep"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(TOY_METHOD.format(cls="ToyEp", name="toy_ep"))
    dist = tmp_path / "toy_ep-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-ep\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[parax_bench.methods]\ntoy_ep = toy_ep\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    exe = Path(sys.executable).parent / "parax-bench"
    listing = subprocess.run([exe, "methods"], env=env, capture_output=True, text=True, check=True)
    assert any(line.startswith("toy_ep ") for line in listing.stdout.splitlines())
    table = subprocess.run([exe, "params", "--backbone", "vit-micro", "--method", "toy_ep",
                            "--format", "csv"], env=env, capture_output=True, text=True, check=True)
    assert table.stdout.splitlines()[1].split(",")[4] == str(4 * 32)  # 4 blocks x 32 channels


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
