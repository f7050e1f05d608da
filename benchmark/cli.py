"""``parax-bench`` command line."""
from __future__ import annotations

import argparse
import json
import sys
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


def _format_width(width: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in width.items()) or "-"


def cmd_methods(args: argparse.Namespace) -> int:
    from methods import available_methods

    registry = available_methods()
    pad = max(len(n) for n in registry)
    for name, cls in registry.items():
        print(f"{name:<{pad}}  {cls.description}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    import pandas as pd

    from .params import param_table

    rows, skipped = param_table(args.backbone, args.method, args.task or [None],
                                _parse_set(args.set))
    for note in skipped:
        print(f"skipped: {note}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    frame = pd.DataFrame([{
        "backbone": r.backbone, "method": r.method, "task": r.task,
        "width": _format_width(r.width),
        "trainable_backbone_params": r.trainable_backbone_params,
        "params_m": round(r.params_m, 2),
        "reported_params_m": r.reported_params_m,
    } for r in rows])
    if args.format == "csv":
        frame.to_csv(sys.stdout, index=False)
    elif not frame.empty:
        frame["reported_params_m"] = frame["reported_params_m"].map(
            lambda v: "-" if pd.isna(v) else f"{v:.1f}")
        print(frame.to_string(index=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from methods import BACKBONES
    from tasks import TASKS

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
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(func=cmd_params)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"parax-bench: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
