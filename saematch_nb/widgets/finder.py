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

__all__ = ["FeatureFinder"]


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
            self.explorer.trace_from(int(layer), int(feature), source="the finder")

    def snapshot_html(self) -> str:
        from ..display import html

        body = html.finder_table_html(self.table) if self.table is not None else self.status.value
        return html.panel_snapshot_html("FeatureFinder", [self.header.value, body])


def __getattr__(name: str) -> Any:
    # ChainOverview lives in widgets/overview.py; the old import path keeps working
    if name == "ChainOverview":
        from .overview import ChainOverview

        return ChainOverview
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
