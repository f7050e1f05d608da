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
    erf = effective_receptive_field(nn.Conv2d(3, 2, 1), torch.randn(2, 3, 16, 16))
    assert (erf > 0).nonzero().tolist() == [[7, 7], [7, 8], [8, 7], [8, 8]]


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
