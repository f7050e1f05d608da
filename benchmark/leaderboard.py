"""Static HTML leaderboard: renders an aggregated tables.json into one self-contained page.

The page works from ``file://`` with no network: CSS and the sorting script are inline and
the Pareto plots are inline SVG computed here, so the result can be opened straight from a
results folder or attached to a report.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import jinja2
import markupsafe

from .io import write_text_atomic

TEMPLATES = Path(__file__).with_name("templates")
DATA_FILES = (TEMPLATES,)
DEFAULT_OUT = Path("results/leaderboard/index.html")
MISSING = "–"

# Pareto plot geometry (SVG user units): canvas size, the plot area's margins (the legend
# sits in the right one, one row per method) and the series colours (Tableau 10).
WIDTH, HEIGHT = 820, 400
LEFT, RIGHT, TOP, BOTTOM = 64, 170, 16, 52
LEGEND_ROW = 18
ZERO_GAP = 36  # room left of the params axis for the points at 0
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")


def _require(obj: Any, keys: Sequence[str], where: str) -> None:
    """Fail early, naming the entry and the missing key, instead of a template error later."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where} must be an object, got {type(obj).__name__}")
    for key in keys:
        if key not in obj:
            raise ValueError(f"{where} is missing {key!r}")


def _where(kind: str, i: int, entry: Any) -> str:
    """``sections[1] ('table2')``: the position, and the id when there is one."""
    has_id = isinstance(entry, dict) and "id" in entry
    return f"{kind}[{i}]" + (f" ({entry['id']!r})" if has_id else "")


def _validate(tables: Any) -> None:
    _require(tables, ["sections"], "tables")
    ids = ["contents", "provenance"]
    for i, sec in enumerate(tables["sections"]):
        _require(sec, ["id", "title", "columns", "rows"], _where("sections", i, sec))
        for j, col in enumerate(sec["columns"]):
            _require(col, ["key", "label"], f"{_where('sections', i, sec)} columns[{j}]")
        ids.append(sec["id"])
    for i, plot in enumerate(tables.get("pareto", [])):
        _require(plot, ["id", "metric", "points"], _where("pareto", i, plot))
        for j, pt in enumerate(plot["points"]):
            _require(pt, ["params_m", "score"], f"{_where('pareto', i, plot)} points[{j}]")
        ids.append(plot["id"])
    for i, prov in enumerate(tables.get("provenance", [])):
        _require(prov, ["cell"], f"provenance[{i}]")
    dupes = sorted({str(x) for x in ids if ids.count(x) > 1})
    if dupes:
        raise ValueError(f"duplicate section ids: {', '.join(dupes)}")


def _number(value: Any) -> float | None:
    """A finite float, or None for null / NaN (JSON from pandas can carry NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _cell(cell: dict | None, numeric: bool, cls: str) -> dict:
    """View model of one ``<td>``: numeric cells keep their value for sorting (data-value);
    a cell's own ``cls`` (``ns``: not significant) adds to its column's."""
    cell = cell or {}
    cls = " ".join(c for c in (cls, cell.get("cls", "")) if c)
    value = _number(cell.get("value")) if numeric else cell.get("value", cell.get("text"))
    if value is None:
        return {"text": MISSING, "value": None, "cls": f"{cls} missing".strip(), "title": None,
                "href": None}
    return {"text": str(cell.get("text", cell.get("value"))), "value": value if numeric else None,
            "cls": cls, "title": f"n={cell['n']}" if "n" in cell else None,
            "href": cell.get("href")}


def _table(columns: list[dict], rows: list[dict]) -> dict:
    """Header rows (a group row on top when columns carry ``group``) and body cells.

    Every sortable leaf header carries its column index (``data-col``) because rowspan and
    colspan make a header's DOM position differ from its column's.
    """
    leaves = []
    for i, col in enumerate(columns):
        cls = " ".join(c for c in ("num" if col.get("numeric") else "",
                                   "reported" if col.get("reported") else "") if c)
        leaves.append({"label": col["label"], "col": i, "numeric": bool(col.get("numeric")),
                       "cls": cls, "colspan": 1, "rowspan": 1})
    head = [leaves]
    if any(col.get("group") for col in columns):
        top, bottom = [], []
        for col, leaf in zip(columns, leaves):
            group = col.get("group")
            if not group:
                top.append({**leaf, "rowspan": 2})
            elif top and top[-1].get("group") == group:
                top[-1]["colspan"] += 1
                bottom.append(leaf)
            else:
                top.append({"label": group, "group": group, "col": None, "numeric": False,
                            "cls": "group", "colspan": 1, "rowspan": 1})
                bottom.append(leaf)
        head = [top, bottom]
    body = [[_cell(row.get(col["key"]), leaf["numeric"], leaf["cls"])
             for col, leaf in zip(columns, leaves)] for row in rows]
    for i, col in enumerate(columns):  # ``best``: "max" or "min" marks that column's best
        values = [r[i]["value"] for r in body if r[i]["value"] is not None]
        if col.get("best") in ("max", "min") and len(values) > 1:
            best = max(values) if col["best"] == "max" else min(values)
            for r in body:
                if r[i]["value"] == best:
                    r[i]["cls"] += " best"
    return {"head": head, "rows": body}


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    """Round tick values inside [lo, hi]: 1-2-5 per decade on a log axis, else a 1-2-5 step."""
    if log:
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)),
                                              math.ceil(math.log10(hi)) + 1)
                 for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
        return ticks if len(ticks) <= 8 else [t for t in ticks if math.log10(t).is_integer()]
    raw = (hi - lo) / 5
    mag = 10.0 ** math.floor(math.log10(raw))
    step = mag * next(m for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step)
    return [k * step for k in range(first, math.floor(hi / step) + 1)]


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _pareto(plot: dict) -> dict:
    """SVG geometry of one Pareto plot; points with a missing number are left out.

    Points of one method (its budgets) form one series: a line through them by params, a
    colour of its own and a legend row; no text sits beside a point, so nothing overlaps
    (each point's figures are its tooltip). The x axis (trainable params, M) is logarithmic
    when the points span more than a decade. The front holds the points that score more
    than every point with fewer or equal params.
    """
    pts = [p for p in plot["points"] if _number(p["score"]) is not None
           and (params := _number(p["params_m"])) is not None and params >= 0]
    xs = [float(p["params_m"]) for p in pts]
    ys = [float(p["score"]) for p in pts]
    stds = [_number(p.get("std")) or 0.0 for p in pts]
    bars = [s > 0 and (p.get("n") or 0) > 1 for p, s in zip(pts, stds)]
    xr = [x for x in xs if x > 0] or [1.0]
    zero = 0.0 in xs  # linear probing trains no backbone parameter: drawn at a "0" left of the axis
    left = LEFT + (ZERO_GAP if zero else 0)
    yr = [y + s * k for y, s in zip(ys, stds) for k in (-1, 1)] or [0.0]
    log = max(xr) / min(xr) > 10
    if log:
        pad = 10 ** (0.06 * math.log10(max(xr) / min(xr)))
        xlo, xhi = min(xr) / pad, max(xr) * pad
    else:
        pad = 0.06 * (max(xr) - min(xr)) or 0.5 * min(xr)
        xlo, xhi = max(min(xr) - pad, 0.0), max(xr) + pad
    pad = 0.08 * (max(yr) - min(yr)) or 1.0
    ylo, yhi = min(yr) - pad, max(yr) + pad
    w, h = WIDTH - left - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        if x <= 0:
            return LEFT + ZERO_GAP / 3
        t = math.log(x / xlo) / math.log(xhi / xlo) if log else (x - xlo) / (xhi - xlo)
        return round(left + t * w, 1)

    def sy(y: float) -> float:
        return round(TOP + (yhi - y) / (yhi - ylo) * h, 1)

    front, best = [], -math.inf
    for i in sorted(range(len(pts)), key=lambda i: (xs[i], -ys[i])):
        if ys[i] > best:
            front.append(i)
            best = ys[i]
    names = list(dict.fromkeys(str(p.get("method", p.get("label", ""))) for p in pts))
    series = []
    for k, name in enumerate(names):
        members = sorted((i for i, p in enumerate(pts)
                          if str(p.get("method", p.get("label", ""))) == name), key=lambda i: xs[i])
        label = str(pts[members[0]].get("label", name))
        points = []
        for i in members:
            p = pts[i]
            title = f"{label}: {_fmt(ys[i])}" + (f" ± {_fmt(stds[i])}" if bars[i] else "")
            title += f" at {_fmt(xs[i])} M params" + (f", n={p['n']}" if "n" in p else "")
            title += f" (budget {p['budget']})" if p.get("budget") else ""
            points.append({"x": sx(xs[i]), "y": sy(ys[i]), "front": i in front, "title": title,
                           "err": (sy(ys[i] + stds[i]), sy(ys[i] - stds[i])) if bars[i] else None})
        series.append({"name": name, "label": label, "colour": PALETTE[k % len(PALETTE)],
                       "points": points,
                       "line": " ".join(f"{q['x']},{q['y']}" for q in points) if len(points) > 1
                       else None,
                       "legend": {"x": WIDTH - RIGHT + 16, "y": TOP + 8 + k * LEGEND_ROW}})
    return {
        "id": plot["id"], "width": WIDTH, "height": max(HEIGHT, TOP + 16 + len(names) * LEGEND_ROW),
        "title": " / ".join(str(plot[k]) for k in ("task", "backbone") if plot.get(k))
                 + f" ({plot['metric']})",
        "box": {"x0": LEFT, "x1": WIDTH - RIGHT, "y0": TOP, "y1": HEIGHT - BOTTOM},
        "xticks": ([{"pos": sx(0.0), "text": "0"}] if zero else [])
                  + [{"pos": sx(t), "text": _fmt(t)} for t in _ticks(xlo, xhi, log) if t > 0 or not zero],
        "yticks": [{"pos": sy(t), "text": _fmt(t)} for t in _ticks(ylo, yhi, False)],
        "xlabel": "Trainable params (M" + (", log scale)" if log else ")"),
        "ylabel": str(plot["metric"]), "series": series, "log": log,
        "line": " ".join(f"{sx(xs[i])},{sy(ys[i])}" for i in front),
    }


def _provenance(entries: list[dict], out_dir: Path) -> dict:
    """Provenance as a sortable table; result files link relative to the page.

    ``result_file`` paths are relative to the working directory (the repository root when
    the pipeline runs), so they are rewritten relative to the page's folder.
    """
    columns = [{"key": "cell", "label": "Cell"}, {"key": "seed", "label": "Seed", "numeric": True},
               {"key": "commit", "label": "Commit"}, {"key": "device", "label": "Device"},
               {"key": "date", "label": "Date"},
               {"key": "train_time_s", "label": "Train time (s)", "numeric": True},
               {"key": "wall_time_s", "label": "Wall time (s)", "numeric": True},
               {"key": "result_file", "label": "Result file"}]
    rows = []
    for e in entries:
        row = {k: {"value": e.get(k)} for k in ("cell", "seed", "device", "date")}
        if e.get("commit"):
            row["commit"] = {"value": e["commit"],
                             "text": e["commit"][:8] + (" (dirty)" if e.get("dirty") else "")}
        for key in ("train_time_s", "wall_time_s"):
            if e.get(key) is not None:
                row[key] = {"value": e[key], "text": f"{e[key]:.1f}"}
        if e.get("result_file"):
            href = os.path.relpath(os.path.abspath(e["result_file"]), os.path.abspath(out_dir))
            row["result_file"] = {"value": e["result_file"], "href": Path(href).as_posix()}
        rows.append(row)
    return {"caption": None, **_table(columns, rows)}


def _diagnostics_figure(entry: dict) -> dict:
    """One method's diagnostics as inline SVG panels: CKA and ERF, then its mean gates."""
    from .figures import cka_panel, erf_panel, gate_panels

    report = entry["report"]
    return {"label": entry["label"], "cell": entry["cell"],
            "maps": [markupsafe.Markup(cka_panel(report)), markupsafe.Markup(erf_panel(report))],
            "gates": [markupsafe.Markup(p) for p in gate_panels(report)]}


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True)


def render(tables: dict, out: str | os.PathLike) -> Path:
    """Render ``tables`` (the tables.json contract) to ``out`` and return its path.

    Everything is validated and rendered in memory before the atomic write, so a malformed
    input raises ValueError and leaves no file (and any previous page untouched).
    """
    _validate(tables)
    out = Path(out)
    sections = [{"id": s["id"], "title": s["title"], "kind": s.get("kind", "comparison"),
                 "caption": s.get("caption"), **_table(s["columns"], s["rows"]),
                 "figures": [_diagnostics_figure(f) for f in s.get("figures", [])]}
                for s in tables["sections"]]
    html = _environment().get_template("leaderboard.html.j2").render(
        profile=tables.get("profile", "?"), synthetic=bool(tables.get("synthetic")),
        generated=tables.get("generated", ""), note=tables.get("note", ""),
        sections=sections, plots=[_pareto(p) for p in tables.get("pareto", [])],
        provenance=_provenance(tables.get("provenance", []), out.parent))
    return write_text_atomic(out, html)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.leaderboard",
                                     description="Render tables.json as a static HTML page.")
    parser.add_argument("--tables", type=Path, required=True, help="aggregated tables.json")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output HTML file (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    path = render(json.loads(args.tables.read_text(encoding="utf-8")), args.out)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
