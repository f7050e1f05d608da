"""ParaX (AdaRoute): adapters whose weights are routed mixtures of shared expert parameters.

Numerically the method of the authors' release (see the project's ParaX reference notes):
one expert center per stage holds M down-projection, up-projection and depthwise-kernel
experts; each ParaX module routes its pooled input to per-sample mixtures of them.

Module forward, x of shape (B, L, C) on an H x W grid:
  s = x; x = x + g * LN(x); x = x + dwconv1(x)
  gates = softmax per chunk of router(mean_L(x))   chunks [down, up, conv k1, conv k2, ...]
  z = x W_down[b]^T; y_i = dynamic depthwise convs on z (sequential with residual scales)
  out = sum_i softmax(SA(sum_i y_i))_i * y_i; x = out + z; x = GELU(x + proj(x))
  x = x W_up[b]^T; x = x + dwconv2(x); return (ls * x + lb) + (rs * s + rb)

Options reproduce the paper's ablations: expert multiplier (Table 5), bottleneck width,
sharing scope (Table 6), kernel sets / scale aggregation (Table 11), center init (Table 12),
top-k routing (Table 13), conv layout, gate activation and router width (Table 14) and the
conv-free variant (Table 15). Where the release leaves a variant's detail open, the choice
is documented on the option.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from .base import MethodConfig, PEFTMethod, width_field
from .hosts import BackboneHost, ChannelNorm, Role, Site, split_patches
from .registry import register_method

GATES = ("softmax", "sigmoid", "relu")
CONV_LAYOUTS = ("sequential", "parallel", "sequential_no_residual")
CENTER_INITS = ("trunc_normal", "kaiming_uniform", "kaiming_normal")
# How the release's backbones leave the modules' Linear / Conv2d layers: its ConvNeXt
# constructor re-initialises every one it holds (truncated normal, std 0.02, bias 0); its Swin
# (given a checkpoint) and ViT, and any other family, keep the module's own kaiming-uniform.
RELEASE_INIT = {"convnext": "trunc_normal"}


@dataclasses.dataclass
class ParaXConfig(MethodConfig):
    bottleneck: int = width_field(128, "r: bottleneck width of the routed projections",
                                  budget=(1, 1024, 1))
    router_hidden: int = width_field(16, "h: hidden width of the router MLP")
    expert_multiplier: float = width_field(1.0, "M = multiplier x blocks sharing a center")
    layers_per_group: int | None = None  # blocks sharing one center; None = whole stage
    kernel_sizes: tuple[int, ...] = (3, 5, 7)
    scale_aggregation: bool = True  # off: the conv outputs are summed with equal weight
    convs: bool = True  # off: 'ParaX without convs' (no dwconvs, no kernel experts)
    conv_layout: str = "sequential"
    gate: str = "softmax"  # sigmoid / relu: element-wise gates, not normalised
    top_k: int | None = None  # keep the k largest logits per chunk (min(k, M) per center)
    center_init: str = "trunc_normal"
    layer_scale_init: float | None = 1.0  # None: no layer_scale / layer_bias
    res_scale_init: float | None = 1.0  # None: no res_scale / res_bias
    learn_temperature: bool = False
    extra_norms: bool = True  # a trainable LayerNorm on each stage output fed to a neck

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"parax: {msg}")

        need(isinstance(self.bottleneck, int) and self.bottleneck > 0,
             f"bottleneck must be a positive integer, got {self.bottleneck!r}")
        need(isinstance(self.router_hidden, int) and self.router_hidden > 0,
             f"router_hidden must be a positive integer, got {self.router_hidden!r}")
        need(self.expert_multiplier > 0,
             f"expert_multiplier must be > 0, got {self.expert_multiplier!r}")
        need(self.layers_per_group is None or self.layers_per_group > 0,
             f"layers_per_group must be a positive integer or None, got {self.layers_per_group!r}")
        self.kernel_sizes = tuple(self.kernel_sizes)
        if self.convs:
            need(len(self.kernel_sizes) > 0, "kernel_sizes must not be empty when convs are on")
            for k in self.kernel_sizes:
                need(isinstance(k, int) and k > 0 and k % 2 == 1,
                     f"kernel sizes must be odd positive integers ('same' padding), got {k!r} "
                     f"in {self.kernel_sizes}")
            need(len(set(self.kernel_sizes)) == len(self.kernel_sizes),
                 f"kernel sizes must be distinct, got {self.kernel_sizes}")
        need(self.conv_layout in CONV_LAYOUTS,
             f"conv_layout must be one of {CONV_LAYOUTS}, got {self.conv_layout!r}")
        need(self.gate in GATES, f"gate must be one of {GATES}, got {self.gate!r}")
        need(self.center_init in CENTER_INITS,
             f"center_init must be one of {CENTER_INITS}, got {self.center_init!r}")
        need(self.top_k is None or (isinstance(self.top_k, int) and self.top_k >= 1),
             f"top_k must be a positive integer or None, got {self.top_k!r}")

    @property
    def kernels(self) -> tuple[int, ...]:
        return self.kernel_sizes if self.convs else ()


def _init_layers(module: nn.Module, init: str) -> None:
    """Initialise every Linear / Conv2d of ``module`` as MODULE_INIT says; biases zero."""
    for layer in module.modules():
        if not isinstance(layer, (nn.Linear, nn.Conv2d)) or layer.weight.is_meta:
            continue  # (meta: counting, nothing to initialise)
        if init == "trunc_normal":
            nn.init.trunc_normal_(layer.weight, std=0.02)
        else:
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def _total(tensors: list[torch.Tensor]) -> torch.Tensor:
    """t0 + t1 + ... without the extra pass of sum()'s leading 0 + t0."""
    out = tensors[0]
    for t in tensors[1:]:
        out = out + t
    return out


def _plus_identity(weight: torch.Tensor) -> torch.Tensor:
    """W + I: a Linear (out, in) or depthwise conv (C, 1, k, k) weight that also adds its input.

    Folding a residual x + f(x) into f's weight costs a few hundred scalar adds instead of a
    full-size pass over the activations (and another in backward).
    """
    if weight.dim() == 2:
        return weight + torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device)
    k = weight.shape[-1]
    identity = weight.new_zeros(k, k)
    identity[k // 2, k // 2] = 1
    return weight + identity


def _token_dwconv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  hw: tuple[int, int]) -> torch.Tensor:
    """Depthwise conv ('same' padding) of tokens (B, L, C) read as a channels-last image.

    The permuted view is already channels-last (B, C, H, W); the conv keeps that layout, so
    neither direction copies the activations.
    """
    b, n, c = x.shape
    image = x.reshape(b, *hw, c).permute(0, 3, 1, 2)
    y = F.conv2d(image, weight, bias, padding=weight.shape[-1] // 2, groups=c)
    return y.permute(0, 2, 3, 1).reshape(b, n, c)


class _KernelGradAsConv(torch.autograd.Function):
    """Depthwise 'same' conv of one image (1, C, H, W) whose kernel gradient is a forward conv.

    The kernel gradient of a depthwise conv is the input correlated with the output gradient,
    itself a depthwise conv (the gradient map as an H x W kernel). On CPU, oneDNN's
    backward-weights primitive for 5x5 and 7x7 depthwise kernels is 1.4-7x slower than that
    forward conv (3x3 has a fast kernel of its own), so `_depthwise` routes those here.
    """

    @staticmethod
    def forward(ctx, image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(image, kernel, padding=kernel.shape[-1] // 2, groups=image.shape[1])
        ctx.save_for_backward(image, kernel)
        ctx.dtype = out.dtype  # the autocast dtype, if any: backward computes in it too
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        image, kernel = ctx.saved_tensors
        c, k = image.shape[1], kernel.shape[-1]
        grad = grad.to(ctx.dtype)
        grad_image = grad_kernel = None
        if ctx.needs_input_grad[0]:
            grad_image = F.conv2d(grad, kernel.to(ctx.dtype).flip(-1, -2), padding=k // 2,
                                  groups=c).to(image.dtype)
        if ctx.needs_input_grad[1]:
            grad_kernel = F.conv2d(image.to(ctx.dtype), grad.transpose(0, 1), padding=k // 2,
                                   groups=c).view_as(kernel).to(kernel.dtype)
        return grad_image, grad_kernel


def _depthwise(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 'same' conv of one image (1, C, H, W) with a (C, 1, k, k) kernel."""
    k = kernel.shape[-1]
    if image.device.type == "cpu" and k > 3 and kernel.requires_grad and torch.is_grad_enabled():
        return _KernelGradAsConv.apply(image, kernel)
    return F.conv2d(image, kernel, padding=k // 2, groups=image.shape[1])


class ExpertCenter(nn.Module):
    """M experts of each routed tensor, shared by every ParaX module of a stage (or group)."""

    def __init__(self, num_experts: int, dim: int, bottleneck: int, kernels: tuple[int, ...],
                 init: str = "trunc_normal"):
        super().__init__()
        m, c, r = num_experts, dim, bottleneck
        self.num_experts = m
        self.down = nn.Parameter(torch.empty(m, r, c))
        self.up = nn.Parameter(torch.empty(m, c, r))
        self.kernels = nn.ParameterDict({f"k{k}": nn.Parameter(torch.empty(m, r, 1, k, k))
                                         for k in kernels})
        for p in self.parameters():
            if p.is_meta:  # counting: nothing to initialise
                continue
            for expert in p:  # each expert slice on its own (fan-in of one expert)
                if init == "trunc_normal":
                    nn.init.trunc_normal_(expert, std=0.02)
                elif init == "kaiming_uniform":
                    nn.init.kaiming_uniform_(expert, a=math.sqrt(5))
                else:
                    nn.init.kaiming_normal_(expert)


class ParaXModule(nn.Module):
    """One ParaX adapter at one site. Part names follow the authors' release."""

    def __init__(self, dim: int, center: ExpertCenter, cfg: ParaXConfig,
                 init: str = "kaiming_uniform"):
        super().__init__()
        c, r, h = dim, cfg.bottleneck, cfg.router_hidden
        self.kernel_sizes = cfg.kernels
        self.conv_layout = cfg.conv_layout
        self.gate = cfg.gate
        self.num_experts = center.num_experts
        self.top_k = None if cfg.top_k is None else min(cfg.top_k, center.num_experts)
        # Held outside the module tree: the center is registered once, on the host.
        self.__dict__["center"] = center
        n_chunks = 2 + len(self.kernel_sizes)

        self.norm = nn.LayerNorm(c, eps=1e-5)
        self.norm_gamma = nn.Parameter(torch.full((c,), 1e-5))
        if self.kernel_sizes:
            self.dwconv1 = nn.Conv2d(c, c, 3, padding=1, groups=c)
            self.dwconv2 = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.router = nn.Sequential(nn.Linear(c, h), nn.GELU(),
                                    nn.Linear(h, self.num_experts * n_chunks))
        # As released, the scale aggregation exists with a single kernel too (its output is
        # then unused) and conv_res_scale is an empty vector there.
        if cfg.scale_aggregation and self.kernel_sizes:
            self.attn = nn.Sequential(nn.Linear(r, len(self.kernel_sizes)), nn.Softmax(dim=-1))
        else:
            self.attn = None
        if self.conv_layout == "sequential" and self.kernel_sizes:
            self.conv_res_scale = nn.Parameter(torch.ones(2 * (len(self.kernel_sizes) - 1)))
        else:
            self.conv_res_scale = None
        self.proj = nn.Linear(r, r)
        if cfg.layer_scale_init is not None:
            self.layer_scale = nn.Parameter(torch.full((c,), float(cfg.layer_scale_init)))
            self.layer_bias = nn.Parameter(torch.zeros(c))
        else:
            self.layer_scale = self.layer_bias = None
        if cfg.res_scale_init is not None:
            self.res_scale = nn.Parameter(torch.full((c,), float(cfg.res_scale_init)))
            self.res_bias = nn.Parameter(torch.zeros(c))
        else:
            self.res_scale = self.res_bias = None
        # One temperature per gate group, fixed at exp(0) = 1 unless learnt.
        if cfg.learn_temperature:
            self.logit_scale = nn.Parameter(torch.zeros(n_chunks))
        else:
            self.register_buffer("logit_scale", torch.zeros(n_chunks))
        _init_layers(self, init)

    # -- routing -------------------------------------------------------------------------
    def gates(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, C) pooled tokens -> (B, G, M) mixing weights, G = [down, up, conv k...]."""
        logits = self.router(pooled).view(pooled.shape[0], -1, self.num_experts)
        logits = logits * self.logit_scale.exp()[:, None]
        keep = None
        if self.top_k is not None and self.top_k < self.num_experts:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            keep = logits >= kth
        if self.gate == "softmax":
            if keep is not None:
                logits = logits.masked_fill(~keep, float("-inf"))
            return logits.softmax(dim=-1)
        g = torch.sigmoid(logits) if self.gate == "sigmoid" else F.relu(logits)
        return g if keep is None else g * keep

    # -- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        prefix, x = split_patches(x, hw)  # ViT: the class token bypasses the module
        out = self._adapt(x, hw)
        return torch.cat([prefix, out], dim=1) if prefix.shape[1] else out

    def _adapt(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The forward of the module docstring, arranged for speed (equal up to fp32 rounding).

        - Tokens (B, L, C) are read as channels-last (B, C, H, W) images: no convolution
          needs a transpose copy.
        - The bottleneck runs token-major, (L, B, r): that is the channels-last layout of one
          (1, B*r, H, W) image, so the per-sample convs are one grouped convolution and the
          scale aggregation and proj read their outputs in place (no copy at all when B = 1).
        - Residual adds and per-channel affines are folded into the small weights next to
          them: norm_gamma into the LayerNorm affine, the identity into dwconv1, proj and
          dwconv2, layer_scale / layer_bias / res_bias into dwconv2 (without convs,
          layer_scale into W_up). Each saves full-size element-wise passes forward and
          backward.
        - On CPU, the 5x5 / 7x7 kernel gradients are computed as forward convs
          (`_KernelGradAsConv`).
        """
        center = self.center
        shortcut = x
        c = x.shape[-1]
        norm, gamma = self.norm, self.norm_gamma
        x = x + F.layer_norm(x, (c,), norm.weight * gamma, norm.bias * gamma, norm.eps)
        if self.kernel_sizes:
            x = _token_dwconv(x, _plus_identity(self.dwconv1.weight), self.dwconv1.bias, hw)
        g = self.gates(x.mean(dim=1))
        w_down = torch.einsum("bm,mrc->brc", g[:, 0], center.down)
        z = torch.bmm(x, w_down.transpose(1, 2)).transpose(0, 1).contiguous()  # (L, B, r)
        proj = _plus_identity(self.proj.weight)
        if self.kernel_sizes:
            ys = self._dynamic_convs(z, g[:, 2:], hw)
            if self.attn is not None and len(ys) > 1:
                weights = self.attn(_total(ys))  # (L, B, len(K))
                x = z
                for i, y in enumerate(ys):
                    x = torch.addcmul(x, weights[..., i:i + 1], y)
            else:
                x = z + _total(ys)
        else:  # the release's conv step returns z unchanged and its shortcut adds z again
            x, proj = z, 2 * proj
        x = F.gelu(F.linear(x, proj, self.proj.bias))
        w_up = torch.einsum("bm,mcr->bcr", g[:, 1], center.up)
        scale, bias = self._branch_affine()
        if self.kernel_sizes:
            x = torch.bmm(x.transpose(0, 1), w_up.transpose(1, 2))  # (B, L, C)
            weight, conv_bias = _plus_identity(self.dwconv2.weight), self.dwconv2.bias
            if scale is not None:
                weight, conv_bias = weight * scale.view(-1, 1, 1, 1), conv_bias * scale
            x = _token_dwconv(x, weight, conv_bias if bias is None else conv_bias + bias, hw)
        else:
            if scale is not None:
                w_up = w_up * scale.view(-1, 1)
            x = torch.bmm(x.transpose(0, 1), w_up.transpose(1, 2))
            if bias is not None:
                x = x + bias
        if self.res_scale is not None:
            return torch.addcmul(x, shortcut, self.res_scale)
        return x + shortcut

    def _branch_affine(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(scale, bias) of the adapter branch: layer_scale, and layer_bias + res_bias."""
        biases = [p for p in (self.layer_bias, self.res_bias) if p is not None]
        return self.layer_scale, (_total(biases) if biases else None)

    def _dynamic_convs(self, z: torch.Tensor, gates: torch.Tensor,
                       hw: tuple[int, int]) -> list[torch.Tensor]:
        """The per-sample depthwise convs on z (L, B, r), laid out as conv_layout says.

        gates (B, len(K), M) mix each kernel size's experts. Inputs and outputs stay
        token-major, i.e. channels-last (1, B*r, H, W) images of B*r channels.
        """
        n, b, r = z.shape
        outs: list[torch.Tensor] = []
        for i, k in enumerate(self.kernel_sizes):
            if i == 0 or self.conv_layout == "parallel":
                inp = z
            elif self.conv_layout == "sequential":
                a = self.conv_res_scale
                inp = torch.addcmul(a[2 * i - 2] * z, a[2 * i - 1], outs[-1])
            else:  # sequential_no_residual
                inp = outs[-1]
            kernel = torch.einsum("bm,mrokl->brokl", gates[:, i], self.center.kernels[f"k{k}"])
            image = inp.reshape(1, *hw, b * r).permute(0, 3, 1, 2)
            y = _depthwise(image, kernel.reshape(b * r, 1, k, k))
            outs.append(y.permute(0, 2, 3, 1).reshape(n, b, r))
        return outs


class ParaXState(nn.Module):
    """ParaX's shared state on a host: the expert centers, in stage order."""

    def __init__(self):
        super().__init__()
        self.centers = nn.ModuleList()


@register_method
class ParaX(PEFTMethod):
    name = "parax"
    paper_name = "AdaRoute"
    description = ("ParaX / AdaRoute: adapters synthesised per sample from shared expert "
                   "centers by dynamic parameter routing")
    config_class = ParaXConfig
    requires = (Role.SERIAL,)  # modules after the residual sums (Swin: two per block)

    @classmethod
    def paper_config(cls, backbone, task) -> ParaXConfig:
        cfg = ParaXConfig()
        # The released r = 128 assumes stages of >= 128 channels (true of every paper
        # backbone); the -micro backbones (16-64 channels) get r = their narrowest stage.
        from .backbones import stage_dims

        cfg.bottleneck = min(cfg.bottleneck, min(stage_dims(backbone.name)))
        if task is None:
            return cfg
        if backbone.family == "convnext" and task.kind == "semantic_segmentation":
            cfg.router_hidden = 24  # released ConvNeXt ADE20K configs (remote sensing reuses them)
        if backbone.name == "swin-b" and task.name == "coco_instance":
            cfg.layer_scale_init, cfg.res_scale_init = 1e-5, None
        cfg.extra_norms = task.dense
        return cfg

    def groups(self, host: BackboneHost) -> list[tuple[int, list]]:
        """(stage index, blocks) for each center: one per stage unless layers_per_group is set."""
        out = []
        for stage in host.stages:
            blocks = [b for b in host.blocks if b.stage == stage.index]
            size = self.config.layers_per_group or len(blocks)
            out += [(stage.index, blocks[i:i + size]) for i in range(0, len(blocks), size)]
        return out

    def attach(self, host: BackboneHost) -> None:
        cfg = self.config
        sites = host.sites_of(Role.SERIAL, method=self.name)
        init = RELEASE_INIT.get(host.family, "kaiming_uniform")
        groups = self.groups(host)
        sizes = [max(1, round(cfg.expert_multiplier * len(blocks))) for _, blocks in groups]
        if cfg.top_k is not None and cfg.top_k > max(sizes):
            raise ValueError(f"parax: top_k={cfg.top_k} exceeds the number of experts of every "
                             f"center on {host.name} (M per center: {sizes})")
        state = host.add_shared(self.name, ParaXState())
        for (stage, blocks), m in zip(groups, sizes):
            dim = host.stages[stage].dim
            center = ExpertCenter(m, dim, cfg.bottleneck, cfg.kernels, cfg.center_init)
            state.centers.append(center)
            for block in blocks:
                for site in sites:
                    host.add(site, ParaXModule(dim, center, cfg, init), block=block)
        if cfg.extra_norms:
            for stage in host.stages:
                host.add(Site.STAGE_OUT, ChannelNorm(stage.dim, eps=host.norm_eps),
                         stage=stage.index)

    def trainable(self, host: BackboneHost) -> Iterable[nn.Parameter]:
        return host.added_parameters()

    def official_keys(self, host: BackboneHost) -> dict[str, str]:
        """Our keys -> the authors' release naming: per stage ``peft_params.{i}`` (one
        network-wide center: ``peft_params``) and the extra norm as the family holds per-stage
        modules; per block ``adapter`` (two per block: ``adapter1``, ``adapter2``) under the
        block's release prefix."""
        groups = self.groups(host)
        if len(groups) != len(host.stages):
            raise ValueError("parax: the authors' checkpoint format has one center per stage; "
                             "layers_per_group splits stages")
        prefixes: dict[str, str] = {}
        for stage in host.stages:
            theirs = "peft_params" if len(host.stages) == 1 else f"peft_params.{stage.index}"
            prefixes[f"peft_shared.parax.centers.{stage.index}."] = theirs + "."
            norm = host.release_stage_attr("extra_norm", stage.index)
            prefixes[f"peft_stage_out.{stage.index}.0."] = norm + "."
        sites = host.sites_of(Role.SERIAL, method=self.name)
        names = [f"adapter{n}" for n in range(1, len(sites) + 1)] if len(sites) > 1 else ["adapter"]
        for block in host.blocks:
            for site, name in zip(sites, names):
                prefixes[f"{block.path}.peft_sites.{site.value}.0."] = (
                    f"{host.release_block(block)}.{name}.")
        center_names = {"down": "projA_params", "up": "projB_params"}
        center_names.update({f"kernels.k{k}": f"conv{k}x{k}_params" for k in self.config.kernels})
        out = {}
        for key in host.model.state_dict():
            for ours, theirs in prefixes.items():
                if key.startswith(ours):
                    rest = key[len(ours):]
                    out[key] = theirs + center_names.get(rest, rest)
                    break
        return out
