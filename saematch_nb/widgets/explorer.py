"""Thin ipywidgets panels over a MatchChain: state in traitlets, observers call core + display.

Nothing is computed only here: traces come from ``MatchChain.trace``, HTML from
``saematch_nb.display.html`` / ``display.examples``, figures from ``saematch_nb.display.figures``,
steering from ``saematch_nb.analysis.steering``. Everything a panel shows can be had without it.
"""

from __future__ import annotations

from typing import Any, Callable

import ipywidgets as W
import traitlets

from ..core._checks import as_index
from .backend import SnapshotMixin, later as _later

__all__ = ["FeatureExplorer"]


class _IntBox(W.IntText):
    """An IntText drawn by ipywidgets' TextView: the same integer ``value`` in the kernel, and
    Enter sends a "submit" message even when the number typed is the one shown (the number view
    sends nothing then, so typing the feature already in the box did nothing). Text that is not
    an integer is refused (``on_invalid`` is told) and the box shows the value again."""

    _view_name = traitlets.Unicode("TextView").tag(sync=True)
    placeholder = traitlets.Unicode("a feature number").tag(sync=True)

    def __init__(self, *a: Any, **kw: Any) -> None:
        self.on_invalid: Callable[[str], None] | None = None
        super().__init__(*a, **kw)

    def set_state(self, sync_data: Any) -> None:
        if "value" in sync_data:
            raw = sync_data["value"]
            try:
                sync_data = dict(sync_data, value=int(str(raw).strip()))
            except ValueError:
                if self.on_invalid is not None:
                    self.on_invalid(str(raw))
                self.send_state("value")  # the box shows the number it holds again
                sync_data = {k: v for k, v in sync_data.items() if k != "value"}
        super().set_state(sync_data)


class FeatureExplorer(SnapshotMixin, W.VBox):
    """Follow a feature through the network: its trace (one clickable node per layer, the step's
    MSE and margin between them), its figure and, with ``examples``, the examples of every step
    side by side with their activation histograms (and, with ``model``, top logit effects).

    ``chain``: a MatchChain. ``examples``: ``collect_examples``' result (or any
    ``examples[layer][feature]`` -> FeatureExamples). ``model``: the TransformerLens model, for the
    logit effects. ``figure``: "auto" (:func:`saematch_nb.widgets.backend.figure_backend`),
    "widget", "output" or False (no figure). ``flow``: a FeatureFlow (``saematch_nb.feature_flow``)
    of the same residual SAEs: a read-only section shows the module predecessors of the feature
    in focus (residual of the layer before, MLP, attention: top-1, cosine, threshold, class).

    State: the ``layer`` / ``feature`` traitlets (linked both ways to the slider and the feature
    box) and ``origin``, the (layer, feature) the trace starts from. Typing a feature (or setting
    ``feature``) starts a new trace there. Moving the layer (``layer``) *follows* the trace: the
    feature becomes the traced partner at that layer (-1 where the trace does not reach it), the
    trace keeps its origin (``follow=False`` restores re-anchoring). A node, a figure point or
    :meth:`select` picks a feature; :meth:`back` / :meth:`forward` walk the features visited. A
    bad layer or feature shows an error in the panel instead of raising.
    """

    layer = traitlets.Int(0)
    feature = traitlets.Int(0)
    origin = traitlets.Tuple(traitlets.Int(), traitlets.Int(), default_value=(0, 0))
    follow = traitlets.Bool(True)

    def __init__(self, chain: Any, examples: Any = None, *, model: Any = None, layer: int | None = None,
                 feature: int = 0, figure: Any = "auto", accepted_only: bool = False, theme: str | None = None,
                 history_size: int = 100, flow: Any = None, explanations: Any = None, **kw: Any) -> None:
        from .backend import figure_backend

        self.chain = chain
        # {(layer, feature): text}; None: the Neuronpedia explanations already fetched (cache only)
        self.explanations = explanations
        self._expl: dict[int, dict[int, str]] = {}
        self.flow = flow
        self.examples = examples
        self.model = model
        self.accepted_only = accepted_only
        self.theme = theme
        self.trace = None  # the trace on display (None while an error is shown)
        self._last_figure = None  # see the last_figure property
        self._drawn = None  # (trace, theme) the panel's figure shows
        self._history: list[tuple[tuple[int, int], int, int]] = []
        self._pos = -1
        self._history_size = max(2, int(history_size))
        self._fx: dict[tuple[int, int], Any] = {}  # FeatureExamples built for this panel (LRU-ish)
        self._logits: dict[tuple[int, int], Any] = {}
        self._corr: dict[tuple[int, int], dict] = {}
        layers = list(chain.layers)
        # integers only: int(1.9) would silently open layer 1
        start = layers[0] if layer is None else as_index(layer, "layer")
        feature = as_index(feature, "feature")
        if start not in layers:
            raise KeyError(f"layer {start} is not in the chain (layers {tuple(layers)})")
        self._ready = False
        self._internal = False
        self.layer_slider = W.SelectionSlider(options=layers, value=start, description="layer",
                                              continuous_update=False)
        # IntText, not BoundedIntText: layers may differ in width, and a clamped value would
        # silently show another feature than the one asked for
        self.feature_box = _IntBox(value=int(feature), description="feature")
        self.feature_box.on_invalid = self._on_bad_text
        self.feature_box.on_msg(self._on_box_msg)
        self.back_button = W.Button(description="◀", tooltip="back: the feature visited before", disabled=True,
                                    layout=W.Layout(width="36px"))
        self.forward_button = W.Button(description="▶", tooltip="forward", disabled=True,
                                       layout=W.Layout(width="36px"))
        self.anchor_button = W.Button(description="trace from here", tooltip=(
            "start a new trace at the feature shown (its own birth and death)"), layout=W.Layout(width="auto"))
        self.back_button.on_click(lambda _b: self.back())
        self.forward_button.on_click(lambda _b: self.forward())
        self.anchor_button.on_click(lambda _b: self._anchor(self.layer, self.feature))
        self.status = W.HTML()
        # what was opened from another panel (finder, overview): the explorer may be far above it
        self.notice = W.HTML()
        self._notices = 0
        self.trace_html = W.HTML()
        self.flow_html = W.HTML()  # the module predecessors (with flow=)
        # one button per layer, the step's numbers between them; a long chain scrolls sideways
        self.node_buttons: list[Any] = []
        self.edge_html: list[Any] = []
        row = []
        for k, L in enumerate(layers):
            btn = W.Button(description=f"L{L}", layout=W.Layout(width="auto", min_width="72px", flex="0 0 auto"))
            btn._smn_layer = L
            btn.on_click(self._on_node)
            self.node_buttons.append(btn)
            row.append(btn)
            if k + 1 < len(layers):
                e = W.HTML(layout=W.Layout(flex="0 0 auto"))
                self.edge_html.append(e)
                row.append(e)
        self.node_row = W.HBox(row, layout=W.Layout(flex_flow="row nowrap", overflow="auto hidden", width="100%",
                                                    align_items="center"))
        self.node_row.add_class("smn-node-row")
        from ..display.html import node_key_html

        self.node_key = W.HTML(node_key_html())
        # the examples: a heading and one HTML per layer, so that moving the focus re-sends the
        # two columns whose outline changes, not every column (~25 KB each; a 26-layer trace
        # would send ~0.7 MB per click as one HTML)
        self.examples_head = W.HTML(layout=W.Layout(width="100%"))
        # a column scrolls on its own past ~460 px: the focused evidence stays near the top (the
        # padding keeps the focused column's outline inside the scrolling box)
        self.example_cols = [W.HTML(layout=W.Layout(flex="0 0 auto", width="320px", margin="0 12px 0 0",
                                                    max_height="460px", overflow="hidden auto", padding="5px"))
                             for _ in layers]
        for w in self.example_cols:
            w.add_class("smn-ex-col-box")
        # the columns before the focus's neighbour move after the last one (flex order), so that
        # the focused column sits at the start of the sideways row, in view, with no script
        self.earlier_note = W.HTML(layout=W.Layout(flex="0 0 auto", display="none", margin="0 12px 0 0"))
        self._col_keys: list[Any] = [None] * len(layers)
        self.examples_row = W.HBox(self.example_cols + [self.earlier_note], layout=W.Layout(
            flex_flow="row nowrap", overflow="auto hidden", width="100%", align_items="flex-start"))
        self.examples_box = W.VBox([self.examples_head, self.examples_row], layout=W.Layout(width="100%"))
        self.figure_backend = None if figure is False or figure is None else figure_backend(figure)
        self.figure = None
        if self.figure_backend == "widget":
            from .backend import figure_widget

            self.figure = figure_widget()
        elif self.figure_backend == "output":
            self.figure = W.Output(layout=W.Layout(width="100%"))
        nav = W.HBox([self.back_button, self.forward_button, self.layer_slider, self.feature_box, self.anchor_button],
                     layout=W.Layout(flex_flow="row wrap", align_items="center"))
        self.examples_row.add_class("smn-ex-scroller")
        # compact: the heading, the nodes, then the examples (the focused column first in view),
        # the figure last; in a 1000 px window the focused evidence is above the fold
        children = [nav, self.notice, self.status, self.trace_html, self.node_row, self.node_key]
        if flow is not None:
            children.append(self.flow_html)
        children.append(self.examples_box)
        if self.figure is not None:
            # the figure gets a width by the number of layers (below) and this box scrolls it
            # sideways: a 26-layer trace stays readable instead of being squeezed or wrapped
            self.figure_box = W.Box([self.figure], layout=W.Layout(overflow="auto hidden", width="100%"))
            children.append(self.figure_box)
        kw.setdefault("layout", W.Layout(width="100%"))
        super().__init__(children=children, **kw)
        self.add_class("smn-panel")
        # DOM hooks for a browser (the CI's Playwright test, user CSS); they change nothing here
        self.add_class("smn-explorer")
        for w, c in ((self.layer_slider, "smn-layer-slider"), (self.feature_box, "smn-feature-box"),
                     (self.trace_html, "smn-trace-head"), (self.examples_box, "smn-examples-box"),
                     (self.back_button, "smn-back"), (self.forward_button, "smn-forward")):
            w.add_class(c)
        for b in self.node_buttons:
            b.add_class("smn-node-button")
        if self.figure is not None:
            self.figure.add_class("smn-figure")
            if theme is None:  # transparent, and inverted by the packaged CSS under a dark theme
                self.figure.add_class("smn-figure-auto")
        self.layer, self.feature = start, int(feature)
        self.origin = (start, int(feature))
        W.link((self.layer_slider, "value"), (self, "layer"))
        W.link((self.feature_box, "value"), (self, "feature"))
        self._ready = True
        self._retrace()
        self._push()
        self.refresh()

    # -- state --------------------------------------------------------------------------------
    @traitlets.validate("layer")
    def _valid_layer(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if value not in self.chain.layers:
            raise traitlets.TraitError(f"layer {value} is not in the chain (layers {tuple(self.chain.layers)})")
        return value

    @traitlets.observe("layer")
    def _on_layer(self, change: Any) -> None:
        if not self._ready or self._internal:
            return
        self.notice.value = ""
        if self.follow and self.trace is not None:  # move along the trace, keep its origin
            self._set(feature=int(self.trace.feature_at(self.layer)))
        else:
            self.origin = (self.layer, self.feature)
            self._retrace()
        self._push()
        self.refresh()

    @traitlets.observe("feature")
    def _on_feature(self, change: Any) -> None:
        if not self._ready or self._internal:
            return
        self.notice.value = ""
        self.origin = (self.layer, self.feature)  # a typed feature starts a new trace
        self._retrace()
        self._push()
        self.refresh()

    def _set(self, **values: Any) -> None:
        self._internal = True
        try:
            for k, v in values.items():
                setattr(self, k, v)
        finally:
            self._internal = False

    def _retrace(self) -> None:
        try:
            self.trace = self.chain.trace(*self.origin, accepted_only=self.accepted_only)
            self._error = None
        except (IndexError, KeyError, ValueError) as err:
            self.trace, self._error = None, err

    def current_trace(self):
        return self.chain.trace(self.layer, self.feature, accepted_only=self.accepted_only)

    def select(self, layer: int, feature: int, *, source: str | None = None) -> None:
        """Show feature ``feature`` of ``layer``: on the current trace the focus moves there (the
        origin stays), anywhere else a new trace starts from it. ``source``: the panel it comes
        from (e.g. "the overview"); the explorer then says what was opened and from where (again
        on every call, the same feature included)."""
        layer, feature = as_index(layer, "layer"), as_index(feature, "feature")
        if layer not in self.chain.layers:
            raise KeyError(f"layer {layer} is not in the chain (layers {tuple(self.chain.layers)})")
        on_trace = self.trace is not None and self.trace.feature_at(layer) == feature and feature >= 0
        self._set(layer=layer, feature=feature)
        if not on_trace:
            self.origin = (layer, feature)
            self._retrace()
        self._push()
        self.refresh()
        if source is not None:
            self._notify(source, layer, feature, new_trace=not on_trace)

    def trace_from(self, layer: int, feature: int, *, source: str | None = None) -> None:
        """Start a new trace at feature ``feature`` of ``layer`` (what the finder does: its rows
        pass ``source="the finder"``). Every call redraws and says what was opened and from where
        (``source``), also when it is the feature already shown: opening the same row twice is
        seen."""
        layer, feature = as_index(layer, "layer"), as_index(feature, "feature")
        if layer not in self.chain.layers:
            raise KeyError(f"layer {layer} is not in the chain (layers {tuple(self.chain.layers)})")
        self._anchor(layer, feature)
        self._notify(source, layer, feature, new_trace=True)

    def _anchor(self, layer: int, feature: int) -> None:
        self._set(layer=layer, feature=feature)
        self.origin = (layer, feature)
        self._retrace()
        self._push()
        self.refresh()

    def _notify(self, source: str | None, layer: int, feature: int, *, new_trace: bool) -> None:
        from ..display import html

        self._notices += 1  # a new value each time: the browser redraws it (and its highlight)
        self.notice.value = html.explorer_notice_html(layer, feature, source, new_trace=new_trace,
                                                      error=self.trace is None, serial=self._notices)

    def _on_box_msg(self, _widget: Any, content: Any, _buffers: Any = None) -> None:
        """Enter in the feature box. A changed number arrives as a value change right after this
        message (the browser sends the key before the change) and starts its trace itself; the
        number already shown sends nothing else: then the trace starts here."""
        if not isinstance(content, dict) or content.get("event") != "submit":
            return
        before = (tuple(self.origin), int(self.layer), int(self.feature), self._pos)

        def check() -> None:
            now = (tuple(self.origin), int(self.layer), int(self.feature), self._pos)
            if now != before:
                return
            self.notice.value = ""  # the user acts in the explorer: an earlier notice is done
            if tuple(self.origin) != (self.layer, self.feature) or self.trace is None:
                self._anchor(self.layer, self.feature)

        _later(check)

    def _on_bad_text(self, text: str) -> None:
        from ..display import html

        shown = text if len(text) <= 40 else text[:40] + "…"
        self.status.value = html.error_html(f"{shown!r} is not a feature number: type an integer "
                                            f"(features of layer {self.layer} are numbered from 0)")

    def _push(self) -> None:
        state = (tuple(self.origin), int(self.layer), int(self.feature))
        if 0 <= self._pos < len(self._history) and self._history[self._pos] == state:
            return
        del self._history[self._pos + 1:]
        self._history.append(state)
        if len(self._history) > self._history_size:
            del self._history[0]
        self._pos = len(self._history) - 1
        self._nav_buttons()

    def _nav_buttons(self) -> None:
        self.back_button.disabled = self._pos <= 0
        self.forward_button.disabled = self._pos >= len(self._history) - 1

    @property
    def history(self) -> list[tuple[tuple[int, int], int, int]]:
        """The states visited, oldest first: ((origin layer, origin feature), layer, feature)."""
        return list(self._history)

    def _restore(self, pos: int) -> None:
        self._pos = pos
        origin, layer, feature = self._history[pos]
        self._set(layer=layer, feature=feature)
        if tuple(origin) != tuple(self.origin) or self.trace is None:
            self.origin = origin
            self._retrace()
        self._nav_buttons()
        self.refresh()

    def back(self) -> None:
        """The feature visited before (no-op at the first)."""
        self.notice.value = ""
        if self._pos > 0:
            self._restore(self._pos - 1)

    def forward(self) -> None:
        self.notice.value = ""
        if self._pos < len(self._history) - 1:
            self._restore(self._pos + 1)

    def _on_node(self, button: Any) -> None:
        if self.trace is None:
            return
        L = button._smn_layer
        f = int(self.trace.feature_at(L))
        if f >= 0:
            self.notice.value = ""
            self.select(L, f)

    def _on_point(self, trace: Any, points: Any, _state: Any = None) -> None:
        """A click on a figure point: its customdata starts with the (layer, feature) it stands for."""
        inds = list(getattr(points, "point_inds", []) or [])
        if not inds or trace.customdata is None:
            return
        cd = trace.customdata[inds[0]]
        L, f = int(cd[0]), int(cd[1])
        if f >= 0:
            self.notice.value = ""
            self.select(L, f)

    # -- drawing ------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Redraw from the current state (origin, layer, feature)."""
        self._refresh()
        self._snapshot_changed()

    def _refresh(self) -> None:
        from ..display import html

        tr = self.trace
        if tr is None:
            err = getattr(self, "_error", None) or ValueError("no trace")
            self.status.value = html.error_html(err.args[0] if err.args else err)
            self.trace_html.value = ""
            self.flow_html.value = ""
            self._clear_examples()
            for b in self.node_buttons:
                b.description, b.tooltip, b.disabled, b.button_style = f"L{b._smn_layer}", "", True, ""
                _node_class(b, "")
            for e in self.edge_html:
                e.value = ""
            self._last_figure = self._drawn = None
            if self.figure_backend == "widget":
                # nothing of the previous feature, in the browser too: its title, focus lines and
                # annotations are reset there (an empty layout alone would merge into them)
                from .backend import clear_figure

                clear_figure(self.figure)
            elif self.figure_backend == "output":
                self.figure.clear_output()
            return
        self.status.value = ""
        # what the user looks at first goes first: each value is sent to the browser when set
        self.trace_html.value = html.explorer_header_html(tr, self.layer, explanation=self._explanation(
            self.layer, int(tr.feature_at(self.layer))))
        self._draw_flow()
        if self.figure is not None:
            self._draw(tr)
        self._draw_examples(tr)
        self._draw_nodes(tr)  # the node tooltips read the examples just loaded

    def _explanation(self, L: int, f: int) -> str | None:
        """The Neuronpedia explanation of feature ``f`` of layer ``L``: from ``explanations`` when
        given, else from those already fetched (the cache; nothing is fetched here)."""
        if f < 0:
            return None
        if self.explanations is not None:
            try:
                return self.explanations.get((int(L), int(f)))
            except AttributeError:
                return None
        if L not in self._expl:
            info = self.chain.infos[list(self.chain.layers).index(L)] if hasattr(self.chain, "infos") else None
            if not getattr(info, "neuronpedia_id", None):
                self._expl[L] = {}
            else:
                from ..sources.neuronpedia import cached_explanations

                try:
                    self._expl[L] = cached_explanations(info)
                except Exception:  # a damaged cache must not break the panel
                    self._expl[L] = {}
        return self._expl[L].get(int(f))

    def _draw_flow(self) -> None:
        if self.flow is None:
            return
        from ..display import html

        f = int(self.feature)
        self.flow_html.value = "" if f < 0 else html.flow_predecessors_html(self.flow, self.layer, f)

    def _node_extra(self, L: int, f: int) -> str:
        fx = self._feature_examples(L, f)
        if fx is None:
            return ""
        from ..display import fmt_float, fmt_pct

        tops = [t for e in fx.top[:5] for t in (e.tokens[e.center],)]
        uniq = list(dict.fromkeys(tops))[:3]
        return (f"fires on {fmt_pct(fx.frac_active)} of tokens, max {fmt_float(fx.max_value, 3)}"
                + (f"; top tokens {' '.join(repr(t) for t in uniq)}" if uniq else ""))

    def _draw_nodes(self, tr: Any) -> None:
        from ..display import text

        alive = set(tr.alive_layers)
        for b in self.node_buttons:
            L = b._smn_layer
            f = int(tr.feature_at(L))
            if f < 0:
                b.description, b.disabled, b.button_style = f"L{L} —", True, ""
                _node_class(b, "")
                b.tooltip = text.node_tip(tr, L)
                continue
            mark = "*" if L == tr.origin_layer else ""
            b.description = f"L{L} #{f}{mark}"
            b.disabled = False
            # the focus in the primary colour; the accepted run plain; the assignment's partners
            # beyond it dashed and muted (the key under the row says so), not a warning colour
            b.button_style = "primary" if L == self.layer else ""
            _node_class(b, "" if L == self.layer else ("smn-node-run" if L in alive else "smn-node-beyond"))
            b.tooltip = text.node_tip(tr, L, self._node_extra(L, f))
        for e, L in zip(self.edge_html, tr.layers[:-1]):
            s = tr.step_from(L)
            e.value = "" if s is None else html_edge(s)

    def _figure_obj(self, tr: Any):
        from ..display.figures import make_trace_figure

        fig = make_trace_figure(tr, correlations=self._correlations(tr), focus=self.layer, theme=self.theme)
        # about 110 px per layer: the steps' markers and labels stay apart on long chains
        fig.update_layout(width=max(900, 110 * len(tr.layers) + 200), autosize=False)
        return fig

    @property
    def last_figure(self) -> Any:
        """The plotly Figure of what the panel shows (either backend; None without a trace): a
        plain ``go.Figure`` to save or restyle. Built on first access after the panel drew its
        figure without a template or moved only its focus lines."""
        if self._last_figure is None and self._drawn is not None and self.trace is not None:
            self._last_figure = self._figure_obj(self.trace)
        return self._last_figure

    def _draw(self, tr: Any) -> None:
        shown = self.figure_backend == "widget" and self._drawn == (tr, self.theme) and bool(self.figure.data)
        if shown:
            # the same trace, another focus: move the focus lines only (one small relayout in the
            # browser instead of a new figure)
            self._move_focus()
            return
        if (self.figure_backend == "widget" and self._drawn is not None and self._drawn[1] == self.theme
                and self._update_in_place(tr)):
            # the figure already styled takes the new trace's data in one Plotly.update; no plotly
            # figure is built (its validation was most of the kernel's time per click)
            self._last_figure, self._drawn = None, (tr, self.theme)
            return
        fig = self._figure_obj(tr)
        self._last_figure, self._drawn = fig, (tr, self.theme)
        if self.figure_backend == "output":
            from IPython.display import display

            with self.figure:
                self.figure.clear_output(wait=True)
                display(fig)
            return
        from .backend import panel_layout, replace_figure

        replace_figure(self.figure, fig, panel_layout(self.theme))
        for t in self.figure.data:
            if t.customdata is not None and getattr(t, "mode", None) != "lines":
                t.on_click(self._on_point)

    def _move_focus(self) -> None:
        with self.figure.batch_update():
            for sh in self.figure.layout.shapes:
                if sh.name == "focus":
                    sh.x0 = sh.x1 = int(self.layer)
        self._last_figure = None  # rebuilt for the new focus when asked for

    def _update_in_place(self, tr: Any) -> bool:
        """Give the shown figure the data of ``tr`` (:func:`trace_figure_data`) in one batch of
        edits when it has the same traces; False (nothing changed) otherwise."""
        from ..display.figures import trace_figure_data

        d = trace_figure_data(tr, correlations=self._correlations(tr), focus=self.layer)
        old = self.figure.data
        want = [("y" if r == 1 else f"y{r}", t["type"], t["name"]) for r, t in d["traces"]]
        if [(a.yaxis, a.type, a.name) for a in old] != want:
            return False
        with self.figure.batch_update():
            for a, (_r, t) in zip(old, d["traces"]):
                a.update({k: v for k, v in t.items() if k != "type"}, overwrite=True)
            self.figure.layout.update(d["layout"])
        return True

    def _feature_examples(self, L: int, f: int) -> Any:
        if self.examples is None or f < 0:
            return None
        key = (int(L), int(f))
        if key not in self._fx:
            try:
                self._fx[key] = self.examples[L][f]
            except (KeyError, IndexError):
                self._fx[key] = None
            if len(self._fx) > 512:  # a long session's features are not all kept
                self._fx.pop(next(iter(self._fx)))
        return self._fx[key]

    def _correlations(self, tr: Any) -> dict | None:
        if self.examples is None or not hasattr(self.examples, "trace_correlations"):
            return None
        key = (int(tr.origin_layer), int(tr.origin_feature))
        if key not in self._corr:
            self._corr[key] = self.examples.trace_correlations(tr)
        return self._corr[key]

    def _logit_effects(self, tr: Any) -> dict | None:
        if self.model is None or getattr(self.chain, "stack", None) is None:
            return None
        from ..analysis.steering import direct_logit_effect

        out = {}
        for L, f in zip(tr.layers, tr.features):
            if f < 0:
                continue
            key = (int(L), int(f))
            if key not in self._logits:
                self._logits[key] = direct_logit_effect(self.chain, self.model, L, f, k=5)
            out[int(L)] = self._logits[key]
        return out

    def _clear_examples(self) -> None:
        self.examples_head.value = ""
        self.earlier_note.value, self.earlier_note.layout.display = "", "none"
        for k, w in enumerate(self.example_cols):
            w.value, w.layout.display, self._col_keys[k] = "", "none", None

    def _draw_examples(self, tr: Any) -> None:
        if self.examples is None:
            self._clear_examples()
            return
        from ..display.examples import panel_example_column_html, panel_examples_head_html

        class _Layer:  # the panel's memo in front of examples[layer][feature]
            def __init__(_s, L):
                _s.L = L

            def __getitem__(_s, f):
                fx = self._feature_examples(_s.L, f)
                if fx is None:
                    raise KeyError(f"no activation examples for layer {_s.L} feature {f}")
                return fx

        class _Cached:
            def __getitem__(_s, L):
                return _Layer(L)

        head = panel_examples_head_html(tr)
        if self.examples_head.value != head:
            self.examples_head.value = head
        logits = self._logit_effects(tr) or {}
        for k, (L, f) in enumerate(zip(tr.layers, tr.features)):
            key = (int(L), int(f), L == self.layer, L in logits)
            if self._col_keys[k] == key:
                continue  # unchanged: nothing is sent
            w = self.example_cols[k]
            w.value = panel_example_column_html(L, f, _Cached(), logits=logits.get(L), focused=L == self.layer)
            w.layout.display, self._col_keys[k] = None, key
        self._order_columns(tr)

    def _order_columns(self, tr: Any) -> None:
        """The sideways row starts at the column before the focused one (flex ``order``); the
        columns before that follow the last one, after a note that says so. Only the orders
        change (a few bytes), not the columns' HTML."""
        from ..display import html

        layers = list(tr.layers)
        k = layers.index(self.layer) if self.layer in layers else 0
        start = max(0, k - 1)
        n = len(layers)
        for i, w in enumerate(self.example_cols):
            order = str(i - start) if i >= start else str(n + 1 + i)
            if w.layout.order != order:
                w.layout.order = order
        if start:
            self.earlier_note.layout.order = str(n)
            self.earlier_note.value = html.earlier_layers_html(layers[:start])
            self.earlier_note.layout.display = None
        else:
            self.earlier_note.value, self.earlier_note.layout.display = "", "none"

    @property
    def examples_markup(self) -> str:
        """The examples as the panel shows them (heading and columns), one HTML string; empty
        without examples or trace."""
        if not self.examples_head.value:
            return ""
        cols = "".join(w.value for w in self.example_cols if w.value)
        return self.examples_head.value + f'<div class="smn-ex-row">{cols}</div>'

    def snapshot_html(self) -> str:
        """The panel's current state as static HTML: the heading (once), the trace's nodes and
        steps, a static picture of the figure, and the examples."""
        from ..display import html

        if self.trace is None:
            return html.panel_snapshot_html("FeatureExplorer", [self.notice.value, self.status.value])
        fig = html.figure_svg_html(self.last_figure) if self._drawn is not None else ""
        return html.panel_snapshot_html("FeatureExplorer", [
            self.notice.value, self.trace_html.value, html.trace_steps_html(self.trace),
            self.flow_html.value, fig, self.examples_markup])


_NODE_CLASSES = ("smn-node-run", "smn-node-beyond")


def _node_class(button: Any, cls: str) -> None:
    """Give a node button one of the node classes (or none): only what changes is sent."""
    for c in _NODE_CLASSES:
        if c != cls and c in button._dom_classes:
            button.remove_class(c)
    if cls and cls not in button._dom_classes:
        button.add_class(cls)


def html_edge(step: Any) -> str:
    from ..display import html

    return html.edge_html(step)
