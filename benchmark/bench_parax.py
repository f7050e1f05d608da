"""Module-level speed of ParaX: the optimised module against its yardsticks.

    python -m benchmark.bench_parax --device cpu --out results/bench/parax_cpu.json

Times, at the Swin-B stage shapes of a 512x512 and a 1280x800 input, one module of
- parax: `methods.parax.ParaXModule` (the optimised forward);
- straightforward: the same module with the straightforward forward (the yardstick,
  `benchmark.parax_straightforward`);
- mona: a static Mona module of the same width (bottleneck d = ParaX's r = 128): the same
  bottleneck width and the same 3/5/7 depthwise convs on it, so the ratio is the price of
  ParaX's routing, weight synthesis and extra convs. The released Mona width (d = 64) is
  timed too, for reference (`mona64`).
Modes: "forward" is inference (eval mode, no autograd); "forward_backward" is a training step
of the module (train mode, as in fine-tuning, so Mona's dropout is on; the input requires
grad, as it does inside a network, and receives its gradient).

Each timing: warm-up calls, then timed calls (CUDA synchronised around each), the modules
taking turns; the JSON keeps median, quartiles and IQR in milliseconds. Ratios are of
medians; the per-input summary weighs each stage by its number of modules (two per Swin
block), i.e. one backbone's worth.

On CPU, glibc's malloc hands blocks above its mmap threshold (at most 32 MB) back to the
system on free, so every such activation is page-faulted in again: at the largest shapes
that is a large share of the time, for every module alike. It is measured as it comes;
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment change it, and the JSON
records any MALLOC_* variable set.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from methods.mona import MonaConfig, MonaModule
from methods.parax import ExpertCenter, ParaXConfig, ParaXModule

from .io import write_json_atomic
from .parax_straightforward import StraightforwardParaXModule
from .timing import device_name, summarise, time_ms

# Swin-B: channel width, blocks and stride of each stage (two ParaX modules per block).
SWIN_B_DIMS, SWIN_B_DEPTHS, SWIN_B_STRIDES = (128, 256, 512, 1024), (2, 2, 18, 2), (4, 8, 16, 32)
INPUTS = {"512x512": (512, 512), "1280x800": (800, 1280)}  # name -> (height, width)
MODULES = ("parax", "straightforward", "mona", "mona64")
MODES = ("forward", "forward_backward")
# The speed goals, on forward + backward, per input over one backbone's worth of modules.
GOALS = {"speedup_over_straightforward": (">=", 1.5), "time_over_mona": ("<=", 1.25)}


@dataclasses.dataclass(frozen=True)
class Case:
    input: str
    stage: int

    @property
    def dim(self) -> int:
        return SWIN_B_DIMS[self.stage]

    @property
    def experts(self) -> int:
        return SWIN_B_DEPTHS[self.stage]  # M = blocks in the stage (expert multiplier 1)

    @property
    def hw(self) -> tuple[int, int]:
        h, w = INPUTS[self.input]
        s = SWIN_B_STRIDES[self.stage]
        return -(-h // s), -(-w // s)

    @property
    def name(self) -> str:
        return f"{self.input}-stage{self.stage + 1}"


def build_module(kind: str, case: Case, device: torch.device, seed: int = 0) -> nn.Module:
    """One module of `kind` at `case`'s stage, with the released ParaX configuration."""
    torch.manual_seed(seed)
    cfg = ParaXConfig()  # r = 128, h = 16, K = (3, 5, 7), sequential convs, scale aggregation
    cfg.validate()
    if kind.startswith("mona"):
        width = 64 if kind == "mona64" else cfg.bottleneck
        return MonaModule(case.dim, MonaConfig(bottleneck=width)).to(device)
    center = ExpertCenter(case.experts, case.dim, cfg.bottleneck, cfg.kernels).to(device)
    module = ParaXModule(case.dim, center, cfg).to(device)
    return StraightforwardParaXModule.copy_of(module) if kind == "straightforward" else module


def make_step(module: nn.Module, case: Case, mode: str, batch: int,
              device: torch.device) -> Callable[[], torch.Tensor]:
    """A no-argument call that runs one forward (or forward + backward) of `module`."""
    g = torch.Generator(device=device).manual_seed(1)
    h, w = case.hw
    x = torch.randn(batch, h * w, case.dim, generator=g, device=device)
    if mode == "forward":
        module.eval()

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return module(x, case.hw)
        return forward
    module.train()
    x.requires_grad_(True)
    grad = torch.randn(x.shape, generator=g, device=device)

    def forward_backward() -> torch.Tensor:
        x.grad = None
        module.zero_grad(set_to_none=True)
        out = module(x, case.hw)
        out.backward(grad)
        return out
    return forward_backward


def run(cases: list[Case], kinds: tuple[str, ...], device: torch.device, batch: int,
        warmup: int, iters: int, log=print) -> dict:
    rows = []
    for case in cases:
        modules = {kind: build_module(kind, case, device) for kind in kinds}
        timings: dict[str, dict[str, dict[str, float]]] = {kind: {} for kind in kinds}
        for mode in MODES:
            steps = {kind: make_step(m, case, mode, batch, device) for kind, m in modules.items()}
            for kind, samples in time_ms(steps, device, warmup, iters).items():
                timings[kind][mode] = summarise(samples)
                log(f"  {case.name:18s} {kind:16s} {mode:17s} "
                    f"{timings[kind][mode]['median_ms']:9.2f} ms")
            del steps
        del modules
        rows.append({"case": case.name, "input": case.input, "stage": case.stage + 1,
                     "dim": case.dim, "hw": list(case.hw), "tokens": case.hw[0] * case.hw[1],
                     "experts": case.experts, "modules_in_backbone": 2 * case.experts,
                     "timings": timings, "ratios": ratios(timings)})
    return {"rows": rows, "summary": summary(rows, kinds)}


def ratios(timings: dict) -> dict[str, dict[str, float]]:
    """speedup = straightforward / parax; time_over_<mona> = parax / mona (medians)."""
    def med(kind: str, mode: str) -> float:
        return timings[kind][mode]["median_ms"]

    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        row = {}
        if "straightforward" in timings:
            row["speedup_over_straightforward"] = med("straightforward", mode) / med("parax", mode)
        for mona in ("mona", "mona64"):
            if mona in timings:
                row[f"time_over_{mona}"] = med("parax", mode) / med(mona, mode)
        out[mode] = row
    return out


def summary(rows: list[dict], kinds: tuple[str, ...]) -> dict[str, dict]:
    """Per input: one backbone's worth of modules (each stage's median x its module count)."""
    out = {}
    for name in dict.fromkeys(r["input"] for r in rows):
        mine = [r for r in rows if r["input"] == name]
        total = {kind: {mode: {"median_ms": sum(r["modules_in_backbone"]
                                                * r["timings"][kind][mode]["median_ms"]
                                                for r in mine)}
                        for mode in MODES} for kind in kinds}
        out[name] = {"stages": [r["stage"] for r in mine],
                     "backbone_ms": {k: {m: v["median_ms"] for m, v in modes.items()}
                                     for k, modes in total.items()},
                     "ratios": ratios(total)}
    return out


def goals_met(result: dict) -> dict[str, bool]:
    met = {}
    for key, (op, bound) in GOALS.items():
        values = [s["ratios"]["forward_backward"].get(key) for s in result["summary"].values()]
        if values and None not in values:
            met[f"forward_backward {key} {op} {bound}"] = all(
                v >= bound if op == ">=" else v <= bound for v in values)
    return met


def table(result: dict) -> str:
    lines = [f"{'case':22s} {'mode':17s} {'parax ms':>10s} {'straight/parax':>15s} "
             f"{'parax/mona':>11s} {'parax/mona64':>13s}"]

    def fmt(ratios: dict, key: str, width: int) -> str:
        return f"{ratios[key]:{width}.2f}" if key in ratios else " " * (width - 1) + "-"

    entries = [(r["case"], r["timings"]["parax"], r["ratios"]) for r in result["rows"]]
    entries += [(f"{name} (backbone)", {m: {"median_ms": v} for m, v in
                                        s["backbone_ms"]["parax"].items()}, s["ratios"])
                for name, s in result["summary"].items()]
    for case, parax, rat in entries:
        for mode in MODES:
            lines.append(f"{case:22s} {mode:17s} {parax[mode]['median_ms']:10.2f} "
                         f"{fmt(rat[mode], 'speedup_over_straightforward', 15)} "
                         f"{fmt(rat[mode], 'time_over_mona', 11)} "
                         f"{fmt(rat[mode], 'time_over_mona64', 13)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.bench_parax", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    p.add_argument("--stages", nargs="+", type=int, default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
    p.add_argument("--modules", nargs="+", default=list(MODULES), choices=MODULES)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=9)
    p.add_argument("--out", type=Path, help="write the JSON here (atomically)")
    args = p.parse_args(argv)
    if "parax" not in args.modules:
        p.error("--modules must include parax (every ratio is relative to it)")
    device = torch.device(args.device)
    cases = [Case(i, s - 1) for i in args.inputs for s in args.stages]
    print(f"ParaX module timings on {device_name(device)} (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, batch {args.batch})", file=sys.stderr)
    result = run(cases, tuple(args.modules), device, args.batch, args.warmup, args.iters,
                 log=lambda line: print(line, file=sys.stderr))
    result = {"device": device_name(device), "device_type": device.type,
              "torch": torch.__version__, "threads": torch.get_num_threads(),
              "batch": args.batch, "warmup": args.warmup, "iters": args.iters,
              "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
              "mona_width": ParaXConfig().bottleneck, **result}
    result["goals_met"] = goals_met(result)
    print(table(result))
    for goal, ok in result["goals_met"].items():
        print(f"goal {goal}: {'met' if ok else 'NOT met'}")
    if args.out:
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
