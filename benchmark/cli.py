"""``parax-bench`` command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def cmd_methods(args: argparse.Namespace) -> int:
    from methods import available_methods

    registry = available_methods()
    pad = max(len(n) for n in registry)
    for name, cls in registry.items():
        print(f"{name:<{pad}}  {cls.description}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    import pandas as pd

    from .budget import parse_budget
    from .params import param_table

    budget = parse_budget(args.budget) if args.budget else None
    rows, skipped = param_table(args.backbone, args.method, args.task or [None],
                                _parse_set(args.set), budget)
    for note in skipped:
        print(f"skipped: {note}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    frame = pd.DataFrame([{
        "backbone": r.backbone, "method": r.method, "task": r.task,
        **({"budget_target": r.budget_target} if budget else {}),
        "width": r.width_text,
        "trainable_backbone_params": r.trainable_backbone_params,
        "params_m": round(r.params_m, 2),
        "reported_params_m": r.reported_params_m,
    } for r in rows])
    if args.format == "csv":
        frame.to_csv(sys.stdout, index=False)
    elif not frame.empty:
        frame["reported_params_m"] = frame["reported_params_m"].map(
            lambda v: "-" if pd.isna(v) else f"{v:.1f}")
        if "budget_target" in frame:  # a method without a width knob has no target
            frame["budget_target"] = frame["budget_target"].map(
                lambda v: "-" if v is None or pd.isna(v) else f"{v:.0f}")
        print(frame.to_string(index=False))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    import io

    import torch

    from methods import build, merge
    from methods.checkpoints import load_official

    from .io import write_bytes_atomic

    host = build(args.backbone, args.method, args.task, num_classes=0, **_parse_set(args.set))
    if args.checkpoint:
        load_official(host, args.checkpoint)
    model = merge(host)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    write_bytes_atomic(args.out, buf.getvalue())
    n = sum(p.numel() for p in model.parameters())
    print(f"merged {args.method} into {args.backbone}: {n} parameters -> {args.out}")
    return 0


def _size(text: str) -> tuple[int, int]:
    """'1280x800' (width x height) -> (height, width)."""
    width, sep, height = text.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 1280x800, got {text!r}")
    return int(height), int(width)


def cmd_efficiency(args: argparse.Namespace) -> int:
    from .aggregate import efficiency_section, section_frame
    from .efficiency import Setting, default_entries, run
    from .io import write_json_atomic

    height, width = args.size
    setting = Setting(backbone=args.backbone, task=args.task, height=height, width=width,
                      batch=args.batch, budget=None if args.budget == "none" else args.budget,
                      device=args.device, amp=args.amp, warmup=args.warmup, iters=args.iters,
                      latency_batch=args.latency_batch, latency_iters=args.latency_iters,
                      seed=args.seed)
    result = run(setting, args.method or default_entries(), isolate=not args.no_isolate,
                 log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.out:
        write_json_atomic(args.out, result)
    section = efficiency_section(result)
    if args.format == "json":
        print(json.dumps(result, indent=2))
    elif args.format == "csv":
        section_frame(section).to_csv(sys.stdout, index=False)
    else:
        print(f"{section['title']} (torch {result['torch']})")
        print(section_frame(section).to_string(index=False))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from tasks.synthetic import fingerprint, generate

    sizes = {k: v for k, v in (("train", args.train), ("val", args.val), ("size", args.size))
             if v is not None}
    out = generate(args.dataset, args.out, seed=args.seed, **sizes)
    print(f"wrote synthetic {args.dataset} to {out} (fingerprint {fingerprint(out)[:12]})")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from tasks.classification import make_imagenet_r_split

    from .io import write_json_atomic

    split = make_imagenet_r_split(args.data, args.train, args.test, args.seed)
    write_json_atomic(args.out, split)
    print(f"ImageNet-R split: {len(split['train'])} train / {len(split['test'])} test -> {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from catalog import Cell

    from .budget import parse_budget
    from .params import sized_options
    from .runner import train

    out = Path(args.out)
    budget = parse_budget(args.budget) if args.budget else None
    options = sized_options(args.backbone, args.method, args.task, _parse_set(args.set), budget)
    cell = Cell(task=args.task, backbone=args.backbone, method=args.method, data_root=args.data,
                seed=args.seed, profile=args.profile, options=options,
                pretrained=args.pretrained, iters=args.iters, budget=args.budget,
                smoke=args.smoke, threads=args.threads)
    return train(cell, out, args.work_dir or str(out.with_suffix("")) + ".work", args.launcher)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .runner import pretrain

    result = pretrain(args.backbone, args.data, args.out, args.iters, args.seed, args.work_dir)
    print(f"pretrained {args.backbone}: source top1={result['metrics']['top1']:.2f} -> {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from catalog import BACKBONES, TASKS

    parser = argparse.ArgumentParser(
        prog="parax-bench",
        description="Benchmark suite for parameter-efficient fine-tuning of vision backbones.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("methods", help="list registered PEFT methods")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("params", help="trainable backbone parameters per (backbone, method, task)",
                       description="Counts on the meta device (no weights are allocated).")
    p.add_argument("--backbone", nargs="+", required=True, metavar="B",
                   help=f"one or more of: {', '.join(BACKBONES)}")
    p.add_argument("--method", nargs="+", required=True, metavar="M",
                   help="one or more registered methods (see `parax-bench methods`)")
    p.add_argument("--task", nargs="+", metavar="T",
                   help=f"paper configuration of these tasks (default: the backbone's first); "
                        f"one or more of: {', '.join(TASKS)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method option, e.g. --set router_hidden=24 (repeatable)")
    p.add_argument("--budget", metavar="B",
                   help="solve each method's width for a trainable count: 5.2M, 800k, 3%% (of "
                        "the backbone), match:METHOD, or paper (the paper's figure)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("merge", help="fold a mergeable method into the backbone (plain timm weights)")
    p.add_argument("--backbone", required=True, metavar="B")
    p.add_argument("--method", required=True, metavar="M")
    p.add_argument("--task", metavar="T", help="the paper configuration to build (default: "
                                               "the backbone's first task)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--checkpoint", help="trained weights (release or parax-bench naming)")
    p.add_argument("--out", required=True, help="where to write the merged state dict")
    p.set_defaults(func=cmd_merge)

    from .efficiency import Setting

    d = Setting()  # Table 15's setting
    p = sub.add_parser(
        "efficiency", help="training throughput, peak memory, checkpoint size and latency per "
                           "method (the paper's Table 15; its setting by default)",
        description="Each method is measured in a fresh process, backbone only: a training step "
                    "(forward, backward, AdamW) at --size and --batch, and inference latency at "
                    "--latency-batch before and after merging. Ratios are to full fine-tuning "
                    "and to the frozen backbone. Defaults are Table 15's (Swin-L, 1280x800, "
                    "batch 4, on a GPU); on CPU use e.g. --backbone swin-micro --size 256x256 "
                    "--device cpu --budget 14%.")
    p.add_argument("--backbone", default=d.backbone, metavar="B")
    p.add_argument("--task", default=d.task, metavar="T",
                   help="paper configuration the methods take, and dense or pooled features "
                        "(default: coco_instance, Table 15's Mask R-CNN)")
    p.add_argument("--method", nargs="+", metavar="M",
                   help="methods, optionally with options: parax 'parax[convs=false]' "
                        "(default: every registered method plus ParaX without convs)")
    p.add_argument("--size", type=_size, default=(d.height, d.width), metavar="WxH",
                   help=f"input width x height (default {d.width}x{d.height})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"training batch (default {d.batch})")
    p.add_argument("--budget", default=d.budget, metavar="B",
                   help="size each method's width knob as `params --budget` (default: paper); "
                        "'none' keeps the released widths")
    p.add_argument("--device", default=d.device, help="cuda (default), cuda:N or cpu")
    p.add_argument("--amp", choices=("none", "fp16", "bf16"), default=d.amp,
                   help="autocast dtype (default none: fp32)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="untimed steps first")
    p.add_argument("--iters", type=int, default=d.iters, help="timed training steps")
    p.add_argument("--latency-batch", type=int, default=d.latency_batch,
                   help="images per inference call")
    p.add_argument("--latency-iters", type=int, default=d.latency_iters,
                   help="timed inference calls")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-isolate", action="store_true",
                   help="measure every method in this process (faster; on CPU the peak "
                        "memory is then not measured)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--out", help="also write the JSON here (atomically)")
    p.set_defaults(func=cmd_efficiency)

    p = sub.add_parser("synth", help="write a synthetic dataset in its real on-disk format")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, help="training images")
    p.add_argument("--val", type=int, help="validation images")
    p.add_argument("--size", type=int, help="image side in pixels")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("split-imagenet-r", help="write the paper's 24,000 / 6,000 ImageNet-R "
                                                "split of a release folder")
    p.add_argument("--data", required=True, help="folder holding imagenet-r/")
    p.add_argument("--out", required=True, help="split JSON (e.g. DATA/imagenet-r/split.json)")
    p.add_argument("--train", type=int, default=24_000)
    p.add_argument("--test", type=int, default=6_000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("train", help="train and evaluate one cell; write its result JSON")
    p.add_argument("--task", required=True, metavar="T")
    p.add_argument("--backbone", required=True, metavar="B")
    p.add_argument("--method", required=True, metavar="M")
    p.add_argument("--data", required=True, help="dataset root (real or synthetic)")
    p.add_argument("--out", required=True, help="result JSON path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", choices=("mini", "paper"), default="mini")
    p.add_argument("--iters", type=int, help="override the profile's schedule length")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads (CPU results depend on the count; default: torch's, one "
                        "per core)")
    p.add_argument("--smoke", action="store_true",
                   help="the profile's model, pipelines and evaluator, 2 training iterations at "
                        "batch 1 or 2 and 4 validation images (try a cluster configuration on a CPU)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--budget", metavar="B", help="size the method's width knob to a budget "
                                                 "(as in `params --budget`)")
    p.add_argument("--pretrained", help="backbone checkpoint (release naming)")
    p.add_argument("--work-dir", help="checkpoints and logs (default: next to --out)")
    p.add_argument("--launcher", choices=("none", "pytorch"), default="none",
                   help="pytorch: one process of a torchrun job (DDP; rank 0 writes the result)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pretrain", help="pretrain a backbone on a synthetic source task "
                                        "(`synth --dataset source`), saved in release naming")
    p.add_argument("--backbone", required=True, metavar="B")
    p.add_argument("--data", required=True, help="source dataset root")
    p.add_argument("--out", required=True, help="checkpoint path (.pth); a result JSON goes beside it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--work-dir", help="checkpoints and logs (default: next to --out)")
    p.set_defaults(func=cmd_pretrain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError) as exc:  # CheckpointError is a ValueError
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"parax-bench: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
