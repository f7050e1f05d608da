"""Training and inference cost of PEFT methods on one backbone: the paper's Table 15, extended.

For each method (backbone only, as Table 15): training throughput (img/s of a full training
step: forward, backward and an AdamW step over the trainable parameters), peak memory of
training, trainable parameters, the size of a checkpoint of the trainable state, and
inference latency before and, where the method merges, after merging. Every figure also
comes as a ratio to full fine-tuning and to the frozen backbone; both are always measured.

Measuring:
- each method runs in a fresh process, so allocator caches, peak-memory marks and thread
  pools of one method never leak into another's figures (forked from a server process that
  has only imported torch and the methods, and never ran an op or touched CUDA);
- a training step is ``forward_features`` of the dense (or classification) backbone, the sum
  of the means of its outputs as the loss, backward and ``AdamW.step``; the frozen backbone
  (linear probing: nothing in the backbone trains) runs its forward without autograd;
- warm-up steps, then timed steps (CUDA synchronised around each); the JSON keeps median,
  quartiles and IQR; img/s = batch / median step time;
- peak memory: on CUDA ``max_memory_allocated`` over the timed training (weights, gradients,
  optimizer state, activations); on CPU the process's peak resident set (VmHWM) above its
  resident set before the model was built (the same things plus allocator slack);
- latency: eval mode, ``inference_mode``, ``latency_batch`` images; "merged" is the same host
  after ``merge_in_place`` (the backbone alone, through the same forward).
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import yaml

from methods import (NotApplicableError, NotMergeableError, SelectionBatch, build, get_backbone,
                     get_method, merge_in_place)
from methods.base import unfreeze

from .budget import parse_budget
from .params import sized_options
from .reported import reported_table
from .setting import Setting
from .tables import efficiency_table
from .timing import device_name, summarise, time_ms

FULL, FROZEN = "full", "linear"  # the two references every ratio is taken to
AMP = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # Setting.amp -> dtype


@dataclass(frozen=True)
class Entry:
    """One row: a registered method, optionally with options (``parax[convs=false]``)."""

    method: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if not self.options:
            return self.method
        inner = ",".join(f"{k}={json.dumps(v)}" for k, v in self.options.items())
        return f"{self.method}[{inner}]"

    @property
    def paper_name(self) -> str | None:
        """The paper's Table 15 row (a variant row of benchmark/paper_tables.yaml, or the
        method's own row)."""
        for text, paper in efficiency_table()["variants"].items():
            if parse_entry(text) == self:
                return paper
        return None if self.options else get_method(self.method).paper_name


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{("
        depth -= ch in "]})"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def parse_entry(text: str) -> Entry:
    """``METHOD`` or ``METHOD[KEY=VALUE,...]`` (values in YAML: false, 64, [3,5])."""
    text = text.strip()
    method, bracket, rest = text.partition("[")
    options: dict[str, Any] = {}
    if bracket:
        if not rest.endswith("]") or not rest[:-1].strip():
            raise ValueError(f"efficiency: expected METHOD or METHOD[KEY=VALUE,...], got {text!r}")
        for item in _split_top_level(rest[:-1]):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"efficiency: expected KEY=VALUE inside the brackets of "
                                 f"{text!r}, got {item!r}")
            options[key.strip()] = yaml.safe_load(value)
    get_method(method)  # unknown names fail here, listing the registered ones
    return Entry(method, options)


def default_entries() -> list[str]:
    """Every registered method, plus Table 15's extra rows (ParaX without convs)."""
    from methods import available_methods

    return list(available_methods()) + [parse_entry(v).name for v in efficiency_table()["variants"]]


def entry_options(setting: Setting, entry: Entry,
                  overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The method's options: its overrides sized to the budget, then the entry's own options
    (Table 15's 'without convs' row is the budget's ParaX minus its convs)."""
    get_method(entry.method).check_applicable(get_backbone(setting.backbone).family)
    budget = parse_budget(str(setting.budget)) if setting.budget is not None else None
    base = dict((overrides or {}).get(entry.method) or {})
    return {**sized_options(setting.backbone, entry.method, setting.task, base, budget),
            **entry.options}


def trainable_state(host) -> dict[str, torch.Tensor]:
    """What a checkpoint of the fine-tuned part holds: the trainable parameters by name."""
    return {name: p.detach() for name, p in host.model.named_parameters() if p.requires_grad}


def _rss_kb(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(setting: Setting, method: str, options: dict[str, Any],
            fresh_process: bool = False) -> dict[str, Any]:
    """Every figure of one method, in this process (``run`` calls it in a fresh one). On CPU
    the peak memory is only measured in a fresh process: in a used one, memory that earlier
    work freed but the allocator kept hides the method's own."""
    device = torch.device(setting.device)
    dtype = AMP[setting.amp]
    baseline_kb = _rss_kb("VmRSS")
    torch.manual_seed(setting.seed)
    host = build(setting.backbone, method, setting.task, device=device, **options)
    g = torch.Generator(device=device).manual_seed(setting.seed)
    x = torch.randn(setting.batch, 3, setting.height, setting.width, generator=g, device=device)
    x_latency = torch.randn(setting.latency_batch, 3, setting.height, setting.width,
                            generator=g, device=device)
    dense = host.dense
    if host.method.planned_count(host) is not None:
        # a structure chosen from data (SPT's): chosen here from these inputs' features, for
        # what it costs, not for which weights a task would pick
        outputs = (lambda: host.forward_features(x)) if dense else (
            lambda: [host.forward_pooled(x)])
        host.method.select(host, [SelectionBatch(
            lambda: sum(f.float().pow(2).mean() for f in outputs()))])
        unfreeze(host)
    params = host.trainable_parameters()
    buf = io.BytesIO()
    torch.save(trainable_state(host), buf)

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    def features(inputs: torch.Tensor) -> list[torch.Tensor]:
        return host.forward_features(inputs) if dense else [host.forward_pooled(inputs)]

    optimizer = torch.optim.AdamW(params, lr=1e-4) if params else None
    scaler = torch.amp.GradScaler("cuda") if setting.amp == "fp16" else None

    def train_step() -> None:
        if optimizer is None:  # the frozen backbone: nothing trains, no autograd
            with torch.no_grad(), autocast():
                features(x)
            return
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = sum(f.float().mean() for f in features(x))
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    host.model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_ms = time_ms({"train": train_step}, device, setting.warmup, setting.iters)["train"]
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        memory_kind = "CUDA max_memory_allocated"
    elif fresh_process:
        peak_kb = _rss_kb("VmHWM")
        peak_mb = None if peak_kb is None or baseline_kb is None else (peak_kb - baseline_kb) / 1024
        memory_kind = "peak resident set above the pre-build baseline"
    else:
        peak_mb, memory_kind = None, "not measured (CPU memory needs a fresh process)"
    del optimizer
    for p in params:
        p.grad = None

    host.model.eval()

    def infer() -> None:
        with torch.inference_mode(), autocast():
            features(x_latency)

    def time_infer() -> dict[str, float]:
        return summarise(time_ms({"infer": infer}, device, setting.warmup,
                                 setting.latency_iters)["infer"])

    latency = {"unmerged": time_infer(), "merged": None}
    if not host.added_state_keys():
        merge_note = "nothing attached"
    else:
        try:
            merge_in_place(host)
        except NotMergeableError as exc:
            merge_note = str(exc)
        else:
            merge_note = "merged"
            latency["merged"] = time_infer()
    step = summarise(train_ms)
    return {
        "trainable_params": sum(p.numel() for p in params),
        "checkpoint_bytes": len(buf.getvalue()),
        "train_step_ms": step,
        "train_img_s": {"median": setting.batch / step["median_ms"] * 1e3,
                        "q1": setting.batch / step["q3_ms"] * 1e3,
                        "q3": setting.batch / step["q1_ms"] * 1e3},
        "peak_memory_mb": peak_mb, "memory_kind": memory_kind,
        "latency_ms": latency, "merge": merge_note,
        "threads": torch.get_num_threads(),
    }


def _isolated(setting: Setting, method: str, options: dict[str, Any]) -> dict[str, Any]:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "timm", "methods", "benchmark.efficiency"])
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(measure, setting, method, options, True).result()


def _latency(row: dict) -> float:
    return row["latency_ms"]["unmerged"]["median_ms"]


# The figures ratios are taken of: name -> (the row's figure, the reference's figure it is
# divided by); a merged model is compared with the reference as it runs (unmerged).
RATIO_FIGURES: dict[str, tuple[Callable[[dict], float | None], Callable[[dict], float | None]]] = {
    "train_img_s": (lambda r: r["train_img_s"]["median"],) * 2,
    "peak_memory": (lambda r: r["peak_memory_mb"],) * 2,
    "trainable_params": (lambda r: r["trainable_params"],) * 2,
    "checkpoint": (lambda r: r["checkpoint_bytes"],) * 2,
    "latency": (_latency, _latency),
    "merged_latency": (lambda r: (r["latency_ms"]["merged"] or {}).get("median_ms"), _latency),
}


def _ratios(row: dict, ref: dict) -> dict[str, float | None]:
    out = {}
    for key, (read, read_ref) in RATIO_FIGURES.items():
        mine, theirs = read(row), read_ref(ref)
        out[key] = mine / theirs if mine is not None and theirs else None
    return out


def reported(entry: Entry) -> dict[str, Any] | None:
    """Table 15's figures of the entry's paper row, with ratios to the paper's full tuning."""
    if entry.paper_name is None:
        return None
    df = reported_table()
    table = efficiency_table()
    df = df[(df.table == table["table"]) & (df.backbone == table["backbone"])]

    def value(method: str, metric: str) -> float | None:
        rows = df[(df.method == method) & (df.metric == metric)]
        return float(rows.value.iloc[0]) if len(rows) else None

    img_s, mem = value(entry.paper_name, "train_throughput_img_s"), value(entry.paper_name,
                                                                          "train_memory_gb")
    if img_s is None:
        return None
    full_img_s = value("Full-tuning", "train_throughput_img_s")
    full_mem = value("Full-tuning", "train_memory_gb")
    params = df[df.method == entry.paper_name].params_m
    return {"method": entry.paper_name, "params_m": float(params.iloc[0]), "train_img_s": img_s,
            "train_memory_gb": mem, "train_img_s_to_full": img_s / full_img_s,
            "peak_memory_to_full": mem / full_mem}


def run(setting: Setting, entries: Iterable[str], overrides: dict[str, dict] | None = None,
        isolate: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every entry (plus the two references) and return the result document."""
    setting.validate()
    parsed = [parse_entry(e) for e in entries]
    names = [e.name for e in parsed]
    for ref in (FULL, FROZEN):
        if ref not in names:
            parsed.append(Entry(ref))
            names.append(ref)
    if len(set(names)) != len(names):
        raise ValueError(f"efficiency: an entry is listed twice: {names}")
    rows, skipped = [], []
    start = time.monotonic()
    measure_fn = _isolated if isolate else measure
    for i, entry in enumerate(parsed, 1):
        try:
            options = entry_options(setting, entry, overrides)
        except NotApplicableError as exc:
            skipped.append(f"{entry.name}: {exc}")
            log(f"[efficiency] {i}/{len(parsed)} {entry.name}: skipped ({exc})")
            continue
        figures = measure_fn(setting, entry.method, options)
        rows.append({"name": entry.name, "method": entry.method, "options": options,
                     "paper_name": entry.paper_name, **figures, "reported": reported(entry)})
        elapsed = time.monotonic() - start
        log(f"[efficiency] {i}/{len(parsed)} {entry.name}: "
            f"{figures['train_img_s']['median']:.2f} img/s, "
            f"{figures['trainable_params']:,} trainable "
            f"({elapsed:.0f}s elapsed, ETA {elapsed / i * (len(parsed) - i):.0f}s)")
    by_name = {r["name"]: r for r in rows}
    for row in rows:
        row["ratios"] = {"to_full": _ratios(row, by_name[FULL]),
                         "to_frozen": _ratios(row, by_name[FROZEN])}
    device = torch.device(setting.device)
    return {"setting": asdict(setting), "description": setting.describe(),
            "device": device_name(device), "device_type": device.type,
            "torch": torch.__version__, "isolated": isolate,
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
            "reported_source": efficiency_table()["source"],
            "rows": rows, "skipped": skipped}


ROW_KEYS = ("name", "method", "options", "trainable_params", "checkpoint_bytes", "train_img_s",
            "peak_memory_mb", "latency_ms", "merge", "ratios", "reported")


def load(path: str | os.PathLike) -> dict[str, Any]:
    """An efficiency result file, checked for what the leaderboard reads; a broken or foreign
    file is an error naming the path."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: efficiency result not found (run the `efficiency` "
                                f"stage or `parax-bench efficiency --out {path}`)") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a JSON efficiency result ({exc})") from None
    if not isinstance(result, dict) or not {"setting", "description", "device", "rows"} <= set(result):
        raise ValueError(f"{path}: not a parax-bench efficiency result (expected keys setting, "
                         f"description, device, rows)")
    for i, row in enumerate(result["rows"]):
        missing = [k for k in ROW_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise ValueError(f"{path}: rows[{i}] is missing {missing}")
    return result
