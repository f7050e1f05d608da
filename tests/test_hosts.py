"""Backbone hosts: timm-identical when empty, and every site runs where its name says."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from methods import Site, SiteNotSupported, create_backbone, get_backbone
from methods.hosts import TOKEN_SITES

from .conftest import MICRO, micro_input


def plain_timm(name: str, host) -> nn.Module:
    spec = get_backbone(name)
    kwargs = dict(spec.kwargs)
    if host.dense and spec.family == "swin":
        kwargs.update(strict_img_size=False, always_partition=True)
    if host.dense and spec.family == "vit":
        kwargs.update(dynamic_img_size=True)
    model = timm.create_model(spec.arch, num_classes=host.model.num_classes, **kwargs)
    ours = host.model.state_dict()
    model.load_state_dict({k: v for k, v in ours.items() if k in model.state_dict()}, strict=False)
    return model.eval()


@pytest.mark.parametrize("name", list(MICRO.values()))
def test_empty_host_is_timm_classifier(name):
    host = create_backbone(name, dense=False, num_classes=7)
    host.model.eval()
    x = micro_input(name)
    assert torch.equal(host.model(x), plain_timm(name, host)(x))


@pytest.mark.parametrize("name,size", [("swin-micro", (128, 128)), ("convnext-micro", (56, 40))])
def test_empty_host_dense_stages_are_timm_intermediates(name, size):
    """ConvNeXt at any size; Swin where no stage needs padding to its window (where one does,
    the host follows the original Swin instead: tests/test_fidelity.py)."""
    host = create_backbone(name, dense=True)
    host.model.eval()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
    ours = host._forward_stages(x)
    theirs = plain_timm(name, host).forward_intermediates(x, intermediates_only=True)
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    feats = host.forward_features(x)  # with the stage-output norms of dense backbones
    assert [f.shape[1] for f in feats] == [s.dim for s in host.stages]
    assert not hasattr(host.model.norm if name.startswith("swin") else host.model.head, "weight")


class Recorder(nn.Module):
    """Identity at a token site; records its input and the order of calls."""

    def __init__(self, site: Site, log: list):
        super().__init__()
        self.site, self.log, self.seen = site, log, None

    def forward(self, x, hw):
        self.log.append(self.site)
        self.seen = x.detach().clone()
        return torch.zeros_like(x) if self.site is Site.MLP_PARALLEL else x


ORDER = {
    "swin": [Site.ATTN_IN, Site.ATTN_BRANCH, Site.ATTN_OUT, Site.MLP_IN, Site.MLP_BRANCH,
             Site.MLP_PARALLEL, Site.BLOCK_OUT],
    "vit": [Site.ATTN_IN, Site.ATTN_BRANCH, Site.ATTN_OUT, Site.MLP_IN, Site.MLP_BRANCH,
            Site.MLP_PARALLEL, Site.BLOCK_OUT],
    "convnext": [Site.ATTN_IN, Site.MLP_IN, Site.MLP_BRANCH, Site.MLP_PARALLEL, Site.BLOCK_OUT],
    "vmamba": [Site.ATTN_IN, Site.ATTN_BRANCH, Site.ATTN_OUT, Site.MLP_IN, Site.MLP_BRANCH,
               Site.MLP_PARALLEL, Site.BLOCK_OUT],
}


def _block_input(host, x):
    """Run the model up to the first block of stage 1 and return that block and its input."""
    captured = {}
    block = [b for b in host.blocks if b.stage == min(1, len(host.stages) - 1)][0].module
    handle = block.register_forward_pre_hook(lambda m, args: captured.setdefault("x", args[0]))
    run_model(host, x)
    handle.remove()
    return block, captured["x"]


def run_model(host, x):
    return host.forward_features(x) if host.dense else host.forward_pooled(x)


@pytest.mark.parametrize("family", ["swin", "convnext", "vit", "vmamba"])
def test_token_sites_run_in_order_at_the_right_tensors(family):
    name = MICRO[family]
    host = create_backbone(name, dense=family != "vit")
    host.model.eval()
    x = micro_input(name)
    block, x0 = _block_input(host, x)
    info = next(b for b in host.blocks if b.module is block)
    log: list = []
    recorders = {s: host.add(s, Recorder(s, log), block=info) for s in ORDER[family]}
    assert {s for s in TOKEN_SITES if s in host.sites} == set(ORDER[family])
    with torch.no_grad():
        out = block(x0)
    assert log == ORDER[family]
    seen = {s: r.seen for s, r in recorders.items()}
    b = block
    with torch.no_grad():
        if family == "convnext":
            tokens = lambda t: t.flatten(2).transpose(1, 2)  # noqa: E731
            assert torch.equal(seen[Site.ATTN_IN], tokens(x0))
            h = b.norm(b.conv_dw(x0).permute(0, 2, 3, 1))
            assert torch.allclose(seen[Site.MLP_IN], h.flatten(1, 2))
            branch = b.mlp(h).permute(0, 3, 1, 2) * b.gamma.reshape(1, -1, 1, 1)
            assert torch.allclose(seen[Site.MLP_BRANCH], tokens(branch))
            assert torch.equal(seen[Site.MLP_PARALLEL], tokens(x0))
            assert torch.allclose(seen[Site.BLOCK_OUT], tokens(branch + x0), atol=1e-6)
        else:
            norm1 = b.norm if family == "vmamba" else b.norm1
            if family in ("swin", "vmamba"):
                flat = lambda t: t.reshape(t.shape[0], -1, t.shape[-1])  # noqa: E731
                attn = flat(b.op(b.norm(x0)) if family == "vmamba" else b._attn(b.norm1(x0)))
                x_in = flat(x0)
            else:
                attn = b.ls1(b.attn(b.norm1(x0)))
                x_in = x0
            assert torch.allclose(seen[Site.ATTN_IN], norm1(x_in))
            assert torch.allclose(seen[Site.ATTN_BRANCH], attn, atol=1e-6)
            after_attn = x_in + attn
            assert torch.allclose(seen[Site.ATTN_OUT], after_attn, atol=1e-6)
            assert torch.allclose(seen[Site.MLP_IN], b.norm2(after_attn), atol=1e-5)
            assert torch.allclose(seen[Site.MLP_PARALLEL], after_attn, atol=1e-6)
            mlp = b.mlp(b.norm2(after_attn))
            if family == "vit":
                mlp = b.ls2(mlp)
            assert torch.allclose(seen[Site.MLP_BRANCH], mlp, atol=1e-5)
            assert torch.allclose(seen[Site.BLOCK_OUT], after_attn + mlp, atol=1e-5)
            assert torch.allclose(out.reshape(x_in.shape), after_attn + mlp, atol=1e-5)


class Ones(nn.Module):
    def forward(self, x):
        return torch.ones(*x.shape[:-1], self.out, dtype=x.dtype)


@pytest.mark.parametrize("family,site", [("swin", Site.QKV), ("vit", Site.FC1),
                                         ("convnext", Site.FC2), ("vmamba", Site.IN_PROJ),
                                         ("vmamba", Site.PROJ)])
def test_linear_sites_add_branches_and_keep_names(family, site):
    host = create_backbone(MICRO[family])
    info = host.blocks[0]
    linear = host.linear(info, site)
    keys_before = set(host.model.state_dict())
    x = torch.randn(3, linear.in_features)
    base = linear(x)
    branch = Ones()
    branch.out = linear.out_features
    host.add(site, branch, block=info)
    assert torch.allclose(linear(x), base + 1)
    assert keys_before <= set(host.model.state_dict())  # timm names untouched


def test_vit_prompt_site_inserts_and_drops_tokens():
    host = create_backbone("vit-micro", dense=False)
    host.model.eval()
    x = micro_input("vit-micro")
    base = host.model.forward_features(x)

    class Prompts(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens = nn.Parameter(torch.randn(1, 5, host.stages[0].dim))

        def forward(self, batch):
            return self.tokens.expand(batch, -1, -1)

    log: list = []
    rec = host.add(Site.ATTN_IN, Recorder(Site.ATTN_IN, log), block=host.blocks[1])
    host.add(Site.PROMPTS, Prompts(), block=host.blocks[1])
    out = host.model.forward_features(x)
    assert out.shape == base.shape
    assert rec.seen.shape[1] == base.shape[1] + 5  # the block saw [cls, 5 prompts, patches]
    assert not torch.allclose(out, base)


def test_unsupported_site_is_a_clear_error():
    host = create_backbone("convnext-micro")
    with pytest.raises(SiteNotSupported, match="convnext backbone 'convnext-micro' has no site"):
        host.add(Site.QKV, nn.Identity(), block=host.blocks[0])
    with pytest.raises(SiteNotSupported, match=r"\['prompts'\]"):
        host.require(Site.PROMPTS)
