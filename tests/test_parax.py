"""ParaX: the published method, checked against a plain per-sample reference of the spec."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from methods import build, get_method
from methods.parax import ExpertCenter, ParaXConfig, ParaXModule

from .conftest import MICRO, micro_input, run


# -- an independent, plainly written reference of shared/spec/parax.md §2 ---------------------
def _layer_norm(x, weight, bias, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def _depthwise(img, weight, bias=None):
    """img (C, H, W), weight (C, 1, k, k): sum over kernel offsets, zero 'same' padding."""
    c, h, w = img.shape
    k = weight.shape[-1]
    p = k // 2
    padded = torch.zeros(c, h + 2 * p, w + 2 * p, dtype=img.dtype)
    padded[:, p:p + h, p:p + w] = img
    out = torch.zeros_like(img)
    for i in range(k):
        for j in range(k):
            out = out + weight[:, 0, i, j, None, None] * padded[:, i:i + h, j:j + w]
    if bias is not None:
        out = out + bias[:, None, None]
    return out


def _gate(logits, cfg, m):
    k = m if cfg.top_k is None else min(cfg.top_k, m)
    order = sorted(range(m), key=lambda i: -float(logits[i].detach()))
    keep = torch.zeros(m, dtype=torch.bool)
    keep[order[:k]] = True
    if cfg.gate == "softmax":
        e = torch.where(keep, torch.exp(logits - logits[keep].max()), torch.zeros(()))
        return e / e.sum()
    g = torch.sigmoid(logits) if cfg.gate == "sigmoid" else torch.clamp(logits, min=0)
    return g * keep


def reference(mod: ParaXModule, center: ExpertCenter, cfg: ParaXConfig, x, hw):
    h, w = hw
    kernels = cfg.kernels
    m = center.num_experts
    outs = []
    for b in range(x.shape[0]):
        xb = x[b]
        shortcut = xb
        xb = xb + mod.norm_gamma * _layer_norm(xb, mod.norm.weight, mod.norm.bias, 1e-5)
        to_map = lambda t: t.T.reshape(-1, h, w)  # noqa: E731
        to_tok = lambda t: t.reshape(t.shape[0], -1).T  # noqa: E731
        if kernels:
            xb = xb + to_tok(_depthwise(to_map(xb), mod.dwconv1.weight, mod.dwconv1.bias))
        pooled = xb.mean(0)
        hidden = F.gelu(mod.router[0].weight @ pooled + mod.router[0].bias)
        logits = mod.router[2].weight @ hidden + mod.router[2].bias
        gates = [_gate(logits[g * m:(g + 1) * m], cfg, m) for g in range(2 + len(kernels))]
        w_down = sum(gates[0][i] * center.down[i] for i in range(m))
        z = xb @ w_down.T
        if kernels:
            zmap = to_map(z)
            ys = []
            for idx, k in enumerate(kernels):
                kern = sum(gates[2 + idx][i] * center.kernels[f"k{k}"][i] for i in range(m))
                if idx == 0 or cfg.conv_layout == "parallel":
                    inp = zmap
                elif cfg.conv_layout == "sequential":
                    a = mod.conv_res_scale
                    inp = a[2 * idx - 2] * zmap + a[2 * idx - 1] * ys[-1]
                else:
                    inp = ys[-1]
                ys.append(_depthwise(inp, kern))
            ys = [to_tok(y) for y in ys]
            if cfg.scale_aggregation and len(kernels) > 1:
                weights = torch.softmax((sum(ys)) @ mod.attn[0].weight.T + mod.attn[0].bias, -1)
                agg = sum(weights[:, i:i + 1] * y for i, y in enumerate(ys))
            else:
                agg = sum(ys)
            xx = agg + z
        else:  # the release's conv step returns z and its shortcut adds z again
            xx = z + z
        xx = F.gelu(xx + xx @ mod.proj.weight.T + mod.proj.bias)
        w_up = sum(gates[1][i] * center.up[i] for i in range(m))
        xx = xx @ w_up.T
        if kernels:
            xx = xx + to_tok(_depthwise(to_map(xx), mod.dwconv2.weight, mod.dwconv2.bias))
        if cfg.layer_scale_init is not None:
            xx = mod.layer_scale * xx + mod.layer_bias
        if cfg.res_scale_init is not None:
            shortcut = mod.res_scale * shortcut + mod.res_bias
        outs.append(xx + shortcut)
    return torch.stack(outs)


REFERENCE_CONFIGS = [
    {},
    {"conv_layout": "parallel"},
    {"conv_layout": "sequential_no_residual"},
    {"gate": "sigmoid", "top_k": 2},
    {"gate": "relu"},
    {"top_k": 1},
    {"kernel_sizes": (5,)},
    {"kernel_sizes": (5, 7, 9), "scale_aggregation": False},
    {"convs": False},
    {"layer_scale_init": 1e-5, "res_scale_init": None},
]


@pytest.mark.parametrize("options", REFERENCE_CONFIGS, ids=lambda o: ",".join(o) or "default")
def test_module_matches_per_sample_reference(options):
    cfg = ParaXConfig(bottleneck=12, router_hidden=8, **options)
    cfg.validate()
    center = ExpertCenter(4, 20, cfg.bottleneck, cfg.kernels)
    mod = ParaXModule(20, center, cfg)
    with torch.no_grad():  # move every parameter off its init so every term is exercised
        for p in list(mod.parameters()) + list(center.parameters()):
            p.copy_(torch.randn_like(p) * 0.3)
    hw = (5, 6)
    x = torch.randn(3, 30, 20)
    assert torch.allclose(mod(x, hw), reference(mod, center, cfg, x, hw), atol=1e-5, rtol=1e-5)


def test_class_token_bypasses_module():
    cfg = ParaXConfig(bottleneck=8)
    center = ExpertCenter(2, 16, 8, cfg.kernels)
    mod = ParaXModule(16, center, cfg)
    x = torch.randn(2, 1 + 16, 16)
    out = mod(x, (4, 4))
    assert torch.equal(out[:, :1], x[:, :1])
    assert torch.allclose(out[:, 1:], mod(x[:, 1:], (4, 4)))


def test_init_follows_the_release():
    cfg = ParaXConfig()
    center = ExpertCenter(3, 64, 128, cfg.kernels)
    mod = ParaXModule(64, center, cfg)
    assert center.down.shape == (3, 128, 64) and center.up.shape == (3, 64, 128)
    assert [tuple(v.shape) for v in center.kernels.values()] == [
        (3, 128, 1, k, k) for k in (3, 5, 7)]
    for p in center.parameters():  # trunc_normal(std=0.02) with the usual +-2 bounds
        assert 0.018 < float(p.detach().std()) < 0.022
    assert torch.all(mod.norm_gamma == 1e-5) and torch.all(mod.conv_res_scale == 1)
    assert torch.all(mod.layer_scale == 1) and torch.all(mod.res_bias == 0)
    for lin in (mod.router[0], mod.router[2], mod.attn[0], mod.proj, mod.dwconv1):
        assert torch.all(lin.bias == 0)
        bound = 1 / math.sqrt(lin.weight[0].numel())  # kaiming_uniform(a=sqrt 5)
        assert float(lin.weight.detach().abs().max()) <= bound
    # One fixed temperature per gate group [down, up, conv3, conv5, conv7], as released.
    assert mod.logit_scale.shape == (5,) and torch.all(mod.logit_scale == 0)
    assert not mod.logit_scale.requires_grad and "logit_scale" in mod.state_dict()
    n = sum(p.numel() for p in mod.parameters())
    c, h, m, r = 64, 16, 3, 128  # spec formula: C(27 + h) + h + 5M(h + 1) + r^2 + 4r + 7
    assert n == c * (27 + h) + h + 5 * m * (h + 1) + r * r + 4 * r + 7


def test_convnext_modules_take_the_release_backbones_init():
    """The release's ConvNeXt re-initialises every Linear / Conv2d it holds (trunc normal 0.02,
    bias 0); its Swin and ViT keep the modules' kaiming-uniform init."""
    for family, trunc in (("convnext", True), ("swin", False), ("vit", False)):
        host = parax_host(family, bottleneck=16)
        mod = next(m for m in host.model.modules() if isinstance(m, ParaXModule))
        layers = [m for m in mod.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        assert len(layers) == 6  # dwconv1, dwconv2, router (2), scale aggregation, proj
        assert all(torch.all(layer.bias == 0) for layer in layers)
        weights = torch.cat([layer.weight.detach().flatten() for layer in layers])
        if trunc:
            assert 0.018 < float(weights.std()) < 0.022
        else:  # kaiming_uniform(a=sqrt 5): |w| <= 1 / sqrt(fan_in); a 3x3 dwconv's std is 0.19
            for layer in layers:
                w = layer.weight.detach()
                assert float(w.abs().max()) <= 1 / math.sqrt(w[0].numel())
            assert float(mod.dwconv1.weight.std()) > 0.1


def test_single_kernel_keeps_the_released_scale_aggregation():
    """Table 11's single-kernel rows: the release keeps Linear(r, 1) (unused) and an empty
    conv_res_scale, r + 1 parameters per module more than without scale aggregation."""
    def count(**options):
        return build("swin-b", "parax", "coco_instance", device="meta", **options).num_trainable()

    one = build("swin-b", "parax", "coco_instance", device="meta", kernel_sizes=(3,))
    mod = next(m for m in one.model.modules() if isinstance(m, ParaXModule))
    assert tuple(mod.attn[0].weight.shape) == (1, 128) and mod.conv_res_scale.numel() == 0
    modules = 2 * 24  # Swin-B: two per block
    assert count(kernel_sizes=(3,)) - count(kernel_sizes=(3,), scale_aggregation=False) == modules * 129
    # Per module: norm + gamma 3C, dwconvs 20C, router Ch + h + 3M(h + 1), SA r + 1,
    # proj r^2 + r, layer scale/bias 2C; per stage a center M(2rC + 9r) and an extra norm 2C.
    h, r = 16, 128
    expected = sum(2 * m * (25 * c + c * h + h + 3 * m * (h + 1) + r + 1 + r * r + r)
                   + m * (2 * r * c + 9 * r) + 2 * c
                   for c, m in zip((128, 256, 512, 1024), (2, 2, 18, 2)))
    assert count(kernel_sizes=(3,)) == expected == 4_932_112


# -- attached to backbones ---------------------------------------------------------------------
def parax_host(family, **options):
    name = MICRO[family]
    task = "cifar100" if family == "vit" else "ade20k"
    return build(name, "parax", task, **options)


def _is_parax_param(name: str) -> bool:
    return name.startswith(("peft_shared.parax.", "peft_stage_out.")) or ".peft_sites." in name


@pytest.mark.parametrize("family", ["swin", "convnext", "vit", "vmamba"])
def test_freezing_rule(family):
    host = parax_host(family)
    names = {n for n, p in host.model.named_parameters() if p.requires_grad}
    assert names == {n for n, _ in host.model.named_parameters() if _is_parax_param(n)}
    assert any(n.startswith("peft_shared.parax.centers.") for n in names)
    assert any(n.startswith("peft_stage_out.") for n in names) == (family != "vit")
    # The extra norms replace the frozen output norms: each stage output goes through one norm.
    assert not any(n.startswith("out_norms.") for n in host.model.state_dict())
    frozen = {n for n, p in host.model.named_parameters() if not p.requires_grad}
    for part in {"swin": ("relative_position_bias_table", "downsample"),
                 "convnext": ("blocks.0.gamma", "stem"),
                 "vit": ("patch_embed", "blocks.0.norm1", "cls_token"),
                 "vmamba": ("patch_embed", "op.A_logs", "op.dt_projs_bias", "downsample")}[family]:
        assert any(part in n for n in frozen), part


@pytest.mark.parametrize("family", ["swin", "convnext", "vit", "vmamba"])
def test_synthesized_weights_depend_on_the_input(family):
    host = parax_host(family)
    host.model.eval()
    module = next(m for m in host.model.modules() if isinstance(m, ParaXModule))
    seen = {}
    module.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    x = micro_input(host.name)
    x[1] = torch.rand_like(x[1]) * 4  # a very different second image
    run(host, x)
    gates = module.gates(seen["x"].mean(1))  # (B, G, M); pool over tokens as the module does
    w_down = torch.einsum("bm,mrc->brc", gates[:, 0], module.center.down)
    w_up = torch.einsum("bm,mcr->bcr", gates[:, 1], module.center.up)
    k3 = torch.einsum("bm,mrokl->brokl", gates[:, 2], module.center.kernels["k3"])
    for synthesized in (w_down, w_up, k3):
        assert not torch.allclose(synthesized[0], synthesized[1], atol=1e-7)


@pytest.mark.parametrize("family", ["swin", "convnext", "vmamba"])
def test_shared_center_gets_gradient_from_every_module_of_its_stage(family):
    host = parax_host(family)
    host.model.eval()  # no drop path: the two passes below must be the same computation
    x = micro_input(host.name)
    stage = 2
    center = host.model.peft_shared.parax.centers[stage]
    modules = [m for m in host.model.modules() if isinstance(m, ParaXModule) and m.center is center]
    assert len(modules) == host.stages[stage].depth * (1 if family == "convnext" else 2)

    sum(f.square().mean() for f in run(host, x)).backward()
    shared_grad = {n: p.grad.clone() for n, p in center.named_parameters()}

    # Same pass with a private copy of the center per module: each copy's gradient is that
    # module's contribution; together they must add up to the shared center's gradient.
    copies = []
    for m in modules:
        private = copy.deepcopy(center)
        m.__dict__["center"] = private
        copies.append(private)
    host.model.zero_grad()
    sum(f.square().mean() for f in run(host, x)).backward()
    for name, grad in shared_grad.items():
        parts = [dict(c.named_parameters())[name].grad for c in copies]
        assert all(p is not None and float(p.abs().sum()) > 0 for p in parts), name
        assert torch.allclose(sum(parts), grad, atol=1e-6, rtol=1e-4), name


def test_one_expert_makes_routing_inert():
    host = parax_host("swin", expert_multiplier=0.01)
    host.model.eval()
    centers = host.model.peft_shared.parax.centers
    assert all(c.num_experts == 1 for c in centers)
    x = micro_input(host.name)
    before = run(host, x)
    module = next(m for m in host.model.modules() if isinstance(m, ParaXModule))
    assert torch.all(module.gates(torch.randn(4, module.norm.normalized_shape[0])) == 1)
    with torch.no_grad():
        for m in host.model.modules():
            if isinstance(m, ParaXModule):
                for p in m.router.parameters():
                    p.copy_(torch.randn_like(p))
    after = run(host, x)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_sharing_scope_and_expert_count():
    host = parax_host("swin", layers_per_group=2, expert_multiplier=2.0)
    centers = host.model.peft_shared.parax.centers
    # swin-micro depths (2, 2, 3, 2): stage 2 splits into groups of 2 and 1 blocks.
    assert [c.num_experts for c in centers] == [4, 4, 4, 2, 4]


ABLATIONS = [
    {"expert_multiplier": 0.5, "bottleneck": 24}, {"expert_multiplier": 4.0, "bottleneck": 6},
    {"layers_per_group": 1}, {"kernel_sizes": (3,)}, {"kernel_sizes": (7,)},
    {"kernel_sizes": (5, 7, 9)}, {"scale_aggregation": False},
    {"center_init": "kaiming_uniform"}, {"center_init": "kaiming_normal"},
    {"top_k": 1}, {"top_k": 2}, {"conv_layout": "parallel"},
    {"conv_layout": "sequential_no_residual"}, {"gate": "sigmoid"}, {"gate": "relu"},
    {"router_hidden": 8}, {"router_hidden": 40}, {"convs": False},
    {"learn_temperature": True}, {"layer_scale_init": 1e-5, "res_scale_init": None},
]


@pytest.mark.parametrize("family", ["swin", "convnext", "vit", "vmamba"])
@pytest.mark.parametrize("options", ABLATIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_every_ablation_runs_forward_backward(family, options):
    host = parax_host(family, bottleneck=options.pop("bottleneck", 12), **options)
    host.model.train()
    feats = run(host, micro_input(host.name))
    loss = sum(f.float().square().mean() for f in feats)
    loss.backward()
    assert torch.isfinite(loss)
    # As released, a single kernel keeps its (unused) scale aggregation and an empty
    # conv_res_scale: those get no gradient; everything else does.
    unused = (".attn.", ".conv_res_scale") if len(options.get("kernel_sizes", (3, 5, 7))) == 1 else ()
    trainable = [(n, p) for n, p in host.model.named_parameters() if p.requires_grad]
    assert trainable
    for name, p in trainable:
        if any(u in name for u in unused):
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


# Router-width ablation counts (Swin-B, Mask R-CNN, Table 14c) follow from the options alone.
@pytest.mark.parametrize("options,reported_m", [
    ({"router_hidden": 8}, 5.0),
    ({"router_hidden": 40}, 5.9),
])
def test_ablation_counts_match_the_paper(options, reported_m):
    host = build("swin-b", "parax", "coco_instance", device="meta", **options)
    assert round(host.num_trainable() / 1e6, 1) == reported_m


@pytest.mark.parametrize("options,message", [
    ({"kernel_sizes": (3, 4)}, "kernel sizes must be odd positive integers"),
    ({"kernel_sizes": ()}, "kernel_sizes must not be empty"),
    ({"gate": "tanh"}, "gate must be one of"),
    ({"conv_layout": "zigzag"}, "conv_layout must be one of"),
    ({"center_init": "zeros"}, "center_init must be one of"),
    ({"top_k": 0}, "top_k must be a positive integer"),
    ({"bottleneck": 0}, "bottleneck must be a positive integer"),
])
def test_bad_options_fail_clearly(options, message):
    with pytest.raises(ValueError, match=message):
        get_method("parax")(**options)


def test_top_k_above_expert_count_fails_clearly():
    with pytest.raises(ValueError, match=r"top_k=5 exceeds the number of experts .* \[4\]"):
        build("vit-micro", "parax", "cifar100", top_k=5)


def test_bf16_autocast_on_cpu():
    host = parax_host("swin")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = run(host, micro_input(host.name))
    sum(f.float().square().mean() for f in feats).backward()
    assert all(torch.isfinite(p.grad).all() for p in host.trainable_parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("family", ["swin", "convnext", "vit"])
def test_autocast_on_gpu(family, dtype):
    host = parax_host(family)
    host.model.cuda()
    with torch.autocast("cuda", dtype=dtype):
        feats = run(host, micro_input(host.name).cuda())
    sum(f.float().square().mean() for f in feats).backward()
    assert all(torch.isfinite(p.grad).all() for p in host.trainable_parameters())
