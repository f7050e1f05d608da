"""VMamba: the parallel selective scan against the sequential recurrence, SS2D against a
per-direction reference, the release's VMamba-B, its checkpoint naming, Table 8's counts."""
from __future__ import annotations

import json
import re

import pytest
import torch
from torch.nn import functional as F

from benchmark.cli import main
from benchmark.tables import table_of
from methods import build, create_backbone
from methods.checkpoints import export_official, load_official
from methods.hosts.vmamba import K_DIRECTIONS, cross_merge, cross_scan, linear_scan, selective_scan

from tasks.synthetic import generate

from .conftest import micro_input, paper_budget_rows


def sequential_scan(u, delta, A, B, C, D, delta_bias):
    """The recurrence step by step, one direction's B, C for each of its channels."""
    b, kd, length = u.shape
    k = B.shape[1]
    dt = F.softplus(delta + delta_bias[:, None])
    B = B.repeat_interleave(kd // k, dim=1)  # (b, kd, N, L)
    C = C.repeat_interleave(kd // k, dim=1)
    h = u.new_zeros(b, kd, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * B[..., t]
        ys.append((h * C[..., t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, dim=-1)


def scan_inputs(length: int, n: int, d: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    k = K_DIRECTIONS
    kd = k * d
    return dict(u=torch.randn(2, kd, length, generator=g),
                delta=torch.randn(2, kd, length, generator=g),
                A=-torch.rand(kd, n, generator=g).mul(3).add(0.05),
                B=torch.randn(2, k, n, length, generator=g),
                C=torch.randn(2, k, n, length, generator=g),
                D=torch.randn(kd, generator=g),
                delta_bias=torch.randn(kd, generator=g))


@pytest.mark.parametrize("length,n", [(1, 1), (7, 1), (64, 1), (300, 4), (1024, 1)])
def test_selective_scan_equals_the_sequential_recurrence(length, n):
    """Against the recurrence run step by step in float64: outputs to 1e-5, the gradients of
    every input to 1e-5 of their largest entry (lengths 1, odd, a power of two, and several
    levels of pairing). The scan computes in float32, as the release's kernels."""
    inputs = scan_inputs(length, n)
    ours = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    ref = {k: v.double().requires_grad_() for k, v in inputs.items()}
    y, y_ref = selective_scan(**ours), sequential_scan(**ref)
    assert y.shape == (2, 4 * 3, length) and y.dtype == torch.float32
    assert torch.allclose(y.double(), y_ref, atol=1e-5, rtol=0)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y * weights).sum().backward()
    (y_ref * weights.double()).sum().backward()
    for name in inputs:  # (length 1: A does not reach the output, a gradient of None)
        grad = ours[name].grad if ours[name].grad is not None else torch.zeros_like(inputs[name])
        scale = ref[name].grad.abs().max().item()
        assert torch.allclose(grad.double(), ref[name].grad, atol=1e-5 * max(scale, 1.0), rtol=0), name


def test_linear_scan_keeps_a_state_that_never_decays():
    """decay 1 everywhere is a running sum; decay 0 forgets (no overflow from either)."""
    x = torch.randn(3, 37)
    assert torch.allclose(linear_scan(torch.ones_like(x), x), x.cumsum(-1), atol=1e-5)
    assert torch.equal(linear_scan(torch.zeros_like(x), x), x)


def test_cross_scan_orders_and_merge():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    ys = cross_scan(x)
    assert ys.shape == (2, 4, 3, 20)
    assert torch.equal(ys[:, 0], x.flatten(2))  # row-major
    assert torch.equal(ys[:, 1], x.transpose(2, 3).flatten(2))  # column-major
    assert torch.equal(ys[:, 2], x.flatten(2).flip(-1))
    assert torch.equal(ys[:, 3], x.transpose(2, 3).flatten(2).flip(-1))
    assert torch.equal(cross_merge(ys, (4, 5)), 4 * x.flatten(2))


def ss2d_reference(op, x):
    """SS2D direction by direction: each direction's pixel order, its own projections and the
    sequential recurrence, its output put back at the pixels it read."""
    b, h, w, _ = x.shape
    z = op.act(op.conv2d(op.in_proj(x).permute(0, 3, 1, 2))).flatten(2)  # (b, d, L)
    grid = torch.arange(h * w).view(h, w)
    orders = [grid.flatten(), grid.t().flatten()]
    orders += [o.flip(0) for o in orders]
    r, n = op.dt_rank, op.d_state
    d = z.shape[1]
    y = torch.zeros_like(z)
    for k, order in enumerate(orders):
        seq = z[:, :, order]
        dbl = torch.einsum("cd,bdl->bcl", op.x_proj_weight[k], seq)
        dts, Bs, Cs = dbl.split([r, n, n], dim=1)
        dts = torch.einsum("dr,brl->bdl", op.dt_projs_weight[k], dts)
        rows = slice(k * d, (k + 1) * d)
        out = sequential_scan(seq, dts, -op.A_logs[rows].exp(), Bs[:, None], Cs[:, None],
                              op.Ds[rows], op.dt_projs_bias[k])
        y[:, :, order] += out
    y = y.transpose(1, 2).reshape(b, h, w, d)
    return op.out_proj(op.out_norm(y))


def test_ss2d_equals_the_per_direction_reference():
    host = create_backbone("vmamba-micro", dense=False)
    op = host.blocks[2].module.op  # stage 1: 32 channels, dt rank 2
    with torch.no_grad():
        op.A_logs.uniform_(-1, 1)
        op.Ds.normal_()
    x = torch.randn(2, 5, 7, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(op(x), ss2d_reference(op, x), atol=1e-5)


def test_vmamba_b_is_the_release_configuration():
    """vssm_base_0229: dims 128-1024, depths 2-2-15-2, d_state 1, dt rank ceil(C/16),
    ssm_ratio 2, no gate (v05_noz), 88.56 M parameters with the 1000-class classifier."""
    host = create_backbone("vmamba-b", device="meta", dense=False, num_classes=1000)
    assert [(s.dim, s.depth, s.reduction) for s in host.stages] == [
        (128, 2, 4), (256, 2, 8), (512, 15, 16), (1024, 2, 32)]
    shapes = {k: tuple(v.shape) for k, v in host.model.state_dict().items()}
    assert sum(p.numel() for p in host.model.parameters()) == 88_557_800
    assert shapes["patch_embed.0.weight"] == (64, 3, 3, 3)
    assert shapes["patch_embed.5.weight"] == (128, 64, 3, 3)
    assert shapes["layers.0.downsample.1.weight"] == (256, 128, 3, 3)
    assert shapes["layers.2.blocks.14.op.in_proj.weight"] == (1024, 512)
    assert shapes["layers.2.blocks.14.op.x_proj_weight"] == (4, 32 + 2, 1024)
    assert shapes["layers.2.blocks.14.op.dt_projs_weight"] == (4, 1024, 32)
    assert shapes["layers.2.blocks.14.op.A_logs"] == (4096, 1)
    assert shapes["layers.2.blocks.14.op.conv2d.weight"] == (1024, 1, 3, 3)
    assert "layers.2.blocks.14.op.conv2d.bias" not in shapes
    assert shapes["layers.3.blocks.1.mlp.fc1.weight"] == (4096, 1024)
    assert shapes["classifier.head.weight"] == (1000, 1024)
    assert "layers.3.downsample.1.weight" not in shapes  # no downsampling after the last stage


def test_release_dense_checkpoint_round_trip(tmp_path):
    """The release's dense backbone (Backbone_VSSM) names its stage-output norms outnorm{i};
    an export is in that naming and loads back to the same outputs, under ``model``."""
    source = create_backbone("vmamba-micro")
    with torch.no_grad():
        for p in source.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    state = export_official(source)
    assert "outnorm2.weight" in state and not any(k.startswith("out_norms.") for k in state)
    torch.save({"model": state}, tmp_path / "vssm.pth")
    target = create_backbone("vmamba-micro")
    report = load_official(target, tmp_path / "vssm.pth")
    assert report.fresh == [] and report.dropped == []
    source.model.eval(), target.model.eval()
    x = micro_input("vmamba-micro")
    with torch.no_grad():
        for a, b in zip(source.forward_features(x), target.forward_features(x)):
            assert torch.equal(a, b)


def test_release_classification_checkpoint_into_a_dense_backbone():
    """An ImageNet checkpoint in the release's earlier names (ln_1, self_attention, head,
    norm): renamed, its classifier dropped, the dense output norms new."""
    cls = create_backbone("vmamba-micro", dense=False, num_classes=1000)
    old = {}
    for key, value in cls.model.state_dict().items():
        key = re.sub(r"(blocks\.\d+)\.norm\.", r"\1.ln_1.", key).replace(".op.", ".self_attention.")
        old[key.replace("classifier.", "")] = value
    assert "layers.0.blocks.0.ln_1.weight" in old and "head.weight" in old
    dense = create_backbone("vmamba-micro")
    report = load_official(dense, {"model": old})
    assert sorted(report.dropped) == ["classifier.head.bias", "classifier.head.weight",
                                      "classifier.norm.bias", "classifier.norm.weight"]
    assert len(report.fresh) == 8  # out_norms.{0..3}.{weight,bias}
    assert torch.equal(dense.model.layers[2].blocks[1].op.x_proj_weight,
                       cls.model.layers[2].blocks[1].op.x_proj_weight)


@pytest.mark.parametrize("method", ["parax", "mona", "lorand", "repadapter", "adaptformer",
                                    "snell", "full"])
def test_table8_counts(capsys, method):
    """Table 8 (VMamba-B, ADE20K): ParaX 4.6 M (its default width), Mona 4.6, LoRand 5.2,
    RepAdapter 5.5, AdaptFormer 5.1, SNELL 5.0 (q = 30 on the four block linears), each
    within 0.1 M; full fine-tuning's 122.0 M is the whole UperNet model (87.53 M of backbone,
    34.53 M of UperNet and FCN heads), the PEFT rows the backbone's trainable parameters."""
    (row,) = paper_budget_rows(capsys, method, "vmamba-b", ["ade20k"])
    assert row.get("head_params", 0) == (34_534_700 if method == "full" else 0)
    if method == "snell":
        assert row["width"] == {"rank": 30}


def test_vmamba_cells_fill_table_8():
    assert table_of("ade20k", "vmamba-b") == table_of("ade20k", "vmamba-micro") == "8"


@pytest.mark.slow
def test_a_mini_vmamba_cell_learns(tmp_path):
    """ParaX on vmamba-micro, UperNet on synthetic ADE20K: 40 iterations lift mIoU by more
    than 5 over the untrained head."""
    data = generate("ade20k", tmp_path / "ade20k", seed=0, train=16, val=8)

    def cell(iters, name):
        out = tmp_path / f"{name}.json"
        assert main(["train", "--task", "ade20k", "--backbone", "vmamba-micro", "--method",
                     "parax", "--data", str(data), "--out", str(out), "--iters", str(iters),
                     "--from-scratch", "--threads", "1"]) == 0
        return json.loads(out.read_text())["metrics"]["mIoU"]

    assert cell(40, "trained") > cell(0, "untrained") + 5


def test_parax_sits_after_both_residual_sums_and_replaces_the_output_norms():
    host = build("vmamba-micro", "parax", "ade20k")
    for block in host.blocks:
        sites = block.module.peft_sites
        assert len(sites["attn_out"]) == 1 and len(sites["block_out"]) == 1
    trainable = {n for n, p in host.model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("layers.", "patch_embed.")) and ".peft_" not in n
                   for n in trainable)
    assert all(isinstance(norm, torch.nn.Identity) for norm in host.model.out_norms)
