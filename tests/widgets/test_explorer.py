"""Widget panels, headless: ipywidgets work without a frontend (no comm is opened), so the
traitlets, the controls and the HTML they hold can be driven and read from here."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

import saematch_nb as smn
from saematch_nb.core.synthetic import planted_chain
from saematch_nb.display.figures import make_trace_figure
from saematch_nb.analysis.examples import Example, FeatureExamples
from saematch_nb.widgets import FeatureExplorer, SteeringPanel

from tests.display.conftest import visible_text

from .conftest import n_hooks


def fake_examples(layer: int, feature: int) -> FeatureExamples:
    ex = Example(doc=0, pos=1, value=2.5, tokens=("The", "zebra<b>", "ran"), values=(0.0, 2.5, 0.1), center=1)
    return FeatureExamples(layer=layer, feature=feature, max_value=2.5, frac_active=0.01, top=(ex,), quantiles=())


# -- FeatureExplorer ------------------------------------------------------------------------------
def test_explorer_follows_layer_and_feature(chain):
    """Issue #13: moving the layer follows the trace (the traced partner there, same origin);
    typing a feature starts a new trace (the earlier test asserted re-anchoring on a layer move)."""
    ex = FeatureExplorer(chain, layer=1, feature=4)
    assert (ex.layer, ex.feature) == (1, 4)
    assert ex.trace is not None and (ex.trace.origin_layer, ex.trace.origin_feature) == (1, 4)
    assert "feature 4 of layer 1" in ex.trace_html.value
    ex.feature = 17
    assert "feature 17 of layer 1" in ex.trace_html.value and ex.feature_box.value == 17
    ex.layer = 2
    partner = chain.trace(1, 17).feature_at(2)
    assert (ex.layer, ex.feature, ex.origin) == (2, partner, (1, 17)) and ex.layer_slider.value == 2
    assert ex.feature_box.value == partner and "feature 17 of layer 1" in ex.trace_html.value
    assert f"layer 2: feature {partner}" in ex.trace_html.value
    assert ex.trace.features == chain.trace(1, 17).features
    # the controls drive the traitlets too: a typed feature re-anchors, the slider follows
    ex.feature_box.value = 3
    assert ex.origin == (2, 3) and "feature 3 of layer 2" in ex.trace_html.value
    ex.layer_slider.value = 0
    assert (ex.layer, ex.feature) == (0, chain.trace(2, 3).feature_at(0)) and ex.origin == (2, 3)
    assert ex.status.value == ""
    ex.follow = False  # the old behaviour on request
    ex.layer = 1
    assert ex.origin == (1, ex.feature)


def test_explorer_shows_errors_instead_of_raising(chain):
    ex = FeatureExplorer(chain, feature=2)
    ex.feature = 99
    assert ex.feature_box.value == 99  # not clamped to another feature
    assert "smn-error" in ex.status.value and "feature 99 is out of range" in ex.status.value
    assert ex.trace is None and ex.trace_html.value == "" and len(ex.figure.data) == 0
    ex.feature = -1
    assert "out of range" in ex.status.value
    ex.feature = 5  # recovers
    assert ex.status.value == "" and "feature 5 of layer 0" in ex.trace_html.value
    with pytest.raises(Exception, match="layer 9 is not in the chain"):
        ex.layer = 9
    assert ex.layer == 0 and ex.layer_slider.value == 0
    with pytest.raises(KeyError, match="layer 9 is not in the chain"):
        FeatureExplorer(chain, layer=9)


def test_explorer_figure_is_the_trace_figure(chain):
    ex = FeatureExplorer(chain, layer=1, feature=6)
    assert isinstance(ex.figure, go.FigureWidget)
    assert ex.figure_box in ex.children and ex.figure in ex.figure_box.children
    ref = make_trace_figure(chain.trace(1, 6))
    assert [tuple(t.y) for t in ex.figure.data] == [tuple(t.y) for t in ref.data]
    ex.feature = 7
    ref = make_trace_figure(chain.trace(1, 7))
    assert tuple(ex.figure.data[0].y) == tuple(ref.data[0].y)
    assert ex.figure.layout.title.text == ref.layout.title.text
    assert FeatureExplorer(chain, figure=False).figure is None


def test_explorer_examples(chain):
    examples = {1: {6: fake_examples(1, 6)}}
    ex = FeatureExplorer(chain, examples, layer=1, feature=6, figure=False)
    html = ex.examples_markup
    assert "zebra&lt;b&gt;" in html and "zebra<b>" not in html  # escaped
    ex.feature = 5
    assert "no activation examples" in ex.examples_markup
    ex.layer = 0
    assert "no activation examples" in ex.examples_markup


def test_explorer_accepted_only(chain):
    lm = chain.pairs[0]
    i = next(int(i) for i in range(lm.n_a) if not lm.matched[i] and lm.partner[i] >= 0)
    loose = FeatureExplorer(chain, feature=i, figure=False)
    strict = FeatureExplorer(chain, feature=i, figure=False, accepted_only=True)
    assert loose.trace.features[1] == lm.partner[i] and strict.trace.features[1] == -1


# -- SteeringPanel --------------------------------------------------------------------------------
def test_steering_panel_plan_reflects_controls(model, planted, chain):
    panel = SteeringPanel(chain, model, saes=planted.saes, layer=1, feature=2)
    p = panel.plan()
    assert (p.origin, p.mode, p.options["span"], p.options["schedule"]) == ((1, 2), "add", "trace", "constant")
    panel.strength_slider.value = 2.0
    panel.mode_box.value = "scale"
    panel.span_box.value = "single"
    panel.feature_box.value = 5
    panel.layer_box.value = 2
    p = panel.plan()
    assert (p.layers, p.features, p.strengths, p.mode) == ((2,), (5,), (2.0,), "scale")
    panel.strength = -3.0  # traitlet -> slider
    assert panel.strength_slider.value == -3.0
    panel.span_box.value = "cumulative"
    panel.mode_box.value = "add"
    panel.schedule_box.value = "exponential"
    p = panel.plan()
    assert p.layers[-1] == 2 and all(l <= 2 for l in p.layers)
    assert p.strengths[-1] == pytest.approx(-3.0 * 2.718281828459045 ** (-0.05 * 2))


def test_steering_panel_runs(model, planted, chain):
    panel = SteeringPanel(chain, model, saes=planted.saes, layer=0, feature=3, strength=40.0, prompt="The quick",
                          max_new_tokens=5)
    res = panel.run()
    assert res is not None and panel.result is res
    html = panel.output.value
    assert "SteeringResult" in html and "baseline" in html and "steered" in html
    from saematch_nb.display._util import escape

    # issue #13: the generations are shown as text (not Python reprs), newlines visible as ↵
    from saematch_nb.display.text import show_ws

    plain = visible_text(html)
    assert show_ws(res.baseline).replace("\n", " ").strip() in plain and escape(repr(res.baseline)) not in html
    assert n_hooks(model) == 0 and not panel.button.disabled
    panel.button.click()  # the button runs the same thing
    assert panel.result.baseline == res.baseline


def test_steering_panel_shows_errors_and_leaves_no_hooks(model, planted, chain, monkeypatch):
    panel = SteeringPanel(chain, model, saes=planted.saes, feature=3, prompt="The", max_new_tokens=3)
    panel.feature = 500
    assert panel.run() is None
    assert "smn-error" in panel.output.value and "out of range" in panel.output.value
    panel.feature = 3
    real = model.generate
    calls = []

    def flaky(*a, **kw):
        calls.append(n_hooks(model))
        if len(calls) == 2:
            raise RuntimeError("generation broke")
        return real(*a, **kw)

    monkeypatch.setattr(model, "generate", flaky)
    assert panel.run() is None
    assert calls[1] > 0  # the failing generation ran with the steering hooks on
    assert "RuntimeError: generation broke" in panel.output.value
    assert n_hooks(model) == 0 and not panel.button.disabled


def test_panels_link(model, planted, chain):
    ex = FeatureExplorer(chain, figure=False)
    panel = SteeringPanel(chain, model, saes=planted.saes).follow(ex)
    ex.layer, ex.feature = 2, 11
    assert (panel.layer, panel.feature) == (2, 11) and panel.layer_box.value == 2
    panel.feature_box.value = 8
    assert ex.feature == 8 and "feature 8 of layer 2" in ex.trace_html.value


def test_explorer_on_a_chain_that_does_not_start_at_layer_0():
    pc = planted_chain(n_layers=3, n=16, d_in=16, seed=0)
    ch = smn.match_chain({5 + i: s for i, s in enumerate(pc.saes)}, cache=False, progress=False)
    ex = FeatureExplorer(ch, feature=2, figure=False)
    assert ex.layer == 5 and "feature 2 of layer 5" in ex.trace_html.value
    ex.layer = 7  # follows the trace of L5 #2 (issue #13), no longer re-anchors at L7 #2
    assert ex.trace.origin_layer == 5 and ex.layer_slider.value == 7
    assert ex.feature == ch.trace(5, 2).feature_at(7)


# -- issue #22 ---------------------------------------------------------------------------------------
def test_issue22_explorer_layers_and_features_must_be_integers(chain):
    """Item 9: FeatureExplorer(layer=1.9) opened layer 1, feature=2.7 feature 2."""
    for kw in ({"layer": 1.9}, {"layer": True}, {"feature": 2.7}, {"feature": "3"}):
        with pytest.raises(TypeError, match="must be an integer"):
            FeatureExplorer(chain, figure=False, **kw)
    ex = FeatureExplorer(chain, layer=np.int64(1), feature=np.int32(2), figure=False)
    assert (ex.layer, ex.feature) == (1, 2)
    for call in (ex.select, ex.trace_from):
        with pytest.raises(TypeError, match="must be an integer"):
            call(1.9, 2)
        with pytest.raises(TypeError, match="must be an integer"):
            call(1, 2.7)
    with pytest.raises(KeyError, match="layer 9 is not in the chain"):
        ex.trace_from(9, 0)
    assert (ex.layer, ex.feature, ex.origin) == (1, 2, (1, 2))  # nothing moved


def test_issue22_steering_panel_arguments_are_checked(model, planted, chain):
    """Items 9 and 14: SteeringPanel(layer=9) was a bare TraitError, layer=1.9 layer 1; a strength
    beyond the slider's ±20 was clamped to 20 without a word."""
    with pytest.raises(KeyError, match=r"layer 9 is not in the chain \(layers \(0, 1, 2\)\)"):
        SteeringPanel(chain, model, layer=9)
    for kw in ({"layer": 1.9}, {"feature": 2.7}, {"layer": True}, {"max_new_tokens": 3.5}):
        with pytest.raises(TypeError, match="must be an integer"):
            SteeringPanel(chain, model, **kw)
    for kw in ({"strength": float("nan")}, {"span": "everything"}, {"mode": "multiply"}):
        with pytest.raises(ValueError):
            SteeringPanel(chain, model, **kw)
    panel = SteeringPanel(chain, model, layer=np.int64(2), feature=np.int64(1), strength=40.0)
    assert (panel.layer, panel.feature, panel.strength) == (2, 1, 40.0)
    assert panel.plan().strengths[0] == 40.0
