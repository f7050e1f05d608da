"""The suite's backbones as an OpenMMLab backbone: timm model + PEFT method, multi-scale out.

Registered in mmengine's root model registry, so mmsegmentation, mmdet and mmpose configs
build it as ``dict(type="ParaXBackbone", ...)``. The method decides what trains inside the
backbone; the neck, decoder and head around it train as usual.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from methods import build
from methods.checkpoints import load_official


@MODELS.register_module()
class ParaXBackbone(BaseModule):
    def __init__(self, backbone: str, method: str, task: str, options: dict[str, Any] | None = None,
                 pretrained: str | None = None, drop_path_rate: float = 0.0,
                 out_indices: tuple[int, ...] | None = None,
                 block_outputs: tuple[int, ...] | None = None):
        """``out_indices``: the stages whose outputs go to the neck (default all);
        ``block_outputs``: instead, the outputs of these blocks of a plain ViT (SETR's heads)."""
        super().__init__()
        self.host = build(backbone, method, task, drop_path_rate=drop_path_rate, **(options or {}))
        self.model = self.host.model  # registered, so state_dict / .to() / optimisers see it
        if pretrained is not None:
            path = Path(pretrained)
            if not path.is_file():
                raise FileNotFoundError(f"pretrained {backbone} checkpoint not found: expected "
                                        f"the file {path}")
            load_official(self.host, path)
        self.out_indices = tuple(range(len(self.host.stages))) if out_indices is None else out_indices
        self.out_channels = [self.host.stages[i].dim for i in self.out_indices]
        self.block_outputs = None if block_outputs is None else tuple(block_outputs)
        if self.block_outputs is not None:
            if not hasattr(self.host, "forward_blocks"):
                raise ValueError(f"block_outputs: {backbone} is a {self.host.display_name} "
                                 f"backbone; only a plain ViT gives block outputs")
            self.out_channels = [self.host.stages[0].dim] * len(self.block_outputs)

    def init_weights(self) -> None:
        """Weights come from the constructor (random or pretrained) and the method's init."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Stage outputs as contiguous NCHW tensors: the hosts return channels-last views,
        and mmcv's compiled ops (RoIAlign under every RoI head) read their input's memory as
        NCHW whatever its strides, so a view would hand them scrambled features."""
        if self.block_outputs is not None:
            return tuple(f.contiguous() for f in self.host.forward_blocks(x, self.block_outputs))
        feats = self.host.forward_features(x)
        return tuple(feats[i].contiguous() for i in self.out_indices)
