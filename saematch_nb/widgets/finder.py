"""The panel that finds features: FeatureFinder (the whole chain's ChainOverview is widgets/overview.py).

Thin ipywidgets panels like the explorer's: the ranking is ``analysis.finder.find_features`` (the
same call works without a panel), the tables and figures come from ``display``; a panel only holds
controls and forwards a choice to a FeatureExplorer.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import ipywidgets as W
import traitlets

from .backend import SnapshotMixin

__all__ = ["FeatureFinder"]


_BOX_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def box_token(text: str) -> str | None:
    """The token filter a top-token box's text asks for: as typed, except the escapes the list
    shows for characters a text box cannot hold (``\\n``, ``\\t``, ``\\r``; ``\\\\`` for a
    backslash); "" is no filter."""
    if not text:
        return None
    return re.sub(r"\\([ntr\\])", lambda m: _BOX_ESCAPES[m.group(1)], text)


_LIST_HEIGHT = "240px"  # the list's and its row slider's (the slider's track spans the list)
ALL_LAYERS = "all"  # the layer box's value for every layer (a Dropdown shows None as a blank)
_KEYS_HINT = ("click a row to open it in the explorer; to step with the keyboard, click the slider at the "
              "list's right and use ↑ ↓ (PgUp PgDn, Home End)")


class FeatureFinder(SnapshotMixin, W.VBox):
    """Rank and filter the features of a chain and open one in a FeatureExplorer.

    Controls: the layer (or all), the sort (persistence, lifetime, MSE, margin, density, max
    activation) and its direction, how many layers a feature persists on (at least, at most:
    short-lived features), "newborn" (no accepted step leads in: born at its layer), "dying" (its
    next step is not accepted), "next step accepted", a top-token and a Neuronpedia explanation
    filter. The top-token box matches the tokens themselves (:func:`box_token`: type ``\\n`` for
    a newline, as the list shows it). The list shows ``n`` rows of
    :func:`saematch_nb.analysis.finder.find_features` in columns (every value the list can be
    sorted by is one of them; ``self.table`` holds the DataFrame) and says how many match;
    choosing a row opens it in ``explorer`` (``FeatureExplorer.trace_from``) and says so under
    the list.

    The row stays highlighted while the explorer shows it; once the explorer moves elsewhere the
    highlight is cleared, so that clicking the same row again opens it again (a list only reports
    a change of its value). Keyboard: JupyterLab takes the arrow keys of a focused list for moving
    between cells, and a list widget cannot opt out without custom JavaScript, so the slider at
    the list's right steps through the rows (a slider handles its keys itself): top is no row,
    each step down opens the next row.
    """

    selected = traitlets.Tuple(traitlets.Int(), traitlets.Int(), default_value=(-1, -1))

    def __init__(self, chain: Any, examples: Any = None, explorer: Any = None, *, n: int = 30,
                 explanations: Any = None, **kw: Any) -> None:
        from ..analysis.finder import SORTS, natural_descending

        from ..core._checks import positive_int

        self.chain, self.examples, self.explorer = chain, examples, explorer
        self.n = positive_int(n, "n (rows shown)")
        self.explanations = explanations
        self.table = None
        self._quiet = False
        self._handing_off = False
        n_layers = len(chain.layers)
        sorts = [s for s in SORTS if examples is not None or s not in ("density", "max_activation")]
        self.layer_box = W.Dropdown(options=[("all", ALL_LAYERS)] + [(str(L), L) for L in chain.layers],
                                    value=ALL_LAYERS, description="layer")
        self.sort_box = W.Dropdown(options=sorts, value="persistence", description="sort by")
        # no description: a ToggleButtons' label sits above its buttons; the buttons say it
        self.order_box = W.ToggleButtons(options=[("↓ largest first", True), ("↑ smallest first", False)],
                                         value=natural_descending("persistence"),
                                         tooltips=["the sort's largest values first", "its smallest values first"],
                                         style={"button_width": "auto"}, layout=W.Layout(width="auto"))
        self.min_box = W.IntSlider(value=1, min=1, max=n_layers, description="persists ≥")
        self.max_box = W.IntSlider(value=n_layers, min=1, max=n_layers, description="persists ≤")
        flag = dict(value=False, indent=False, style={"description_width": "initial"},
                    layout=W.Layout(width="auto", margin="0 1.5em 0 0"))
        self.newborn_box = W.Checkbox(description="newborn here (no accepted step in)", **flag)
        self.dying_box = W.Checkbox(description="dying here (no accepted step out)", **flag)
        self.accepted_box = W.Checkbox(description="next step accepted", **flag)
        self.token_box = W.Text(value="", description="top token", placeholder="contains… (\\n: newline)",
                                disabled=examples is None)
        self.expl_box = W.Text(value="", description="explanation", placeholder="Neuronpedia text contains…")
        self.header = W.HTML()
        self.rows = W.Select(options=[], rows=12, layout=W.Layout(width="auto", flex="1 1 auto", height=_LIST_HEIGHT))
        self.rows.add_class("smn-finder-row")
        # the keyboard's way through the list: value 0 is no row, -k the k-th row (a vertical
        # slider has its largest value on top, and the list's first row is on top)
        self.row_slider = W.IntSlider(value=0, min=0, max=0, orientation="vertical", readout=False,
                                      continuous_update=False, description="", tooltip=_KEYS_HINT,
                                      layout=W.Layout(height=_LIST_HEIGHT, width="28px"))
        self.row_slider.add_class("smn-finder-keys")
        self.notice = W.HTML()
        self.status = W.HTML()
        for w in (self.layer_box, self.order_box, self.min_box, self.max_box, self.newborn_box, self.dying_box,
                  self.accepted_box, self.token_box, self.expl_box):
            w.observe(self._on_control, names="value")
        self.sort_box.observe(self._on_sort, names="value")
        self.rows.observe(self._on_row, names="value")
        self.row_slider.observe(self._on_key_row, names="value")
        if explorer is not None and hasattr(explorer, "observe"):
            explorer.observe(self._on_explorer, names=["layer", "feature", "origin"])
        kw.setdefault("layout", W.Layout(width="100%"))
        wrap = W.Layout(flex_flow="row wrap")
        super().__init__(children=[
            W.HBox([self.layer_box, self.sort_box, self.order_box], layout=wrap),
            W.HBox([self.min_box, self.max_box], layout=wrap),
            W.HBox([self.newborn_box, self.dying_box, self.accepted_box],
                   layout=W.Layout(flex_flow="row wrap", padding="0 0 0 1em")),
            W.HBox([self.token_box, self.expl_box], layout=wrap),
            self.status, self.header,
            W.HBox([self.rows, self.row_slider], layout=W.Layout(width="100%")),
            self.notice], **kw)
        self.add_class("smn-panel")
        self.add_class("smn-finder")
        self.refresh()

    def query(self) -> dict:
        """The keyword arguments of find_features the controls describe."""
        layer = None if self.layer_box.value == ALL_LAYERS else self.layer_box.value
        top = self.max_box.value
        return dict(layer=layer, sort=self.sort_box.value, descending=self.order_box.value,
                    min_persistence=self.min_box.value,
                    max_persistence=None if top >= len(self.chain.layers) else top,
                    newborn=self.newborn_box.value, dying=self.dying_box.value,
                    accepted_only=self.accepted_box.value, token=box_token(self.token_box.value),
                    explanation=self.expl_box.value or None, explanations=self.explanations, n=self.n)

    def _on_control(self, _change: Any) -> None:
        if not self._quiet:
            self.refresh()

    def _on_sort(self, change: Any) -> None:
        from ..analysis.finder import natural_descending

        # a new sort starts in its natural direction (MSE: smallest first), then lists once
        with self._quietly():
            self.order_box.value = natural_descending(change["new"])
        self.refresh()

    @contextlib.contextmanager
    def _quietly(self):
        """Set controls without their observers answering (one refresh, no hand-off)."""
        was, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = was

    def refresh(self) -> None:
        from ..display import html
        from ..display.text import finder_lines
        from ..analysis.finder import find_features

        q = self.query()
        try:
            df = find_features(self.chain, self.examples, **q)
        except (KeyError, ValueError, TypeError) as err:
            self.table = None
            self.status.value = html.error_html(err.args[0] if err.args else err)
            with self._quietly():
                self.rows.options = []
                self.row_slider.min, self.row_slider.value = 0, 0
            return
        self.status.value = ""
        self.table = df
        columns, lines = finder_lines(df, q["sort"], q["descending"])
        self.header.value = html.finder_header_html(len(df), q, df.attrs.get("n_matching"), columns=columns,
                                                    hint=_KEYS_HINT)
        keys = [(int(L), int(f)) for L, f in zip(df["layer"].tolist(), df["feature"].tolist())]
        with self._quietly():
            self.rows.options = list(zip(lines, keys))
            self.row_slider.value = 0
            self.row_slider.min = -len(keys)
        self._show_selected()

    def _keys(self) -> list:
        return [v for _label, v in self.rows.options]

    def _show_selected(self) -> None:
        """Highlight the chosen row while the explorer shows it (and it is listed); else none."""
        keys = self._keys()
        sel = tuple(self.selected)
        show = sel in keys and self._explorer_shows(sel)
        with self._quietly():
            self.rows.value = sel if show else None
            self.row_slider.value = -(keys.index(sel) + 1) if show else 0

    def _explorer_shows(self, sel: tuple) -> bool:
        ex = self.explorer
        if ex is None or not hasattr(ex, "origin"):
            return True  # nothing to move away: the choice stands
        return tuple(ex.origin) == sel and (int(ex.layer), int(ex.feature)) == sel

    def _on_row(self, change: Any) -> None:
        if self._quiet or change["new"] is None:
            return
        self.choose(*change["new"])

    def _on_key_row(self, change: Any) -> None:
        if self._quiet:
            return
        k = -int(change["new"]) - 1
        keys = self._keys()
        if 0 <= k < len(keys):
            self.choose(*keys[k])
        else:  # the top: no row
            with self._quietly():
                self.rows.value = None

    def _on_explorer(self, _change: Any) -> None:
        if self._handing_off or self._quiet or self.rows.value is None:
            return
        if not self._explorer_shows(tuple(self.rows.value)):
            # the explorer moved on: clear the highlight so that the same row can be chosen again
            self._show_selected()

    def choose(self, layer: int, feature: int) -> None:
        """Open feature ``feature`` of ``layer`` in the explorer (what choosing a row does)."""
        from ..display import html

        layer, feature = int(layer), int(feature)
        self.selected = (layer, feature)
        what = f"layer {layer} · #{feature}"
        if self.explorer is not None:
            self._handing_off = True
            try:
                self.explorer.trace_from(layer, feature, source="the finder")
            finally:
                self._handing_off = False
            self.notice.value = html.finder_notice_html(f"opened {what} in the explorer above")
        else:
            self.notice.value = html.finder_notice_html(
                f"chose {what} (finder.selected); pass explorer= to open it in a FeatureExplorer")
        self._show_selected()

    def snapshot_html(self) -> str:
        from ..display import html

        body = html.finder_table_html(self.table) if self.table is not None else self.status.value
        return html.panel_snapshot_html("FeatureFinder", [self.header.value, body, self.notice.value])

