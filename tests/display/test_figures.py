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
    assert m.name.startswith("accepted (") and u.name.startswith("not accepted (")  # issue #13's one word
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
    assert [t.name.split(" (")[0] for t in fig.data] == ["accepted", "not accepted"]
    assert sum(len(t.x) for t in fig.data) == lm.n_a
    m = fig.data[0]
    idx = np.asarray(m.customdata)[:, 0].astype(int)
    np.testing.assert_allclose(m.y, (lm.alt_mse - lm.mse)[idx], rtol=1e-6)
    small = F.make_margin_figure(lm, max_points=50)
    assert sum(len(t.x) for t in small.data) == 50 and "50 of 120" in small.layout.title.text


def test_chain_figure_single_and_overlaid(chain):
    fig = F.make_chain_figure(chain)
    assert [t.name for t in fig.data] == ["accepted fraction", "MSE q10–q90", "MSE median"]
    frac = fig.data[0]
    assert list(frac.x) == [0.0, 1.0, 2.0, 3.0]
    np.testing.assert_allclose(frac.y, [p.matched_fraction for p in chain.pairs])
    np.testing.assert_allclose(fig.data[2].y, [np.median(p.mse) for p in chain.pairs], rtol=1e-5)
    runs = {"folded": chain, "unfolded": make_chain(n_pairs=4, n=60), f"identity {HOSTILE}": chain}
    fig = F.make_chain_figure(runs, log_mse=True)
    assert len(fig.data) == 9
    names = [t.name for t in fig.data]
    assert "folded: accepted fraction" in names and "unfolded: MSE median" in names
    assert not any(HOSTILE in n for n in names) and any(HOSTILE_ESCAPED in n for n in names)
    assert fig.layout.yaxis2.type == "log"
    with pytest.raises(TypeError, match="MatchChain"):
        F.make_chain_figure({"x": 3})


def test_trace_figure():
    """Issue #13: axes that mean something (step similarity against the acceptance bound, MSE and
    margin per step), not feature ids as a line; integer layer ticks; facts in the hover."""
    steps = (TraceStep(2, 7, 3, 5, 0.01, 0.02, True, score=0.1, threshold=0.3),
             TraceStep(3, 5, 4, 9, 0.05, -0.01, False, score=0.5, threshold=0.3))
    tr = FeatureTrace(origin_layer=3, origin_feature=5, layers=(1, 2, 3, 4), features=(-1, 7, 5, 9),
                      steps=steps, born_layer=2, dies_layer=3)
    fig = F.make_trace_figure(tr)
    assert [t.name for t in fig.data] == ["step similarity", "acceptance bound", "MSE per step", "margin"]
    sim = fig.data[0]
    assert list(sim.x) == [2.5, 3.5] and list(sim.y) == pytest.approx([0.9, 0.5])
    assert list(sim.text) == ["#7→#5", "#5→#9"]  # ids label the points, they are not the y values
    assert [c[:2] for c in sim.customdata] == [[3, 5], [4, 9]]  # a click selects the feature led to
    assert [v for v in fig.data[1].y if v is not None] == pytest.approx([0.7, 0.7, 0.7, 0.7])
    assert list(fig.data[2].y) == [0.01, 0.05] and list(fig.data[2].x) == [2.5, 3.5]
    assert fig.data[2].marker.color[0] != fig.data[2].marker.color[1]  # accepted vs rejected
    assert "first seen at layer 2" in fig.layout.title.text and "last seen at layer 3" in fig.layout.title.text
    assert list(fig.layout.xaxis2.tickvals) == [1, 2, 3, 4]
    with_corr = F.make_trace_figure(tr, correlations={2: 0.8, 3: 1.0, 4: 0.4}, focus=4)
    corr = next(t for t in with_corr.data if t.name == "activation correlation")
    assert list(corr.x) == [2, 3, 4] and list(corr.y) == [0.8, 1.0, 0.4]
    assert [list(c) for c in corr.customdata] == [[2, 7], [3, 5], [4, 9]]
    assert any(sh.x0 == 4 for sh in with_corr.layout.shapes)  # the focus layer is marked


def test_chain_figure_integer_ticks_and_one_legend_entry_per_run(chain):
    fig = F.make_chain_figure(chain)
    assert list(fig.layout.xaxis2.tickvals) == [0.0, 1.0, 2.0, 3.0]
    assert list(fig.layout.xaxis2.ticktext) == ["0→1", "1→2", "2→3", "3→4"]
    assert not any(t.showlegend for t in fig.data)  # one run: the panel titles say what is drawn
    two = F.make_chain_figure({"a": chain, "b": make_chain(n_pairs=4, n=60)})
    shown = [t for t in two.data if t.showlegend]
    assert [t.name for t in shown] == ["a: accepted fraction", "b: accepted fraction"]
    assert shown[0].line.color != shown[1].line.color


def test_palette_is_colour_blind_safe_and_dark_theme_on_request(lm):
    assert F.PALETTE[:4] == ("#0072B2", "#D55E00", "#E69F00", "#009E73")  # Okabe & Ito
    assert list(F.make_mse_figure(lm).layout.template.layout.colorway)[:3] == list(F.PALETTE[:3])
    dark = F.make_mse_figure(lm, theme="dark").layout.template.layout
    import plotly.io as pio

    assert dark.paper_bgcolor == pio.templates["plotly_dark"].layout.paper_bgcolor
    F.set_theme("dark")
    try:
        assert F.make_mse_figure(lm).layout.template.layout.paper_bgcolor == dark.paper_bgcolor
    finally:
        F.set_theme("light")
    with pytest.raises(ValueError, match="'light' or 'dark'"):
        F.set_theme("blue")


def test_paper_layout_presets():
    fig = F.make_chain_figure(make_chain(n_pairs=2, n=20))
    one = F.paper_layout(fig, "single")
    assert (one.layout.width, one.layout.height) == (312, 230)  # 3.25 in x 2.4 in at 96 px/in
    assert one.layout.font.size == pytest.approx(8 * 96 / 72)
    two = F.paper_layout(fig, "double", height_in=3)
    assert (two.layout.width, two.layout.height) == (648, 288)
    assert fig.layout.width is None  # the original is left alone
    with pytest.raises(ValueError, match="preset"):
        F.paper_layout(fig, "poster")


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
    assert sk.textfont.shadow == "none"  # vector labels: a shadow is rasterised in PDF export
    keys = [tuple(c) for c in sk.node.customdata]
    assert len(set(keys)) == len(keys) and all(lbl.startswith(f"L{k[0]} ") for lbl, k in zip(sk.node.label, keys))
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


def _crossings(sk):
    """Crossing pairs of links between the same two columns (node y order)."""
    y = list(sk.node.y)
    x = list(sk.node.x)
    ls = list(zip(sk.link.source, sk.link.target))
    n = 0
    for i, (a, b) in enumerate(ls):
        for c, d in ls[i + 1:]:
            if x[a] == x[c] and x[b] == x[d] and (y[a] - y[c]) * (y[b] - y[d]) < 0:
                n += 1
    return n


def test_flow_figure_orders_nodes_to_avoid_crossings():
    from saematch_nb.core.chain import MatchChain

    # two layers whose partners reverse the order: index order crosses every pair of links
    n = 6
    lm = make_layer_match(0, n=n, seed=0, hostile=False)
    from saematch_nb.core.results import LayerMatch

    rev = np.arange(n)[::-1].copy()
    lm = LayerMatch(permutation=rev, partner=rev, mse=np.full(n, 0.01), alt_mse=np.full(n, 0.05),
                    score=np.full(n, 0.1), matched=np.ones(n, bool), threshold=0.3, n_a=n, n_b=n, d_in=4,
                    info_a=lm.info_a, info_b=lm.info_b)
    ch = MatchChain(pairs=(lm,), layers=(0, 1), infos=(lm.info_a, lm.info_b))
    sk = F.make_flow_figure(ch, 0, list(range(n))).data[0]
    assert len(sk.link.source) == n and _crossings(sk) == 0


@pytest.mark.slow
def test_save_figure_png_and_svg_with_chromium(tmp_path, lm):
    if F._find_browser() is None:
        pytest.fail("no Chrome/Chromium on this machine: apt-get install -y chromium (.ci/run installs it)")
    png = F.save_figure(F.make_mse_figure(lm), tmp_path / "mse.png", width=500, height=300, scale=1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = F.save_figure(F.make_chain_figure(make_chain(n_pairs=2, n=20)), tmp_path / "chain.svg")
    head = svg.read_text()[:400]
    assert "<svg" in head and "<script" not in svg.read_text()


@pytest.mark.slow
def test_pdf_and_svg_have_the_physical_size_and_vector_text(tmp_path):
    """Issue #13: scale never applies to vector formats; presets give the column width; the Sankey
    PDF holds no raster image (label shadows were rasterised)."""
    if F._find_browser() is None:
        pytest.fail("no Chrome/Chromium on this machine: apt-get install -y chromium (.ci/run installs it)")
    ch = make_chain(n_pairs=3, n=30)
    pdf = F.save_figure(F.make_flow_figure(ch, 1, [0, 1, 2, 3]), tmp_path / "flow.pdf", preset="single")
    data = pdf.read_bytes()
    box = [float(v) for v in re.search(rb"/MediaBox\s*\[([^\]]*)\]", data).group(1).split()]
    assert box[2] == pytest.approx(3.25 * 72, abs=1) and box[3] == pytest.approx(2.4 * 72, abs=1)
    assert b"/Subtype /Image" not in data
    big = F.save_figure(F.make_chain_figure(ch), tmp_path / "chain.pdf", width=700, height=480, scale=4)
    box = [float(v) for v in re.search(rb"/MediaBox\s*\[([^\]]*)\]", big.read_bytes()).group(1).split()]
    assert box[2] == pytest.approx(700 * 72 / 96, abs=1)  # 7.3 in, not 14.6 (or 29)
    svg = F.save_figure(F.make_chain_figure(ch), tmp_path / "chain.svg", preset="double").read_text()
    assert re.search(r'<svg[^>]*width="648"', svg)


def test_figures_respect_the_users_plotly_template(lm, monkeypatch):
    import plotly.io as pio

    white = pio.templates["plotly_white"].layout.plot_bgcolor
    assert F.make_mse_figure(lm).layout.template.layout.plot_bgcolor == white
    monkeypatch.setattr(pio.templates, "default", "plotly_dark")
    dark = F.make_mse_figure(lm).layout.template.layout.paper_bgcolor
    assert dark == pio.templates["plotly_dark"].layout.paper_bgcolor


# -- issue #22 item 11: every size is checked before anything is written ------------------------------
@pytest.mark.parametrize("ext, kw, says", [
    ("png", {"dpi": 0.1}, r"dpi=0.1 gives a 0×0 pixel image"),
    ("png", {"dpi": 0.05, "preset": "single"}, r"dpi=0.05 gives a 0×0 pixel image"),
    ("png", {"dpi": 1e6}, r"more than the 16384 pixels a side"),
    ("png", {"dpi": float("inf")}, r"dpi must be a finite positive number"),
    ("png", {"dpi": 0}, r"dpi must be a finite positive number"),
    ("png", {"scale": 0}, r"scale must be a finite positive number"),
    ("png", {"scale": -2}, r"scale must be a finite positive number"),
    ("png", {"scale": float("nan")}, r"scale must be a finite positive number"),
    ("html", {"width": -10}, r"width \(plotly pixels\) must be a finite positive number"),
    ("png", {"height": 0}, r"height \(plotly pixels\) must be a finite positive number"),
    ("html", {"preset": ""}, r"unknown preset ''"),
    ("pdf", {"preset": "A4"}, r"unknown preset 'A4'"),
    ("pdf", {"width_in": float("inf")}, r"width_in \(inches\) must be a finite positive number"),
    ("pdf", {"height_in": -1.0}, r"height_in \(inches\) must be a finite positive number"),
    ("svg", {"font_pt": float("nan")}, r"font_pt \(points\) must be a finite positive number"),
])
def test_issue22_bad_sizes_are_refused_before_writing(tmp_path, lm, monkeypatch, ext, kw, says):
    """dpi <= 0.1 wrote a 3-byte ".png"; scale 0 / -2 and dpi=inf a scale-1 image; width=-10 was
    ignored; preset="" taken as "single"; width_in=inf an OverflowError."""
    monkeypatch.setattr(F, "_find_browser", lambda: pytest.fail("got as far as looking for a browser"))
    with pytest.raises(ValueError, match=says):
        F.save_figure(F.make_mse_figure(lm), tmp_path / f"fig.{ext}", **kw)
    assert list(tmp_path.iterdir()) == []


def test_issue22_sizes_that_are_fine_still_pass(tmp_path, lm):
    assert F.save_figure(F.make_mse_figure(lm), tmp_path / "a.html", width=640, height=480.5).exists()
    assert F.save_figure(F.make_mse_figure(lm), tmp_path / "b.json", preset="double", width_in=5).exists()
    with pytest.raises(TypeError, match="scale must be a number"):
        F.save_figure(F.make_mse_figure(lm), tmp_path / "c.png", scale="2")


# -- issue #23 -----------------------------------------------------------------------------------------
def _trace_with_thin_margin():
    # the explorer's case: an accepted step whose margin is -0.0024 (the runner-up is closer in MSE)
    steps = (TraceStep(2, 7, 3, 5, 0.01, -0.0024, True, score=0.1, threshold=0.3),
             TraceStep(3, 5, 4, 9, 0.01, 0.02, True, score=0.1, threshold=0.3),
             TraceStep(4, 9, 5, 11, 0.05, 0.03, False, score=0.5, threshold=0.3))
    return FeatureTrace(origin_layer=3, origin_feature=5, layers=(2, 3, 4, 5), features=(7, 5, 9, 11),
                        steps=steps, born_layer=2, dies_layer=4)


def test_issue23_one_meaning_per_colour_and_a_key_that_says_what_decides():
    """Point 8: orange no longer means both rejected and margin; the key says the calibrated
    criterion decides "accepted" and the margin is a separate signal, uncertain when thin."""
    assert len({F.COLORS[k] for k in ("matched", "unmatched", "margin", "focus", "threshold")}) == 5
    assert F.COLORS["margin"] not in (F.COLORS["unmatched"], "#E69F00")  # orange is gone
    fig = F.make_trace_figure(_trace_with_thin_margin())
    assert not any(t.showlegend for t in fig.data) and fig.layout.showlegend is False  # no first-point swatches
    (key,) = [a for a in fig.layout.annotations if a.name == "key"]
    assert key.text == F.TRACE_KEY
    for words in ("accepted", "rejected", "calibrated criterion alone", "margin", "uncertain"):
        assert words in key.text
    sim, _bound, bars, margin = fig.data
    assert list(sim.marker.color) == [F.COLORS["matched"]] * 2 + [F.COLORS["unmatched"]]
    assert list(bars.marker.color) == list(sim.marker.color)
    assert list(margin.marker.symbol) == ["diamond-open", "diamond", "diamond"]  # -0.0024: uncertain
    assert margin.marker.color == F.COLORS["margin"]
    assert sim.customdata[0][7] == "accepted by the calibrated criterion"
    assert sim.customdata[0][8] == "not clearly positive: uncertain" and sim.customdata[1][8] == "clearly positive"
    # the Sankey: origins no longer orange, a key for the link colours
    flow = F.make_flow_figure(traces=[_trace_with_thin_margin()])
    (fkey,) = [a for a in flow.layout.annotations if a.name == "key"]
    assert fkey.text == F.FLOW_KEY and "accepted" in fkey.text and "rejected" in fkey.text
    assert F.COLORS["origin"] in list(flow.data[0].node.color) and "#E69F00" not in list(flow.data[0].node.color)


def test_issue23_uncertain_margin_rule():
    from saematch_nb.display._util import UNCERTAIN_MARGIN, margin_uncertain

    assert margin_uncertain(0.01, -0.0024) and margin_uncertain(0.01, 0.0) and margin_uncertain(0.01, float("nan"))
    assert margin_uncertain(0.01, UNCERTAIN_MARGIN * 0.01) and not margin_uncertain(0.01, 0.002)
    assert not margin_uncertain(0.0, 1e-6)


def test_issue23_edge_html_keeps_the_criterions_arrow_and_flags_a_thin_margin():
    from saematch_nb.display import html

    thin, clear, rejected = _trace_with_thin_margin().steps
    out = html.edge_html(thin)
    assert "smn-edge-ok" in out and "smn-edge-uncertain" in out and "smn-edge-unsure" in out
    assert "by the calibrated criterion" in out and "not clearly positive" in out
    assert "smn-edge-uncertain" not in html.edge_html(clear)
    assert "smn-edge-no" in html.edge_html(rejected)


def test_issue23_paper_layout_per_figure(chain):
    tr = _trace_with_thin_margin()
    one = F.paper_layout(F.make_trace_figure(tr, correlations={2: 0.5, 3: 1.0, 4: 0.7, 5: 0.2}), "single")
    assert one.layout.height == round(2.4 * F.PAPER_HEIGHT_SCALE[("trace", 3)] * 96)
    assert F.paper_layout(F.make_trace_figure(tr), "single", height_in=2.4).layout.height == 230  # asked for
    assert list(one.layout.xaxis3.ticktext) == ["L2<br>#7", "L3<br>#5", "L4<br>#9", "L5<br>#11"]
    assert not any("text" in (t.mode or "") for t in one.data if t.type == "scatter")  # ids on the axis
    (key,) = [a for a in one.layout.annotations if a.name == "key"]
    assert "criterion" in key.text and "uncertain" in key.text and len(key.text) < len(F.TRACE_KEY)
    titles = [a.text for a in one.layout.annotations if a.name != "key"]
    assert titles == ["step similarity (1 − score)", "activation r with the origin", "MSE and margin per step"]
    doms = [one.layout[f"yaxis{k}"].domain for k in ("", "2", "3")]
    assert all(a[0] > b[1] for a, b in zip(doms, doms[1:]))  # a band between panels, for their titles
    runs = F.paper_layout(F.make_chain_figure({"folded": chain, "identity": chain}), "double")
    assert [t.name for t in runs.data if t.showlegend] == ["folded", "identity"]
    assert runs.layout.legend.orientation == "h"
    sk = F.paper_layout(F.make_flow_figure(chain, 1, [0, 1, 2]), "single")
    assert all(lb == "" or lb.startswith("#") or lb == "none" for lb in sk.data[0].node.label)
    heads = [a.text for a in sk.layout.annotations if a.name != "key"]
    assert heads == [f"L{l}" for l in chain.layers]  # traces run both ways from layer 1
    assert F.make_mse_figure(make_layer_match()).layout.meta["saematch"]["figure"] == "mse"


def test_issue23_auto_theme_is_transparent_and_files_are_white(tmp_path, lm):
    fig = F.make_mse_figure(lm, theme="auto")
    t = fig.layout.template.layout
    assert t.paper_bgcolor == t.plot_bgcolor == "rgba(0,0,0,0)" and t.font.color == "#8a8a8a"
    assert fig.layout.meta["saematch"]["theme"] == "auto"
    page = F.save_figure(fig, tmp_path / "auto.html").read_text()
    assert '"paper_bgcolor":"white"' in page.replace(" ", "")
    assert "rgba(0,0,0,0)" not in page.split("<body>")[-1][:20000]
    assert F.paper_layout(fig, "single").layout.template.layout.paper_bgcolor == "white"
    with pytest.raises(ValueError, match="'auto', 'light' or 'dark'"):
        F.make_mse_figure(lm, theme="blue")


def test_issue23_kaleido_failure_is_retried_once_then_explained(tmp_path, lm, monkeypatch):
    """One export in 64 failed with kaleido's raw ``JavascriptError: kaleido_scopes is not
    defined``; it passed when tried again."""
    pytest.importorskip("kaleido")
    monkeypatch.setattr(F, "_find_browser", lambda: "/usr/bin/chromium")
    calls = []

    def flaky(fig_dict, opts, browser):
        calls.append(opts["format"])
        if len(calls) == 1:
            raise RuntimeError("JavascriptError: kaleido_scopes is not defined")
        return b"<svg></svg>"

    monkeypatch.setattr(F._EXPORTER, "render", flaky)
    closed = []
    monkeypatch.setattr(F._EXPORTER, "close", lambda: closed.append(1))
    p = F.save_figure(F.make_mse_figure(lm), tmp_path / "a.svg")
    assert p.read_bytes() == b"<svg></svg>" and calls == ["svg", "svg"] and closed == [1]

    def broken(fig_dict, opts, browser):
        raise RuntimeError("JavascriptError: kaleido_scopes is not defined")

    monkeypatch.setattr(F._EXPORTER, "render", broken)
    with pytest.raises(F.FigureExportError) as err:
        F.save_figure(F.make_mse_figure(lm), tmp_path / "b.pdf")
    msg = str(err.value)
    assert "b.pdf twice" in msg and "kaleido_scopes is not defined" in msg and "save as .html" in msg
    assert not (tmp_path / "b.pdf").exists() and not list(tmp_path.glob(".*tmp"))


@pytest.mark.slow
def test_issue23_exports_share_one_browser(tmp_path, lm):
    if F._find_browser() is None:
        pytest.fail("no Chrome/Chromium on this machine: apt-get install -y chromium (.ci/run installs it)")
    F.close_export_browser()
    F.save_figure(F.make_mse_figure(lm), tmp_path / "a.svg", preset="single")
    first = F._EXPORTER._k
    assert first is not None
    F.save_figure(F.make_chain_figure(make_chain(n_pairs=2, n=20)), tmp_path / "b.pdf", preset="single")
    assert F._EXPORTER._k is first  # the same Chromium, not a fresh one per image
    assert (tmp_path / "b.pdf").read_bytes()[:5] == b"%PDF-"
    F.close_export_browser()
    assert F._EXPORTER._k is None
