"""DVC stage `data@DATASET`: the mini profile writes the synthetic dataset; the paper profile
checks the real one. Either way the stage's output is a stamp (results/data/PROFILE/DATASET.json)
holding the dataset's fingerprint, which the cells that read the dataset depend on."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmark.io import write_json_atomic
from pipelines.grid import load_params


def check_real(dataset: str, root: Path) -> None:
    """The checks a cell makes before training (layout, annotation files, label ranges)."""
    from tasks import check_dataset

    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root} (the paper profile reads "
                                f"each dataset from grid.data_root/NAME in its release layout)")
    check_dataset(dataset, root)


def synthesize(params: dict, dataset: str) -> Path:
    """Write the mini profile's synthetic ``dataset`` (deterministic) and return its root."""
    from tasks.synthetic import generate

    grid = params["grid"]
    root = Path(grid["data_root"]) / dataset
    sizes = {k: v for k, v in grid["tasks"][dataset].items() if k in ("train", "val")}
    print(f"[data] writing synthetic {dataset} {sizes} to {root}", flush=True)
    return generate(dataset, root, seed=0, **sizes)


def ensure(params: dict, dataset: str) -> None:
    """Before a mini cell: rewrite a synthetic dataset that is missing (a fresh clone has the
    stamps but not the data) and check it is the one the stamp records."""
    from tasks.synthetic import fingerprint

    grid = params["grid"]
    root = Path(grid["data_root"]) / dataset
    if grid["profile"] != "mini" or root.is_dir():
        return
    stamp_path = Path("results/data") / grid["profile"] / f"{dataset}.json"
    stamp = json.loads(stamp_path.read_text())
    if fingerprint(synthesize(params, dataset)) != stamp["fingerprint"]:
        raise ValueError(f"the regenerated {root} differs from {stamp_path}; "
                         f"run `scripts/dvc repro -f data-{dataset}`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    grid = params["grid"]
    root = Path(grid["data_root"]) / args.dataset
    start = time.monotonic()
    if grid["profile"] == "mini":
        synthesize(params, args.dataset)
    else:
        print(f"[data] checking {args.dataset} at {root}", flush=True)
        check_real(args.dataset, root)
    from tasks.synthetic import fingerprint

    stamp = {"dataset": args.dataset, "profile": grid["profile"], "root": str(root),
             "fingerprint": fingerprint(root),
             "files": sum(1 for p in root.rglob("*") if p.is_file())}
    out = Path("results/data") / grid["profile"] / f"{args.dataset}.json"
    write_json_atomic(out, stamp)
    print(f"[data] {args.dataset}: {stamp['files']} files, fingerprint {stamp['fingerprint'][:12]} "
          f"({time.monotonic() - start:.1f}s) -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
