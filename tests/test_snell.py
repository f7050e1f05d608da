"""SNELL: the kernel update and its sparsification against their definitions, placement,
counts and the paper's budgets."""
from __future__ import annotations

import pytest
import torch

from methods import Site, build
from methods.snell import (KERNEL_SCALE, SNELLBranch, SNELLConfig, head_coefficients,
                           kernel_update, quantile)

from .conftest import MICRO, micro_input, run


COEFFICIENTS = head_coefficients(torch.float64)


def reference_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """K[i, j] = 0.1 * (|a0_i - b0_j| - |a1_i - b1_j|), entry by entry."""
    out = torch.empty(a.shape[1], b.shape[1], dtype=torch.float64)
    for i in range(a.shape[1]):
        for j in range(b.shape[1]):
            out[i, j] = KERNEL_SCALE * ((a[0, i] - b[0, j]).norm() - (a[1, i] - b[1, j]).norm())
    return out


def factors(n_in=6, n_out=10, half=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, n_in, half, generator=g, dtype=torch.float64),
            torch.randn(2, n_out, half, generator=g, dtype=torch.float64))


def test_the_plain_kernel_is_the_signed_sum_of_distances():
    a, b = factors()
    assert torch.allclose(kernel_update(a, b, 0.0, COEFFICIENTS), reference_kernel(a, b),
                          atol=1e-12)


@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_sparsification_keeps_the_largest_entries_scaled_by_their_magnitude(sparsity):
    a, b = factors()
    k = reference_kernel(a, b)
    s = kernel_update(a, b, sparsity, COEFFICIENTS)
    kept = s != 0
    assert kept.sum() == round(k.numel() * (1 - sparsity))  # 60 distinct entries
    assert k.abs()[kept].min() > k.abs()[~kept].max()
    assert torch.allclose(s[kept], (k * k.abs())[kept], atol=1e-12)


@pytest.mark.parametrize("shape", [(16, 48), (64, 256), (7, 13)])
@pytest.mark.parametrize("q", [0.9, 0.5, 0.37])
def test_the_threshold_is_torch_quantile_bit_for_bit(shape, q):
    g = torch.Generator().manual_seed(shape[0])
    for ties in (False, True):
        values = torch.randn(shape, generator=g).abs().flatten()
        if ties:  # repeated values: the interpolation reads equal order statistics
            values = (values * 4).round() / 4
        assert torch.equal(quantile(values, q), torch.quantile(values, q))


def test_the_magnitude_factor_passes_no_gradient():
    """d S / d K = |K| on kept entries, 0 elsewhere (the magnitude is detached)."""
    a, b = factors()
    a.requires_grad_(True)
    k = kernel_update(a, b, 0.0, COEFFICIENTS)
    k_leaf = k.detach().requires_grad_(True)
    magnitude = k_leaf.detach().abs()
    threshold = torch.quantile(magnitude.flatten(), 0.5)
    torch.nn.functional.threshold(magnitude, float(threshold), 0.0).mul(k_leaf).sum().backward()
    expected = torch.where(magnitude > threshold, magnitude, 0.0)
    assert torch.allclose(k_leaf.grad, expected)


def test_a_qkv_branch_writes_only_its_thirds_with_one_dropout_draw():
    cfg = SNELLConfig(rank=4, sparsity=0.5, dropout=0.0, drop_path=0.0)
    branch = SNELLBranch(8, 24, [(0, 8), (16, 8)], cfg)  # q and v of a fused qkv
    x = torch.randn(3, 5, 8)
    out = branch(x)
    assert out.shape == (3, 5, 24) and torch.equal(out[..., 8:16], torch.zeros(3, 5, 8))
    for update, rows in zip(branch.updates, (slice(0, 8), slice(16, 24))):
        assert torch.allclose(out[..., rows], x @ kernel_update(
            update.in_factors, update.out_factors, 0.5, update.coefficients), atol=1e-6)
    assert torch.allclose(x @ branch.delta_weight().T, out, atol=1e-6)


@pytest.mark.parametrize("family,sites", [("swin", (Site.QKV, Site.PROJ, Site.FC1, Site.FC2)),
                                          ("convnext", (Site.FC1, Site.FC2)),
                                          ("vmamba", (Site.FC1, Site.FC2))])
def test_the_released_placement_counts_q_per_input_and_output(family, sites):
    """q (in + out) per adapted linear, q, k and v each C -> C; nothing else trains."""
    host = build(MICRO[family], "snell", "ade20k", rank=8, targets=None)
    expected = 0
    for block in host.blocks:
        for site in sites:
            linear = host.linear(block, site)
            if site is Site.QKV:
                expected += 3 * 8 * (linear.in_features + linear.out_features // 3)
            else:
                expected += 8 * (linear.in_features + linear.out_features)
    assert host.num_trainable() == expected
    assert all(n.endswith(("in_factors", "out_factors"))
               for n, p in host.model.named_parameters() if p.requires_grad)


def test_training_mode_draws_dropout_and_eval_is_deterministic():
    torch.manual_seed(0)
    host = build(MICRO["swin"], "snell", "cifar100")
    x = micro_input(host.name)
    host.model.eval()
    with torch.no_grad():
        first, second = host.model(x), host.model(x)
    assert torch.equal(first, second)
    host.model.train()
    with torch.no_grad():
        assert not torch.equal(host.model(x), first)


@pytest.mark.parametrize("option,value,message", [
    ("rank", 7, "rank must be an even integer"), ("sparsity", 1.0, "sparsity must be in"),
    ("targets", ("q", "out"), "targets must be distinct names"),
])
def test_bad_options_say_what_was_expected(option, value, message):
    with pytest.raises(ValueError, match=message):
        build(MICRO["swin"], "snell", "ade20k", device="meta", **{option: value})


@pytest.mark.parametrize("backbone,task,count", [
    ("swin-b", "ade20k", 5.8), ("swin-l", "ade20k", 8.7), ("convnext-b", "ade20k", 6.4),
    ("convnext-l", "ade20k", 9.5), ("vit-b", "cifar100", 3.7)])
def test_the_paper_budget_lands_within_a_tenth_of_a_million(backbone, task, count):
    from benchmark.budget import parse_budget, solve, target_count

    target = target_count(parse_budget("paper"), backbone, "snell", task)
    assert target == round(count * 1e6)
    assert abs(solve("snell", backbone, task, target).count - target) <= 1e5


def released_update(learnable: dict[str, torch.Tensor], sparsity: float) -> torch.Tensor:
    """The release's ``SNELL._forward`` weight (out x in), transcribed: pathIntegrals, then
    sparsify with torch.quantile (KLoRA, sparsity 0: the plain kernel)."""
    suffix = "_1" if sparsity == 0 else ""
    dist = torch.cdist(learnable["In_Qs" + suffix], learnable["Out_Qs" + suffix], p=2)
    weight = torch.sum(learnable["shared_coeff_fc"] * dist, dim=0)
    if sparsity:
        magnitude = weight.detach().abs()
        threshold = torch.quantile(magnitude.flatten(), sparsity)
        weight = weight * torch.nn.functional.threshold(magnitude, float(threshold), 0)
    return weight.T


@pytest.mark.parametrize("family,sparsity", [("swin", 0.9), ("convnext", 0.9), ("vit", 0.9),
                                             ("swin", 0.0)])
def test_a_checkpoint_in_the_releases_naming_loads_and_updates_as_the_release(family, sparsity):
    """A state dict as the authors' code saves it (timm's block names; ``additional_<linear>``
    TuningModules with ``learnable.In_Qs / Out_Qs / shared_coeff_fc``, KLoRA's ``In_Qs_1`` at
    sparsity 0; SNELL's ViT splits q, k, v) loads, updates each linear as the release's
    formula does, and exports back to the same names."""
    from methods.checkpoints import export_official, load_official

    torch.manual_seed(3)
    targets = ("fc1", "fc2") if family == "convnext" else ("q", "k", "v", "proj", "fc1", "fc2")
    host = build(MICRO[family], "snell", "cifar100", rank=4, sparsity=sparsity, targets=targets)
    backbone = {k: v for k, v in host.model.state_dict().items()
                if k not in host.added_state_keys()}
    if family == "vit":  # SNELL's ViT: attn.q / attn.k / attn.v
        for key in [k for k in backbone if ".attn.qkv." in k]:
            for part, chunk in zip("qkv", backbone.pop(key).chunk(3, dim=0)):
                backbone[key.replace(".qkv.", f".{part}.")] = chunk
    suffix = "_1" if sparsity == 0 else ""
    release, learnables = dict(backbone), {}
    for block in host.blocks:
        for target in targets:
            linear = {"q": "attn.qkv", "k": "attn.qkv", "v": "attn.qkv",
                      "proj": "attn.proj"}.get(target, "mlp." + target)
            layer = block.module.get_submodule(linear)
            rows = layer.out_features // 3 if target in ("q", "k", "v") else layer.out_features
            prefix = f"{block.path}.{linear.split('.')[0]}.additional_{target}.learnable."
            learnable = {"In_Qs" + suffix: torch.randn(2, layer.in_features, 2),
                         "Out_Qs" + suffix: torch.randn(2, rows, 2),
                         "shared_coeff_fc": 0.1 * torch.tensor([1, -1]).view(2, 1, 1)}
            release.update({prefix + k: v for k, v in learnable.items()})
            learnables[(block.path, target)] = (linear, learnable)

    target_host = build(MICRO[family], "snell", "cifar100", rank=4, sparsity=sparsity,
                        targets=targets)
    report = load_official(target_host, release)
    assert report.method_keys == len(release) - len(backbone)
    for (path, target), (linear, learnable) in learnables.items():
        layer = target_host.model.get_submodule(f"{path}.{linear}")
        (branch,) = layer.peft_branches
        rows = layer.out_features // 3
        delta = branch.delta_weight()
        if target in ("q", "k", "v"):
            delta = delta["qkv".index(target) * rows:("qkv".index(target) + 1) * rows]
        assert torch.allclose(delta, released_update(learnable, sparsity), atol=1e-6), path
    exported = export_official(target_host)
    assert {k for k in exported if ".additional_" in k} == set(release) - set(backbone)
    target_host.method.merge(target_host)  # merged: nothing of SNELL's left to name
    assert not any(".additional_" in k for k in export_official(target_host))
