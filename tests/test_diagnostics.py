"""Known answers of the diagnostics: CKA's invariances, a conv's receptive field, routing
entropy and usage at their bounds, and the gates recorded from a real ParaX host."""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest
import torch
from torch import nn

from benchmark.diagnostics import (cka_matrix, effective_receptive_field, gate_groups,
                                   gate_summary, linear_cka, mass_area, recording_outputs,
                                   routing, stage_redundancy)
from methods import build

from .conftest import micro_input, run

SVG = "{http://www.w3.org/2000/svg}"


def test_cka_of_a_representation_with_itself_is_one():
    x = torch.randn(32, 50, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 30, generator=g), torch.randn(40, 20, generator=g)
    y = y + x[:, :20]  # related, so the value is not trivial
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    reference = linear_cka(x, y)
    assert 0.1 < reference < 0.99
    assert linear_cka(x.double() @ q, y) == pytest.approx(reference, abs=1e-10)
    assert linear_cka(3.7 * x, 0.01 * y) == pytest.approx(reference, abs=1e-10)


def test_cka_of_independent_features_is_near_zero():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2000, 5, generator=g), torch.randn(2000, 5, generator=g)
    assert linear_cka(x, y) < 0.01


def test_cka_matrix_and_stage_redundancy():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(16, 8, generator=g)
    feats = [a, 2 * a, torch.randn(16, 8, generator=g)]
    cka = cka_matrix(feats)
    assert cka[0][1] == pytest.approx(1.0) and cka[1][0] == pytest.approx(1.0)
    assert all(cka[i][i] == pytest.approx(1.0) for i in range(3))
    redundancy = stage_redundancy(cka, [0, 0, 1])
    assert redundancy[0] == pytest.approx(1.0) and redundancy[1] is None


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_the_erf_of_one_conv_is_its_kernel_support(k):
    conv = nn.Conv2d(3, 4, k, padding=k // 2)
    nn.init.uniform_(conv.weight, 0.1, 1.0)  # no zero weights inside the support
    nn.init.constant_(conv.bias, 100.0)  # every centre output positive (kept by the ReLU)
    erf = effective_receptive_field(conv, torch.randn(2, 3, 15, 15))
    support = (erf > 0).nonzero()
    assert support[:, 0].min() == 7 - k // 2 and support[:, 0].max() == 7 + k // 2
    assert support[:, 1].min() == 7 - k // 2 and support[:, 1].max() == 7 + k // 2
    assert len(support) == k * k
    assert float(erf.sum()) == pytest.approx(1.0)
    assert mass_area(erf, 0.9999) == pytest.approx(k * k / 225)


def test_the_erf_of_an_even_sized_map_is_centred():
    """The centre of an even side is the two positions around its middle: a pointwise layer's
    ERF is then the central 2 x 2 pixels (not a quadrant's corner)."""
    conv = nn.Conv2d(3, 2, 1)
    nn.init.constant_(conv.bias, 100.0)
    erf = effective_receptive_field(conv, torch.randn(2, 3, 16, 16))
    assert (erf > 0).nonzero().tolist() == [[7, 7], [7, 8], [8, 7], [8, 8]]


def test_the_erf_through_a_channel_norm_is_not_zero():
    """A LayerNorm over channels makes their plain sum constant (zero gradient); the rectified
    sum is not."""
    class Normed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 8, 3, padding=1), nn.LayerNorm(8)

        def forward(self, x):
            return self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    torch.manual_seed(0)
    erf = effective_receptive_field(Normed(), torch.randn(2, 3, 9, 9))
    assert float(erf.sum()) == pytest.approx(1.0) and int((erf > 0).sum()) == 9


def test_mass_area_of_a_uniform_and_a_point_map():
    uniform = torch.full((10, 10), 0.01, dtype=torch.float64)
    assert mass_area(uniform, 0.5) == pytest.approx(0.5)
    assert mass_area(uniform, 0.2) == pytest.approx(0.2)
    point = torch.zeros(10, 10, dtype=torch.float64)
    point[4, 4] = 1.0
    assert mass_area(point, 0.9) == pytest.approx(0.01)


def test_a_uniform_router_has_entropy_log_m_and_uses_every_expert_as_much():
    s = gate_summary(torch.full((20, 6), 1 / 6))
    assert s["entropy_per_image"] == pytest.approx(math.log(6))
    assert s["entropy_of_mean"] == pytest.approx(s["max_entropy"])
    assert s["spread_across_images"] == pytest.approx(0.0)
    assert not s["collapsed"]


def test_one_expert_is_usage_one_and_zero_entropy():
    s = gate_summary(torch.ones(10, 1))
    assert s["experts_ever_top"] == 1.0 and s["entropy_per_image"] == 0.0
    assert s["max_entropy"] == 0.0


def test_collapse_is_one_hot_on_the_same_expert_for_every_image():
    same = torch.zeros(30, 4)
    same[:, 2] = 1.0
    assert gate_summary(same)["collapsed"] and gate_summary(same)["experts_ever_top"] == 0.25
    varied = torch.eye(4).repeat(8, 1)  # one-hot, but on a different expert per image
    s = gate_summary(varied)
    assert not s["collapsed"] and s["experts_ever_top"] == 1.0
    assert s["entropy_per_image"] == pytest.approx(0.0, abs=1e-9)
    assert s["entropy_of_mean"] == pytest.approx(math.log(4))
    assert set(s["mean_gate_at"]) == {"20"}  # the sample sizes below its 32 images


def test_routing_records_every_parax_module_and_gate_group():
    host = build("swin-micro", "parax", "ade20k")
    x = micro_input("swin-micro", batch=3)
    report = routing(host.model, lambda: run(host, x))
    modules = [m for _, m in host.model.named_modules() if type(m).__name__ == "ParaXModule"]
    assert len(report) == len(modules) > 0
    first = report[0]["groups"]
    assert list(first) == gate_groups(modules[0]) == ["down", "up", "k3", "k5", "k7"]
    assert first["down"]["images"] == 3
    assert first["down"]["experts"] == modules[0].num_experts
    assert sum(first["down"]["mean_gate"]) == pytest.approx(1.0)
    assert "gates" not in vars(modules[0])  # the method is back


def test_block_outputs_are_recorded_once_per_forward():
    host = build("swin-micro", "lora", "ade20k")
    x = micro_input("swin-micro", batch=2)
    with recording_outputs([b.module for b in host.blocks]) as outs:
        run(host, x)
    assert len(outs) == len(host.blocks) and all(len(o) == 1 for o in outs)
    cka = cka_matrix([o[0] for o in outs])
    assert len(stage_redundancy(cka, [b.stage for b in host.blocks])) == 4
    assert all(o[0].shape[0] == 2 for o in outs)


def test_diagnose_a_trained_cell_from_its_result(tmp_path):
    """`diagnose` rebuilds a trained cell from its result, adapter and pretrained backbone, and
    refuses a cell trained from scratch (its random backbone was not kept)."""
    import json

    from benchmark.cli import main
    from methods.checkpoints import export_official
    from tasks.synthetic import generate

    data = generate("ade20k", tmp_path / "ade20k", seed=0, train=8, val=4)
    pretrained = tmp_path / "swin-micro.pth"
    torch.save(export_official(build("swin-micro", "full", "cifar100")), pretrained)  # (no out_norms)
    out = tmp_path / "parax.json"
    assert main(["train", "--task", "ade20k", "--backbone", "swin-micro", "--method", "parax",
                 "--data", str(data), "--out", str(out), "--pretrained", str(pretrained),
                 "--iters", "2"]) == 0
    assert main(["diagnose", "--result", str(out), "--images", "3"]) == 0
    report = json.loads(out.with_suffix(".diagnostics.json").read_text())
    host = build("swin-micro", "parax", "ade20k")
    assert report["images"] == 3 and len(report["cka"]) == len(host.blocks)
    assert len(report["routing"]) == sum(type(m).__name__ == "ParaXModule"
                                         for m in host.model.modules())
    assert max(map(max, report["erf"]["map"])) == 1.0  # relative to its peak
    assert 0 < report["erf"]["mass_area"]["0.2"] < report["erf"]["mass_area"]["0.9"] <= 1
    figure = ET.fromstring(out.with_suffix(".diagnostics.svg").read_text())  # well-formed
    panels = figure.findall(f"{SVG}svg")  # CKA, ERF, and the mean gates of down, up, k3, k5, k7
    assert [p.get("aria-label") for p in panels] == [
        "linear CKA between block outputs", "ERF of the last stage",
        *(f"mean gate, {g}: 3 images" for g in ("down", "up", "k3", "k5", "k7"))]
    assert len(panels[0].findall(f"{SVG}rect")) == len(host.blocks) ** 2
    assert panels[1].find(f"{SVG}image").get("href").startswith("data:image/png;base64,")

    scratch = tmp_path / "scratch.json"
    assert main(["train", "--task", "ade20k", "--backbone", "swin-micro", "--method", "lora",
                 "--data", str(data), "--out", str(scratch), "--from-scratch", "--iters", "2"]) == 0
    assert main(["diagnose", "--result", str(scratch)]) == 2


def test_heatmap_svg_has_one_square_per_value_shaded_by_value():
    from benchmark.figures import heatmap_svg

    svg = heatmap_svg([[0.0, 0.5, 1.0], [1.0, float("nan"), 0.25]], "CKA <blocks>",
                      row_labels=["b0", "b1"], col_labels=["x", "y", "z"], vmin=0, vmax=1)
    root = ET.fromstring(svg)  # well-formed, the title escaped
    rects = root.findall(f"{SVG}rect")
    assert len(rects) == 6
    fills = [r.get("fill") for r in rects]
    assert fills[0] == "#ffffff" and fills[2] == fills[3] == "#08306b"
    assert fills[4] == "#d9dce1"  # NaN
    darkness = [int(f[1:3], 16) for f in (fills[0], fills[5], fills[1], fills[2])]
    assert darkness == sorted(darkness, reverse=True)  # 0 < 0.25 < 0.5 < 1: darker
    assert [r.find(f"{SVG}title").text for r in rects[:3]] == ["0", "0.5", "1"]
    assert "CKA &lt;blocks&gt;" in svg


def _report(routed: bool) -> dict:
    """A diagnose report of a 2-stage, 3-block host with a 40 x 64 ERF map and, if routed, one
    module whose 'down' gates are uniform and whose 'up' gates pick expert 0 for every image."""
    gates = {"down": torch.full((24, 4), 0.25), "up": torch.tensor([[1.0, 0, 0, 0]]).repeat(24, 1)}
    erf = torch.zeros(40, 64, dtype=torch.float64)
    erf[18:22, 30:34] = 1.0
    return {"images": 24, "blocks": [{"stage": 0, "index": 0}, {"stage": 0, "index": 1},
                                     {"stage": 1, "index": 0}],
            "cka": [[1.0, 0.8, 0.2], [0.8, 1.0, 0.3], [0.2, 0.3, 1.0]], "redundancy": [0.8, None],
            "erf": {"map": erf.tolist(), "mass_area": {"0.2": 0.002, "0.5": 0.003, "0.9": 0.006}},
            "routing": [{"module": "layers.1.blocks.0.peft_sites.attn_out.0",
                         "groups": {g: gate_summary(v) for g, v in gates.items()}}] if routed else [],
            "collapsed": []}


def test_the_leaderboard_draws_a_diagnostics_section_per_task(tmp_path):
    """The aggregate's diagnostics section: per method its scalars (a uniform router has
    entropy 1 x log M; one collapsed group of two), its ERF map coarsened to at most 32 a side;
    the page shows each method's CKA and ERF side by side, and a routed method's gates."""
    from benchmark.aggregate import Aggregator, Run
    from benchmark.leaderboard import render
    from catalog import Cell

    runs = [Run(Cell(task="ade20k", backbone="swin-micro", method=m, seed=0), tmp_path, {})
            for m in ("linear", "parax")]
    reports = {runs[0].cell.id: _report(False), runs[1].cell.id: _report(True)}
    (section,) = Aggregator({"grid": {"profile": "mini"}}, runs, ["full", "linear", "parax"],
                            diagnostics=reports).diagnostics_sections()
    assert section["id"] == "diagnostics-ade20k-swin-micro"
    linear, parax = section["rows"]
    assert linear["redundancy0"]["value"] == 0.8 and linear["redundancy1"]["value"] is None
    assert linear["erf0.5"]["value"] == pytest.approx(0.3) and "entropy_image" not in linear
    assert parax["entropy_image"]["value"] == pytest.approx(0.5)  # (1 + 0) / 2 groups
    assert parax["collapsed"]["text"] == "1 / 2"  # (uniform gates tie: expert 0 tops each)
    assert parax["ever_top"]["value"] == pytest.approx(25.0)
    erf = section["figures"][1]["report"]["erf"]["map"]
    assert (len(erf), len(erf[0])) == (20, 32) and max(map(max, erf)) == 1.0

    tables = {"sections": [section], "profile": "mini"}
    html = render(tables, tmp_path / "index.html").read_text()
    cards = html.split('<figure class="diag-card"')[1:]
    assert [c.split('data-cell="')[1].split('"')[0] for c in cards] == [r.cell.id for r in runs]
    assert cards[0].count("<svg") == 2 and "mean gate" not in cards[0]  # CKA, ERF
    assert cards[1].count("<svg") == 2 + 2  # and the gates of 'down' and 'up'
    assert "mean gate, up: 20 | 24 images" in cards[1] and "s1.b0.attn_out" in cards[1]
    assert 'href="data:image/png;base64,' in cards[0]
