"""The diagnostics' figures as self-contained SVG (no external files): heatmaps of small
matrices as one shaded square per value (its value in a tooltip), large maps (an effective
receptive field) as an embedded PNG, and a diagnostics report's panels side by side in one SVG
(a report: benchmark/diagnostics.py's ``diagnose``).

Read by `parax-bench diagnose` (RESULT.diagnostics.svg), the ``diagnose-`` stages
(results/diagnostics/PROFILE/CELL.svg) and the leaderboard's diagnostics section.
"""
from __future__ import annotations

import base64
import io
import re
from html import escape
from typing import Sequence

LOW, HIGH, MISSING = (255, 255, 255), (8, 48, 107), "#d9dce1"
GAP = 24  # between panels


def _rgb(t: float) -> tuple[int, int, int]:
    t = min(max(t, 0.0), 1.0)
    return tuple(round(a + (b - a) * t) for a, b in zip(LOW, HIGH))


def shade(t: float) -> str:
    """0 -> white, 1 -> deep blue (a single-hue ramp: readable in grey and for colour-blind
    readers); NaN -> light grey."""
    if t != t:  # NaN
        return MISSING
    return "#" + "".join(f"{c:02x}" for c in _rgb(t))


def _range(rows: list[list[float]], vmin: float | None, vmax: float | None) -> tuple[float, float]:
    finite = [v for r in rows for v in r if v == v] or [0.0, 1.0]
    lo = min(finite) if vmin is None else vmin
    hi = max(finite) if vmax is None else vmax
    return lo, (hi - lo) or 1.0


def _open(width: float, height: float, title: str) -> str:
    return (f'<svg class="heatmap" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:g} '
            f'{height:g}" width="{width:g}" height="{height:g}" role="img" '
            f'aria-label="{escape(title)}">\n<text x="0" y="13" font-size="12">{escape(title)}</text>')


def heatmap_svg(values: Sequence[Sequence[float]], title: str, row_labels: Sequence[str] = (),
                col_labels: Sequence[str] = (), vmin: float | None = None,
                vmax: float | None = None, cell: int = 14) -> str:
    """A (rows x cols) matrix, rows of any length: one square per value (None: a gap), shaded
    from ``vmin`` (white) to ``vmax`` (blue; default: the data's range), with row and column
    labels."""
    rows = [[None if v is None else float(v) for v in r] for r in values]
    lo, span = _range([[v for v in r if v is not None] for r in rows], vmin, vmax)
    left = 8 + 6 * max((len(s) for s in row_labels), default=0)
    top = 22 + (6 * max((len(s) for s in col_labels), default=0) if col_labels else 0)
    n_cols = max((len(r) for r in rows), default=0)
    width = max(left + n_cols * cell + 4, 6.5 * len(title))
    out = [_open(width, top + len(rows) * cell + 4, title)]
    for j, label in enumerate(col_labels):
        x = left + j * cell + cell / 2
        out.append(f'<text font-size="10" transform="translate({x:.1f},{top - 3}) rotate(-90)">'
                   f'{escape(label)}</text>')
    for i, row in enumerate(rows):
        y = top + i * cell
        if i < len(row_labels):
            out.append(f'<text x="{left - 4}" y="{y + cell - 3}" font-size="10" '
                       f'text-anchor="end">{escape(row_labels[i])}</text>')
        for j, v in enumerate(row):
            if v is None:  # a gap
                continue
            out.append(f'<rect x="{left + j * cell}" y="{y}" width="{cell}" height="{cell}" '
                       f'fill="{shade((v - lo) / span)}"><title>{v:.3g}</title></rect>')
    out.append("</svg>")
    return "\n".join(out)


def png_data_uri(values: Sequence[Sequence[float]], vmin: float | None = None,
                 vmax: float | None = None) -> str:
    """A (rows x cols) map as a PNG, one pixel per value on the heatmaps' ramp, as a data URI."""
    from PIL import Image

    rows = [list(map(float, r)) for r in values]
    lo, span = _range(rows, vmin, vmax)
    image = Image.new("RGB", (len(rows[0]), len(rows)))
    image.putdata([_rgb((v - lo) / span) if v == v else (217, 220, 225) for r in rows for v in r])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def map_svg(values: Sequence[Sequence[float]], title: str, size: int = 128,
            vmin: float | None = None, vmax: float | None = None) -> str:
    """A large map (an ERF) as an SVG holding its PNG, scaled to ``size`` pixels wide, shown
    with square pixels (no smoothing)."""
    h, w = len(values), len(values[0])
    height = size * h / w
    uri = png_data_uri(values, vmin, vmax)
    return (f"{_open(max(size + 4, 6.5 * len(title)), 22 + height + 4, title)}\n"
            f'<image x="0" y="22" width="{size}" height="{height:g}" href="{uri}" '
            f'style="image-rendering:pixelated" preserveAspectRatio="none"/>\n</svg>')


def _size(svg: str) -> tuple[float, float]:
    match = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg)
    return float(match.group(1)), float(match.group(2))


def side_by_side(panels: Sequence[str], title: str, max_width: float = 1100) -> str:
    """Panels (each an SVG of this module) in rows of at most ``max_width``, under a title."""
    placed, x, y, row_height, width = [], 0.0, 22.0, 0.0, 0.0
    for panel in panels:
        w, h = _size(panel)
        if x and x + w > max_width:
            x, y, row_height = 0.0, y + row_height + GAP, 0.0
        placed.append(panel.replace("<svg ", f'<svg x="{x:g}" y="{y:g}" ', 1))
        x += w + GAP
        row_height, width = max(row_height, h), max(width, x - GAP)
    return "\n".join([_open(width, y + row_height, title), *placed, "</svg>"])


# -- a diagnostics report -------------------------------------------------------------------------
def block_labels(report: dict) -> list[str]:
    return [f"s{b['stage']}.b{b['index']}" for b in report["blocks"]]


def module_label(name: str) -> str:
    """A routed module's name for figures: ``s2.b1.attn_out`` for a Swin/ConvNeXt site."""
    return re.sub(r"^(?:model\.)?(?:layers|stages)\.(\d+)\.blocks\.(\d+)\.peft_sites\.(\w+)\.\d+$",
                  r"s\1.b\2.\3", name)


def cka_panel(report: dict) -> str:
    blocks = block_labels(report)
    return heatmap_svg(report["cka"], "linear CKA between block outputs", blocks, blocks,
                       vmin=0.0, vmax=1.0)


def erf_panel(report: dict) -> str:
    return map_svg(report["erf"]["map"], "ERF of the last stage", vmin=0.0, vmax=1.0)


def gate_panels(report: dict) -> list[str]:
    """Per gate group, the mean gate of every routed module (a row) over its experts, over the
    first n images for each n the report has and over all of them, side by side (the paper's
    Figure 5)."""
    routing = report["routing"]
    modules = [module_label(m["module"]) for m in routing]
    out = []
    for group in list(routing[0]["groups"]) if routing else []:
        stats = [m["groups"][group] for m in routing]
        width = max(s["experts"] for s in stats)
        sizes = [*stats[0]["mean_gate_at"], str(stats[0]["images"])]
        rows = []
        for s in stats:
            gates = [*s["mean_gate_at"].values(), s["mean_gate"]]
            rows.append([v for g in gates for v in [*g, *[None] * (width - len(g) + 1)]][:-1])
        out.append(heatmap_svg(rows, f"mean gate, {group}: {' | '.join(sizes)} images", modules,
                               vmin=0.0, vmax=1.0, cell=10))
    return out


def figure_svg(cell_id: str, report: dict) -> str:
    """One self-contained SVG of a report: CKA, ERF and the gate panels."""
    panels = [cka_panel(report), erf_panel(report), *gate_panels(report)]
    return side_by_side(panels, f"{cell_id}: {report['images']} validation images")
