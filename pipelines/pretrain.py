"""DVC stage `pretrain@BACKBONE` (mini profile): train a micro backbone on the synthetic source
task and save it in the release naming, the stand-in for ImageNet-22K pretraining."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.cli import main as cli
from pipelines.data import ensure
from pipelines.grid import load_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    grid = params["grid"]
    ensure(params, "source")
    out = Path(grid["pretrained_root"]) / f"{args.backbone}.pth"
    return cli(["pretrain", "--backbone", args.backbone,
                "--data", str(Path(grid["data_root"]) / "source"), "--out", str(out),
                "--iters", str(grid["tasks"]["source"]["iters"]),
                "--work-dir", str(Path("work") / grid["profile"] / f"pretrain-{args.backbone}")])


if __name__ == "__main__":
    sys.exit(main())
