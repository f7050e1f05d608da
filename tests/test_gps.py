"""GPS: what trains, the selection rule against its definition, the contrastive loss, merging,
the paper's counts and a selection inside a real cell that is fixed by the seed."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from benchmark.cli import main
from methods import SelectionBatch, build
from methods.gps import SparseUpdate, selectable_layers, supervised_contrastive, views
from tasks.synthetic import generate

from .conftest import MICRO, micro_input, paper_budget_rows, run


def updates(host):
    return [(name, layer, branch) for name, layer in selectable_layers(host)
            for branch in layer.peft_branches if isinstance(branch, SparseUpdate)]


def test_vit_b_counts_follow_the_release_rule():
    """83,712 rows on ViT-B/16 (12 x 6,912 linear rows and the patch embedding's 768), one
    bias each: K = 1 is the release's printed 167,424; K = 41 Table 4's 3.5 M."""
    assert build("vit-b", "gps", device="meta", per_neuron=1).num_trainable() == 167_424
    assert build("vit-b", "gps", device="meta", per_neuron=41).num_trainable() == 42 * 83_712
    assert build("vit-l", "gps", device="meta", per_neuron=7).num_trainable() == 8 * 222_208


@pytest.mark.parametrize("backbone,tasks", [
    ("vit-b", ["cifar100", "svhn", "food101", "imagenet_r"]),  # Table 4: 3.5 M
    ("vit-l", ["ade20k"]),  # Table 7: 14.9 M with SETR-PUP's heads
])
def test_paper_budget_lands_within_a_tenth_of_a_million(capsys, backbone, tasks):
    paper_budget_rows(capsys, "gps", backbone, tasks)


@pytest.mark.parametrize("family", ["swin", "vit", "convnext"])
def test_only_selected_entries_biases_and_layer_scales_train(family):
    host = build(MICRO[family], "gps", per_neuron=3)
    trainable = {n for n, p in host.model.named_parameters() if p.requires_grad}
    for name, p in host.model.named_parameters():
        leaf = name.rpartition(".")[2]
        if name.endswith(".values"):
            assert name in trainable
        elif "norm" in name or leaf in ("pos_embed", "cls_token") or name.endswith("weight"):
            assert name not in trainable, name  # weights, norms, embeddings stay frozen
    assert any(n.endswith("bias") for n in trainable)
    expected = sum(b.values.numel() for _, _, b in updates(host)) + sum(
        host.model.get_parameter(n).numel() for n in trainable if not n.endswith(".values"))
    assert host.num_trainable() == expected
    for name, layer, branch in updates(host):  # K per row, fewer where a row is narrower
        assert branch.values.shape == (layer.weight.shape[0], min(3, layer.weight[0].numel()))


@pytest.mark.parametrize("family", ["swin", "vit", "convnext"])
def test_unchanged_at_initialisation_and_merge_is_exact(family):
    backbone = MICRO[family]
    plain = build(backbone, "linear")
    host = build(backbone, "gps", per_neuron=2)
    host.model.load_state_dict(plain.model.state_dict(), strict=False)
    plain.model.eval()
    host.model.eval()
    x = micro_input(backbone)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(run(host, x), run(plain, x)))
        g = torch.Generator().manual_seed(0)
        for _, _, branch in updates(host):
            rows, width = branch.shape[0], math.prod(branch.shape[1:])
            branch.index.copy_(torch.rand(rows, width, generator=g).argsort(dim=1)[:, :branch.k])
            branch.values.normal_(0, 0.02, generator=g)
        before = run(host, x)
        host.method.merge(host)
        after = run(host, x)
    for a, b in zip(before, after):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert not updates(host)


def test_a_sparse_update_adds_its_values_at_its_indices():
    linear = nn.Linear(5, 3)
    update = SparseUpdate(linear, 2)
    update.index.copy_(torch.tensor([[0, 4], [1, 2], [3, 4]]))
    with torch.no_grad():
        update.values.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    expected = torch.zeros(3, 5)
    expected[0, 0], expected[0, 4], expected[1, 1], expected[1, 2] = 1, 2, 3, 4
    expected[2, 3], expected[2, 4] = 5, 6
    assert torch.equal(update.delta_weight(), expected)
    x = torch.randn(4, 5)
    assert torch.allclose(update(x), x @ expected.T)
    conv = nn.Conv2d(2, 3, 3, padding=1)
    update = SparseUpdate(conv, 4)
    with torch.no_grad():
        update.values.normal_()
    x = torch.randn(1, 2, 6, 6)
    assert torch.allclose(update(x), nn.functional.conv2d(x, update.delta_weight(), padding=1))


def reference_supcon(features, labels, t):
    """Khosla et al.'s loss written out anchor by anchor (2B anchors, all views)."""
    z = nn.functional.normalize(torch.cat(list(features)), dim=1)
    classes = labels.repeat(features.shape[0])
    total = 0.0
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        denominator = torch.logsumexp(torch.stack([z[i] @ z[j] / t for j in others]), 0)
        positives = [j for j in others if classes[j] == classes[i]]
        total += -sum(z[i] @ z[j] / t - denominator for j in positives) / len(positives)
    return total / len(z)


def test_the_contrastive_loss_is_the_supervised_contrastive_definition():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 6, 8, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    assert torch.allclose(supervised_contrastive(features, labels, 0.07),
                          reference_supcon(features, labels, 0.07), atol=1e-10)


def test_views_are_per_image_draws_of_the_same_size():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 16, 16)
    pair = views(images)
    assert pair.shape == (2, 3, 3, 16, 16)
    assert not torch.allclose(pair[0], pair[1])
    assert 0 <= pair.min() and pair.max() <= 1


def test_selection_keeps_the_k_largest_summed_gradients_of_each_row():
    """Two batches of a toy loss: the gradients are summed with their signs, then ranked."""
    host = build("vit-micro", "gps", per_neuron=2)
    x1, x2 = micro_input("vit-micro", seed=1), micro_input("vit-micro", seed=2)

    def loss(x, sign):
        return lambda: sign * run(host, x)[0].pow(2).mean()

    weights = [layer.weight for _, layer, _ in updates(host)]
    for w in weights:
        w.requires_grad_(True)
    (loss(x1, 1.0)() + loss(x2, -0.5)()).backward()
    expected = [w.grad.abs().flatten(1).topk(2, dim=1).indices.sort(dim=1).values for w in weights]
    for w in weights:
        w.grad = None
        w.requires_grad_(False)
    host.method.select(host, [SelectionBatch(loss(x1, 1.0)), SelectionBatch(loss(x2, -0.5))])
    for (_, layer, branch), want in zip(updates(host), expected):
        assert torch.equal(branch.index, want)
        assert not layer.weight.requires_grad and layer.weight.grad is None


@pytest.mark.slow
def test_the_cell_selects_inside_the_run_fixed_by_its_seed(tmp_path):
    data = generate("cifar100", tmp_path / "c100", seed=0, train=64, val=16)

    def cell(seed, name):
        out = tmp_path / f"{name}.json"
        assert main(["train", "--task", "cifar100", "--backbone", "vit-micro", "--method", "gps",
                     "--data", str(data), "--out", str(out), "--iters", "2", "--seed", str(seed),
                     "--set", "per_neuron=2", "--from-scratch", "--work-dir", str(tmp_path / name)]) == 0
        state = torch.load(out.with_suffix(".adapter.pth"), map_location="cpu")
        return json.loads(out.read_text()), {k: v for k, v in state.items() if k.endswith("index")}

    first, index = cell(0, "a")
    again, index_again = cell(0, "b")
    _, other = cell(1, "c")
    assert index and all(torch.equal(index[k], index_again[k]) for k in index)
    assert first["metrics"] == again["metrics"]
    assert any(not torch.equal(index[k], other[k]) for k in index)
    # not the placeholder order: the rows picked different columns
    assert any(not torch.equal(v, torch.arange(v.shape[1]).expand_as(v)) for v in index.values())


@pytest.mark.parametrize("family", ["swin", "vit"])
def test_the_method_state_holds_the_updates_and_trained_biases_and_loads_back(family):
    """What ``train`` writes beside its result: the sparse updates with their indices and the
    biases, not the frozen weights; over the pretrained backbone it gives the trained model."""
    from benchmark.export import method_state
    from methods.checkpoints import export_official, load_official

    backbone = MICRO[family]
    pretrained = export_official(build(backbone, "linear"))
    trained = build(backbone, "gps", per_neuron=2)
    load_official(trained, pretrained)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, _, branch in updates(trained):
            rows, width = branch.shape[0], math.prod(branch.shape[1:])
            branch.index.copy_(torch.rand(rows, width, generator=g).argsort(dim=1)[:, :branch.k])
            branch.values.normal_(0, 0.02, generator=g)
        for p in trained.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    state = method_state(trained)
    assert not any(k.endswith("weight") for k in state)  # no frozen weight, no norm
    assert sum(v.numel() for k, v in state.items() if not k.endswith("index")) == \
        trained.num_trainable()
    again = build(backbone, "gps", per_neuron=2)
    load_official(again, {**pretrained, **state})
    x = micro_input(backbone)
    trained.model.eval()
    again.model.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(run(trained, x), run(again, x)))
