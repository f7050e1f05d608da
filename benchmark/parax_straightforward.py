"""The straightforward ParaX forward: the speed yardstick of the optimised `ParaXModule`.

`StraightforwardParaXModule._adapt` is the spec written out step by step:
per-sample weights synthesised by einsum, the dynamic depthwise convs as one grouped
convolution over batch x channels, and a token <-> image reshape around every convolution.
The speed benchmark (`python -m benchmark.bench_parax`, tests/benchmarks) measures the
optimised module against it, and tests/test_parax_fast.py checks that both give the same
outputs and gradients.

It lives here, beside the bench command, rather than in tests/ or methods/: the bench
command imports it and tests/ is not an installed package, while methods/ holds only what the
grid trains with (and is a dependency of the pipeline's stages).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from methods.parax import ParaXModule


class StraightforwardParaXModule(ParaXModule):
    """A ParaX module (same parameters, same state-dict keys) with the straightforward forward."""

    @classmethod
    def copy_of(cls, module: ParaXModule) -> "StraightforwardParaXModule":
        """A deep copy of `module` (with its own copy of the expert center) using this forward."""
        twin = copy.deepcopy(module)
        twin.__class__ = cls  # the subclass adds no state: only the forward differs
        return twin

    @staticmethod
    def _dw(conv: nn.Conv2d, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        y = conv(x.transpose(1, 2).reshape(b, c, *hw))
        return y.flatten(2).transpose(1, 2)

    @staticmethod
    def _dynamic_dw(z: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """Per-sample depthwise conv: z (B, r, H, W), kernel (B, r, 1, k, k)."""
        b, r, h, w = z.shape
        k = kernel.shape[-1]
        y = F.conv2d(z.reshape(1, b * r, h, w), kernel.reshape(b * r, 1, k, k),
                     padding=k // 2, groups=b * r)
        return y.view(b, r, h, w)

    def _conv_path(self, z: torch.Tensor, kernels: list[torch.Tensor]) -> list[torch.Tensor]:
        outs: list[torch.Tensor] = []
        for i, kernel in enumerate(kernels):
            if i == 0 or self.conv_layout == "parallel":
                inp = z
            elif self.conv_layout == "sequential":
                a = self.conv_res_scale
                inp = a[2 * (i - 1)] * z + a[2 * (i - 1) + 1] * outs[-1]
            else:  # sequential_no_residual
                inp = outs[-1]
            outs.append(self._dynamic_dw(inp, kernel))
        return outs

    def _adapt(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        center = self.center
        b, n, _ = x.shape
        shortcut = x
        x = x + self.norm_gamma * self.norm(x)
        if self.kernel_sizes:
            x = x + self._dw(self.dwconv1, x, hw)
        g = self.gates(x.mean(dim=1))
        w_down = torch.einsum("bm,mrc->brc", g[:, 0], center.down)
        z = torch.bmm(x, w_down.transpose(1, 2))  # (B, L, r)
        if self.kernel_sizes:
            z_map = z.transpose(1, 2).reshape(b, -1, *hw)
            kernels = [torch.einsum("bm,mrokl->brokl", g[:, 2 + i], center.kernels[f"k{k}"])
                       for i, k in enumerate(self.kernel_sizes)]
            ys = [y.flatten(2).transpose(1, 2) for y in self._conv_path(z_map, kernels)]
            if self.attn is not None and len(ys) > 1:
                weights = self.attn(sum(ys))  # (B, L, len(K))
                out = sum(weights[..., i:i + 1] * y for i, y in enumerate(ys))
            else:
                out = sum(ys)
            x = out + z
        else:
            x = z + z  # the conv step returns z, the shortcut adds it again
        x = F.gelu(x + self.proj(x))
        w_up = torch.einsum("bm,mcr->bcr", g[:, 1], center.up)
        x = torch.bmm(x, w_up.transpose(1, 2))  # (B, L, C)
        if self.kernel_sizes:
            x = x + self._dw(self.dwconv2, x, hw)
        if self.layer_scale is not None:
            x = self.layer_scale * x + self.layer_bias
        if self.res_scale is not None:
            shortcut = self.res_scale * shortcut + self.res_bias
        return x + shortcut
