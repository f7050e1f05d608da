"""Baselines behind the one interface: sites, identity at init, freezing, merging, VPT."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from methods import NotApplicableError, NotMergeableError, build, create_backbone, merge
from methods.hosts import SiteLinear
from methods.hosts.swin import SwinSiteAttention
from methods.hosts.vmamba import VSSBlock

from .conftest import MICRO, micro_input, run

BASELINES = ["lora", "adaptformer", "mona", "lorand", "repadapter", "vpt", "snell"]
FAMILIES = ["swin", "convnext", "vit", "vmamba"]

# Where each method's modules sit, per block.
EXPECTED_SITES = {
    "lora": {"swin": ["qkv", "qkv"], "vit": ["qkv", "qkv"], "convnext": ["fc1"],
             "vmamba": ["fc1"]},
    "adaptformer": {f: ["mlp_parallel"] for f in FAMILIES},
    "mona": {"swin": ["attn_out", "block_out"], "convnext": ["block_out"], "vit": ["block_out"],
             "vmamba": ["attn_out", "block_out"]},
    "lorand": {"swin": ["attn_branch", "mlp_branch"], "vit": ["attn_branch", "mlp_branch"],
               "convnext": ["mlp_branch"], "vmamba": ["attn_branch", "mlp_branch"]},
    "repadapter": {f: ["attn_in", "mlp_in"] for f in FAMILIES},
    "vpt": {"swin": ["prompts"], "vit": ["prompts"]},
    # (as the paper places it: see methods/snell.py)
    "snell": {"swin": ["qkv", "fc1", "fc2"], "vit": ["qkv", "proj", "fc1", "fc2"],
              "convnext": ["fc1"], "vmamba": ["in_proj", "out_proj", "fc1", "fc2"]},
}
ZERO_INIT = ["lora", "adaptformer", "repadapter"]


def attach(method, family, dense=None, **options):
    name = MICRO[family]
    task = ("ade20k" if dense else "cifar100") if dense is not None else (
        "cifar100" if family == "vit" else "ade20k")
    return build(name, method, task, **options)


def placements(host):
    """[(block index, site, module)] for everything attached in the blocks."""
    out = []
    for i, info in enumerate(host.blocks):
        for site, modules in info.module.peft_sites.items():
            out += [(i, site, m) for m in modules]
        for path in ("attn.qkv", "attn.proj", "op.in_proj", "op.out_proj", "mlp.fc1", "mlp.fc2"):
            try:
                linear = info.module.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(linear, SiteLinear):
                site = path.rpartition(".")[2]
                out += [(i, site, m) for m in linear.peft_branches]
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", BASELINES)
def test_sites_freezing_and_forward_backward(method, family):
    if method == "vpt" and family in ("convnext", "vmamba"):
        display = {"convnext": "ConvNeXt", "vmamba": "VMamba"}[family]
        with pytest.raises(NotApplicableError, match=f"vpt is not applicable to {display} backbones: "
                                                     f"the family has no prompts placement"):
            attach(method, family)
        return
    host = attach(method, family)
    placed = placements(host)
    calls = []
    for block, site, module in placed:
        module.register_forward_hook(lambda m, a, o, key=(block, site): calls.append(key))
    feats = run(host, micro_input(host.name))
    per_block = {}
    for block, site, _ in placed:
        per_block.setdefault(block, []).append(site)
    assert set(per_block) == set(range(len(host.blocks)))  # every block
    for sites in per_block.values():
        assert sorted(sites) == sorted(EXPECTED_SITES[method][family])
    assert sorted(calls) == sorted((b, s) for b, s, _ in placed)  # each ran once

    trainable = {n for n, p in host.model.named_parameters() if p.requires_grad}
    added = {n for n, p in host.model.named_parameters()
             if n.startswith(("peft_shared.", "peft_stage_out.")) or ".peft_" in n}
    assert trainable == added and trainable
    sum(f.square().mean() for f in feats).backward()
    assert all(p.grad is not None for p in host.trainable_parameters())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ZERO_INIT)
def test_zero_init_is_the_frozen_backbone(method, family):
    torch.manual_seed(0)
    frozen = attach("linear", family)
    torch.manual_seed(0)
    adapted = attach(method, family)
    frozen.model.train()  # dropout inside the adapters is active; zero init must still hold
    adapted.model.train()
    x = micro_input(frozen.name)
    for a, b in zip(run(frozen, x), run(adapted, x)):
        assert torch.equal(a, b)


def _randomize_added(host):
    with torch.no_grad():
        for p in host.added_parameters():
            p.copy_(torch.randn_like(p) * 0.05)


@pytest.mark.parametrize("method,family", [("lora", "swin"), ("lora", "vit"), ("lora", "convnext"),
                                           ("repadapter", "swin"), ("repadapter", "vit"),
                                           ("snell", "swin"), ("snell", "vit"),
                                           ("snell", "convnext"), ("lora", "vmamba"),
                                           ("snell", "vmamba")])
def test_merged_equals_unmerged(method, family):
    host = attach(method, family, dense=False)
    host.model.eval()
    _randomize_added(host)
    x = micro_input(host.name)
    with torch.no_grad():
        before = host.model(x)
    model = merge(host)
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-5)
    plain = create_backbone(MICRO[family], dense=False).model
    assert not any(isinstance(m, SiteLinear) for m in model.modules())
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())
    block = type(model.get_submodule(
        "layers.0.blocks.0" if family in ("swin", "vmamba") else "stages.0.blocks.0"
        if family == "convnext" else "blocks.0"))
    assert block is VSSBlock if family == "vmamba" else block.__module__.startswith("timm.")


@pytest.mark.parametrize("method,family,message", [
    ("repadapter", "convnext", "ConvNeXt the adapter before the token mixer .* cannot fold"),
    ("repadapter", "vmamba", "VMamba: SS2D's bias-free in_proj"),
    ("mona", "swin", "mona has no merged form"),
    ("parax", "vit", "parax has no merged form"),
])
def test_unmergeable_methods_say_why(method, family, message):
    host = attach(method, family)
    with pytest.raises(NotMergeableError, match=message):
        merge(host)


def test_vpt_swin_prompts_reach_every_window():
    host = attach("vpt", "swin", num_prompts=3)
    host.model.eval()
    seen = []

    def hook(module, args, kwargs, out):
        seen.append((module, args[0].shape, kwargs["prompts"]))

    for info in host.blocks:
        info.module.attn.register_forward_hook(hook, with_kwargs=True)
    x = micro_input(host.name)[:, :, :44, :60]  # padded, shifted windows
    run(host, x)
    assert len(seen) == len(host.blocks)
    for (module, shape, prompts), info in zip(seen, host.blocks):
        windows = shape[0]
        assert prompts.shape == (windows, 3, info.dim)
        own = info.module.peft_sites["prompts"][0].prompt_embeddings[0]
        expected = info.module.norm1(own)
        assert torch.allclose(prompts, expected.expand(windows, -1, -1))  # same in every window


def test_swin_prompt_attention_pads_bias_and_mask():
    host = create_backbone("swin-micro")
    block = host.blocks[1].module  # shifted windows: has a mask
    attn = block.attn
    assert isinstance(attn, SwinSiteAttention)
    attn.eval()
    x = torch.randn(2, 16, 16, block.dim)
    h = block.norm1(x)
    frozen = block._attn(h)
    # No prompt tokens through the prompt path gives the frozen output.
    empty = torch.zeros(2, 0, block.dim)
    assert torch.allclose(block._attn(h, empty), frozen, atol=1e-6)
    # With prompts: the window attention equals a plainly built (n + N) attention.
    mask = block.get_attn_mask(h)  # (windows per image, N, N)
    b_ = 2 * mask.shape[0]
    windows = torch.randn(b_, attn.window_area, block.dim)
    prompts = torch.randn(b_, 2, block.dim)
    ours = attn(windows, mask=mask, prompts=prompts)
    seq = torch.cat([prompts, windows], 1)
    qkv = attn.qkv(seq).reshape(b_, 2 + attn.window_area, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    bias = torch.zeros(attn.num_heads, 2 + attn.window_area, 2 + attn.window_area)
    bias[:, 2:, 2:] = attn._get_rel_pos_bias()[0]
    full_mask = torch.zeros(mask.shape[0], 2 + attn.window_area, 2 + attn.window_area)
    full_mask[:, 2:, 2:] = mask
    logits = logits + bias + full_mask.repeat(2, 1, 1)[:, None]
    reference = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(b_, 2 + attn.window_area, -1))
    assert torch.allclose(ours, reference[:, 2:], atol=1e-5)


def test_vit_prompts_follow_the_class_token():
    host = attach("vpt", "vit", num_prompts=4)
    block = host.blocks[0].module
    seen = {}
    block.norm1.register_forward_hook(lambda m, a, o: seen.setdefault("x", a[0]))
    x = micro_input(host.name)
    out = run(host, x)[0]
    tokens = seen["x"]
    assert tokens.shape[1] == 1 + 4 + (32 // 8) ** 2
    prompts = block.peft_sites["prompts"][0].prompt_embeddings[0]
    assert torch.equal(tokens[0, 1:5], prompts)
    assert out.shape == (2, 32)


def test_vpt_init_bound():
    host = attach("vpt", "vit", num_prompts=50)
    p = host.blocks[0].module.peft_sites["prompts"][0].prompt_embeddings
    bound = (6.0 / (3 * 8 * 8 + 32)) ** 0.5  # patch 8, width 32
    top = float(p.detach().abs().max())
    assert 0.8 * bound < top <= bound


def test_vpt_swin_prompts_use_the_stage0_bound():
    """KMnP/vpt's Swin draws every stage's prompts with the bound of the stage-0 width."""
    host = attach("vpt", "swin", num_prompts=200)
    bound = (6.0 / (3 * 4 * 4 + host.stages[0].dim)) ** 0.5  # patch 4, width 16: 0.306
    for stage in host.stages:
        block = next(b for b in host.blocks if b.stage == stage.index)
        top = float(block.module.peft_sites["prompts"][0].prompt_embeddings.detach().abs().max())
        assert 0.9 * bound < top <= bound, stage.index  # stage 3 (128 wide) would be 0.18


def test_mona_linears_start_truncated_normal():
    """Leiyi-Hu/mona's init_weights: every Linear trunc_normal(std 0.02), bias 0."""
    host = attach("mona", "swin", bottleneck=64)
    weights = []
    for module in host.model.modules():
        if type(module).__name__ == "MonaModule":
            for linear in (module.project1, module.project2):
                assert torch.all(linear.bias == 0)
                weights.append(linear.weight.detach().flatten())
    assert 0.018 < float(torch.cat(weights).std()) < 0.022


@pytest.mark.parametrize("task,scale", [("cifar100", 0.1), ("svhn", 10.0), ("food101", 1.0),
                                        ("imagenet_r", 1.0), ("ade20k", 1.0),
                                        ("coco_instance", 1.0)])
def test_repadapter_scale_follows_the_released_configs(task, scale):
    backbone = "vit-micro" if task in ("cifar100", "svhn", "food101", "imagenet_r") else "swin-micro"
    host = build(backbone, "repadapter", task)
    assert host.method.config.scale == scale
    module = host.blocks[0].module.peft_sites["attn_in"][0]
    assert module.scale == scale


def test_lorand_sees_the_branch_after_its_drop_path():
    """CoLin's Swin: x + LoRand(DropPath(branch)). With every branch dropped, LoRand's input
    is zero and its output is its bias path alone (not the identity of the old order)."""
    from timm.layers import DropPath

    host = attach("lorand", "swin")
    for info in host.blocks:
        info.module.drop_path1, info.module.drop_path2 = DropPath(1.0), DropPath(1.0)
    seen = []
    for info in host.blocks:
        for module in [*info.module.peft_sites["attn_branch"], *info.module.peft_sites["mlp_branch"]]:
            module.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
    host.model.train()
    run(host, micro_input(host.name))
    assert len(seen) == 2 * len(host.blocks)
    for inp, out in seen:
        assert torch.all(inp == 0) and not torch.all(out == 0)


def test_lorand_bias_is_uniform_in_the_fan_in_bound():
    host = attach("lorand", "vit")
    module = host.blocks[0].module.peft_sites["attn_branch"][0]
    for proj, fan_in in ((module.down, 32), (module.up, 16)):
        bias = proj.bias.detach()
        assert float(bias.abs().max()) <= fan_in ** -0.5 and float(bias.std()) > 0.1 * fan_in ** -0.5


def test_merge_command_writes_plain_weights(tmp_path, capsys):
    from benchmark.cli import main
    from methods.checkpoints import export_official

    host = attach("lora", "swin", dense=False)
    _randomize_added(host)
    ckpt = tmp_path / "lora.pth"
    torch.save(export_official(host), ckpt)
    out = tmp_path / "merged.pth"
    assert main(["merge", "--backbone", "swin-micro", "--method", "lora", "--task", "cifar100",
                 "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    merged = torch.load(out, weights_only=True)
    plain = create_backbone("swin-micro", dense=False).model
    assert merged.keys() == plain.state_dict().keys()
    expected = merge(host).state_dict()
    assert all(torch.allclose(merged[k], expected[k]) for k in merged)

    assert main(["merge", "--backbone", "swin-micro", "--method", "mona", "--checkpoint",
                 str(ckpt), "--out", str(tmp_path / "no.pth")]) == 2
    assert "mona has no merged form" in capsys.readouterr().err
    assert not (tmp_path / "no.pth").exists()
