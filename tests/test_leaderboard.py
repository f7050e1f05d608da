"""The static HTML leaderboard: content, self-containment, atomic writes, sorting in a browser."""
from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from benchmark.leaderboard import MISSING, main, render

VOID = {"meta", "link", "br", "img", "input", "hr", "wbr", "source"}


def _tables(synthetic: bool = True) -> dict:
    """Two sections (one grouped, with a reported column and a missing value), a Pareto plot
    whose points span more than a decade, and two provenance rows (one dirty)."""
    def num(v, text=None, **kw):
        return {"text": text or f"{v}", "value": v, **kw}

    return {
        "profile": "mini", "synthetic": synthetic, "generated": "2026-11-23T22:10:00Z",
        "note": "Means over 3 seeds <b>not</b> markup.",
        "sections": [
            {"id": "table1", "title": "Table 1: ADE20K (UperNet)", "kind": "comparison",
             "caption": "mIoU on the validation split.",
             "columns": [
                 {"key": "method", "label": "Method", "numeric": False},
                 {"key": "swin-b:params_m", "label": "Params (M)", "numeric": True,
                  "group": "Swin-B"},
                 {"key": "swin-b:mIoU", "label": "mIoU", "numeric": True, "group": "Swin-B",
                  "best": "max"},
                 {"key": "swin-b:mIoU:reported", "label": "mIoU (paper)", "numeric": True,
                  "group": "Swin-B", "reported": True}],
             "rows": [
                 {"method": num("LoRA"), "swin-b:params_m": num(10.0, "10.00"),
                  "swin-b:mIoU": num(51.0, "51.0 ± 0.1", n=3),
                  "swin-b:mIoU:reported": num(50.2)},
                 {"method": num("Full"), "swin-b:params_m": num(120.0, "120.00"),
                  "swin-b:mIoU": {"text": "-", "value": None}},
                 {"method": num("ParaX"), "swin-b:params_m": num(0.5, "0.50"),
                  "swin-b:mIoU": num(51.3, "51.3 ± 0.2", n=3),
                  "swin-b:mIoU:reported": num(51.4)},
                 {"method": num("Linear"), "swin-b:params_m": num(0.1, "0.10"),
                  "swin-b:mIoU": num(40.5, "40.5 ± 0.0", n=3)}]},
            {"id": "table1-differences", "title": "Table 1: paired differences",
             "kind": "differences",
             "columns": [{"key": "method", "label": "Method", "numeric": False},
                         {"key": "d", "label": "Δ vs Full [95% CI]", "numeric": True}],
             "rows": [{"method": num("LoRA"), "d": num(0.3, "+0.3 [-0.2, +0.8] n.s.", cls="ns")},
                      {"method": num("ParaX"), "d": num(1.2, "+1.2 [+0.4, +2.0]")}]},
            {"id": "table2", "title": "Table 2: ablation", "kind": "ablation",
             "columns": [{"key": "variant", "label": "Variant"},
                         {"key": "ap", "label": "AP", "numeric": True}],
             "rows": [{"variant": num("no routing"), "ap": num(30.1)},
                      {"variant": num("full"), "ap": num(31.7)}]},
        ],
        "pareto": [
            {"id": "pareto-ade20k-swin-b", "task": "ade20k", "backbone": "swin-b",
             "metric": "mIoU", "points": [
                 # ParaX and LoRA at three budgets each (a sweep): one curve per method
                 {"method": "parax", "label": "ParaX", "params_m": 0.5, "score": 51.3,
                  "std": 0.2, "n": 3, "budget": "14%"},
                 {"method": "parax", "label": "ParaX", "params_m": 0.25, "score": 50.1,
                  "std": 0.0, "n": 1, "budget": "7%"},
                 {"method": "parax", "label": "ParaX", "params_m": 1.0, "score": 51.9,
                  "std": 0.0, "n": 1, "budget": "28%"},
                 {"method": "lora", "label": "LoRA", "params_m": 10.0, "score": 51.0,
                  "std": 0.1, "n": 3, "budget": "14%"},
                 {"method": "lora", "label": "LoRA", "params_m": 5.0, "score": 49.0,
                  "std": 0.0, "n": 1, "budget": "7%"},
                 {"method": "lora", "label": "LoRA", "params_m": 20.0, "score": 51.2,
                  "std": 0.0, "n": 1, "budget": "28%"},
                 {"method": "linear", "label": "Linear", "params_m": 0.0, "score": 40.5,
                  "std": 0.0, "n": 3}]},
        ],
        "provenance": [
            {"cell": "ade20k.swin-b.parax.s0", "task": "ade20k", "backbone": "swin-b",
             "method": "parax", "variant": None, "seed": 0, "profile": "mini",
             "commit": "abc123def4567890", "dirty": True, "device": "cpu",
             "date": "2026-11-23T22:00:00Z", "wall_time_s": 15.2,
             "result_file": "results/runs/mini/ade20k.swin-b.parax.s0.json"},
            {"cell": "ade20k.swin-b.lora.s1", "task": "ade20k", "backbone": "swin-b",
             "method": "lora", "variant": None, "seed": 1, "profile": "mini",
             "commit": "0123456789abcdef", "dirty": False, "device": "cpu",
             "date": "2026-11-23T22:01:00Z", "wall_time_s": 9.75,
             "result_file": "results/runs/mini/ade20k.swin-b.lora.s1.json"},
        ],
    }


class _Tree(HTMLParser):
    """Minimal DOM: nested dicts; fails on a mismatched end tag (a cheap well-formedness check)."""

    def __init__(self, html: str):
        super().__init__()
        self.root = {"tag": "#root", "attrs": {}, "kids": [], "text": ""}
        self.stack = [self.root]
        self.feed(html)
        self.close()
        assert self.stack == [self.root], f"unclosed: {[n['tag'] for n in self.stack[1:]]}"

    def handle_starttag(self, tag, attrs):
        node = {"tag": tag, "attrs": dict(attrs), "kids": [], "text": ""}
        self.stack[-1]["kids"].append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        if tag not in VOID:
            assert self.stack[-1]["tag"] == tag, f"</{tag}> closes <{self.stack[-1]['tag']}>"
            self.stack.pop()

    def handle_data(self, data):
        for node in self.stack:
            node["text"] += data


def _all(node: dict, tag: str | None = None):
    for kid in node["kids"]:
        if tag is None or kid["tag"] == tag:
            yield kid
        yield from _all(kid, tag)


def _classes(node: dict) -> set[str]:
    return set((node["attrs"].get("class") or "").split())


def _sections(root: dict) -> dict[str, dict]:
    return {s["attrs"]["id"]: s for s in _all(root, "section")}


def _body_rows(section: dict) -> list[list[dict]]:
    tbody = next(_all(section, "tbody"))
    return [list(_all(tr, "td")) for tr in _all(tbody, "tr")]


@pytest.fixture
def page(tmp_path, monkeypatch) -> tuple[Path, dict]:
    monkeypatch.chdir(tmp_path)  # result_file paths are relative to the working directory
    out = render(_tables(), Path("results/leaderboard/index.html"))
    return out, _Tree(out.read_text(encoding="utf-8")).root


def test_sections_rows_and_reported_columns(page):
    out, root = page
    tables = _tables()
    sections = _sections(root)
    assert {"table1", "table2", "pareto-ade20k-swin-b", "provenance"} <= set(sections)
    ids = {n["attrs"]["id"] for n in _all(root) if "id" in n["attrs"]}
    toc = [a["attrs"]["href"] for a in _all(next(n for n in _all(root, "nav")), "a")]
    assert toc and all(h.startswith("#") and h[1:] in ids for h in toc)
    for sec in tables["sections"]:
        rows = _body_rows(sections[sec["id"]])
        assert len(rows) == len(sec["rows"])
        for row, tds in zip(sec["rows"], rows):
            for col, td in zip(sec["columns"], tds, strict=True):
                cell = row.get(col["key"])
                missing = cell is None or cell["value"] is None
                assert td["text"].strip() == (MISSING if missing else cell["text"])
                assert ("missing" in _classes(td)) == missing
                assert ("reported" in _classes(td)) == bool(col.get("reported"))
        heads = {th["text"].strip(): th for th in _all(sections[sec["id"]], "th")}
        for col in sec["columns"]:
            assert ("reported" in _classes(heads[col["label"]])) == bool(col.get("reported"))
    assert next(th for th in _all(sections["table1"], "th") if th["text"] == "Swin-B")[
        "attrs"]["colspan"] == "3"
    assert "<b>not</b>" not in out.read_text(encoding="utf-8")  # free text is escaped


def test_self_contained(page):
    out, root = page
    refs = [v for n in _all(root) for k, v in n["attrs"].items() if k in ("src", "href")]
    assert refs and not [r for r in refs if r.startswith(("http:", "https:", "//"))]
    assert not list(_all(root, "img")) and all("src" not in s["attrs"]
                                               for s in _all(root, "script"))


def test_pareto_plot(page):
    _, root = page
    svg = next(_all(_sections(root)["pareto-ade20k-swin-b"], "svg"))
    series = {g["attrs"]["data-method"]: g for g in _all(svg, "g") if "series" in _classes(g)}
    assert list(series) == ["parax", "lora", "linear"]
    for method, budgets in (("parax", 3), ("lora", 3), ("linear", 1)):
        lines = [p for p in _all(series[method], "polyline") if "series-line" in _classes(p)]
        assert len(lines) == (1 if budgets > 1 else 0), method
        if lines:  # the curve runs through the method's points by params
            xs = [float(xy.split(",")[0]) for xy in lines[0]["attrs"]["points"].split()]
            assert len(xs) == budgets and xs == sorted(xs)
    titled = [c for c in _all(svg, "circle") if c["text"]]  # legend swatches have no title
    assert len(titled) == 7  # every point has its figures as a tooltip
    front = {c["text"].split(" at ")[0] for c in titled if "front" in _classes(c)}
    assert front == {"Linear: 40.5", "ParaX: 50.1", "ParaX: 51.3 ± 0.2", "ParaX: 51.9"}
    labels = [t["text"] for t in _all(svg, "text")]
    # one legend row per method; no text beside a point (tick labels, axis titles, legend)
    assert [t for t in labels if t in ("ParaX", "LoRA", "Linear")] == ["ParaX", "LoRA", "Linear"]
    assert {"mIoU", "Trainable params (M, log scale)"} <= set(labels)
    # linear probing trains no backbone parameter: its point sits at the axis's "0" tick
    linear = next(c for c in titled if c["text"].startswith("Linear"))
    zero_tick = next(t for t in _all(svg, "text") if t["text"] == "0")
    assert linear["attrs"]["cx"] == zero_tick["attrs"]["x"]
    assert len([p for p in _all(svg, "path") if "err" in _classes(p)]) == 2  # std 0: no bar


def test_best_value_per_column_and_not_significant_differences(page):
    _, root = page
    sections = _sections(root)
    miou = [row[2] for row in _body_rows(sections["table1"])]
    assert ["best" in _classes(td) for td in miou] == [False, False, True, False]
    diffs = [row[1] for row in _body_rows(sections["table1-differences"])]
    assert ["ns" in _classes(td) for td in diffs] == [True, False]


def test_provenance(page):
    _, root = page
    rows = _body_rows(_sections(root)["provenance"])
    assert [r[0]["text"] for r in rows] == ["ade20k.swin-b.parax.s0", "ade20k.swin-b.lora.s1"]
    assert rows[0][2]["text"] == "abc123de (dirty)" and rows[1][2]["text"] == "01234567"
    link = next(_all(rows[0][-1], "a"))["attrs"]["href"]
    assert link == "../runs/mini/ade20k.swin-b.parax.s0.json"


@pytest.mark.parametrize("synthetic", [True, False])
def test_synthetic_banner(tmp_path, synthetic):
    out = render(_tables(synthetic), tmp_path / "index.html")
    html = out.read_text(encoding="utf-8")
    assert ('id="synthetic-banner"' in html) == synthetic
    assert ("not comparable" in html) == synthetic


def test_malformed_input_leaves_no_file(tmp_path):
    tables = _tables()
    del tables["sections"][2]["columns"]
    out = tmp_path / "lb" / "index.html"
    with pytest.raises(ValueError, match=r"sections\[2\] \('table2'\) is missing 'columns'"):
        render(tables, out)
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_cli(tmp_path):
    src = tmp_path / "tables.json"
    src.write_text(json.dumps(_tables()), encoding="utf-8")
    assert main(["--tables", str(src), "--out", str(tmp_path / "out" / "index.html")]) == 0
    assert "parax-bench leaderboard" in (tmp_path / "out" / "index.html").read_text("utf-8")


@pytest.fixture
def chromium():
    """Real headless chromium from the distro (scripts/browser-deps.sh), never a download."""
    binary, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and chromedriver):
        pytest.skip("chromium/chromedriver not on PATH; run scripts/browser-deps.sh")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(executable_path=chromedriver))
    try:
        yield driver
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
    finally:
        driver.quit()


@pytest.mark.browser
def test_sorting_in_chromium(tmp_path, chromium):
    from selenium.webdriver.common.by import By

    driver = chromium
    out = render(_tables(), tmp_path / "index.html")
    driver.get(out.as_uri())
    header = driver.find_element(By.CSS_SELECTOR, '#table1 th[data-col="2"]')

    def column():
        """(method, mIoU or None) per body row, in DOM order."""
        rows = driver.find_elements(By.CSS_SELECTOR, "#table1 tbody tr")
        cells = [r.find_elements(By.TAG_NAME, "td") for r in rows]
        return [(c[0].text, None if c[2].get_attribute("data-value") is None
                 else float(c[2].get_attribute("data-value"))) for c in cells]

    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    assert column() == [("Linear", 40.5), ("LoRA", 51.0), ("ParaX", 51.3), ("Full", None)]
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    assert column() == [("ParaX", 51.3), ("LoRA", 51.0), ("Linear", 40.5), ("Full", None)]


@pytest.mark.browser
def test_pareto_screenshot_shows_a_curve_per_method_error_bars_and_a_legend(tmp_path, chromium):
    """The plot as Chromium draws it: every method's colour is on screen (its curve or point),
    error bars have height, and the legend rows overlap neither each other nor the plot."""
    import io

    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.by import By

    driver = chromium
    out = render(_tables(), tmp_path / "index.html")
    driver.get(out.as_uri())
    svg = driver.find_element(By.CSS_SELECTOR, "#pareto-ade20k-swin-b svg")
    shot = np.asarray(Image.open(io.BytesIO(svg.screenshot_as_png)).convert("RGB")).astype(int)
    for group in driver.find_elements(By.CSS_SELECTOR, "#pareto-ade20k-swin-b g.series"):
        colour = group.get_attribute("style").split("#")[1][:6]  # style="--c: #RRGGBB"
        rgb = np.array([int(colour[i:i + 2], 16) for i in (0, 2, 4)])
        pixels = int((np.abs(shot - rgb).sum(axis=-1) < 40).sum())
        assert pixels > 40, (group.get_attribute("data-method"), pixels)
    bars = driver.find_elements(By.CSS_SELECTOR, "#pareto-ade20k-swin-b path.err")
    assert len(bars) == 2 and all(b.rect["height"] > 2 for b in bars)
    box = driver.find_element(By.CSS_SELECTOR, "#pareto-ade20k-swin-b path.axis").rect
    legend = [t.rect for t in driver.find_elements(By.CSS_SELECTOR,
                                                   "#pareto-ade20k-swin-b .legend-item text")]
    assert len(legend) == 3
    for i, a in enumerate(legend):
        assert a["x"] > box["x"] + box["width"]  # right of the plot area
        for b in legend[i + 1:]:
            assert a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"]


def test_the_committed_page_shows_the_diagnostics_of_every_method():
    """The committed mini page: per dense task the profile diagnoses, a card for every method's
    seed-0 cell with its CKA heatmap and ERF map, and ParaX's mean gates; the README's figure
    is one of the committed diagnose figures."""
    from pipelines.grid import diagnosed, expand, load_params

    root = Path(__file__).resolve().parents[1]
    params = load_params(root / "params.yaml")
    html = (root / "results/leaderboard/index.html").read_text()
    kept = [c for c in expand(params) if diagnosed(params, c)]
    assert {c.task for c in kept} == set(params["grid"]["diagnostics"]["tasks"])
    for c in kept:
        assert f'<section id="diagnostics-{c.task}-{c.backbone}"' in html
        card = html.split(f'<figure class="diag-card" data-cell="{c.id}">')[1].split("</figure>")[0]
        assert 'aria-label="linear CKA between block outputs"' in card
        assert 'aria-label="ERF of the last stage"' in card and "data:image/png;base64," in card
        assert ("mean gate, down" in card) == (c.method == "parax")
        assert (root / f"results/diagnostics/mini/{c.id}.svg").is_file()
    readme = (root / "README.md").read_text()
    assert "](results/diagnostics/mini/ade20k.swin-micro.parax.s0.svg)" in readme
