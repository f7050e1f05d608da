"""CoLoRA: the release's correlated update, its filter, what trains, and the paper's counts."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from methods import NotApplicableError, NotMergeableError, build, create_backbone, merge
from methods.colora import (CONV_REDUCTION, CorrelatedPair, DepthwiseBranch,
                            EdgePreservingFilter, rank_of)

from .conftest import paper_budget_rows


def randomised(host, seed=0):
    """Every parameter (adapters included) drawn at random, so no term vanishes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in host.model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return host


def release_count(dims, depths, ratio=1 / 16, share=0.5):
    """Trainable count by the release's structure, transcribed: per block the depthwise
    branch (C r + 9 C), the correlated pair (10 C r_i + 2 C r_s), dwconv / fc1 / fc2 biases
    and the block norm (8 C); the stem's and downsamplings' biases; the four output norms."""
    total = 0
    for d, n in zip(dims, depths):
        r, conv_rank = math.floor(d * ratio + 1e-9), d // CONV_REDUCTION
        shared = int(r * share)
        total += n * (d * conv_rank + 9 * d + 10 * d * (r - shared) + 2 * d * shared + 8 * d)
    total += 2 * dims[0] + sum(dims[i] + dims[i + 1] for i in range(3)) + 2 * sum(dims)
    return total


def test_release_default_count_on_convnext_b():
    host = build("convnext-b", "colora", task="ade20k", device="meta")
    assert host.num_trainable() == release_count((128, 256, 512, 1024), (3, 3, 27, 3))


@pytest.mark.parametrize("backbone", ["convnext-b", "convnext-l"])
def test_paper_budget_lands_within_a_tenth_of_a_million(capsys, backbone):
    paper_budget_rows(capsys, "colora", backbone, ["ade20k", "coco_instance", "coco_panoptic"])


def test_identity_at_initialisation():
    torch.manual_seed(0)
    plain = create_backbone("convnext-micro", dense=True)
    host = build("convnext-micro", "colora", task="ade20k")
    host.model.load_state_dict(plain.model.state_dict(), strict=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(plain.forward_features(x), host.forward_features(x)):
            assert torch.equal(a, b)


def test_only_adapters_biases_and_norms_train():
    host = build("convnext-micro", "colora", task="ade20k")
    for name, p in host.model.named_parameters():
        adapter = ".peft_" in name or name.startswith("peft_")
        expected = adapter or name.endswith("bias") or ".norm." in name or name.startswith("out_norms.")
        assert p.requires_grad == expected, name
    frozen = {n for n, p in host.model.named_parameters() if not p.requires_grad}
    assert "stages.0.blocks.0.gamma" in frozen and "stem.1.weight" in frozen  # as released
    assert "stages.1.downsample.0.weight" in frozen


def test_block_equals_the_release_forward():
    """A ConvNeXt block with every factor non-zero against the release's Block.forward and
    compute_delta_w, written out here (its pwconv weights: the frozen pretrained ones)."""
    host = randomised(build("convnext-micro", "colora", task="ade20k", rank_ratio=0.25))
    info = host.blocks[2]
    block, pair = info.module, host.model.peft_shared["colora"][2]
    branch = block.conv_dw.peft_branches[0]
    x = torch.randn(2, info.dim, 8, 8)
    w1, w2 = block.mlp.fc1.weight, block.mlp.fc2.weight
    a_s, b_s = pair.lora_pw_share_A, pair.lora_pw_share_B
    r_s, r_i, c = pair.shared_rank, pair.own_rank, info.dim
    tmp_b, tmp_a = w2.T @ b_s, a_s @ w1.T
    f = (r_s * c) ** 0.25
    d1 = tmp_b @ (a_s / (f * (tmp_b.std() + a_s.std())))
    d2 = (b_s / (f * (tmp_a.std() + b_s.std()))) @ tmp_a
    g = torch.sqrt(torch.tensor(float(r_i)))
    d1 = d1 + pair.lora_pw_B1 @ pair.lora_pw_A1 / (g * (pair.lora_pw_A1.std() + pair.lora_pw_B1.std()))
    d2 = d2 + pair.lora_pw_B2 @ pair.lora_pw_A2 / (g * (pair.lora_pw_A2.std() + pair.lora_pw_B2.std()))
    with torch.no_grad():
        y = F.conv2d(x, block.conv_dw.weight, block.conv_dw.bias, padding=3, groups=c)
        y = y + branch.lora_B(branch.filter(branch.lora_A(x)))
        y = block.norm(y.permute(0, 2, 3, 1))
        y = F.linear(F.gelu(F.linear(y, w1 + d1, block.mlp.fc1.bias)), w2 + d2, block.mlp.fc2.bias)
        expected = x + (block.gamma * y).permute(0, 3, 1, 2)
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-6)
    assert r_s == int(rank_of(c, 0.25) * 0.5) and r_s > 0 and r_i > 0


def naive_filter(x, window, sigma, scale):
    """The filter pixel by pixel: weights k(q - p) (c_p c_q + s_p s_q) over a reflect-padded
    window, c = max(cos(g x), 0) and s = max(sin(g x), 0), g = pi / (2 (max - min))."""
    _, _, h, w = x.shape
    pad = min(window // 2, h - 1, w - 1)
    grid = torch.arange(2 * pad + 1, dtype=torch.float64) - pad
    k = torch.exp(-grid ** 2 / (2 * sigma ** 2))
    k = k[:, None] * k[None, :]
    xd = x.double()
    out = torch.empty_like(xd)
    for b in range(x.shape[0]):
        for ch in range(x.shape[1]):
            m = xd[b, ch]
            gamma = math.pi / (2 * max(float(m.max() - m.min()), 1e-5))
            c, s = (gamma * m).cos().clamp(min=0), (gamma * m).sin().clamp(min=0)

            def at(i, n):  # reflect indexing
                return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

            for i in range(h):
                for j in range(w):
                    num = den = 0.0
                    for di in range(-pad, pad + 1):
                        for dj in range(-pad, pad + 1):
                            qi, qj = at(i + di, h), at(j + dj, w)
                            wt = k[di + pad, dj + pad] * (c[i, j] * c[qi, qj] + s[i, j] * s[qi, qj])
                            num += wt * m[qi, qj]
                            den += wt
                    out[b, ch, i, j] = m[i, j] + scale * num / (den + 1e-5 * k.sum())
    return out


@pytest.mark.parametrize("size", [12, 4])  # a window of 11 fits; a 4 x 4 map shrinks it to 7
def test_filter_equals_a_pixelwise_bilateral_filter(size):
    torch.manual_seed(1)
    x = torch.randn(1, 2, size, size)
    ours = EdgePreservingFilter(window=11, sigma=1.0, scale=0.2)(x)
    torch.testing.assert_close(ours.double(), naive_filter(x, 11, 1.0, 0.2), rtol=1e-4, atol=1e-5)


def test_rank_rule_and_bad_options():
    assert rank_of(96, 1 / 12) == 8 and rank_of(1024, 1 / 16) == 64 and rank_of(16, 0.01) == 1
    with pytest.raises(ValueError, match="must divide the block's 48 channels"):
        DepthwiseBranch(48, 5, use_filter=True)
    with pytest.raises(ValueError, match=r"rank_ratio must be in \(0, 1\]"):
        build("convnext-micro", "colora", device="meta", rank_ratio=0)
    with pytest.raises(ValueError, match=r"share_ratio must be in \[0, 1\]"):
        build("convnext-micro", "colora", device="meta", share_ratio=1.5)
    pair = CorrelatedPair(torch.nn.Linear(16, 64), torch.nn.Linear(64, 16), 1, 0.5)
    assert (pair.shared_rank, pair.own_rank) == (0, 1)


@pytest.mark.parametrize("backbone", ["swin-micro", "vit-micro"])
def test_convnext_only(backbone):
    with pytest.raises(NotApplicableError, match="colora is not applicable"):
        build(backbone, "colora", device="meta")


def test_not_mergeable():
    host = build("convnext-micro", "colora", task="ade20k")
    with pytest.raises(NotMergeableError, match="dense 3x3 conv across channels"):
        merge(host)
