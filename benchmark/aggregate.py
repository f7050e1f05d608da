"""Aggregation of cell results: mean ± std over seeds in the paper's table layouts, the paper's
figures beside ours, paired per-seed differences with confidence intervals, whether the
methods separate beyond seed noise, a cross-task mean rank, params-vs-score points, provenance.

Generic builders: which tables exist and their titles come from benchmark/paper_tables.yaml,
a task's metrics (key, column, scale, direction) and paper table from its spec (catalog), a
miniature's reference backbone from its backbone spec. The output (``tables.json``) is what
the leaderboard renders; every section is also written as CSV and markdown. Metrics are put
on the paper's scale (COCO APs in percent).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from scipy import stats

from catalog import Cell, Metric, get_backbone, get_task
from methods import get_method

from .budget import counted_head_params
from .io import write_json_atomic, write_text_atomic
from .reported import reported_table
from .tables import ablation_method, ablation_tables, comparison_tables, table_of


@dataclass(frozen=True)
class Run:
    """One loaded result file with its place in the grid."""
    cell: Cell
    path: Path
    result: dict[str, Any]

    @property
    def applicable(self) -> bool:
        return "not_applicable" not in self.result


def method_label(method: str) -> str:
    return get_method(method).description.split(":")[0]


def _paper_backbone(backbone: str) -> str | None:
    """The paper's name of the backbone, or, for a miniature (no paper numbers), of the
    full-size backbone it stands for: its rows show those figures, for reference only."""
    spec = get_backbone(backbone)
    return get_backbone(spec.reference).paper_name if spec.reference else spec.paper_name


def _cell(values: list[float], ids: list[str], digits: int = 1) -> dict[str, Any]:
    if not values:
        return {"text": "-", "value": None}
    s = pd.Series(values, dtype=float)
    mean = float(s.mean())
    text = f"{mean:.{digits}f}"
    if len(values) > 1:
        text += f" ± {float(s.std(ddof=1)):.{digits}f}"
    return {"text": text, "value": round(mean, 4), "n": len(values), "cells": ids}


def _number(value: float | None, digits: int = 1) -> dict[str, Any]:
    if value is None or pd.isna(value):
        return {"text": "-", "value": None}
    return {"text": f"{value:.{digits}f}", "value": float(value)}


def paired_difference(scores: dict[int, float], reference: dict[int, float],
                      level: float = 0.95) -> dict[str, Any] | None:
    """Mean of the per-seed differences ``scores - reference`` over the seeds both ran, and
    its ``level`` confidence interval (Student's t over those seeds; none for one seed)."""
    seeds = sorted(set(scores) & set(reference))
    if not seeds:
        return None
    d = pd.Series([scores[s] - reference[s] for s in seeds], dtype=float)
    out = {"mean": float(d.mean()), "n": len(d), "low": None, "high": None, "significant": None}
    if len(d) > 1:
        half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / len(d) ** 0.5)
        out.update(low=out["mean"] - half, high=out["mean"] + half,
                   significant=not (out["mean"] - half <= 0.0 <= out["mean"] + half))
    return out


def _difference_cell(diff: dict[str, Any] | None, digits: int = 1) -> dict[str, Any]:
    if diff is None:
        return {"text": "-", "value": None}
    text = f"{diff['mean']:+.{digits}f}"
    if diff["low"] is not None:
        text += f" [{diff['low']:+.{digits}f}, {diff['high']:+.{digits}f}]"
        if not diff["significant"]:
            text += " n.s."
    return {"text": text, "value": round(diff["mean"], 4), "n": diff["n"],
            **({"cls": "ns"} if diff["significant"] is False else {}),
            "interval": [diff["low"], diff["high"]], "significant": diff["significant"]}


class Aggregator:
    def __init__(self, params: dict[str, Any], runs: list[Run], methods: list[str],
                 efficiency: dict[str, Any] | None = None,
                 diagnostics: dict[str, dict[str, Any]] | None = None,
                 gpu_efficiency: dict[str, dict[str, Any]] | None = None):
        self.params = params
        self.runs = runs
        self.methods = methods  # the grid's, in its order
        self.efficiency_result = efficiency  # `parax-bench efficiency` output, if measured
        self.diagnostics = diagnostics or {}  # cell id -> its diagnose report
        self.gpu_efficiency = gpu_efficiency or {}  # amp -> the GPU check's Table 15
        self.reported = reported_table()

    # -- lookups -----------------------------------------------------------------------
    def _runs(self, task: str, backbone: str, method: str, variant: str | None = None,
              budget: str | None = None) -> list[Run]:
        """The runs of a grid cell over its seeds (``budget``: of a sweep point instead)."""
        return [r for r in self.runs
                if (r.cell.task, r.cell.backbone, r.cell.method, r.cell.variant, r.cell.sweep)
                == (task, backbone, method, variant, budget is not None)
                and (budget is None or r.cell.budget == budget)]

    def _scores(self, runs: list[Run], metric: Metric) -> tuple[list[float], list[str]]:
        ok = [r for r in runs if r.applicable and metric.key in r.result["metrics"]]
        return [r.result["metrics"][metric.key] * metric.scale for r in ok], [r.cell.id for r in ok]

    def _by_seed(self, task: str, backbone: str, method: str, metric: Metric) -> dict[int, float]:
        runs = [r for r in self._runs(task, backbone, method)
                if r.applicable and metric.key in r.result["metrics"]]
        return {r.cell.seed: r.result["metrics"][metric.key] * metric.scale for r in runs}

    def _params_m(self, runs: list[Run]) -> dict[str, Any]:
        """The runs' count as the paper's table counts it (Table 7, Table 8's full
        fine-tuning: with the heads)."""
        counts = {r.result["trainable_backbone_params"]
                  + counted_head_params(r.cell.backbone, r.cell.task, r.cell.method)
                  for r in runs if r.applicable}
        if not counts:
            return {"text": "n/a" if runs else "-", "value": None}
        return _number(max(counts) / 1e6, 2)

    def _reference_backbone(self, table: str, task: str, backbone: str) -> str | None:
        """The paper backbone whose figures a row shows: the backbone's own, or for a
        miniature the full-size one it stands for, or, where the table has no rows of that
        one (Table 4 adapts only ViT-B), the table's one backbone for the dataset."""
        paper_bb = _paper_backbone(backbone)
        if get_backbone(backbone).reference is None:
            return paper_bb
        df = self.reported
        rows = df[(df.table == table) & (df.dataset == get_task(task).paper_dataset)]
        if paper_bb in set(rows.backbone) or rows.backbone.nunique() != 1:
            return paper_bb
        return str(rows.backbone.iloc[0])

    def _reported(self, table: str, task: str, backbone: str, method: str,
                  metric: str) -> tuple[float | None, float | None]:
        """(value, params_m) the paper reports, or (None, None)."""
        spec, paper_bb = get_task(task), self._reference_backbone(table, task, backbone)
        df = self.reported
        rows = df[(df.table == table) & (df.dataset == spec.paper_dataset)
                  & (df.backbone == paper_bb) & (df.method == method) & (df.metric == metric)]
        if rows.empty:
            return None, None
        return float(rows.value.iloc[0]), float(rows.params_m.iloc[0])

    def groups(self) -> list[tuple[str, str]]:
        """(task, backbone) pairs of the comparison grid, in grid order."""
        seen: dict[tuple[str, str], None] = {}
        for r in self.runs:
            if r.cell.variant is None and not r.cell.sweep:
                seen[(r.cell.task, r.cell.backbone)] = None
        return list(seen)

    # -- sections ----------------------------------------------------------------------
    def comparison(self, table: str, title: str, tasks: list[str]) -> dict[str, Any] | None:
        pairs = [(t, b) for t, b in self.groups() if t in tasks and table_of(t, b) == table]
        if not pairs:
            return None
        methods = self.methods
        multi_task = len({t for t, _ in pairs}) > 1
        columns = [{"key": "method", "label": "Method", "numeric": False}]
        rows = [{"method": {"text": method_label(m), "value": method_label(m)}} for m in methods]
        for task, backbone in pairs:
            spec = get_task(task)
            group = (spec.paper_dataset + (f" {backbone}" if len({b for _, b in pairs}) > 1 else "")
                     if multi_task else backbone)
            paper_bb = self._reference_backbone(table, task, backbone)
            ref = "" if paper_bb == get_backbone(backbone).paper_name else f", {paper_bb}"
            key0 = f"{task}:{backbone}"
            columns.append({"key": f"{key0}:params_m", "label": "Params (M)", "numeric": True,
                            "group": group})
            columns.append({"key": f"{key0}:params_m:reported", "label": f"Params (paper{ref})",
                            "numeric": True, "group": group, "reported": True})
            for metric in spec.metrics:
                name = metric.label
                columns.append({"key": f"{key0}:{name}", "label": name, "numeric": True,
                                "group": group, "best": "max" if metric.higher_is_better else "min"})
                columns.append({"key": f"{key0}:{name}:reported", "label": f"{name} (paper{ref})",
                                "numeric": True, "group": group, "reported": True})
            for row, method in zip(rows, methods):
                runs = self._runs(task, backbone, method)
                paper_method = get_method(method).paper_name
                row[f"{key0}:params_m"] = self._params_m(runs)
                reported_params = None
                for metric in spec.metrics:
                    name = metric.label
                    row[f"{key0}:{name}"] = _cell(*self._scores(runs, metric))
                    value, p = self._reported(table, task, backbone, paper_method, name)
                    row[f"{key0}:{name}:reported"] = _number(value)
                    reported_params = reported_params if p is None else p
                row[f"{key0}:params_m:reported"] = _number(reported_params)
        return {"id": f"table{table}", "title": f"Table {table}: {title}", "kind": "comparison",
                "caption": self._note(pairs), "columns": columns, "rows": rows}

    def _note(self, pairs: list[tuple[str, str]]) -> str:
        """What a comparison table's numbers are: how many seeds, on what data and backbone."""
        seeds = sorted({r.cell.seed for r in self.runs if (r.cell.task, r.cell.backbone) in pairs
                        and r.cell.variant is None})
        backbones = ", ".join(sorted({b for _, b in pairs}))
        text = (f"Mean ± std over n = {len(seeds)} seed{'s' if len(seeds) != 1 else ''} "
                f"({', '.join(map(str, seeds))}); the best mean per column in bold.")
        if self.params["grid"]["profile"] == "mini":
            text += (f" Synthetic data in the datasets' real formats, {backbones} pretrained "
                     f"here on a synthetic source task, short CPU schedules: the paper columns "
                     f"are the full-size backbones' figures, for reference only.")
        return text

    def ablation(self, table: str) -> dict[str, Any] | None:
        spec = self.params["grid"]["ablation"]
        variants = [v for v in spec["variants"] if self.params["ablations"][v]["table"] == table]
        if not variants:
            return None
        task, backbone = spec["task"], spec["backbone"]
        metrics = get_task(task).metrics
        # The paper's ablations are all Swin-B Mask R-CNN: its metric columns are AP_box / AP_mask.
        paper_metrics = sorted(set(self.reported[self.reported.table == table].metric))
        columns = [{"key": "variant", "label": "Variant", "numeric": False},
                   {"key": "params_m", "label": "Params (M)", "numeric": True}]
        columns += [{"key": m.label, "label": m.label, "numeric": True} for m in metrics]
        columns += [{"key": "params_m:reported", "label": "Params (paper)", "numeric": True,
                     "reported": True}]
        columns += [{"key": f"{m}:reported", "label": f"{m} (paper)", "numeric": True,
                     "reported": True} for m in paper_metrics]
        layout = ablation_tables()[table]
        default = layout["default"]
        method = ablation_method()
        paper_method = get_method(method).paper_name
        entries = [(f"default{'' if default is None else ' (' + default + ')'}", None, default)]
        entries += [(self.params["ablations"][v]["paper"], v, self.params["ablations"][v]["paper"])
                    for v in variants]
        rows = []
        for label, variant, paper_label in entries:
            runs = self._runs(task, backbone, method, variant)
            row = {"variant": {"text": label, "value": label}, "params_m": self._params_m(runs)}
            for metric in metrics:
                row[metric.label] = _cell(*self._scores(runs, metric))
            reported = self.reported[(self.reported.table == table)
                                     & (self.reported.method == f"{paper_method}[{paper_label}]")]
            row["params_m:reported"] = _number(reported.params_m.iloc[0] if len(reported) else None)
            for m in paper_metrics:
                value = reported[reported.metric == m].value
                row[f"{m}:reported"] = _number(value.iloc[0] if len(value) else None)
            rows.append(row)
        return {"id": f"table{table}", "title": f"Table {table}: {layout['title']} "
                                                f"({method_label(method)} on {task}, {backbone})",
                "kind": "ablation", "columns": columns, "rows": rows}

    def baselines(self) -> list[str]:
        """The methods compared with the paper's: every grid method but it and full tuning."""
        return [m for m in self.methods if m not in ("full", ablation_method())]

    def differences(self, table: str, title: str, tasks: list[str]) -> dict[str, Any] | None:
        """Each method's paired per-seed difference to full fine-tuning and to the best
        baseline (highest mean among :meth:`baselines`) on each task's primary metric, with a
        95% interval; an interval that holds 0 is marked not significant (n.s.)."""
        pairs = [(t, b) for t, b in self.groups() if t in tasks and table_of(t, b) == table]
        if not pairs or "full" not in self.methods:
            return None
        columns = [{"key": "method", "label": "Method", "numeric": False}]
        rows = [{"method": {"text": method_label(m), "value": method_label(m)}} for m in self.methods]
        for task, backbone in pairs:
            metric = get_task(task).primary
            scores = {m: self._by_seed(task, backbone, m, metric) for m in self.methods}
            sign = 1 if metric.higher_is_better else -1
            ranked = [m for m in self.baselines() if scores[m]]
            best = max(ranked, key=lambda m: sign * sum(scores[m].values()) / len(scores[m]),
                       default=None)
            group = f"{get_task(task).paper_dataset} {backbone} ({metric.label})"
            references = [("full", "Full")] + ([(best, method_label(best))] if best else [])
            for ref, label in references:
                key = f"{task}:{backbone}:vs:{ref}"
                columns.append({"key": key, "label": f"Δ vs {label} [95% CI]", "numeric": True,
                                "group": group})
                for row, m in zip(rows, self.methods):
                    row[key] = (_difference_cell(paired_difference(scores[m], scores[ref]))
                                if m != ref else {"text": "reference", "value": None})
        separation = "; ".join(
            f"{s['task']} {s['backbone']}: spread {s['spread']:.1f}, median seed std "
            f"{s['median_std']:.2f} ({'≥' if s['separated'] else '<'} 2×)"
            for s in self.separation() if (s["task"], s["backbone"]) in pairs)
        return {"id": f"table{table}-differences", "kind": "differences",
                "title": f"Table {table}: paired differences ({title})",
                "caption": "Per-seed paired differences on the primary metric (positive: better "
                           "than the reference), mean and 95% interval (Student's t over the "
                           "seeds); n.s.: the interval holds 0. The best baseline is the "
                           f"highest mean among {', '.join(map(method_label, self.baselines()))}."
                           + (f" Separation (spread of the PEFT methods' means against their "
                              f"median seed std): {separation}." if separation else ""),
                "columns": columns, "rows": rows}

    def separation(self) -> list[dict[str, Any]]:
        """Per (task, backbone): the spread (max - min) of the PEFT methods' mean primary
        scores (every method but full tuning) and the median of their seed stds; separated
        when the spread is at least twice that median."""
        out = []
        for task, backbone in self.groups():
            metric = get_task(task).primary
            means, stds = [], []
            for m in self.methods:
                scores = list(self._by_seed(task, backbone, m, metric).values())
                if m == "full" or not scores:
                    continue
                means.append(sum(scores) / len(scores))
                if len(scores) > 1:
                    stds.append(float(pd.Series(scores).std(ddof=1)))
            if len(means) < 2 or not stds:
                continue
            spread, median = max(means) - min(means), float(pd.Series(stds).median())
            out.append({"task": task, "backbone": backbone, "metric": metric.label,
                        "spread": round(spread, 4), "median_std": round(median, 4),
                        "separated": spread >= 2 * median})
        return out

    def rank(self) -> dict[str, Any] | None:
        """Mean rank of each method by its task's primary metric over the (task, backbone)
        groups it ran in (1 = best, by the metric's direction; ties share the mean rank)."""
        methods = self.methods
        per_group = {}
        for task, backbone in self.groups():
            metric = get_task(task).primary
            means = {}
            for m in methods:
                scores, _ = self._scores(self._runs(task, backbone, m), metric)
                if scores:
                    means[m] = sum(scores) / len(scores)
            per_group[f"{task}:{backbone}"] = pd.Series(means).rank(
                ascending=not metric.higher_is_better, method="average")
        if not per_group:
            return None
        ranks = pd.DataFrame(per_group).reindex(methods)
        columns = [{"key": "method", "label": "Method", "numeric": False},
                   {"key": "mean_rank", "label": "Mean rank", "numeric": True},
                   {"key": "groups", "label": "Tasks", "numeric": True}]
        columns += [{"key": g, "label": g.replace(":", " / "), "numeric": True} for g in per_group]
        rows = []
        for m in methods:
            r = ranks.loc[m].dropna()
            row = {"method": {"text": method_label(m), "value": method_label(m)},
                   "mean_rank": _number(r.mean() if len(r) else None, 2),
                   "groups": {"text": str(len(r)), "value": len(r)}}
            for g in per_group:
                row[g] = _number(ranks.loc[m, g], 1)
            rows.append(row)
        return {"id": "rank", "title": "Cross-task mean rank", "kind": "rank",
                "caption": "Rank of each method by the primary metric of every (task, backbone) "
                           "it ran in, averaged.", "columns": columns, "rows": rows}

    def pareto(self) -> list[dict[str, Any]]:
        """Per (task, backbone): each method's (params, mean ± std score) at the grid's budget
        and at every budget a sweep ran it at, as one series per method."""
        out = []
        for task, backbone in self.groups():
            metric = get_task(task).primary
            points = []
            for m in self.methods:
                budgets = sorted({r.cell.budget for r in self.runs if r.cell.sweep and
                                  (r.cell.task, r.cell.backbone, r.cell.method) == (task, backbone, m)})
                for budget in [None, *budgets]:
                    runs = self._runs(task, backbone, m, budget=budget)
                    scores, _ = self._scores(runs, metric)
                    if not scores:
                        continue
                    s = pd.Series(scores, dtype=float)
                    points.append({"method": m, "label": method_label(m),
                                   "budget": budget or self.params["grid"]["budget"],
                                   "params_m": self._params_m(runs)["value"],
                                   "score": round(float(s.mean()), 4),
                                   "std": round(float(s.std(ddof=1)), 4) if len(s) > 1 else 0.0,
                                   "n": len(s)})
            out.append({"id": f"pareto-{task}-{backbone}", "task": task, "backbone": backbone,
                        "metric": metric.label, "points": points})
        return out

    def diagnostics_sections(self) -> list[dict[str, Any]]:
        """Per (task, backbone) with diagnosed cells: a table of each method's diagnostic
        scalars, and its figures' data (``figures``: CKA, a coarsened ERF map, mean gates)."""
        by_group: dict[tuple[str, str], list[Run]] = {}
        for r in self.runs:
            if r.cell.id in self.diagnostics:
                by_group.setdefault((r.cell.task, r.cell.backbone), []).append(r)
        sections = []
        for (task, backbone), runs in by_group.items():
            runs.sort(key=lambda r: (self.methods.index(r.cell.method), r.cell.seed))
            reports = [self.diagnostics[r.cell.id] for r in runs]
            stages = len(reports[0]["redundancy"])
            columns = [{"key": "method", "label": "Method", "numeric": False},
                       {"key": "seed", "label": "Seed", "numeric": True}]
            columns += [{"key": f"redundancy{i}", "label": f"stage {i}", "numeric": True,
                         "group": "CKA redundancy"} for i in range(stages)]
            columns += [{"key": f"erf{q}", "label": f"{round(100 * float(q))}%", "numeric": True,
                         "group": "ERF area (% of input)"} for q in reports[0]["erf"]["mass_area"]]
            columns += [{"key": k, "label": label, "numeric": True, "group": "Gates"}
                        for k, label in GATE_COLUMNS]
            rows, figures = [], []
            for r, report in zip(runs, reports):
                row = {"method": {"text": method_label(r.cell.method), "value": method_label(r.cell.method)},
                       "seed": {"text": str(r.cell.seed), "value": r.cell.seed}}
                for i, v in enumerate(report["redundancy"]):
                    row[f"redundancy{i}"] = _number(v, 2)
                for q, v in report["erf"]["mass_area"].items():
                    row[f"erf{q}"] = _number(100 * v, 1)
                row.update(_gate_scalars(report["routing"]))
                rows.append(row)
                figures.append({"cell": r.cell.id, "label": method_label(r.cell.method),
                                "report": _figure_data(report)})
            images = sorted({rep["images"] for rep in reports})
            sections.append({
                "id": f"diagnostics-{task}-{backbone}", "kind": "diagnostics",
                "title": f"Diagnostics: {get_task(task).description.split(',')[0]}, {backbone}",
                "caption": DIAGNOSTICS_CAPTION.format(images="/".join(map(str, images))),
                "columns": columns, "rows": rows, "figures": figures})
        return sections

    def provenance(self) -> list[dict[str, Any]]:
        out = []
        for r in self.runs:
            res = r.result
            out.append({"cell": r.cell.id, "task": r.cell.task, "backbone": r.cell.backbone,
                        "method": r.cell.method, "variant": r.cell.variant, "seed": r.cell.seed,
                        "budget": r.cell.budget,
                        "profile": res["cell"]["profile"],
                        "commit": res.get("git", {}).get("commit"),
                        "dirty": res.get("git", {}).get("dirty"),
                        "device": res.get("device", "n/a (not applicable)"),
                        "date": res.get("finished_at"), "wall_time_s": res.get("wall_time_s"),
                        "train_time_s": res.get("train_time_s"),
                        "result_file": r.path.as_posix()})
        return out

    def tables(self) -> dict[str, Any]:
        profile = self.params["grid"]["profile"]
        sections = [section for t, (title, tasks) in comparison_tables().items()
                    for section in (self.comparison(t, title, tasks),
                                    self.differences(t, title, tasks))]
        sections.append(self.rank())
        sections += [self.ablation(t) for t in ablation_tables()]
        if self.efficiency_result is not None:
            sections.append(efficiency_section(self.efficiency_result))
        for amp, result in self.gpu_efficiency.items():
            sections.append(efficiency_section(result, f"table15-gpu-{amp}",
                                               f"Table 15 (GPU, {GPU_AMP_LABELS[amp]})"))
        sections += self.diagnostics_sections()
        synthetic = profile == "mini"
        note = ("mini profile: synthetic datasets, micro backbones pretrained on a synthetic "
                "source task, short CPU schedules. The paper's figures (columns marked paper) "
                "belong to the full-size backbones and are shown for reference only."
                if synthetic else "paper profile: the paper's datasets, backbones and schedules.")
        return {"profile": profile, "synthetic": synthetic,
                "generated": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "note": note, "sections": [s for s in sections if s is not None],
                "separation": self.separation(), "pareto": self.pareto(),
                "provenance": self.provenance()}


def efficiency_section(result: dict[str, Any], section_id: str = "table15",
                       table: str = "Table 15") -> dict[str, Any]:
    """Table 15's measurement (`parax-bench efficiency` output) as a section: absolute
    figures, ratios to full fine-tuning and to the frozen backbone, and the paper's ratios
    to its full tuning (Swin-L on an L40S). ``section_id`` / ``table``: of another
    measurement of it (the GPU check's)."""
    figures = [
        ("params_m", "Params (M)", lambda r: r["trainable_params"] / 1e6, 3),
        ("checkpoint_mb", "Checkpoint (MB)", lambda r: r["checkpoint_bytes"] / 2**20, 2),
        ("img_s", "Train img/s", lambda r: r["train_img_s"]["median"], 2),
        ("img_s:full", "img/s ×full", lambda r: r["ratios"]["to_full"]["train_img_s"], 2),
        ("img_s:frozen", "img/s ×frozen", lambda r: r["ratios"]["to_frozen"]["train_img_s"], 2),
        ("mem_mb", "Peak memory (MB)", lambda r: r["peak_memory_mb"], 1),
        ("mem:full", "Memory ×full", lambda r: r["ratios"]["to_full"]["peak_memory"], 2),
        ("mem:frozen", "Memory ×frozen", lambda r: r["ratios"]["to_frozen"]["peak_memory"], 2),
        ("latency_ms", "Latency (ms)", lambda r: r["latency_ms"]["unmerged"]["median_ms"], 2),
        ("latency:frozen", "Latency ×frozen", lambda r: r["ratios"]["to_frozen"]["latency"], 2),
        ("merged_ms", "Merged latency (ms)",
         lambda r: (r["latency_ms"]["merged"] or {}).get("median_ms"), 2),
        ("merged:frozen", "Merged ×frozen",
         lambda r: r["ratios"]["to_frozen"]["merged_latency"], 2),
    ]
    paper = [
        ("paper:params_m", "Params (paper)", "params_m", 1),
        ("paper:img_s:full", "img/s ×full (paper)", "train_img_s_to_full", 2),
        ("paper:mem:full", "Memory ×full (paper)", "peak_memory_to_full", 2),
    ]
    columns = [{"key": "method", "label": "Method", "numeric": False}]
    columns += [{"key": k, "label": label, "numeric": True} for k, label, _, _ in figures]
    columns += [{"key": k, "label": label, "numeric": True, "reported": True}
                for k, label, _, _ in paper]
    processes = ("Each method ran in a fresh process" if result.get("isolated")
                 else "All methods ran in one process")
    rows = []
    for r in result["rows"]:
        options = r["name"][len(r["method"]):]  # "[convs=false]" of a variant row
        label = method_label(r["method"]) + (f" {options}" if options else "")
        row: dict[str, Any] = {"method": {"text": label, "value": label}}
        for key, _, read, digits in figures:
            row[key] = _number(read(r), digits)
        for key, _, field, digits in paper:
            row[key] = _number((r["reported"] or {}).get(field), digits)
        rows.append(row)
    return {"id": section_id, "kind": "efficiency",
            "title": f"{table}: Efficiency ({result['description']}; {result['device']})",
            "caption": "Training step = forward, backward and AdamW over the trainable "
                       "parameters; ×full and ×frozen are ratios to full fine-tuning and to "
                       "the frozen backbone measured here. Paper columns: the paper's Swin-L "
                       f"Mask R-CNN on one L40S, as ratios to its full tuning. {processes}; "
                       f"medians of {result['setting']['iters']} "
                       f"training steps and {result['setting']['latency_iters']} inference "
                       "calls.",
            "columns": columns, "rows": rows}


GPU_AMP_LABELS = {"none": "fp32", "bf16": "bf16 autocast"}


def load_gpu_efficiency(folder: Path) -> dict[str, dict[str, Any]]:
    """The GPU check's Table 15 measurements (scripts/gpu-check.sh: folder/table15-AMP.json),
    by amp, those that exist."""
    from .efficiency import load

    return {amp: load(folder / f"table15-{amp}.json") for amp in GPU_AMP_LABELS
            if (folder / f"table15-{amp}.json").is_file()}


GATE_COLUMNS = [("entropy_image", "entropy / log M"), ("entropy_mean", "of the mean / log M"),
                ("ever_top", "experts ever top (%)"), ("spread", "spread across images"),
                ("collapsed", "collapsed groups")]
DIAGNOSTICS_CAPTION = (
    "Seed 0 of each method on {images} validation images (`parax-bench diagnose`). CKA "
    "redundancy: mean linear CKA between distinct blocks of a stage (1: its blocks compute the "
    "same representation). ERF area: the share of the input holding 20/50/90% of the last "
    "stage's centre gradient (larger: a wider effective receptive field). Gates (routed methods): "
    "the entropy of each image's gate and of the mean gate over log M (1: uniform over the "
    "experts), the share of experts that are some image's largest, the mean std of the gates "
    "across images (input dependence), and the gate groups near one-hot on one expert for every "
    "image, averaged over modules and gate groups.")
ERF_FIGURE_SIDE = 32  # the ERF maps kept for the page: at most this many pixels a side


def _gate_scalars(routing: list[dict[str, Any]]) -> dict[str, Any]:
    groups = [g for m in routing for g in m["groups"].values()]
    if not groups:
        return {}
    spread = [g for g in groups if g["max_entropy"] > 0]  # (one expert: no choice to measure)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "entropy_image": _number(mean([g["entropy_per_image"] / g["max_entropy"] for g in spread]), 2),
        "entropy_mean": _number(mean([g["entropy_of_mean"] / g["max_entropy"] for g in spread]), 2),
        "ever_top": _number(mean([100 * g["experts_ever_top"] for g in groups]), 1),
        "spread": _number(mean([g["spread_across_images"] for g in groups]), 3),
        "collapsed": {"text": f"{sum(g['collapsed'] for g in groups)} / {len(groups)}",
                      "value": sum(g["collapsed"] for g in groups)}}


def _figure_data(report: dict[str, Any]) -> dict[str, Any]:
    """What the page draws of a report, rounded, its ERF map block-averaged to at most
    ``ERF_FIGURE_SIDE`` a side (and relative to its peak again)."""
    import numpy as np

    erf = np.asarray(report["erf"]["map"], dtype=float)
    f = -(-max(erf.shape) // ERF_FIGURE_SIDE)
    h, w = erf.shape[0] // f * f, erf.shape[1] // f * f
    erf = erf[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    erf = erf / erf.max() if erf.max() > 0 else erf
    r3 = lambda xs: [round(float(x), 3) for x in xs]  # noqa: E731
    return {"images": report["images"], "blocks": report["blocks"],
            "cka": [r3(row) for row in report["cka"]],
            "erf": {"map": [r3(row) for row in erf]},
            "routing": [{"module": m["module"], "groups": {
                name: {"experts": g["experts"], "images": g["images"], "mean_gate": r3(g["mean_gate"]),
                       "mean_gate_at": {n: r3(v) for n, v in g["mean_gate_at"].items()}}
                for name, g in m["groups"].items()}} for m in report["routing"]]}


def load_diagnostics(ids: Iterable[str], folder: Path) -> dict[str, dict[str, Any]]:
    """The diagnose reports (folder/ID.json) of the cells ``ids``; one that is missing is an
    error naming its stage."""
    import json

    out = {}
    for cell_id in ids:
        path = folder / f"{cell_id}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the diagnostics of {cell_id} are missing "
                                    f"(`scripts/dvc repro diagnose-{cell_id}` writes them)")
        out[cell_id] = json.loads(path.read_text())
    return out


def section_frame(section: dict[str, Any]) -> pd.DataFrame:
    """A section as a flat table (display text), for the CSV and markdown exports."""
    labels = [(c.get("group") + " " if c.get("group") else "") + c["label"]
              for c in section["columns"]]
    data = [[row.get(c["key"], {"text": "-"})["text"] for c in section["columns"]]
            for row in section["rows"]]
    return pd.DataFrame(data, columns=labels)


def write_tables(tables: dict[str, Any], out: str | Path) -> list[Path]:
    """tables.json plus SECTION.csv and SECTION.md for every section (atomic writes)."""
    out = Path(out)
    written = []
    for section in tables["sections"]:
        frame = section_frame(section)
        buf = io.StringIO()
        frame.to_csv(buf, index=False)
        written.append(write_text_atomic(out / f"{section['id']}.csv", buf.getvalue()))
        md = f"## {section['title']}\n\n{frame.to_markdown(index=False)}\n"
        written.append(write_text_atomic(out / f"{section['id']}.md", md))
    write_json_atomic(out / "tables.json", tables)
    return written + [out / "tables.json"]


def load_runs(cells: Iterable[Any], runs_dir: Path) -> tuple[list[Run], list[Path]]:
    """(the grid's runs, result files outside the grid). Every JSON file in ``runs_dir`` is
    read and validated once; a broken or foreign file, or a grid cell without its file, is an
    error naming the path."""
    from .results import ResultFileError, load_result

    results = {path.name: load_result(path) for path in sorted(runs_dir.glob("*.json"))}
    runs = []
    for cell in cells:
        path = runs_dir / f"{cell.id}.json"
        if path.name not in results:
            raise ResultFileError(f"{path}: result file of grid cell {cell.id} is missing")
        runs.append(Run(cell, path, results.pop(path.name)))
    return runs, [runs_dir / name for name in results]
