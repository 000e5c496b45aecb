"""Panels that find features and show the whole chain: FeatureFinder and ChainOverview.

Thin ipywidgets panels like the explorer's: the ranking is ``sources.finder.find_features`` (the
same call works without a panel), the tables and figures come from ``display``; a panel only holds
controls and forwards a choice to a FeatureExplorer.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import ipywidgets as W
import traitlets

from .backend import SnapshotMixin

__all__ = ["FeatureFinder", "ChainOverview"]


def _row_label(r: Any, has_ex: bool) -> str:
    from ..display import fmt_float, fmt_pct

    mse = "—" if r["mse"] != r["mse"] else fmt_float(r["mse"], 3)
    s = f"L{int(r['layer']):<3} #{int(r['feature']):<6} persists {int(r['persistence']):>3}  mse {mse:<9}"
    if has_ex:
        s += f" fires {fmt_pct(r['density']):>6}  {r['top_tokens']}"
    if "explanation" in r and r["explanation"]:
        s += f"  {r['explanation'][:60]}"
    return s


_BOX_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def box_token(text: str) -> str | None:
    """The token filter a top-token box's text asks for: as typed, except the escapes the list
    shows for characters a text box cannot hold (``\\n``, ``\\t``, ``\\r``; ``\\\\`` for a
    backslash); "" is no filter."""
    if not text:
        return None
    return re.sub(r"\\([ntr\\])", lambda m: _BOX_ESCAPES[m.group(1)], text)


class FeatureFinder(SnapshotMixin, W.VBox):
    """Rank and filter the features of a chain and open one in a FeatureExplorer.

    Controls: the layer (or all), the sort (persistence, lifetime, MSE, margin, density, max
    activation), the least persistence, "next step accepted", a top-token and a Neuronpedia
    explanation filter. The top-token box matches the tokens themselves (:func:`box_token`: type
    ``\\n`` for a newline, as the list shows it). The list shows ``n`` rows of :func:`saematch_nb.sources.finder.find_features`
    (``self.table`` holds the DataFrame); choosing a row opens it in ``explorer``
    (``FeatureExplorer.trace_from``).
    """

    selected = traitlets.Tuple(traitlets.Int(), traitlets.Int(), default_value=(-1, -1))

    def __init__(self, chain: Any, examples: Any = None, explorer: Any = None, *, n: int = 30,
                 explanations: Any = None, **kw: Any) -> None:
        from ..sources.finder import SORTS

        from ..core._checks import positive_int

        self.chain, self.examples, self.explorer = chain, examples, explorer
        self.n = positive_int(n, "n (rows shown)")
        self.explanations = explanations
        self.table = None
        sorts = [s for s in SORTS if examples is not None or s not in ("density", "max_activation")]
        self.layer_box = W.Dropdown(options=[("all", None)] + [(str(L), L) for L in chain.layers], value=None,
                                    description="layer")
        self.sort_box = W.Dropdown(options=sorts, value="persistence", description="sort by")
        self.min_box = W.IntSlider(value=1, min=1, max=len(chain.layers), description="persists ≥")
        self.accepted_box = W.Checkbox(value=False, description="next step accepted")
        self.token_box = W.Text(value="", description="top token", placeholder="contains… (\\n: newline)",
                                disabled=examples is None)
        self.expl_box = W.Text(value="", description="explanation", placeholder="Neuronpedia text contains…")
        self.header = W.HTML()
        self.rows = W.Select(options=[], rows=12, layout=W.Layout(width="100%"))
        self.rows.add_class("smn-finder-row")
        self.status = W.HTML()
        for w in (self.layer_box, self.sort_box, self.min_box, self.accepted_box, self.token_box, self.expl_box):
            w.observe(lambda _c: self.refresh(), names="value")
        self.rows.observe(self._on_row, names="value")
        kw.setdefault("layout", W.Layout(width="100%"))
        super().__init__(children=[
            W.HBox([self.layer_box, self.sort_box, self.min_box], layout=W.Layout(flex_flow="row wrap")),
            W.HBox([self.accepted_box, self.token_box, self.expl_box], layout=W.Layout(flex_flow="row wrap")),
            self.status, self.header, self.rows], **kw)
        self.add_class("smn-panel")
        self.add_class("smn-finder")
        self.refresh()

    def query(self) -> dict:
        """The keyword arguments of find_features the controls describe."""
        return dict(layer=self.layer_box.value, sort=self.sort_box.value, min_persistence=self.min_box.value,
                    accepted_only=self.accepted_box.value, token=box_token(self.token_box.value),
                    explanation=self.expl_box.value or None, explanations=self.explanations, n=self.n)

    def refresh(self) -> None:
        from ..display import html
        from ..sources.finder import find_features

        try:
            df = find_features(self.chain, self.examples, **self.query())
        except (KeyError, ValueError, TypeError) as err:
            self.table = None
            self.status.value = html.error_html(err.args[0] if err.args else err)
            self.rows.options = []
            return
        self.status.value = ""
        self.table = df
        has_ex = "density" in df.columns
        self.header.value = html.finder_header_html(len(df), self.query())
        opts = [(_row_label(r, has_ex), (int(r["layer"]), int(r["feature"]))) for r in df.to_dict("records")]
        self._quiet = True
        try:
            self.rows.options = opts
            self.rows.value = None
        finally:
            self._quiet = False

    def _on_row(self, change: Any) -> None:
        if getattr(self, "_quiet", False) or change["new"] is None:
            return
        self.choose(*change["new"])

    def choose(self, layer: int, feature: int) -> None:
        """Open feature ``feature`` of ``layer`` in the explorer (what choosing a row does)."""
        self.selected = (int(layer), int(feature))
        if self.explorer is not None:
            self.explorer.trace_from(int(layer), int(feature))

    def snapshot_html(self) -> str:
        from ..display import html

        body = html.finder_table_html(self.table) if self.table is not None else self.status.value
        return html.panel_snapshot_html("FeatureFinder", [self.header.value, body])


class ChainOverview(SnapshotMixin, W.VBox):
    """The whole chain at a glance: accepted fraction and MSE per layer pair
    (``make_chain_figure``) and the flow of the selected features across all layers
    (``make_flow_figure``), both clickable when the figure backend is "widget": a Sankey node opens
    that feature in ``explorer``, a point of the chain figure moves the explorer to that layer.
    The node list under the flow does the same with the keyboard (and on Colab's backend).

    ``features``: (layer, feature) pairs to draw; by default the explorer's visited origins, else
    the finder's first rows, else the five most persistent features of the first layer.
    """

    def __init__(self, chain: Any, explorer: Any = None, *, features: Sequence[tuple[int, int]] | None = None,
                 finder: Any = None, figure: Any = "auto", theme: str | None = None, **kw: Any) -> None:
        from .backend import figure_backend

        self.chain, self.explorer, self.finder, self.theme = chain, explorer, finder, theme
        self.backend = figure_backend(figure)
        self.features: list[tuple[int, int]] = []
        self.summary_html = W.HTML()
        self.node_box = W.Dropdown(options=[], description="open node", layout=W.Layout(width="auto"))
        self.node_box.observe(self._on_node, names="value")
        if self.backend == "widget":
            import plotly.graph_objects as go

            self.chain_figure, self.flow_figure = go.FigureWidget(), go.FigureWidget()
        else:
            self.chain_figure, self.flow_figure = W.Output(), W.Output()
        kw.setdefault("layout", W.Layout(width="100%"))
        super().__init__(children=[self.summary_html, self.chain_figure, self.node_box, self.flow_figure], **kw)
        self.add_class("smn-panel")
        self.add_class("smn-overview")
        self._draw_chain()
        self.show(features)

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
        if self.backend == "output":
            from IPython.display import display

            with target:
                target.clear_output(wait=True)
                display(fig)
            return
        with target.batch_update():
            target.data = ()
            target.add_traces(fig.data)
            target.layout = fig.layout
        for t in target.data:
            t.on_click(on_click)

    def _draw_chain(self) -> None:
        from ..display import html
        from ..display.figures import make_chain_figure

        self.summary_html.value = html.chain_summary_html(self.chain)
        self.chain_fig = make_chain_figure(self.chain, theme=self.theme)
        self._put(self.chain_figure, self.chain_fig, self._on_chain_point)

    def show(self, features: Sequence[tuple[int, int]] | None = None) -> None:
        """Draw the flow of ``features`` ((layer, feature) pairs; None: the default choice)."""
        from ..display.figures import make_flow_figure

        feats = [(int(L), int(f)) for L, f in (features if features is not None else self._default_features())]
        if not feats:
            raise ValueError("ChainOverview.show needs at least one (layer, feature)")
        self.features = feats
        traces = [self.chain.trace(L, f) for L, f in feats]
        focus = None if self.explorer is None else (self.explorer.layer, self.explorer.feature)
        self.flow_fig = make_flow_figure(traces=traces, theme=self.theme, focus=focus)
        sk = self.flow_fig.data[0]
        nodes = [tuple(int(x) for x in c) for c in sk.node.customdata]
        self._quiet = True
        try:
            self.node_box.options = [("—", None)] + [(f"L{L} #{f}", (L, f)) for L, f in nodes if f >= 0]
            self.node_box.value = None
        finally:
            self._quiet = False
        self._put(self.flow_figure, self.flow_fig, self._on_flow_point)

    def choose(self, layer: int, feature: int) -> None:
        """Open feature ``feature`` of ``layer`` in the explorer (a Sankey node's click)."""
        if self.explorer is not None and feature >= 0:
            self.explorer.select(int(layer), int(feature))

    def _on_node(self, change: Any) -> None:
        if getattr(self, "_quiet", False) or change["new"] is None:
            return
        self.choose(*change["new"])

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
        from ..display import html

        return html.panel_snapshot_html("ChainOverview", [self.summary_html.value])
