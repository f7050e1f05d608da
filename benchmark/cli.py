"""``parax-bench`` command line."""
from __future__ import annotations

import argparse
import json
import os
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
    if args.checkpoint:
        _check_state_file(args)
    rows, skipped = param_table(args.backbone, args.method, args.task or [None],
                                _parse_set(args.set), budget)
    for note in skipped:
        print(f"skipped: {note}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    with_heads = any(row.head_params for row in rows)  # Tables 7 and 8 count heads too
    frame = pd.DataFrame([{
        "backbone": r.backbone, "method": r.method, "task": r.task,
        **({"budget_target": r.budget_target} if budget else {}),
        "width": r.width_text,
        "trainable_backbone_params": r.trainable_backbone_params,
        **({"head_params": r.head_params} if with_heads else {}),
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


def _check_state_file(args: argparse.Namespace) -> None:
    """``params --checkpoint``: the file's method state against the one these options build."""
    from methods import build

    from .export import compare_state

    if len(args.backbone) != 1 or len(args.method) != 1 or len(args.task or [None]) > 1:
        raise ValueError("--checkpoint: give one --backbone, one --method and at most one --task")
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
    backbone, method, task = args.backbone[0], args.method[0], (args.task or [None])[0]
    host = build(backbone, method, task, device="meta", **_parse_set(args.set))
    n, problems = compare_state(host, args.checkpoint)
    if problems:
        raise ValueError(f"{args.checkpoint} is not {method} on {backbone} with these options: "
                         f"{'; '.join(problems)} (pass the options it trained with: --set, as in "
                         f"the result's cell.options)")
    print(f"{args.checkpoint}: {n} parameters, the {method} state these options build",
          file=sys.stderr)


def cmd_merge(args: argparse.Namespace) -> int:
    import io

    import torch

    from methods import build, merge
    from methods.base import PEFTMethod
    from methods.checkpoints import load_official

    from .export import method_state, on_backbone
    from .io import write_bytes_atomic

    for path in filter(None, (args.checkpoint, args.pretrained)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
    host = build(args.backbone, args.method, args.task, num_classes=0, **_parse_set(args.set))
    if type(host.method).merge is PEFTMethod.merge:  # not mergeable: say so before reading
        host.method.merge(host)
    # `train`'s method state goes over the backbone it was trained on
    state = on_backbone(args.checkpoint, args.pretrained)
    if not args.pretrained and set(state) <= set(method_state(host)):
        raise ValueError(f"{args.checkpoint} holds only the method's weights: give the backbone "
                         f"they were trained on with --pretrained")
    report = load_official(host, state)
    if host.added_state_keys() and not report.method_keys:
        raise ValueError(f"{args.checkpoint} holds no {args.method} weights (a plain backbone?): "
                         f"merging it would write the untrained method")
    model = merge(host)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    write_bytes_atomic(args.out, buf.getvalue())
    n = sum(p.numel() for p in model.parameters())
    print(f"merged {args.method} into {args.backbone}: {n} parameters -> {args.out}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from .console import filter_noise
    from .diagnostics import diagnose_result, summary

    filter_noise()
    out = Path(args.out) if args.out else Path(args.result).with_suffix(".diagnostics.json")
    report = diagnose_result(args.result, args.images, out)
    print(summary(report, out))
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


def check_train(args: argparse.Namespace) -> None:
    """Everything `train` can check before building a model, so that a bad argument costs
    one line and leaves nothing on disk (the data's layout is checked next, by its task)."""
    from methods import get_backbone, get_method

    method = get_method(args.method)
    method.check_applicable(get_backbone(args.backbone).family)
    if args.pretrained and args.from_scratch:
        raise ValueError("--pretrained and --from-scratch exclude each other")
    if not args.pretrained and not args.from_scratch:
        raise ValueError(f"no --pretrained checkpoint for {args.backbone}: pass one (release "
                         f"naming), or --from-scratch to train from random weights")
    if args.pretrained and not Path(args.pretrained).is_file():
        raise FileNotFoundError(f"checkpoint not found: {args.pretrained}")
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"data directory not found: {args.data}")
    if args.budget and method.config_class.budget_knob() is None:
        raise ValueError(f"--budget: {args.method} has no width knob to size (its trainable "
                         f"count is fixed by the backbone); leave --budget out")


def cmd_train(args: argparse.Namespace) -> int:
    from catalog import Cell

    from .budget import parse_budget
    from .export import adapter_path, export_cell
    from .params import sized_options
    from .runner import train

    check_train(args)
    budget = parse_budget(args.budget) if args.budget else None
    out = Path(args.out)
    options = sized_options(args.backbone, args.method, args.task, _parse_set(args.set), budget)
    cell = Cell(task=args.task, backbone=args.backbone, method=args.method, data_root=args.data,
                seed=args.seed, profile=args.profile, options=options,
                pretrained=args.pretrained, iters=args.iters, budget=args.budget,
                smoke=args.smoke, threads=args.threads)
    work_dir = args.work_dir or str(out.with_suffix("")) + ".work"
    code = train(cell, out, work_dir, args.launcher, verbose=args.verbose or None)
    if code == 0 and args.iters != 0 and os.environ.get("RANK", "0") == "0":
        n = export_cell(cell, work_dir, adapter_path(out))
        print(f"{args.method} state ({n} tensors, release naming) -> {adapter_path(out)}")
    return code


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .runner import pretrain

    result = pretrain(args.backbone, args.data, args.out, args.iters, args.seed, args.work_dir)
    print(f"pretrained {args.backbone}: source top1={result['metrics']['top1']:.2f} -> {args.out}")
    return 0


class _Parser(argparse.ArgumentParser):
    """An argument error is one line on stderr (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The parser; it imports nothing heavy (``--help`` answers without loading torch)."""
    from importlib.metadata import version

    from catalog import BACKBONES, TASKS

    from .setting import AMP_CHOICES, Setting

    backbones, tasks = list(BACKBONES), list(TASKS)
    parser = _Parser(
        prog="parax-bench",
        description="Benchmark suite for parameter-efficient fine-tuning of vision backbones.")
    parser.add_argument("--version", action="version",
                        version=f"parax-bench {version('parax-bench')}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    method_help = "a registered PEFT method (`parax-bench methods` lists them)"

    p = sub.add_parser("methods", help="list registered PEFT methods")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("params", help="trainable backbone parameters per (backbone, method, task)",
                       description="Counts on the meta device (no weights are allocated).")
    p.add_argument("--backbone", nargs="+", required=True, metavar="B", choices=backbones,
                   help=f"one or more of: {', '.join(backbones)}")
    p.add_argument("--method", nargs="+", required=True, metavar="M",
                   help="one or more registered methods (`parax-bench methods` lists them)")
    p.add_argument("--task", nargs="+", metavar="T", choices=tasks,
                   help=f"paper configuration of these tasks (default: the backbone's first); "
                        f"one or more of: {', '.join(tasks)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method option, e.g. --set router_hidden=24 (repeatable)")
    p.add_argument("--budget", metavar="B",
                   help="solve each method's width for a trainable count: 5.2M, 800k, 3%% (of "
                        "the backbone), match:METHOD, or paper (the paper's figure)")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="also check a method state file (`train`'s RESULT.adapter.pth) against "
                        "the state these options build, and count its parameters")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   help="output format (default: table)")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("merge", help="fold a trained mergeable method into the backbone (plain "
                                     "timm weights)",
                       description="Reads a trained checkpoint: an authors' release (backbone and "
                                   "method) or `train`'s RESULT.adapter.pth with the backbone it "
                                   "was trained on (--pretrained). Give the options the method "
                                   "trained with (`--set`, as in the result's cell.options).")
    p.add_argument("--backbone", required=True, metavar="B", choices=backbones,
                   help=f"one of: {', '.join(backbones)}")
    p.add_argument("--method", required=True, metavar="M", help=method_help)
    p.add_argument("--task", metavar="T", choices=tasks,
                   help="the paper configuration to build (default: the backbone's first task)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option the checkpoint was trained with (repeatable)")
    p.add_argument("--checkpoint", required=True,
                   help="trained weights: a release checkpoint, or `train`'s RESULT.adapter.pth")
    p.add_argument("--pretrained", help="the backbone checkpoint the method was trained on "
                                        "(needed with an adapter-only checkpoint)")
    p.add_argument("--out", required=True, help="where to write the merged state dict")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("diagnose", help="routing, cross-layer CKA and effective receptive "
                                        "field of a trained dense cell")
    p.add_argument("--result", required=True,
                   help="a result JSON of `train` (its RESULT.adapter.pth is read beside it)")
    p.add_argument("--images", type=_count(1), default=16,
                   help="validation images to diagnose over (default 16)")
    p.add_argument("--out", help="where to write the JSON (default: RESULT.diagnostics.json; "
                                 "its figures go beside it as .html)")
    p.set_defaults(func=cmd_diagnose)

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
    p.add_argument("--backbone", default=d.backbone, metavar="B", choices=backbones,
                   help=f"default {d.backbone}; one of: {', '.join(backbones)}")
    p.add_argument("--task", default=d.task, metavar="T", choices=tasks,
                   help="paper configuration the methods take, and dense or pooled features "
                        "(default: coco_instance, Table 15's Mask R-CNN)")
    p.add_argument("--method", nargs="+", metavar="M",
                   help="methods, optionally with options: parax 'parax[convs=false]' "
                        "(default: every registered method plus ParaX without convs)")
    p.add_argument("--size", type=_size, default=(d.height, d.width), metavar="WxH",
                   help=f"input width x height (default {d.width}x{d.height})")
    p.add_argument("--batch", type=_count(1), default=d.batch,
                   help=f"training batch (default {d.batch})")
    p.add_argument("--budget", default=d.budget, metavar="B",
                   help="size each method's width knob as `params --budget` (default: paper); "
                        "'none' keeps the released widths")
    p.add_argument("--device", default=d.device, help="cuda (default), cuda:N or cpu")
    p.add_argument("--amp", choices=AMP_CHOICES, default=d.amp,
                   help="autocast dtype (default none: fp32)")
    p.add_argument("--warmup", type=_count(0), default=d.warmup,
                   help=f"untimed steps first (default {d.warmup})")
    p.add_argument("--iters", type=_count(2), default=d.iters,
                   help=f"timed training steps (default {d.iters})")
    p.add_argument("--latency-batch", type=_count(1), default=d.latency_batch,
                   help=f"images per inference call (default {d.latency_batch})")
    p.add_argument("--latency-iters", type=_count(2), default=d.latency_iters,
                   help=f"timed inference calls (default {d.latency_iters})")
    p.add_argument("--seed", type=_count(0), default=d.seed, help="seed of inputs and weights")
    p.add_argument("--no-isolate", action="store_true",
                   help="measure every method in this process (faster; on CPU the peak "
                        "memory is then not measured)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table",
                   help="output format (default: table)")
    p.add_argument("--out", help="also write the JSON here (atomically)")
    p.set_defaults(func=cmd_efficiency)

    p = sub.add_parser("synth", help="write a synthetic dataset in its real on-disk format")
    p.add_argument("--dataset", required=True, choices=["source", *tasks],
                   help="source (the pretraining task) or a task's dataset")
    p.add_argument("--out", required=True, help="the dataset root to write")
    p.add_argument("--seed", type=_count(0), default=0, help="seed of the scenes")
    p.add_argument("--train", type=_count(1), help="training images")
    p.add_argument("--val", type=_count(1), help="validation images")
    p.add_argument("--size", type=_count(8), help="image side in pixels")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("split-imagenet-r", help="write the paper's 24,000 / 6,000 ImageNet-R "
                                                "split of a release folder")
    p.add_argument("--data", required=True, help="folder holding imagenet-r/")
    p.add_argument("--out", required=True, help="split JSON (e.g. DATA/imagenet-r/split.json)")
    p.add_argument("--train", type=_count(1), default=24_000, help="training images (24,000)")
    p.add_argument("--test", type=_count(1), default=6_000, help="test images (6,000)")
    p.add_argument("--seed", type=_count(0), default=0, help="seed of the draw")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("train", help="train and evaluate one cell; write its result JSON and "
                                     "the trained method's state",
                       description="Writes RESULT.json and, beside it, RESULT.adapter.pth: what "
                                   "the method trained in the backbone, in the release naming "
                                   "(`merge` reads it).")
    p.add_argument("--task", required=True, metavar="T", choices=tasks,
                   help=f"one of: {', '.join(tasks)}")
    p.add_argument("--backbone", required=True, metavar="B", choices=backbones,
                   help=f"one of: {', '.join(backbones)}")
    p.add_argument("--method", required=True, metavar="M", help=method_help)
    p.add_argument("--data", required=True, help="dataset root (real or synthetic)")
    p.add_argument("--out", required=True, help="result JSON path")
    p.add_argument("--seed", type=_count(0), default=0, help="seed of weights and data order")
    p.add_argument("--profile", choices=("mini", "paper"), default="mini",
                   help="schedule, sizes and heads: mini (CPU minutes) or paper (default: mini)")
    p.add_argument("--iters", type=_count(0), help="override the profile's schedule length "
                                                   "(0: evaluate the untrained model)")
    p.add_argument("--threads", type=_count(1), metavar="N",
                   help="CPU threads (CPU results depend on the count; default: torch's, one "
                        "per core)")
    p.add_argument("--smoke", action="store_true",
                   help="the profile's model, pipelines and evaluator, 2 training iterations at "
                        "batch 1 or 2 and 4 validation images (try a cluster configuration on a CPU)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method option (repeatable)")
    p.add_argument("--budget", metavar="B", help="size the method's width knob to a budget "
                                                 "(as in `params --budget`)")
    p.add_argument("--pretrained", help="backbone checkpoint (release naming); required unless "
                                        "--from-scratch")
    p.add_argument("--from-scratch", action="store_true",
                   help="train the backbone from random weights (no --pretrained)")
    p.add_argument("--work-dir", help="checkpoints and logs (default: next to --out)")
    p.add_argument("--launcher", choices=("none", "pytorch"), default="none",
                   help="pytorch: one process of a torchrun job (DDP; rank 0 writes the result)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="mmengine's full log on the console instead of a progress bar (the "
                        "log file in the work dir has it either way)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pretrain", help="pretrain a backbone on a synthetic source task "
                                        "(`synth --dataset source`), saved in release naming")
    p.add_argument("--backbone", required=True, metavar="B", choices=backbones,
                   help=f"one of: {', '.join(backbones)}")
    p.add_argument("--data", required=True, help="source dataset root")
    p.add_argument("--out", required=True, help="checkpoint path (.pth); a result JSON goes beside it")
    p.add_argument("--seed", type=_count(0), default=0, help="seed of weights and data order")
    p.add_argument("--iters", type=_count(1), default=600, help="training iterations (default 600)")
    p.add_argument("--work-dir", help="checkpoints and logs (default: next to --out)")
    p.set_defaults(func=cmd_pretrain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or one argument error line already printed
        return exc.code
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError) as exc:  # CheckpointError is a ValueError
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"parax-bench: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
