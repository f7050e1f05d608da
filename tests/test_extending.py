"""Extending the suite in one file each: a backbone family, a dataset of an existing kind."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from catalog import BACKBONES, TASKS, SegmentationLayout, TaskSpec, register_task
from methods import build
from methods.hosts import HOSTS, Site

EXAMPLES = Path(__file__).parent / "examples"


@pytest.fixture
def mixer_family(monkeypatch):
    """tests/examples/mixer_family.py imported as a user would; registries restored after."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module("mixer_family")
    yield module
    HOSTS.pop("mixer", None)
    BACKBONES.pop("mixer-micro", None)
    sys.modules.pop("mixer_family", None)


@pytest.mark.parametrize("method", ["parax", "lora", "mona"])
def test_a_family_in_one_file_takes_parax_lora_and_mona(mixer_family, method):
    host = build("mixer-micro", method, "cifar100")
    assert type(host).__name__ == "MixerHost"
    placed = {site for info in host.blocks for site, mods in info.module.peft_sites.items() if mods}
    if method == "lora":  # no fused qkv on a Mixer: LoRA takes the channel MLP's fc1
        fc1 = host.linear(host.blocks[0], Site.FC1)
        assert len(fc1.peft_branches) == 1 and not placed
    else:  # the serial role: after the token-mixing and the channel residual sums
        assert placed == {"attn_out", "block_out"}
    trainable = host.trainable_parameters()
    assert trainable and all(not p.requires_grad for n, p in host.model.named_parameters()
                             if n.startswith("stem."))
    host.model.train()
    optimizer = torch.optim.SGD(trainable, lr=1e-2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(2):
        loss = (host.forward_pooled(x) - 1).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert losses[1] < losses[0]
    assert host.num_trainable() == build("mixer-micro", method, "cifar100",
                                         device="meta").num_trainable()


def test_a_family_without_a_role_refuses_the_method(mixer_family):
    from methods import NotApplicableError

    with pytest.raises(NotApplicableError, match="vpt is not applicable to MLP-Mixer backbones"):
        build("mixer-micro", "vpt", "cifar100")


@pytest.fixture
def toy_segmentation():
    """A dataset of an existing kind (semantic segmentation), described by one spec."""
    spec = register_task(TaskSpec(
        "toyseg", "semantic_segmentation", "ToySeg", "A segmentation set of our own",
        layout=SegmentationLayout("BaseSegDataset", 3, "toyseg", "img/{split}", "ann/{split}",
                                  ".png", ("train", "val"), classes=("sky", "ground", "thing")),
        synthetic=dict(stuff=(1, 2), things=(3,), prefixes=("tr", "va"))))
    yield spec
    TASKS.pop("toyseg")


def test_a_dataset_of_an_existing_kind_through_one_spec(tmp_path, toy_segmentation):
    """Its kind writes synthetic data in its layout, checks it, trains and evaluates on it,
    and aggregation finds its metrics in the spec."""
    from benchmark.runner import run_cell
    from catalog import Cell
    from tasks import DataFormatError, check_dataset
    from tasks.synthetic import generate

    root = generate("toyseg", tmp_path / "toyseg", seed=0, train=4, val=2)
    assert sorted(p.name for p in (root / "toyseg/img/train").iterdir())[:1] == ["tr_00000001.png"]
    check_dataset("toyseg", root)
    cell = Cell(task="toyseg", backbone="swin-micro", method="parax", data_root=str(root), iters=2)
    result = run_cell(cell, tmp_path / "toyseg.json", tmp_path / "work")
    assert toy_segmentation.primary.key in result["metrics"]

    next((root / "toyseg/ann/val").glob("*.png")).unlink()
    with pytest.raises(DataFormatError, match="2 images but 1 label maps"):
        check_dataset("toyseg", root)
