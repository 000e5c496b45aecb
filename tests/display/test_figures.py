"""Plotly figures build with the expected traces; save_figure writes self-contained files."""

from __future__ import annotations

import re

import numpy as np
import pytest

go = pytest.importorskip("plotly.graph_objects")

from saematch_nb.core.results import FeatureTrace, TraceStep  # noqa: E402
from saematch_nb.display import figures as F  # noqa: E402

from .conftest import HOSTILE, HOSTILE_ESCAPED, make_chain, make_layer_match  # noqa: E402


def _shapes_x(fig):
    return [s.x0 for s in fig.layout.shapes if s.type == "line" and s.x0 == s.x1]


def test_mse_figure_counts_and_threshold(lm):
    fig = F.make_mse_figure(lm)
    assert isinstance(fig, go.Figure)
    assert [type(t).__name__ for t in fig.data] == ["Bar", "Bar"]
    m, u = fig.data
    assert int(np.sum(m.y)) == int(lm.matched.sum()) and int(np.sum(u.y)) == int((~lm.matched).sum())
    assert m.name.startswith("matched (") and u.name.startswith("not matched (")
    assert fig.layout.barmode == "stack"
    assert _shapes_x(fig) == [pytest.approx(lm.threshold)]
    assert HOSTILE_ESCAPED in fig.layout.title.text and HOSTILE not in fig.layout.title.text


def test_threshold_line_only_where_it_means_an_mse():
    lm = make_layer_match(score_is_mse=False)
    assert _shapes_x(F.make_mse_figure(lm)) == []  # the threshold is on the score, not on the MSE
    fig = F.make_mse_figure(lm, x="score")
    assert _shapes_x(fig) == [pytest.approx(0.5)]
    assert int(sum(np.sum(t.y) for t in fig.data)) == lm.n_a
    with pytest.raises(ValueError, match="'mse' or 'score'"):
        F.make_mse_figure(lm, x="margin")


def test_margin_figure_points_and_subsampling(lm):
    fig = F.make_margin_figure(lm)
    assert [t.name.split(" (")[0] for t in fig.data] == ["matched", "not matched"]
    assert sum(len(t.x) for t in fig.data) == lm.n_a
    m = fig.data[0]
    idx = np.asarray(m.customdata)[:, 0].astype(int)
    np.testing.assert_allclose(m.y, (lm.alt_mse - lm.mse)[idx], rtol=1e-6)
    small = F.make_margin_figure(lm, max_points=50)
    assert sum(len(t.x) for t in small.data) == 50 and "50 of 120" in small.layout.title.text


def test_chain_figure_single_and_overlaid(chain):
    fig = F.make_chain_figure(chain)
    assert [t.name for t in fig.data] == ["matched fraction", "MSE q10–q90", "MSE median"]
    frac = fig.data[0]
    assert list(frac.x) == [0.0, 1.0, 2.0, 3.0]
    np.testing.assert_allclose(frac.y, [p.matched_fraction for p in chain.pairs])
    np.testing.assert_allclose(fig.data[2].y, [np.median(p.mse) for p in chain.pairs], rtol=1e-5)
    runs = {"folded": chain, "unfolded": make_chain(n_pairs=4, n=60), f"identity {HOSTILE}": chain}
    fig = F.make_chain_figure(runs, log_mse=True)
    assert len(fig.data) == 9
    names = [t.name for t in fig.data]
    assert "folded: matched fraction" in names and "unfolded: MSE median" in names
    assert not any(HOSTILE in n for n in names) and any(HOSTILE_ESCAPED in n for n in names)
    assert fig.layout.yaxis2.type == "log"
    with pytest.raises(TypeError, match="MatchChain"):
        F.make_chain_figure({"x": 3})


def test_trace_figure():
    steps = (TraceStep(2, 7, 3, 5, 0.01, 0.02, True), TraceStep(3, 5, 4, 9, 0.05, -0.01, False))
    tr = FeatureTrace(origin_layer=3, origin_feature=5, layers=(1, 2, 3, 4), features=(-1, 7, 5, 9),
                      steps=steps, born_layer=2, dies_layer=3)
    fig = F.make_trace_figure(tr)
    assert [t.name for t in fig.data] == ["feature", "MSE per step", "margin"]
    assert list(fig.data[0].x) == [2, 3, 4] and list(fig.data[0].y) == [7, 5, 9]
    assert list(fig.data[1].y) == [0.01, 0.05] and list(fig.data[1].x) == [2.5, 3.5]
    assert fig.data[1].marker.color[0] != fig.data[1].marker.color[1]  # matched vs rejected
    assert "born at layer 2" in fig.layout.title.text and "dies at layer 3" in fig.layout.title.text


def test_flow_figure_from_chain_and_traces(chain):
    fig = F.make_flow_figure(chain, 2, [0, 1, 2])
    (sk,) = fig.data
    assert type(sk).__name__ == "Sankey"
    traces = [chain.trace(2, f) for f in (0, 1, 2)]
    present = {(l, f) for t in traces for l, f in zip(t.layers, t.features) if f >= 0}
    ends = {(s.next_layer, -1) for t in traces for s in t.steps if s.next_feature < 0}
    assert len(sk.node.label) == len(present | ends)
    assert sum(sk.link.value) == sum(len(t.steps) for t in traces)
    assert all(0 < x < 1 for x in sk.node.x)
    same = F.make_flow_figure(traces=traces)
    assert list(same.data[0].node.label) == list(sk.node.label)
    single = F.make_flow_figure(chain, 2, 0)
    assert len(single.data[0].node.label) >= 1
    with pytest.raises(TypeError, match="trace"):
        F.make_flow_figure(object(), 2, [1])
    with pytest.raises(ValueError, match="at least one"):
        F.make_flow_figure(chain, 2, [])


def test_save_figure_html_is_self_contained(tmp_path, lm):
    p = F.save_figure(F.make_mse_figure(lm), tmp_path / "sub" / "mse.html")
    s = p.read_text()
    assert p.exists() and len(s) > 1_000_000  # plotly.js inlined
    # no script is fetched (plotly.js itself mentions a topojson CDN for geo maps; that is not loaded)
    assert not re.search(r"<script[^>]*\bsrc=", s) and "cdn.plot.ly/plotly" not in s
    assert not list(p.parent.glob(".*tmp"))
    assert F.save_figure(F.make_mse_figure(lm), tmp_path / "mse.json").read_text().startswith("{")
    with pytest.raises(ValueError, match=r"\.html, \.json, \.png"):
        F.save_figure(F.make_mse_figure(lm), tmp_path / "mse.gif")
    with pytest.raises(TypeError, match="plotly Figure"):
        F.save_figure("not a figure", tmp_path / "x.html")


def test_save_figure_without_browser_says_what_to_install(tmp_path, lm, monkeypatch):
    monkeypatch.setattr(F, "_find_browser", lambda: None)
    with pytest.raises(F.FigureExportError) as err:
        F.save_figure(F.make_mse_figure(lm), tmp_path / "mse.png")
    msg = str(err.value)
    assert "apt-get install -y chromium" in msg and ".html works without it" in msg
    assert not (tmp_path / "mse.png").exists()


@pytest.mark.slow
def test_save_figure_png_and_svg_with_chromium(tmp_path, lm):
    if F._find_browser() is None:
        pytest.skip("no Chrome/Chromium on this machine (apt-get install -y chromium); the error path is tested above")
    png = F.save_figure(F.make_mse_figure(lm), tmp_path / "mse.png", width=500, height=300, scale=1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = F.save_figure(F.make_chain_figure(make_chain(n_pairs=2, n=20)), tmp_path / "chain.svg")
    head = svg.read_text()[:400]
    assert "<svg" in head and "<script" not in svg.read_text()


def test_figures_respect_the_users_plotly_template(lm, monkeypatch):
    import plotly.io as pio

    assert F.make_mse_figure(lm).layout.template.layout.plot_bgcolor == pio.templates["plotly_white"].layout.plot_bgcolor
    monkeypatch.setattr(pio.templates, "default", "plotly_dark")
    dark = F.make_mse_figure(lm).layout.template.layout.paper_bgcolor
    assert dark == pio.templates["plotly_dark"].layout.paper_bgcolor
