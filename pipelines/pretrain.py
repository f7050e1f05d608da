"""DVC stage `pretrain-BACKBONE` (mini profile): train a micro backbone on the synthetic source
task and save it in the release naming, the stand-in for ImageNet-22K pretraining."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.runner import pretrain
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
    result = pretrain(args.backbone, Path(grid["data_root"]) / "source", out,
                      grid["tasks"]["source"]["iters"],
                      work_dir=Path("work") / grid["profile"] / f"pretrain-{args.backbone}")
    print(f"pretrained {args.backbone}: source top1={result['metrics']['top1']:.2f} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
