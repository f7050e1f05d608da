"""SPT-LoRA: the selection rules against a transcription of the release's sweep, the count it
lands on, what trains, its init, merging, restoring a saved structure, the paper's counts and
a selection inside a real cell that is fixed by the seed."""
from __future__ import annotations

import json

import pytest
import torch

from benchmark.cli import main
from methods import SelectionBatch, build, count_trainable, method_for
from methods.base import restore
from methods.spt import NORMS, PLAN, Counts, SparseEntries, SPTLowRank, reachable, units
from tasks.synthetic import generate

from .conftest import MICRO, micro_input, paper_budget_rows, run


def selected(host, budget: int, batches: int = 2, seed: int = 0):
    """``host`` (an spt-lora host) after a selection on a loss of its outputs on micro inputs."""
    x = micro_input(host.name, batch=4, seed=seed)
    host.model.train()
    host.method.select(host, [SelectionBatch(
        lambda: sum((f - 1).pow(2).mean() for f in run(host, x))) for _ in range(batches)])
    restore(host, {})  # nothing to rebuild: unfreezes what the selection planned, as the runner
    host.model.eval()
    return host


def release_sweep(grad: dict[str, torch.Tensor], tau: int, rank: int, alpha: float, beta: float):
    """The release's ``get_sensitivity`` rules for one tau, written out per parameter name over
    separate q / k / v: (LoRA matrices, vectors in full, unstructured count)."""
    flat = torch.cat([g.flatten() for g in grad.values()])
    mask = torch.zeros_like(flat)
    mask[flat.sort(descending=True, stable=True).indices[:tau]] = 1
    lora, vectors, unstructured = set(), set(), 0
    for (name, g), m in zip(grad.items(), mask.split([g.numel() for g in grad.values()])):
        count = m.sum().item()
        if g.dim() == 1:
            if count >= g.numel() / beta:
                vectors.add(name)
            elif "bias" in name:  # sparse; a norm's would be counted but never train
                unstructured += count
        elif count >= rank * (g.shape[0] + g.shape[1]) / alpha:
            lora.add(name)
        else:
            unstructured += count
    return lora, vectors, unstructured


def test_the_rules_are_the_releases_on_separate_q_k_v():
    """A fused qkv's thirds are judged as the release's separate q, k, v: same LoRA matrices,
    vectors and sparse count as the release's loop over its named parameters, at every tau."""
    host = build("vit-micro", "spt-lora", budget=10)
    groups = units(host, rank=8)
    torch.manual_seed(0)
    scores = [torch.rand(g.size) ** 3 for g in groups]
    counts = Counts(groups, scores, host.method.config, fixed=0)
    names = [f"u{i}.{g.kind}" for i, g in enumerate(groups)]  # as q.weight, k.bias, norm1...
    grad = {name: s.view(g.rows, -1) if g.kind == "matrix" else s
            for name, g, s in zip(names, groups, scores)}
    for tau in (0, 50, 400, 3000, 20000, len(counts.order)):
        _, lora, full = counts.decide(tau)
        want_lora, want_vectors, want_sparse = release_sweep(grad, tau, 8, 10.0, 5.0)
        assert {names[i] for i in range(len(groups)) if lora[i]} == want_lora
        assert {names[i] for i in range(len(groups)) if full[i]} == want_vectors
        structured = sum(g.cost for i, g in enumerate(groups) if lora[i]) + sum(
            g.size for i, g in enumerate(groups) if full[i])
        assert counts.total(tau) == structured + want_sparse


@pytest.mark.parametrize("family,budget", [("swin", 30000), ("vit", 12000), ("convnext", 30000)])
def test_the_selection_lands_on_the_budget_and_trains_only_what_it_chose(family, budget):
    host = selected(build(MICRO[family], "spt-lora", budget=budget), budget)
    # the closest count: a step of tau moves it by one entry, or by a matrix's switch to LoRA
    step = max(g.cost for g in units(host, 8) if g.kind == "matrix")
    assert abs(host.num_trainable() - budget) <= step / 2
    modules = [b for _, m in host.model.named_modules() for b in getattr(m, "peft_branches", [])]
    assert any(isinstance(b, SPTLowRank) for b in modules)
    assert any(isinstance(b, SparseEntries) for b in modules)
    for name, p in host.model.named_parameters():  # updates, norm vectors, class token: no weight
        if p.requires_grad:
            owner = host.model.get_submodule(name.rpartition(".")[0]) if "." in name else None
            assert "peft_branches" in name or isinstance(owner, NORMS) or name == "cls_token", name
    for b in modules:
        if isinstance(b, SparseEntries):
            assert not b.weight_values.any() and not b.bias_values.any()  # zero: no change yet
            assert b.weight_index.unique().numel() == b.weight_index.numel()


def test_lora_is_drawn_as_timm_linears_not_zero():
    """The release's timm init (trunc_normal_ std 0.02, cut at +-2: a normal) reaches its LoRA
    too: not identity."""
    torch.manual_seed(0)
    branch = SPTLowRank(64, 32, 96, 32, rank=8)
    for w in (branch.lora_A, branch.lora_B):
        assert 0.017 < w.std() < 0.023 and abs(w.mean()) < 0.005
    branch.eval()
    x = torch.randn(5, 64)
    assert torch.allclose(branch(x)[:, 32:64], x @ branch.lora_A.T @ branch.lora_B.T, atol=1e-6)
    assert not branch(x)[:, :32].any() and not branch(x)[:, 64:].any()


def test_a_budget_beyond_reach_selects_everything():
    host = build("vit-micro", "spt-lora", budget=10 ** 8)
    most = reachable(host, 8)
    assert count_trainable("vit-micro", host.method) == most
    assert selected(host, most).num_trainable() == most


@pytest.mark.parametrize("family", ["swin", "vit"])
def test_merge_is_exact_and_the_saved_structure_restores(family):
    from benchmark.export import method_state
    from methods.checkpoints import export_official, load_official

    backbone = MICRO[family]
    pretrained = export_official(build(backbone, "linear"))
    host = build(backbone, "spt-lora", budget=5000)
    load_official(host, pretrained)
    selected(host, 5000)
    with torch.no_grad():
        for p in host.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.02)
    x = micro_input(backbone)
    with torch.no_grad():
        want = run(host, x)
    state = method_state(host)
    assert f"peft_shared.{PLAN}.rows" in state
    assert sum(v.numel() for k, v in state.items() if v.is_floating_point()) == \
        host.num_trainable()
    again = build(backbone, "spt-lora", budget=5000)
    load_official(again, {**pretrained, **state})
    assert again.num_trainable() == host.num_trainable()
    again.model.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(run(again, x), want))
    from methods.merge import merge_in_place
    merge_in_place(again)
    assert not again.added_state_keys()
    with torch.no_grad():
        for a, b in zip(run(again, x), want):
            assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    other = build(backbone, "spt-lora", budget=5000)
    selected(other, 5000, seed=9)
    with pytest.raises(ValueError, match="another selected structure"):
        restore(other, state)


@pytest.mark.parametrize("backbone,tasks", [
    ("vit-b", ["cifar100", "svhn", "food101", "imagenet_r"]),  # Table 4: 3.7 M (rank 32)
    ("vit-l", ["ade20k"]),  # Table 7: 14.6 M with SETR-PUP's heads
])
def test_paper_budget_lands_within_a_tenth_of_a_million(capsys, backbone, tasks):
    for r in paper_budget_rows(capsys, "spt-lora", backbone, tasks):
        assert r["trainable_backbone_params"] <= reachable(
            build(backbone, method_for("spt-lora", backbone, r["task"]), r["task"],
                  device="meta"), 32 if backbone == "vit-b" else 8)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="budget must be a positive integer"):
        build("vit-micro", "spt-lora", budget=0)
    with pytest.raises(ValueError, match="alpha must be at least 1"):
        build("vit-micro", "spt-lora", alpha=0.5)


@pytest.mark.slow
def test_the_cell_selects_inside_the_run_fixed_by_its_seed(tmp_path):
    data = generate("cifar100", tmp_path / "c100", seed=0, train=64, val=16)

    def cell(seed, name):
        out = tmp_path / f"{name}.json"
        assert main(["train", "--task", "cifar100", "--backbone", "swin-micro", "--method",
                     "spt-lora", "--data", str(data), "--out", str(out), "--iters", "2",
                     "--seed", str(seed), "--set", "budget=4000", "--from-scratch",
                     "--work-dir", str(tmp_path / name)]) == 0
        state = torch.load(out.with_suffix(".adapter.pth"), map_location="cpu")
        return json.loads(out.read_text()), state

    first, state = cell(0, "a")
    again, state_again = cell(0, "b")
    _, other = cell(1, "c")
    assert first["trainable_backbone_params"] == 4000
    assert first["metrics"] == again["metrics"]
    assert state.keys() == state_again.keys()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert any(k not in other or other[k].shape != v.shape or not torch.equal(other[k], v)
               for k, v in state.items() if not v.is_floating_point())
    # the state file checks out against the options, as `params --checkpoint` does
    assert main(["params", "--backbone", "swin-micro", "--method", "spt-lora", "--set",
                 "budget=4000", "--checkpoint", str(out_path(tmp_path, "a"))]) == 0


def out_path(tmp_path, name):
    return (tmp_path / f"{name}.json").with_suffix(".adapter.pth")
