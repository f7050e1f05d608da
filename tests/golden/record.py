"""Record the golden ParaX checkpoints from the authors' released code (run once, by hand).

    python tests/golden/record.py --release PATH/TO/ParaX/models

PATH is the ``models/`` folder of the authors' release (github.com/LMMMEng/ParaX; it needs
``einops`` and ``easydict`` importable). For each of the five released configurations this
builds the release's own backbone class at the size of our micro backbone of the same family,
moves every parameter off its init with seeded noise, and writes

- ``CASE.pth``: the checkpoint as the authors' training code saves it (an OpenMMLab model
  checkpoint with the backbone under ``backbone.`` for the dense tasks; MAE's
  ``{'model': ...}`` with the BatchNorm + Linear head for ViT), float32;
- ``CASE.expected.pt``: an input and the release model's outputs for it in float64 (the
  stage features fed to the neck; ViT: the pooled class token before the head);
- ``CASE.json``: which of our backbones / tasks / options it corresponds to, and the
  release's own trainable count and method state keys (its freezing rule: 'adapter',
  'peft_params', 'extra_norm').

Nothing of this project is imported: the expected values come from the release alone.
"""
from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch
from torch import nn

OUT = Path(__file__).parent
KERNELS = dict(parax_kernel_sizes=(3, 5, 7), parax_enable_conv=True)
# Our micro backbones (methods/backbones.py); ParaX's bottleneck there is the narrowest stage.
SWIN_MICRO = dict(embed_dim=16, depths=[2, 2, 3, 2], num_heads=[1, 2, 2, 4], window_size=4,
                  patch_size=4, drop_path_rate=0.0, parax_rank=16, **KERNELS)
CONVNEXT_MICRO = dict(depths=[2, 2, 3, 2], dims=[16, 32, 48, 64], parax_rank=16, **KERNELS)
VIT_MICRO = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, mlp_ratio=4,
                 qkv_bias=True, num_classes=100, parax_rank=32, **KERNELS)
METHOD_PARTS = ("adapter", "peft_params", "extra_norm")


def cases(release):
    swin, convnext, vit = release
    tuning = dict(ffn_adapt=False, ffn_option="parallel", ffn_adapter_layernorm_option="none",
                  ffn_adapter_init_option="lora", ffn_adapter_scalar="0.1", ffn_num=64,
                  d_model=32, vpt_on=False, vpt_num=1)
    from easydict import EasyDict

    return {
        # name: (release model factory, our backbone, task, our options, input size)
        "swin_ade20k": (lambda: swin.SwinParaX(**SWIN_MICRO, parax_router_hidden=16),
                        "swin-micro", "ade20k", {}, (58, 70)),
        "swin_mask_rcnn": (lambda: swin.SwinParaX(**SWIN_MICRO, parax_router_hidden=16,
                                                  parax_ls_init_value=1e-5,
                                                  parax_rs_init_value=None),
                           "swin-micro", "coco_instance",
                           {"layer_scale_init": 1e-5, "res_scale_init": None}, (58, 70)),
        "convnext_coco": (lambda: convnext.ConvNeXt(**CONVNEXT_MICRO, parax_router_hidden=16),
                          "convnext-micro", "coco_instance", {}, (64, 96)),
        "convnext_ade20k": (lambda: convnext.ConvNeXt(**CONVNEXT_MICRO, parax_router_hidden=24),
                            "convnext-micro", "ade20k", {}, (64, 96)),
        "vit_cifar100": (lambda: vit.VisionTransformer(
            **VIT_MICRO, norm_layer=partial(nn.LayerNorm, eps=1e-6), parax_router_hidden=16,
            tuning_config=EasyDict(tuning)), "vit-micro", "cifar100", {}, (32, 32)),
    }


def record(name, factory, backbone, task, options, size, seed):
    torch.manual_seed(seed)
    model = factory()
    if backbone.startswith("vit"):  # the release's classification head (main_image_parax.py)
        model.head = nn.Sequential(nn.BatchNorm1d(model.head.in_features, affine=False, eps=1e-6),
                                   model.head)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if backbone.startswith("vit"):
        checkpoint = {"model": state, "epoch": 99}
    else:
        checkpoint = {"meta": {"iter": 160000}, "state_dict": {
            **{f"backbone.{k}": v for k, v in state.items()},
            "decode_head.conv_seg.weight": torch.randn(8, 16, 1, 1),
            "decode_head.conv_seg.bias": torch.zeros(8)}}
    torch.save(checkpoint, OUT / f"{name}.pth")

    model.double()
    x = torch.randn(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        outputs = [model.forward_features(x)] if backbone.startswith("vit") else list(model(x))
    torch.save({"input": x, "outputs": outputs}, OUT / f"{name}.expected.pt")

    method_keys = [k for k in state if any(part in k for part in METHOD_PARTS)]
    trainable = sum(p.numel() for n, p in model.named_parameters()
                    if any(part in n for part in METHOD_PARTS))
    meta = {"backbone": backbone, "task": task, "options": options, "seed": seed,
            "method_keys": len(method_keys), "trainable": trainable,
            "output_shapes": [list(o.shape) for o in outputs],
            "source": "github.com/LMMMEng/ParaX models/ (swin_parax.py, convnext_parax.py, "
                      "vit_parax.py, parax.py)"}
    (OUT / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{name}: {len(method_keys)} method keys, {trainable} trainable, outputs "
          f"{meta['output_shapes']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", required=True, type=Path,
                        help="the release's models/ folder (swin_parax.py, convnext_parax.py, ...)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.release.resolve()))
    import convnext_parax
    import swin_parax
    import vit_parax

    for seed, (name, case) in enumerate(cases((swin_parax, convnext_parax, vit_parax)).items()):
        record(name, *case, seed=seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
