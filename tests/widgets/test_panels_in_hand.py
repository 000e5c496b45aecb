"""Issue #23, the panels' side: figures whose state a new view gets whole, a cleared figure
cleared in the browser too, the focused evidence first, hand-offs that say so (and work twice),
a typed feature that starts a trace even when it is the one shown, live snapshots, the steering
panel's sweep (stale marking, the feature's own target, text per strength, one unit per chart)."""

from __future__ import annotations

import re

from saematch_nb.widgets import ChainOverview, FeatureExplorer, FeatureFinder, SteeringPanel
from tests.widgets.conftest import n_hooks


def _relayouts(fig) -> list[dict]:
    """Every relayout / update message the FigureWidget sends to the browser from now on."""
    sent: list[dict] = []
    fig.observe(lambda c: c["new"] and sent.append(c["new"]["relayout_data"]), names="_py2js_relayout")
    fig.observe(lambda c: c["new"] and sent.append(c["new"]["layout_data"]), names="_py2js_update")
    return sent


# -- 1. a view made later (reload, reconnect, second view) gets the figure whole -----------------------
def test_the_kernel_state_of_the_figure_is_the_figure_shown(chain):
    ex = FeatureExplorer(chain, layer=1, feature=6)
    state = ex.figure.get_state()
    assert [t["y"] for t in state["_widget_data"]] == [list(t.y) for t in ex.figure.data] != []
    assert state["_widget_layout"]["title"]["text"] == ex.figure.layout.title.text
    # the in-place paths (another trace, another focus) are in the state too
    ex.select(1, 7)
    ex.layer = 2
    state = ex.figure.get_state()
    assert [t["y"] for t in state["_widget_data"]] == [list(t.y) for t in ex.figure.data]
    assert "feature 7 of layer 1" in state["_widget_layout"]["title"]["text"]
    focus = [sh for sh in state["_widget_layout"]["shapes"] if sh.get("name") == "focus"]
    assert focus and all(sh["x0"] == 2 for sh in focus)
    # one key asked for: that key only (the views' diff messages do not carry the figure)
    assert set(ex.figure.get_state("_py2js_relayout")) == {"_py2js_relayout"}


def test_a_bad_feature_clears_title_shapes_and_annotations_in_the_browser_too(chain):
    ex = FeatureExplorer(chain, layer=1, feature=6)
    assert ex.figure.layout.title.text and ex.figure.layout.shapes
    sent = _relayouts(ex.figure)
    ex.feature = 99
    assert ex.trace is None and not ex.figure.data
    reset = {k: v for d in sent for k, v in d.items()}
    assert reset.get("title") is None and "title" in reset
    assert reset.get("shapes") == [] and "annotations" in reset
    assert "height" not in reset and "width" not in reset  # plotly.js's relayout throws on a null size
    assert not ex.figure.get_state()["_widget_layout"].get("title")
    ex.feature = 5  # recovers: the whole figure again
    assert ex.figure.data and "feature 5" in ex.figure.layout.title.text


def test_figures_have_transparent_backgrounds_and_a_dark_theme_hook(chain):
    ex = FeatureExplorer(chain, layer=1, feature=6)
    assert ex.figure.layout.paper_bgcolor == "rgba(0,0,0,0)" and "smn-figure-auto" in ex.figure._dom_classes
    assert ex.last_figure.layout.paper_bgcolor is None  # the figure kept for saving is the plain one
    ov = ChainOverview(chain, ex)
    assert "smn-figure-auto" in ov.flow_figure._dom_classes
    fixed = FeatureExplorer(chain, layer=1, feature=6, theme="dark")  # an explicit theme is left as drawn
    assert "smn-figure-auto" not in fixed.figure._dom_classes and fixed.figure.layout.paper_bgcolor != "rgba(0,0,0,0)"


# -- 3. the focused evidence in view ---------------------------------------------------------------------
def test_the_sideways_row_starts_next_to_the_focused_column(chain, planted):
    ex = FeatureExplorer(chain, _Examples(chain), layer=0, feature=4, figure=False)
    orders = [w.layout.order for w in ex.example_cols]
    assert orders == ["0", "1", "2"] and ex.earlier_note.layout.display == "none"
    ex.layer = 2
    k = chain.layers.index(2)
    orders = [int(w.layout.order) for w in ex.example_cols]
    assert orders[k] == 1 and orders[k - 1] == 0  # the focus, its neighbour before it
    assert orders[0] > max(orders[k - 1:])  # earlier layers after the last, behind the note
    assert ex.earlier_note.layout.display is None and "L0" in ex.earlier_note.value
    assert "smn-ex-col-focus" in ex.example_cols[k].value
    # the examples come before the figure, right under the nodes
    ex2 = FeatureExplorer(chain, _Examples(chain), layer=0, feature=4)
    kids = list(ex2.children)
    assert kids.index(ex2.node_row) < kids.index(ex2.examples_box) < kids.index(ex2.figure_box)
    assert all(w.layout.max_height == "460px" for w in ex2.example_cols)


class _Examples:
    """examples[layer][feature] with one context each, a longer text around it included."""

    def __init__(self, chain):
        from saematch_nb.analysis.examples import Example, FeatureExamples

        def fx(L, f):
            e = Example(doc=0, pos=3, value=1.0, tokens=("a", " b", f" L{L}#{f}", " c"), values=(0, 0.2, 1.0, 0.1),
                        center=2, before="Long ago, in <a> text", after=" and then it ended.")
            return FeatureExamples(layer=L, feature=f, max_value=1.0, frac_active=0.01, top=(e,), quantiles=())

        self._fx = fx

    def __getitem__(self, L):
        return _Layer(self._fx, L)


class _Layer:
    def __init__(self, fx, L):
        self.fx, self.L = fx, L

    def __getitem__(self, f):
        return self.fx(self.L, f)


def test_a_context_has_its_longer_text_under_more(chain):
    ex = FeatureExplorer(chain, _Examples(chain), layer=0, feature=4, figure=False)
    col = ex.example_cols[0].value
    assert '<details class="smn-more">' in col and "Long ago, in &lt;a&gt; text" in col
    assert "<strong> L0#4</strong>" in col and "<script" not in col.lower()


def test_contexts_collected_carry_the_text_around_them():
    from saematch_nb.analysis import examples as E

    assert E.MORE[0] > 0 and {"before", "after"} <= set(E.Example.__dataclass_fields__)


# -- 4. hand-offs that say so and work twice ---------------------------------------------------------------
def test_a_feature_opened_from_the_finder_is_announced_every_time(chain):
    ex = FeatureExplorer(chain, layer=0, feature=2, figure=False)
    finder = FeatureFinder(chain, explorer=ex, n=5)
    L, f = finder.rows.options[1][1]
    finder.choose(L, f)
    assert (ex.layer, ex.feature, ex.origin) == (L, f, (L, f))
    first = ex.notice.value
    assert f"Opened layer {L} · feature {f} from the finder" in first and "a new trace starts there" in first
    ex.layer = chain.layers[-1]  # the user moves on: the notice goes
    assert ex.notice.value == ""
    finder.choose(L, f)  # the same row again: opened again, and said again
    assert (ex.layer, ex.feature) == (L, f) and "from the finder" in ex.notice.value
    again = ex.notice.value
    finder.choose(L, f)
    assert ex.notice.value != again  # a new value: the browser redraws it (its highlight plays)


def test_the_overview_opens_the_same_node_twice_and_its_flow_follows_the_explorer(chain):
    ex = FeatureExplorer(chain, layer=0, feature=2, figure=False)
    ov = ChainOverview(chain, ex)
    assert "<svg" not in ov.summary_html.value  # the per-pair charts once: the figure's
    assert "<svg" in ov.snapshot_html()  # the snapshot keeps the static ones
    node = next(v for _, v in ov.node_box.options if v is not None and v[0] == 1)
    ov.node_box.value = node
    assert (ex.layer, ex.feature) == node and ov.node_box.value is None
    assert "from the overview" in ex.notice.value and f"L{node[0]} #{node[1]}" in ov.message.value
    ex.layer = 0  # away, then the same node again
    ov.node_box.value = node
    assert (ex.layer, ex.feature) == node
    ex.feature = 9  # a new trace in the explorer joins the flow
    assert (node[0], 9) in ov.features
    title = ov.flow_figure.layout.title.text
    assert "#9" in title


def test_enter_on_the_feature_shown_starts_a_trace_there(chain):
    ex = FeatureExplorer(chain, layer=0, feature=4, figure=False)
    ex.layer = 2  # follows: the feature box now shows the partner, the origin stays
    partner = ex.feature
    assert ex.origin == (0, 4) and ex.feature_box.value == partner
    ex.feature_box._handle_custom_msg({"event": "submit"}, [])  # Enter, the number unchanged
    assert ex.origin == (2, partner) and f"feature {partner} of layer 2" in ex.trace_html.value
    # text that is not a number is refused with a message; the box keeps its number
    ex.feature_box.set_state({"value": "12a"})
    assert ex.feature_box.value == partner and "12a&#x27; is not a feature number" in ex.status.value
    ex.feature_box.set_state({"value": " 7 "})  # what the browser's text box sends
    assert ex.feature == 7 and ex.origin == (2, 7)


def test_node_buttons_have_a_key_and_no_warning_colour():
    from saematch_nb.core.synthetic import planted_chain
    import saematch_nb as smn

    pc = planted_chain(n_layers=5, n=24, d_in=32, fresh_fraction=0.5, seed=3)
    ch = smn.match_chain(pc.saes, cache=False, progress=False)
    # a feature whose trace goes on beyond its accepted run (half the features are fresh per layer)
    found = [f for f in range(24) if any(x >= 0 for L, x in zip(ch.trace(0, f).layers, ch.trace(0, f).features)
                                         if L not in ch.trace(0, f).alive_layers)]
    assert found
    ex = FeatureExplorer(ch, layer=0, feature=found[0], figure=False)
    assert all(b.button_style in ("", "primary") for b in ex.node_buttons)
    beyond = [b for b in ex.node_buttons if "smn-node-beyond" in b._dom_classes]
    assert beyond and "beyond the run" in ex.node_key.value and "accepted run" in ex.node_key.value


# -- Neuronpedia in the explorer itself ---------------------------------------------------------------------
def test_the_explorer_links_neuronpedia_and_shows_known_explanations():
    from tests.display.conftest import HOSTILE, make_chain

    ch = make_chain(n_pairs=2, n=20)
    ex = FeatureExplorer(ch, layer=1, feature=2, figure=False, explanations={(1, 2): f"pronouns {HOSTILE}"})
    head = ex.trace_html.value
    assert 'href="https://neuronpedia.org/gemma-2-2b/1-gemmascope-res-16k/2"' in head
    assert "pronouns &lt;script&gt;" in head and HOSTILE not in head


# -- 6. live snapshots --------------------------------------------------------------------------------------
def test_a_displayed_panel_keeps_a_live_snapshot_that_follows_it(model, chain, monkeypatch):
    import IPython.display as D

    outputs: list[dict] = []

    class Handle:
        def __init__(self, k):
            self.k = k

        def update(self, data, raw=False):
            outputs[self.k] = data

    def fake_display(obj, *, raw=False, metadata=None, display_id=None):
        outputs.append(obj)
        return Handle(len(outputs) - 1) if display_id else None

    monkeypatch.setattr(D, "display", fake_display)
    ex = FeatureExplorer(chain, layer=1, feature=6)
    panel = SteeringPanel(chain, model, layer=1, feature=6, prompt="The", max_new_tokens=3).follow(ex)
    ex._ipython_display_()
    panel._ipython_display_()
    assert "application/vnd.jupyter.widget-view+json" in outputs[0] and "smn-live-snapshot" in outputs[1]["text/html"]
    ex.feature = 9
    panel.run()
    live = outputs[1]["text/html"]
    assert "feature 9 of layer 1" in live and "feature 6 of layer 1" not in live
    assert "<svg" in live and "step similarity" in live  # a static picture of the figure
    assert live.count("FeatureTrace</span>") == 1  # the heading once
    steer = outputs[3]["text/html"]
    assert "SteeringResult" in steer and "baseline" in steer and "feature 9" in steer
    assert "<script" not in (live + steer).lower()
    finder = FeatureFinder(chain, n=5)  # a panel that does not say when it changes: its values are watched
    finder._ipython_display_()
    assert "sorted by persistence" in outputs[5]["text/html"]
    finder.sort_box.value = "mse"
    assert "sorted by mse" in outputs[5]["text/html"]


# -- 9. steering -------------------------------------------------------------------------------------------
def test_the_sweep_follows_the_features_own_target_shows_text_and_goes_stale(model, planted, chain):
    from saematch_nb.analysis.steering import direct_logit_effect

    panel = SteeringPanel(chain, model, layer=0, feature=3, prompt="The quick", max_new_tokens=4)
    up = [t for t, _ in direct_logit_effect(chain, model, 0, 3, k=8)[0]]
    assert [v for _, v in panel.target_box.options] == up and panel.target() == up[0]
    df = panel.sweep([-8.0, 0.0, 8.0])
    assert list(df["target"]) == [up[0]] * 3 and len(df["text"]) == 3 and n_hooks(model) == 0
    out = panel.sweep_html.value
    assert out.count("<svg") == 2  # KL and Δ log p each on its own axis
    assert "feature&#x27;s own top raised tokens" in out or "feature's own top raised tokens" in out
    ticks = [t for t in re.findall(r'class="smn-tick"[^>]*>([^<]+)<', out) if t.strip()]
    assert ticks and all(len(re.sub(r"\D", "", t.split("e")[0]).lstrip("0")) <= 3 for t in ticks), ticks
    assert panel.sweep_stale_html.value == ""
    panel.feature = 4  # another feature: the sweep shown is stale, its targets are the new feature's
    assert "stale" in panel.sweep_stale_html.value and "smn-stale" in panel.sweep_html._dom_classes
    assert [v for _, v in panel.target_box.options] == [t for t, _ in direct_logit_effect(chain, model, 0, 4, k=8)[0]]
    panel.target_text.value = up[1]
    df = panel.sweep([0.0, 4.0], generate=False)
    assert list(df["target"]) == [up[1]] * 2 and "text" not in df and panel.sweep_stale_html.value == ""


def test_a_feature_typed_in_the_steering_panel_keeps_the_explorers_trace(model, chain):
    ex = FeatureExplorer(chain, layer=0, feature=4, figure=False)
    panel = SteeringPanel(chain, model).follow(ex)
    assert (panel.layer, panel.feature) == (0, 4)
    partner = chain.trace(0, 4).feature_at(2)
    panel.layer = 2  # the explorer follows its trace there
    assert (ex.layer, ex.feature, ex.origin) == (2, partner, (0, 4)) and panel.feature == partner
    on_trace = chain.trace(0, 4).feature_at(1)
    panel.layer = 1
    panel.feature = on_trace  # typed, on the trace: the focus moves, the trace stays
    assert ex.origin == (0, 4) and (ex.layer, ex.feature) == (1, on_trace)
    off = next(f for f in range(24) if f != on_trace)
    panel.feature = off  # off the trace: the explorer can only show it as a new trace
    assert ex.origin == (1, off) and "from the steering panel" in ex.notice.value
