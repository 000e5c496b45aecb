"""The panel that shows the whole chain: ChainOverview.

A thin ipywidgets panel like the explorer's: the figures come from ``display.figures``, the
summary from ``display.html``; the panel holds controls and forwards a choice to a FeatureExplorer.
"""

from __future__ import annotations

from typing import Any, Sequence

import ipywidgets as W

from .backend import SnapshotMixin

__all__ = ["ChainOverview"]


class ChainOverview(SnapshotMixin, W.VBox):
    """The whole chain at a glance: accepted fraction and MSE per layer pair
    (``make_chain_figure``) and the flow of the selected features across all layers
    (``make_flow_figure``), both clickable when the figure backend is "widget": a Sankey node opens
    that feature in ``explorer``, a point of the chain figure moves the explorer to that layer.
    The node list under the flow does the same with the keyboard (and on Colab's backend); it
    returns to "—" after each choice, so that the same node can be opened again.

    ``features``: (layer, feature) pairs to draw; by default the explorer's visited origins (the
    flow then follows the explorer: a new trace joins it, the feature in focus is marked), else
    the finder's first rows, else the five most persistent features of the first layer.

    The summary above the chart is the chain's facts and table; its per-pair charts are the
    interactive figure's (drawn once, not twice), the snapshot keeps the static ones.
    """

    #: seconds of quiet after an explorer change before the flow is redrawn (a drag redraws once)
    follow_delay_s = 0.3

    def __init__(self, chain: Any, explorer: Any = None, *, features: Sequence[tuple[int, int]] | None = None,
                 finder: Any = None, figure: Any = "auto", theme: str | None = None, **kw: Any) -> None:
        from .backend import figure_backend

        self.chain, self.explorer, self.finder, self.theme = chain, explorer, finder, theme
        self.backend = figure_backend(figure)
        self.features: list[tuple[int, int]] = []
        self._auto = features is None  # the flow follows the explorer's visited origins
        self._pending = False
        self.summary_html = W.HTML()
        self.node_box = W.Dropdown(options=[], description="open node", layout=W.Layout(width="auto"))
        self.node_box.add_class("smn-open-node")
        self.node_box.observe(self._on_node, names="value")
        self.message = W.HTML()
        if self.backend == "widget":
            from .backend import figure_widget

            self.chain_figure, self.flow_figure = figure_widget(), figure_widget()
            if theme is None:
                for f in (self.chain_figure, self.flow_figure):
                    f.add_class("smn-figure-auto")
        else:
            self.chain_figure, self.flow_figure = W.Output(), W.Output()
        kw.setdefault("layout", W.Layout(width="100%"))
        super().__init__(children=[self.summary_html, self.chain_figure,
                                   W.HBox([self.node_box, self.message], layout=W.Layout(align_items="center")),
                                   self.flow_figure], **kw)
        self.add_class("smn-panel")
        self.add_class("smn-overview")
        self._draw_chain()
        self.show(features)
        if explorer is not None:
            explorer.observe(self._on_explorer, names=["origin", "layer", "feature"])

    def _default_features(self) -> list[tuple[int, int]]:
        if self.explorer is not None and self.explorer.history:
            seen = list(dict.fromkeys(tuple(o) for o, _l, _f in self.explorer.history))
            return seen[-8:]
        if self.finder is not None and self.finder.table is not None and len(self.finder.table):
            return [(int(r.layer), int(r.feature)) for r in self.finder.table.head(6).itertuples()]
        pers = self.chain.persistence().loc[self.chain.layers[0]]
        top = pers.sort_values("lifetime", ascending=False, kind="stable").head(5).index
        return [(self.chain.layers[0], int(f)) for f in top]

    def _put(self, target: Any, fig: Any, on_click: Any) -> None:
        from .backend import panel_layout, replace_figure

        if self.backend == "output":
            from IPython.display import display

            with target:
                target.clear_output(wait=True)
                display(fig)
            return
        replace_figure(target, fig, panel_layout(self.theme))
        for t in target.data:
            t.on_click(on_click)

    def _draw_chain(self) -> None:
        from ..display import html
        from ..display.figures import make_chain_figure

        self.summary_html.value = html.chain_summary_html(self.chain, charts=False)
        self.chain_fig = make_chain_figure(self.chain, theme=self.theme)
        self._put(self.chain_figure, self.chain_fig, self._on_chain_point)

    def show(self, features: Sequence[tuple[int, int]] | None = None) -> None:
        """Draw the flow of ``features`` ((layer, feature) pairs; None: the default choice, which
        then follows the explorer)."""
        self._auto = features is None
        feats = [(int(L), int(f)) for L, f in (features if features is not None else self._default_features())]
        if not feats:
            raise ValueError("ChainOverview.show needs at least one (layer, feature)")
        self._draw_flow(feats)

    def _draw_flow(self, feats: list[tuple[int, int]]) -> None:
        from ..display.figures import make_flow_figure

        self.features = feats
        traces = [self.chain.trace(L, f) for L, f in feats]
        focus = None if self.explorer is None else (self.explorer.layer, self.explorer.feature)
        self.flow_fig = make_flow_figure(traces=traces, theme=self.theme, focus=focus)
        sk = self.flow_fig.data[0]
        nodes = [tuple(int(x) for x in c) for c in sk.node.customdata]
        opts = [("—", None)] + [(f"L{L} #{f}", (L, f)) for L, f in nodes if f >= 0]
        self._quiet = True
        try:
            if list(self.node_box.options) != opts:
                self.node_box.options = opts
            self.node_box.value = None
        finally:
            self._quiet = False
        self._put(self.flow_figure, self.flow_fig, self._on_flow_point)
        self._snapshot_changed()

    def _on_explorer(self, _change: Any) -> None:
        """The explorer moved: redraw the flow (its features if they follow the explorer, and the
        focus) once the explorer is quiet."""
        if self._pending:
            return
        self._pending = True
        from .backend import later as _later

        _later(self._follow, self.follow_delay_s)

    def _follow(self) -> None:
        self._pending = False
        feats = self._default_features() if self._auto else self.features
        try:
            self._draw_flow([(int(L), int(f)) for L, f in feats])
        except (KeyError, IndexError, ValueError):
            pass  # the explorer shows its own error; the flow keeps what it drew

    def choose(self, layer: int, feature: int) -> None:
        """Open feature ``feature`` of ``layer`` in the explorer (a Sankey node's click)."""
        from ..display import escape

        if self.explorer is not None and feature >= 0:
            self.explorer.select(int(layer), int(feature), source="the overview")
            self.message.value = (f'<span class="smn-muted">opened L{escape(layer)} #{escape(feature)} in the '
                                  "explorer</span>")

    def _on_node(self, change: Any) -> None:
        if getattr(self, "_quiet", False) or change["new"] is None:
            return
        self.choose(*change["new"])
        # back to "—": choosing the same node again is a change again
        self._quiet = True
        try:
            self.node_box.value = None
        finally:
            self._quiet = False

    def _on_flow_point(self, trace: Any, points: Any, _state: Any = None) -> None:
        inds = list(getattr(points, "point_inds", []) or [])
        cd = getattr(getattr(trace, "node", None), "customdata", None)
        if inds and cd is not None and inds[0] < len(cd):
            L, f = (int(x) for x in cd[inds[0]])
            self.choose(L, f)

    def _on_chain_point(self, trace: Any, points: Any, _state: Any = None) -> None:
        xs = list(getattr(points, "xs", []) or [])
        if xs and self.explorer is not None:
            L = int(round(float(xs[0])))
            if L in self.chain.layers:
                self.explorer.layer = L

    def snapshot_html(self) -> str:
        from ..display import escape, html

        # the flow as the traces' node rows (a Sankey has no static picture without an export engine)
        flows = []
        for L, f in self.features:
            try:
                flows.append(html.trace_html(self.chain.trace(L, f)))
            except (KeyError, IndexError, ValueError):
                continue
        feats = ", ".join(f"L{L} #{f}" for L, f in self.features)
        return html.panel_snapshot_html("ChainOverview", [
            html.chain_summary_html(self.chain, charts=True),
            f'<div class="smn-section-title">flow of {escape(feats)}</div>' if feats else "", *flows])
