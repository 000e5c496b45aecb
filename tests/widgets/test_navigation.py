"""Issue #13: navigating features (nodes, figure points, back / forward, the finder, the
overview), hover facts, the steering panel's text, stale marking and sweep, static snapshots."""

from __future__ import annotations

import types

import numpy as np
import pytest

import saematch_nb as smn
from saematch_nb.core.results import LayerMatch
from saematch_nb.core.chain import MatchChain
from saematch_nb.widgets import ChainOverview, FeatureExplorer, FeatureFinder, SteeringPanel

from .conftest import n_hooks


def _points(i):
    return types.SimpleNamespace(point_inds=[i], xs=[], ys=[])


def _stopping_chain():
    """Two pairs, partial: feature 0 of layer 0 has no partner at layer 1 (the trace stops)."""
    from tests.display.conftest import info

    n = 5
    pairs = []
    for t in range(2):
        partner = np.arange(n)
        if t == 0:
            partner[0] = -1
        lm = LayerMatch(permutation=np.arange(n), partner=partner, mse=np.full(n, 0.01), alt_mse=np.full(n, 0.05),
                        score=np.full(n, 0.1), matched=partner >= 0, threshold=0.3, n_a=n, n_b=n, d_in=4,
                        info_a=info(t, hostile=False), info_b=info(t + 1, hostile=False))
        pairs.append(lm)
    return MatchChain(pairs=tuple(pairs), layers=(0, 1, 2), infos=(pairs[0].info_a, pairs[0].info_b, pairs[1].info_b))


def test_the_issue_scenario_slider_shows_the_partner_not_the_same_index(chain):
    ex = FeatureExplorer(chain, layer=0, feature=5, figure=False)
    tr = chain.trace(0, 5)
    for L in chain.layers:
        ex.layer = L
        assert ex.feature == tr.feature_at(L)  # never "L2 #5", an unrelated feature
        assert ex.node_buttons[chain.layers.index(L)].button_style == "primary"  # the focus node


def test_the_explorer_says_where_the_trace_stops():
    ch = _stopping_chain()
    ex = FeatureExplorer(ch, layer=0, feature=0, figure=False)
    ex.layer = 2
    assert ex.feature == -1 and ex.origin == (0, 0)
    assert "does not reach it (no partner after layer 0)" in ex.trace_html.value
    assert ex.node_buttons[1].disabled and ex.node_buttons[1].description == "L1 —"
    ex.feature = 3  # a typed feature starts a new trace at the layer shown
    assert ex.origin == (2, 3) and ex.status.value == ""


def test_nodes_and_figure_points_select_features(chain):
    ex = FeatureExplorer(chain, layer=0, feature=6)
    tr = chain.trace(0, 6)
    ex.node_buttons[2].click()
    assert (ex.layer, ex.feature, ex.origin) == (2, tr.feature_at(2), (0, 6))  # focus moves, origin stays
    sim = ex.figure.data[0]  # the step points: customdata starts with the feature led to
    ex._on_point(sim, _points(0))
    assert (ex.layer, ex.feature) == (1, tr.feature_at(1))
    assert any(sh.x0 == 1 for sh in ex.figure.layout.shapes)  # the figure marks the focus layer
    tip = ex.node_buttons[1].tooltip
    assert f"L1 #{tr.feature_at(1)}" in tip and "mse" in tip and "margin" in tip


def test_back_and_forward(chain):
    ex = FeatureExplorer(chain, layer=0, feature=1, figure=False)
    assert ex.back_button.disabled
    ex.feature = 2
    ex.layer = 1
    visited = [(s[1], s[2]) for s in ex.history]
    assert visited == [(0, 1), (0, 2), (1, chain.trace(0, 2).feature_at(1))]
    ex.back()
    assert (ex.layer, ex.feature, ex.origin) == (0, 2, (0, 2))
    ex.back_button.click()
    assert (ex.layer, ex.feature, ex.origin) == (0, 1, (0, 1)) and ex.back_button.disabled
    ex.forward_button.click()
    assert (ex.layer, ex.feature) == (0, 2) and not ex.forward_button.disabled
    ex.feature = 9  # a new visit drops the forward part
    assert ex.forward_button.disabled and len(ex.history) == 3


def test_find_features_ranks_and_filters(chain):
    from saematch_nb.analysis.finder import find_features

    df = find_features(chain, n=None)
    assert len(df) == sum(chain.n_features(L) for L in chain.layers)
    pers = chain.persistence()
    row = df.iloc[0]
    assert row["persistence"] == (1 + pers["age"] + pers["lifetime"]).max()
    assert list(df["persistence"]) == sorted(df["persistence"], reverse=True)
    by_mse = find_features(chain, layer=0, sort="mse", n=None)
    assert list(by_mse["mse"]) == sorted(by_mse["mse"]) and set(by_mse["layer"]) == {0}
    acc = find_features(chain, layer=0, accepted_only=True, n=None)
    assert acc["accepted"].all() and len(acc) == int(chain.pairs[0].matched.sum())
    expl = find_features(chain, layer=1, explanations={(1, 3): "Shakespeare's pronouns", (1, 4): "numbers"},
                         explanation="pronoun", n=None)
    assert list(zip(expl["layer"], expl["feature"])) == [(1, 3)]
    with pytest.raises(ValueError, match="needs the examples"):
        find_features(chain, token="the")
    with pytest.raises(ValueError, match="unknown sort"):
        find_features(chain, sort="colour")
    with pytest.raises(ValueError, match="no Neuronpedia explanations"):
        find_features(chain, explanation="x")


def test_finder_panel_feeds_the_explorer(chain):
    ex = FeatureExplorer(chain, figure=False)
    finder = FeatureFinder(chain, explorer=ex, n=10)
    assert len(finder.rows.options) == 10 and len(finder.table) == 10
    label, (L, f) = finder.rows.options[3]
    finder.rows.value = (L, f)  # choosing a row (a click on it)
    assert ex.origin == (L, f) and (ex.layer, ex.feature) == (L, f) and finder.selected == (L, f)
    finder.layer_box.value = 2
    assert set(finder.table["layer"]) == {2} and all(lbl.startswith("L2") for lbl, _ in finder.rows.options)
    assert finder.table["margin"].isna().all()  # the last layer has no next step
    finder.layer_box.value = 1
    finder.sort_box.value = "margin"
    assert list(finder.table["margin"]) == sorted(finder.table["margin"], reverse=True)
    finder.expl_box.value = "anything"
    assert "no Neuronpedia explanations" in finder.status.value and finder.rows.options == ()


def test_overview_flow_is_clickable(chain):
    ex = FeatureExplorer(chain, layer=0, feature=2, figure=False)
    ex.feature = 7
    ov = ChainOverview(chain, ex)
    assert ov.features == [(0, 2), (0, 7)]  # the explorer's visited origins
    sk = ov.flow_figure.data[0]
    nodes = [tuple(c) for c in sk.node.customdata]
    k = next(i for i, n in enumerate(nodes) if n[0] == 2 and n[1] >= 0)
    ov._on_flow_point(sk, _points(k))  # a click on a Sankey node
    assert (ex.layer, ex.feature) == nodes[k]
    ov.node_box.value = nodes[0]  # the same with the keyboard
    assert (ex.layer, ex.feature) == nodes[0]
    ov._on_chain_point(ov.chain_figure.data[0], types.SimpleNamespace(point_inds=[1], xs=[1.0], ys=[0.5]))
    assert ex.layer == 1
    assert [t.name for t in ov.chain_figure.data][:1] == ["accepted fraction"]


def test_snapshots_are_in_the_mimebundle_static_and_escaped(model, planted, chain):
    from tests.display.conftest import HOSTILE, HOSTILE_ESCAPED, make_chain

    ex = FeatureExplorer(make_chain(n_pairs=2, n=20), layer=1, feature=2, figure=False)
    data = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data and "text/html" in data
    snap = data["text/html"]
    assert "smn-snapshot" in snap and "<script" not in snap.lower() and HOSTILE not in snap
    assert HOSTILE_ESCAPED in snap and "feature 2 of layer 1" in snap
    ex.layer = 0  # the snapshot is the panel's current state
    assert "layer 0: feature" in ex._repr_mimebundle_()["text/html"]
    panel = SteeringPanel(chain, model, feature=3, prompt=f"The {HOSTILE}", max_new_tokens=2)
    panel.run()
    snap = panel._repr_mimebundle_()["text/html"]
    assert "SteeringResult" in snap and HOSTILE not in snap and "<script" not in snap.lower()
    finder = FeatureFinder(chain, n=5)
    snap = finder._repr_mimebundle_()["text/html"]
    assert snap.count("<tr>") == 6 and "<script" not in snap.lower()  # header + 5 rows
    assert ex.snapshot()._repr_html_() == ex.snapshot_html()


def test_steering_panel_text_stale_and_sweep(model, planted, chain):
    panel = SteeringPanel(chain, model, layer=0, feature=3, strength=20.0, prompt="The quick\n", max_new_tokens=4)
    assert panel.prompt_box.value == "The quick\n"  # a multi-line prompt keeps its newline
    assert "adds what the feature writes" in panel.units_html.value
    panel.mode_box.value = "scale"
    assert "0 removes it" in panel.units_html.value
    panel.mode_box.value = "add"
    res = panel.run()
    assert res is not None and panel.stale_html.value == ""
    # the tiny test tokenizer does not round-trip its bytes: the diff then falls back to words
    assert not res.baseline_tokens or "".join(res.baseline_tokens) == res.baseline
    if res.changed:
        assert "smn-diff-add" in panel.output.value
    panel.strength = 2.0
    assert "stale" in panel.stale_html.value and "strength 20.0" in panel.stale_html.value
    assert "smn-stale" in panel.output._dom_classes
    panel.strength = 20.0  # back to what the result was made with: not stale
    assert panel.stale_html.value == ""
    panel.feature = 4
    assert "stale" in panel.stale_html.value
    df = panel.sweep([-20.0, 0.0, 20.0])
    assert list(df["strength"]) == [-20.0, 0.0, 20.0] and df["kl"].iloc[1] == pytest.approx(0.0, abs=1e-6)
    assert df["kl"].iloc[2] > 0 and "<svg" in panel.sweep_html.value and n_hooks(model) == 0
    panel.feature = -1  # what an explorer sends where its trace does not reach
    assert panel.run() is None and "no feature at layer 0" in panel.output.value


def test_figure_backend_decisions_with_fakes():
    from saematch_nb.widgets import backend

    calls = []
    colab = types.SimpleNamespace(output=types.SimpleNamespace(enable_custom_widget_manager=lambda: calls.append(1)))
    mods = {"google.colab": colab, "anywidget": object()}
    backend._ENABLED.clear()
    assert backend.in_colab(mods) and not backend.in_colab({})
    assert backend.figure_backend("auto", modules=mods, plotly_version="6.1") == "output"
    assert calls == [1]  # the custom widget manager was switched on, once per session
    assert backend.figure_backend("widget", modules=mods, plotly_version="6.1") == "widget" and calls == [1]
    assert backend.figure_backend("auto", modules={"anywidget": object()}, plotly_version="6.1") == "widget"
    assert backend.figure_backend(True, modules={"anywidget": None}, plotly_version="6.1") == "output"
    assert backend.figure_backend("auto", modules={"anywidget": None}, plotly_version="5.24") == "widget"

    def broken():
        raise RuntimeError("no widget manager here")

    old = {"google.colab": types.SimpleNamespace(output=types.SimpleNamespace(enable_custom_widget_manager=broken))}
    assert backend.enable_colab_widgets(old) is False  # an old Colab: a fallback, no failure
    assert backend.figure_backend("auto", modules=old, plotly_version="6.1") == "output"
    assert backend.enable_colab_widgets({}) is False
    with pytest.raises(ValueError, match="'auto', 'widget', 'output'"):
        backend.figure_backend("svg")


def test_output_backend_keeps_a_plain_figure(chain):
    import plotly.graph_objects as go
    import ipywidgets as W

    ex = FeatureExplorer(chain, layer=1, feature=3, figure="output")
    assert isinstance(ex.figure, W.Output) and ex.figure_backend == "output"
    assert isinstance(ex.last_figure, go.Figure) and not isinstance(ex.last_figure, go.FigureWidget)
    ex.layer = 2
    assert any(sh.x0 == 2 for sh in ex.last_figure.layout.shapes)


def _examples_setup(tmp_path_factory, n_layers):
    """A tiny model, a planted chain over its layers and the examples of every feature."""
    from tests import _saelens_doubles as fx
    from saematch_nb.core.synthetic import planted_chain

    model = fx.tiny_gemma2_model(seed=0, n_layers=n_layers, d_model=64)
    pc = planted_chain(n_layers=n_layers, n=24, d_in=64, seed=1)
    ch = smn.match_chain(pc.saes, cache=False, progress=False)
    acts = smn.collect_activations(model, ["The cat sat on the mat.", "A dog ran in the park today."] * 3,
                                   ch.layers, cache_dir=tmp_path_factory.mktemp("acts"), progress=False)
    return model, ch, smn.collect_examples(ch, acts, cache=False, progress=False)


def test_examples_of_every_step_with_histogram_and_logits(tmp_path_factory):
    model, ch, exs = _examples_setup(tmp_path_factory, 2)
    f = int(np.argmax(exs[0].n_active))
    ex = FeatureExplorer(ch, exs, model=model, layer=0, feature=f)
    html = ex.examples_markup
    assert html.count('class="smn-ex-col') == 2  # one column per layer of the trace
    assert "smn-ex-col-focus" in html and "activation histogram" in html and "top logit effects" in html
    corr = next(t for t in ex.figure.data if t.name == "activation correlation")
    assert corr.y[0] == pytest.approx(1.0)  # the origin with itself
    hist = exs[0][f].histogram
    assert int(hist[1].sum()) == int(exs[0].n_active[f])  # every non-zero activation counted once


def test_generations_split_into_model_tokens_only_when_they_round_trip():
    from saematch_nb.analysis.steering import _str_tokens

    class M:
        def __init__(self, toks):
            self.toks = toks

        def to_str_tokens(self, text, prepend_bos=False):
            assert prepend_bos is False
            return self.toks

    assert _str_tokens(M([" To", " be", ",\n"]), " To be,\n") == (" To", " be", ",\n")
    assert _str_tokens(M([" To", " b\ufffd"]), " To be") == ()  # lossy: words are safer
    assert _str_tokens(object(), "x") == ()


def test_a_focus_move_moves_only_the_focus_lines_and_a_new_trace_redraws(chain):
    from saematch_nb.display.figures import make_trace_figure

    ex = FeatureExplorer(chain, layer=0, feature=5)
    data0 = [tuple(t.y) for t in ex.figure.data]
    tr = chain.trace(0, 5)
    ex.layer = 2  # along the same trace
    focus = [sh for sh in ex.figure.layout.shapes if sh.name == "focus"]
    assert focus and all(sh.x0 == 2 and sh.x1 == 2 for sh in focus)
    assert all(sh.x0 == 2 for sh in ex.last_figure.layout.shapes if sh.name == "focus")
    assert [tuple(t.y) for t in ex.figure.data] == data0 and ex.trace is not None
    assert ex.feature == tr.feature_at(2)
    ex.select(1, 7)  # a new trace: the figure is that trace's, drawn in place
    ref = make_trace_figure(chain.trace(1, 7), focus=1)
    assert [tuple(t.y) for t in ex.figure.data] == [tuple(t.y) for t in ref.data]
    assert ex.figure.layout.title.text == ref.layout.title.text
    assert all(sh.x0 == 1 for sh in ex.figure.layout.shapes if sh.name == "focus")


def test_long_chains_get_a_wide_scrolling_figure():
    from tests.display.conftest import info

    n, T = 4, 26
    pairs = [LayerMatch(permutation=np.arange(n), partner=np.arange(n), mse=np.full(n, 0.01),
                        alt_mse=np.full(n, 0.05), score=np.full(n, 0.1), matched=np.ones(n, bool), threshold=0.3,
                        n_a=n, n_b=n, d_in=4, info_a=info(t, hostile=False), info_b=info(t + 1, hostile=False))
             for t in range(T - 1)]
    ch = MatchChain(pairs=tuple(pairs), layers=tuple(range(T)),
                    infos=tuple([p.info_a for p in pairs] + [pairs[-1].info_b]))
    ex = FeatureExplorer(ch, layer=0, feature=1)
    assert ex.figure.layout.width >= 110 * T  # markers stay apart: the box scrolls, nothing wraps
    # ipywidgets 8 has only `overflow` (CSS "x y"); an unknown overflow_x would be dropped silently
    assert ex.figure_box.layout.overflow == "auto hidden" and ex.node_row.layout.overflow == "auto hidden"
    assert ex.node_row.layout.flex_flow == "row nowrap"


def test_a_figure_updated_in_place_keeps_its_theme_and_last_figure_is_whole(chain):
    from saematch_nb.display.figures import PALETTE, make_trace_figure

    ex = FeatureExplorer(chain, layer=0, feature=5, theme="light")
    ex.select(1, 7)  # drawn in place without a template
    assert tuple(ex.figure.layout.template.layout.colorway) == tuple(PALETTE)  # the panel keeps its style
    full = ex.last_figure  # what a user saves: the whole figure, template included, current focus
    assert tuple(full.layout.template.layout.colorway) == tuple(PALETTE)
    ref = make_trace_figure(chain.trace(1, 7), focus=1, theme="light")
    assert [tuple(t.y) for t in full.data] == [tuple(t.y) for t in ref.data]
    bare = make_trace_figure(chain.trace(1, 7), template=False)  # plotly's default, not ours
    assert tuple(bare.to_plotly_json()["layout"]["template"]["layout"]["colorway"]) != tuple(PALETTE)


def test_a_focus_move_resends_only_the_two_columns_whose_outline_changes(tmp_path_factory):
    _model, ch, exs = _examples_setup(tmp_path_factory, 3)
    ex = FeatureExplorer(ch, exs, layer=0, feature=int(np.argmax(exs[0].n_active)), figure=False)
    sent = []
    for k, w in enumerate(ex.example_cols):
        w.observe(lambda ch_, k=k: sent.append(k), "value")
    ex.layer = 2
    assert sorted(sent) == [0, 2]  # the old focus and the new one
    assert "smn-ex-col-focus" in ex.example_cols[2].value and "smn-ex-col-focus" not in ex.example_cols[0].value
    sent.clear()
    ex.layer = 2
    assert sent == []
    ex.select(1, 3)  # a new trace: every column
    assert sorted(set(sent)) == [0, 1, 2]
    assert ex.examples_markup.count('class="smn-ex-col') == 3
