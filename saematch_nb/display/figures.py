"""Plotly figures of matches, chains and traces, and ``save_figure`` for papers.

plotly is imported inside each function, so importing this module costs nothing. Every figure is
a ``plotly.graph_objects.Figure``; strings from SAE ids and labels are passed to plotly as data
(plotly renders them as text, not markup), and hover text goes through ``escape``.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .._atomic import atomic_write
from ..errors import ArgumentTypeError, InvalidArgumentError, SaematchError
from ._util import UNCERTAIN_MARGIN, escape, fmt_float, margin_uncertain

__all__ = [
    "make_mse_figure", "make_margin_figure", "make_chain_figure", "make_trace_figure",
    "make_flow_figure", "make_feature_flow_figure", "make_flow_graph_figure", "FLOW_CLASS_COLORS",
    "save_figure", "FigureExportError", "COLORS", "PALETTE", "PAPER_PRESETS",
    "paper_layout", "set_theme", "get_theme", "template", "close_export_browser", "PAPER_HEIGHT_SCALE",
    "TRACE_KEY", "FLOW_KEY",
]

# Okabe & Ito's colour-blind-safe palette (Color Universal Design): blue, vermillion, orange,
# bluish green, reddish purple, sky blue, yellow, black.
PALETTE = ("#0072B2", "#D55E00", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
# One meaning per colour (issue #23): blue accepted, vermillion rejected, reddish purple the
# margin (filled diamond; open when not clearly positive), sky blue the activation correlation and
# the traced origins, bluish green the focus; orange is no longer used for anything.
COLORS = {"matched": PALETTE[0], "unmatched": PALETTE[1], "threshold": "#808080", "margin": PALETTE[4],
          "none": "#999999", "focus": PALETTE[3], "correlation": PALETTE[5], "origin": PALETTE[5]}
_PALETTE = PALETTE
# Physical sizes for papers: width of a column (inches) and the font size (points). Plotly's unit
# is the CSS pixel, 1/96 inch, which is also what kaleido's PDF and SVG pages are measured in.
PAPER_PRESETS = {
    "single": {"width_in": 3.25, "height_in": 2.4, "font_pt": 8.0},   # one column (ACL/ICML/NeurIPS-like)
    "double": {"width_in": 6.75, "height_in": 3.2, "font_pt": 9.0},   # the full text width
    "slide": {"width_in": 10.0, "height_in": 5.6, "font_pt": 16.0},
}
_PX_PER_IN = 96.0
_PX_PER_PT = 96.0 / 72.0

_THEME = {"name": "light"}  # this module's own setting (set_theme); plotly's default is never touched


class FigureExportError(SaematchError, RuntimeError):
    """A figure could not be written in the requested format (missing browser for kaleido...)."""


def _go():
    try:
        import plotly.graph_objects as go
    except ImportError as exc:  # pragma: no cover - plotly is in the notebook extra
        raise ImportError("figures need plotly: pip install plotly (or saematch_nb[notebook])") from exc
    return go


def _subplots(**kw: Any):
    from plotly.subplots import make_subplots

    return make_subplots(**kw)


def _pair_title(lm: Any) -> str:
    a, b = lm.info_a, lm.info_b
    la = "?" if a.layer is None else a.layer
    lb = "?" if b.layer is None else b.layer
    return f"layers {la} → {lb}<br><sup>{escape(a.label)} → {escape(b.label)}</sup>"


_THEMES = ("light", "dark", "auto")


def _check_theme(theme: Any) -> str:
    if theme not in _THEMES:
        raise ValueError(f"theme must be 'auto', 'light' or 'dark', got {theme!r}")
    return theme


def set_theme(theme: str = "light") -> None:
    """The template of saematch_nb's figures: ``"light"`` (default: white, what papers and
    exports get), ``"dark"`` (JupyterLab's dark theme) or ``"auto"`` (transparent backgrounds with
    mid-grey text and grid: readable on a light and on a dark notebook alike, for live figures; a
    kernel cannot see the notebook's theme). A plotly default template the user set
    (``plotly.io.templates.default``) still wins. :func:`save_figure` and :func:`paper_layout`
    always write an "auto" figure on white."""
    _THEME["name"] = _check_theme(theme)


def get_theme() -> str:
    return _THEME["name"]


# "auto": a grey that keeps a 4:1 contrast on white and on JupyterLab's dark background (#111),
# grid lines a faint version of it, nothing opaque behind the figure
_AUTO_FG, _AUTO_GRID, _CLEAR = "#8a8a8a", "rgba(138,138,138,0.28)", "rgba(0,0,0,0)"


@functools.lru_cache(maxsize=4)
def _template(theme: str):
    import plotly.io as pio

    go = _go()
    t = go.layout.Template(pio.templates["plotly_dark" if theme == "dark" else "plotly_white"])
    t.layout.colorway = list(PALETTE if theme == "light" else ("#56B4E9",) + PALETTE[1:5] + ("#F0E442", "#FFFFFF"))
    if theme == "auto":
        t.layout.colorway = list(PALETTE[:7]) + [_AUTO_FG]
        t.layout.update(paper_bgcolor=_CLEAR, plot_bgcolor=_CLEAR, font=dict(color=_AUTO_FG),
                        legend=dict(bgcolor=_CLEAR), polar=dict(bgcolor=_CLEAR))
        for ax in ("xaxis", "yaxis"):
            t.layout[ax].update(gridcolor=_AUTO_GRID, linecolor=_AUTO_GRID, zerolinecolor=_AUTO_GRID)
        t.layout.annotationdefaults.update(font=dict(color=_AUTO_FG), arrowcolor=_AUTO_FG)
    return t


def template(theme: str | None = None):
    """saematch_nb's plotly template: plotly_white / plotly_dark with the colour-blind-safe palette,
    or "auto" (transparent, mid-grey text: see :func:`set_theme`)."""
    return _template(_check_theme(theme or _THEME["name"]))


def _meta(fig: Any) -> dict:
    """What saematch_nb recorded about a figure it made (kind, theme, ...), or {}."""
    m = fig.layout.meta
    return dict(m.get("saematch", {})) if isinstance(m, Mapping) else {}


def _layout(fig: Any, title: str | None, *, theme: str | None = None, with_template: bool = True,
            kind: str = "", info: Mapping[str, Any] | None = None, **kw: Any) -> Any:
    # plotly reads a small HTML subset in titles and labels: user strings are passed escaped
    import plotly.io as pio

    kw.setdefault("margin", dict(l=60, r=20, t=70, b=50))
    used = None
    if with_template:
        # the user's template wins (e.g. plotly_dark set as plotly's default); plotly's stock
        # default has a grey plot area that prints badly, so it is replaced by ours
        user = pio.templates.default not in (None, "plotly")
        if user and theme is None:
            kw["template"], used = pio.templates.default, "user"
        else:
            used = _check_theme(theme or _THEME["name"])
            kw["template"] = template(used)
    # what the figure is, for paper_layout (per-figure paper layouts) and save_figure (an "auto"
    # figure is exported on white); plotly keeps layout.meta as given
    kw["meta"] = {"saematch": {"figure": kind, "theme": used, **dict(info or {})}}
    fig.update_layout(title=dict(text=title, font=dict(size=15)), **kw)
    return fig


# -- one pair ------------------------------------------------------------------------------------
def _threshold_on_mse(lm: Any) -> bool:
    """The criterion's threshold is on ``score``; it is an MSE cut-off only when score is the MSE."""
    s, m = np.asarray(lm.score, dtype=np.float64), np.asarray(lm.mse, dtype=np.float64)
    return s.shape == m.shape and bool(np.allclose(s, m, rtol=1e-5, atol=1e-12, equal_nan=True))


def make_mse_figure(lm: Any, *, x: str = "mse", bins: int = 60, log_y: bool = False,
                    title: str | None = None, theme: str | None = None):
    """Histogram of the MSE to the assigned partner (``x="mse"``) or of the criterion score
    (``x="score"``), accepted and not accepted features stacked in two colours, with the threshold
    as a dashed line (drawn on the MSE axis only when the criterion's score is the MSE itself)."""
    go = _go()
    if x not in ("mse", "score"):
        raise ValueError(f"x must be 'mse' or 'score', got {x!r}")
    vals = np.asarray(lm.mse if x == "mse" else lm.score, dtype=np.float64)
    matched = np.asarray(lm.matched, dtype=bool)
    ok = np.isfinite(vals)
    fig = go.Figure()
    if ok.any():
        lo, hi = min(0.0, float(vals[ok].min())), float(vals[ok].max())
        if hi <= lo:
            hi = lo + 1.0
        # pre-binned bars: small figures even at 65k features, identical bins for both groups
        edges = np.linspace(lo, hi, int(bins) + 1)
        centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        for name, mask, color in (("accepted", matched, COLORS["matched"]),
                                  ("not accepted", ~matched, COLORS["unmatched"])):
            counts, _ = np.histogram(vals[ok & mask], bins=edges)
            fig.add_trace(go.Bar(
                x=centers, y=counts, width=width, name=f"{name} ({int((ok & mask).sum()):,})",
                marker_color=color, marker_line_width=0,
                customdata=np.stack([edges[:-1], edges[1:]], axis=1),
                hovertemplate=f"{name}<br>{x} %{{customdata[0]:.4g}}–%{{customdata[1]:.4g}}<br>"
                              "%{y} features<extra></extra>",
            ))
    thr = float(lm.threshold)
    if np.isfinite(thr) and (x == "score" or _threshold_on_mse(lm)):
        fig.add_vline(x=thr, line_dash="dash", line_color=COLORS["threshold"],
                      annotation_text=f"threshold {fmt_float(thr)}", annotation_position="top right")
    _layout(fig, title or f"{'MSE to the assigned partner' if x == 'mse' else 'criterion score'}, {_pair_title(lm)}",
            theme=theme, barmode="stack", bargap=0, kind="mse",
            xaxis_title=("MSE to the assigned partner (folded parameters)" if x == "mse"
                         else "criterion score: direction distance (1 − mean cosine)"),
            yaxis_title="features", yaxis_type="log" if log_y else None)
    fig.update_yaxes(ticklabelstandoff=4)  # the y axis's "0" off the x axis's "0" in the corner
    return fig


def make_margin_figure(lm: Any, *, max_points: int = 20000, seed: int = 0, title: str | None = None,
                       theme: str | None = None):
    """MSE against margin (MSE to the runner-up minus MSE to the partner), one point per A-feature.

    Above ``max_points`` features a fixed random subset is drawn (the title says so)."""
    go = _go()
    n = int(lm.n_a)
    idx = np.arange(n)
    note = ""
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
        note = f" ({max_points:,} of {n:,} features shown)"
    mse = np.asarray(lm.mse, dtype=np.float64)[idx]
    margin = np.asarray(lm.alt_mse, dtype=np.float64)[idx] - np.asarray(lm.mse, dtype=np.float64)[idx]
    matched = np.asarray(lm.matched, dtype=bool)[idx]
    perm = np.asarray(lm.permutation)[idx]
    Scatter = go.Scattergl if len(idx) > 5000 else go.Scatter
    fig = go.Figure()
    for name, mask, color in (("accepted", matched, COLORS["matched"]),
                              ("not accepted", ~matched, COLORS["unmatched"])):
        fig.add_trace(Scatter(
            x=mse[mask], y=margin[mask], mode="markers", name=f"{name} ({int(mask.sum()):,})",
            marker=dict(color=color, size=4, opacity=0.6),
            customdata=np.stack([idx[mask], perm[mask]], axis=1),
            hovertemplate="A %{customdata[0]} → B %{customdata[1]}<br>mse %{x:.4g}<br>margin %{y:.4g}"
                          "<extra></extra>",
        ))
    fig.add_hline(y=0, line_color=COLORS["threshold"], line_width=1)
    if np.isfinite(float(lm.threshold)) and _threshold_on_mse(lm):
        fig.add_vline(x=float(lm.threshold), line_dash="dash", line_color=COLORS["threshold"],
                      annotation_text=f"threshold {fmt_float(lm.threshold)}")
    return _layout(fig, title or f"MSE vs margin{note}, {_pair_title(lm)}", theme=theme, kind="margin",
                   xaxis_title="MSE to the assigned partner", yaxis_title="margin (runner-up MSE − partner MSE)")


# -- chains --------------------------------------------------------------------------------------
def _chain_rows(chain: Any) -> tuple[list[float], list[str], dict[str, list[float]]]:
    if isinstance(chain, (list, tuple)):
        pairs, layers = list(chain), []
    elif hasattr(chain, "pairs"):
        pairs, layers = list(chain.pairs), [int(x) for x in (getattr(chain, "layers", ()) or ())]
    elif hasattr(chain, "mse") and hasattr(chain, "summary"):
        pairs, layers = [chain], []
    else:
        raise TypeError(f"expected a MatchChain, a list of LayerMatch or a LayerMatch, got {type(chain).__name__}")
    xs, labels = [], []
    cols: dict[str, list[float]] = {k: [] for k in ("matched_fraction", "mse_q10", "mse_median", "mse_q90", "mse_mean")}
    for t, lm in enumerate(pairs):
        s = lm.summary()
        la, lb = (layers[t], layers[t + 1]) if len(layers) == len(pairs) + 1 else (s.get("layer_a"), s.get("layer_b"))
        xs.append(float(la) if la is not None else float(t))
        labels.append(f"{'?' if la is None else la}→{'?' if lb is None else lb}")
        for k in cols:
            v = s.get(k)
            cols[k].append(float("nan") if v is None else float(v))
    return xs, labels, cols


def make_chain_figure(chain_or_dict: Any, *, title: str | None = None, log_mse: bool = False,
                      bands: bool = True, theme: str | None = None):
    """Accepted fraction (top) and the MSE to the assigned partner, median with its q10–q90 band
    (bottom), per layer pair across depth; x ticks are the pairs' first layers, labelled "t→t+1".

    ``chain_or_dict``: a MatchChain (or list of LayerMatch), or ``{name: chain}`` to overlay
    several runs, e.g. ``{"folded": c1, "unfolded": c2, "identity": c3}`` as in the paper's Fig. 3;
    each run has one colour and one legend entry (a single run needs no legend: the panel titles
    say what each curve is).
    """
    go = _go()
    runs = dict(chain_or_dict) if isinstance(chain_or_dict, Mapping) else {"": chain_or_dict}
    if not runs:
        raise ValueError("make_chain_figure needs at least one chain")
    fig = _subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                    subplot_titles=("accepted fraction", "MSE to the assigned partner: median, q10–q90 band"))
    ticks: dict[float, str] = {}
    for k, (name, ch) in enumerate(runs.items()):
        xs, labels, c = _chain_rows(ch)
        ticks.update(zip(xs, labels))
        color = PALETTE[k % len(PALETTE)]
        tag = f"{escape(name)}: " if name else ""
        fig.add_trace(go.Scatter(
            x=xs, y=c["matched_fraction"], mode="lines+markers",
            name=f"{tag}accepted fraction" if name else "accepted fraction",
            legendgroup=name or "chain", showlegend=bool(name), line=dict(color=color), customdata=labels,
            hovertemplate=f"{escape(name)} %{{customdata}}<br>accepted %{{y:.1%}}<extra></extra>",
        ), row=1, col=1)
        if bands:
            bx = xs + xs[::-1]
            by = c["mse_q90"] + c["mse_q10"][::-1]
            fig.add_trace(go.Scatter(
                x=bx, y=by, mode="lines", fill="toself", fillcolor=color, opacity=0.18, line=dict(width=0),
                name=f"{tag}MSE q10–q90", legendgroup=name or "chain", showlegend=False, hoverinfo="skip",
            ), row=2, col=1)
        fig.add_trace(go.Scatter(
            x=xs, y=c["mse_median"], mode="lines+markers", name=f"{tag}MSE median",
            legendgroup=name or "chain", showlegend=False, line=dict(color=color, dash="solid"),
            marker=dict(symbol="diamond"),
            customdata=np.stack([labels, c["mse_q10"], c["mse_q90"]], axis=1),
            hovertemplate=(f"{escape(name)} %{{customdata[0]}}<br>median %{{y:.4g}}<br>"
                           "q10 %{customdata[1]:.4g}, q90 %{customdata[2]:.4g}<extra></extra>"),
        ), row=2, col=1)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=1)
    fig.update_yaxes(type="log" if log_mse else None, title_text="MSE", row=2, col=1)
    xs_all = sorted(ticks)
    step = max(1, int(np.ceil(len(xs_all) / 14)))
    fig.update_xaxes(tickmode="array", tickvals=xs_all[::step], ticktext=[ticks[x] for x in xs_all[::step]])
    fig.update_xaxes(title_text="layer pair", row=2, col=1)
    return _layout(fig, title or "SAE Match across depth", theme=theme, height=560, kind="chain",
                   info={"rows": 2, "subplot_titles": ("accepted fraction", "MSE to the partner: median, q10–q90"),
                         "runs": [str(n) for n in runs] if len(runs) > 1 else []})


_STATUS_WORDS = {"accepted": "accepted by the calibrated criterion", "rejected": "rejected by the calibrated criterion",
                 "no partner": "no partner"}


def _step_marks(steps: Sequence[Any]) -> dict[str, list]:
    """Per step: its colour and symbol (accepted / rejected, the criterion's decision) and its
    margin's symbol (filled: clearly positive; open: uncertain, :func:`margin_uncertain`)."""
    unsure = [margin_uncertain(s.mse, s.margin) for s in steps]
    return {
        "color": [COLORS["matched"] if s.matched else COLORS["unmatched"] for s in steps],
        "symbol": ["circle" if s.matched else "x" for s in steps],
        "margin_symbol": ["diamond-open" if u else "diamond" for u in unsure],
        "margin_note": ["not clearly positive: uncertain" if u else "clearly positive" for u in unsure],
    }


def trace_figure_data(trace: Any, *, title: str | None = None, correlations: Mapping[int, float] | None = None,
                      focus: int | None = None) -> dict:
    """The content of :func:`make_trace_figure` as plain dicts (no plotly objects): ``rows``,
    ``traces`` (a list of ``(row, trace dict)``) and ``layout`` (the layout properties that differ
    from one trace to the next: title, axis ranges and ticks, focus lines). A panel showing one
    chain's traces updates its figure from these without building a new one.

    Every trace is left out of plotly's legend (``showlegend=False``): their points are coloured
    one by one, and a legend swatch would take the first point's colour; the figure's key says
    what the colours and symbols mean."""
    steps = sorted(trace.steps, key=lambda s: (s.layer, s.next_layer))
    has_corr = bool(correlations)
    rows = 3 if has_corr else 2
    xs = [(s.layer + s.next_layer) / 2 for s in steps]
    status = ["accepted" if s.matched else ("no partner" if s.next_feature < 0 else "rejected") for s in steps]
    sim = [1.0 - float(getattr(s, "score", float("nan"))) for s in steps]
    bound = [1.0 - float(getattr(s, "threshold", float("nan"))) for s in steps]
    marks = _step_marks(steps)
    step_data = [[s.next_layer, s.next_feature, s.layer, s.feature, st, fmt_float(s.mse), fmt_float(s.margin),
                  _STATUS_WORDS[st], note] for s, st, note in zip(steps, status, marks["margin_note"])]
    traces: list[tuple[int, dict]] = [(1, dict(
        type="scatter", x=xs, y=sim, mode="markers+text", name="step similarity", showlegend=False,
        text=[f"#{s.feature}→#{s.next_feature}" if s.next_feature >= 0 else f"#{s.feature}→·" for s in steps],
        textposition="top center", textfont=dict(size=10),
        marker=dict(size=11, color=marks["color"], symbol=marks["symbol"]),
        customdata=step_data,
        hovertemplate=("L%{customdata[2]} #%{customdata[3]} → L%{customdata[0]} #%{customdata[1]}<br>"
                       "similarity %{y:.3f}: %{customdata[7]}<br>mse %{customdata[5]}, "
                       "margin %{customdata[6]} (%{customdata[8]})<extra></extra>")))]
    if any(np.isfinite(bound)):
        bx, by = [], []
        for s, b in zip(steps, bound):  # one flat segment per step: each pair has its own bound
            bx += [s.layer + 0.15, s.next_layer - 0.15, None]
            by += [b, b, None]
        traces.append((1, dict(type="scatter", x=bx, y=by, mode="lines", name="acceptance bound", showlegend=False,
                               line=dict(color=COLORS["threshold"], dash="dash", width=1.5), hoverinfo="skip")))
    # room above 1 for the labels over the points (scatter text is clipped to the plot area)
    layout: dict = {"yaxis.range": [min([0.0] + [v for v in sim if np.isfinite(v)]) - 0.05, 1.3],
                    "yaxis.tickvals": [0, 0.25, 0.5, 0.75, 1]}
    if has_corr:
        present = [(int(l), int(f)) for l, f in zip(trace.layers, trace.features) if f >= 0 and int(l) in correlations]
        traces.append((2, dict(
            type="scatter", x=[l for l, _ in present], y=[float(correlations[l]) for l, _ in present],
            mode="lines+markers+text", name="activation correlation", text=[f"#{f}" for _, f in present],
            showlegend=False, textposition="top center", textfont=dict(size=10),
            line=dict(color=COLORS["correlation"]),
            marker=dict(size=[13 if l == trace.origin_layer else 9 for l, _ in present], color=COLORS["correlation"]),
            customdata=[[l, f] for l, f in present],
            hovertemplate="L%{customdata[0]} #%{customdata[1]}<br>r with the origin %{y:.3f}<extra></extra>")))
        layout["yaxis2.range"] = [-0.05, 1.3]
        layout["yaxis2.tickvals"] = [0, 0.5, 1]
    traces.append((rows, dict(
        type="bar", x=xs, y=[s.mse for s in steps], name="MSE per step", width=0.5, showlegend=False,
        marker=dict(color=marks["color"]),
        customdata=step_data,
        hovertemplate=("L%{customdata[2]} #%{customdata[3]} → L%{customdata[0]} #%{customdata[1]}<br>"
                       "mse %{y:.4g} (%{customdata[7]})<extra></extra>"))))
    traces.append((rows, dict(
        type="scatter", x=xs, y=[s.margin for s in steps], mode="markers", name="margin", showlegend=False,
        marker=dict(symbol=marks["margin_symbol"], size=9, color=COLORS["margin"], line=dict(width=1.5,
                    color=COLORS["margin"])),
        customdata=step_data,
        hovertemplate="margin %{y:.4g}: %{customdata[8]}<br>(the step is %{customdata[7]})<extra></extra>")))
    ls = sorted({int(x) for x in trace.layers})
    step = max(1, int(np.ceil(len(ls) / 14)))  # integer layer ticks, thinned on long chains
    for r in range(1, rows + 1):
        ax = "xaxis" if r == 1 else f"xaxis{r}"
        layout[f"{ax}.range"] = [min(trace.layers) - 0.4, max(trace.layers) + 0.4]
        layout[f"{ax}.tickmode"], layout[f"{ax}.tickvals"] = "array", ls[::step]
        layout[f"{ax}.ticktext"] = [str(x) for x in ls[::step]]
    # one vertical line per row, as add_vline draws it; named: a panel moving the focus along the
    # same trace moves these shapes only
    layout["shapes"] = [] if focus is None else [
        dict(type="line", name="focus", x0=int(focus), x1=int(focus), y0=0, y1=1,
             xref="x" if r == 1 else f"x{r}", yref="y domain" if r == 1 else f"y{r} domain",
             line=dict(color=COLORS["focus"], width=2), opacity=0.5) for r in range(1, rows + 1)]
    from .text import born_text, dies_text

    layers = list(trace.layers)
    sub = f"{born_text(trace.born_layer, layers)}, {dies_text(trace.dies_layer, layers)}"
    layout["title.text"] = title or f"feature {trace.origin_feature} of layer {trace.origin_layer}<br><sup>{sub}</sup>"
    return {"rows": rows, "traces": traces, "layout": layout}


def _glyph(color: str, glyph: str) -> str:
    return f"<span style='color:{color}'>{glyph}</span>"


#: the trace figure's key (an annotation: its colours are per point, which a legend cannot show);
#: it says which signal decides "accepted" and what the margin adds
TRACE_KEY = (
    f"{_glyph(COLORS['matched'], '●')} accepted / {_glyph(COLORS['unmatched'], '✕')} rejected: decided by the "
    "calibrated criterion alone<br>(direction similarity at or above the dashed bound, and mutual best)<br>"
    f"{_glyph(COLORS['margin'], '◆')} margin (runner-up MSE − partner MSE), a separate signal;<br>"
    f"{_glyph(COLORS['margin'], '◇')} not clearly positive (at most {UNCERTAIN_MARGIN:.0%} of the step's MSE): "
    "an uncertain step, whatever the criterion decided")

# the key at paper sizes: the same facts, shorter (a caption says the rest)
_TRACE_PAPER_KEY = (
    f"{_glyph(COLORS['matched'], '●')} accepted / {_glyph(COLORS['unmatched'], '✕')} rejected by the "
    f"calibrated criterion, {_glyph(COLORS['threshold'], '– –')} its bound; "
    f"{_glyph(COLORS['margin'], '◆')} margin, {_glyph(COLORS['margin'], '◇')} ≤ {UNCERTAIN_MARGIN:.0%} of the "
    "MSE: uncertain")


def make_trace_figure(trace: Any, *, title: str | None = None, correlations: Mapping[int, float] | None = None,
                      focus: int | None = None, theme: str | None = None, template: bool = True):
    """A feature across layers, on axes that mean something:

    - **direction similarity of each step** (1 − the criterion's score: the mean cosine of the two
      features' folded decoder rows and encoder columns), drawn between the two layers it joins,
      with the pair's acceptance bound (1 − threshold) dashed: a step above the bound (and mutual
      best) is accepted — the calibrated criterion alone decides ``accepted`` (blue ●) or
      rejected (vermillion ✕);
    - with ``correlations`` (``{layer: r}``, e.g. ``Examples.trace_correlations(trace)``), the
      **activation correlation with the origin**: Pearson's r of the feature's activations at each
      layer with the origin's, over the collected tokens (1 at the origin);
    - **MSE to the partner** per step (bars, accepted / rejected) and the **margin** (runner-up
      MSE − partner MSE: reddish-purple diamonds, a separate signal; an open diamond marks a margin
      that is not clearly positive, at most ``UNCERTAIN_MARGIN`` of the step's MSE: trust such a
      step less even when it is accepted).

    A key under the plots says so (:data:`TRACE_KEY`; plotly's legend is off, since the points are
    coloured one by one). Feature ids label the points (they are names, not values). ``focus``: a
    layer to mark (the explorer's current one). Points carry ``customdata = [layer, feature, ...]``
    of the feature they lead to, so a click can select it. ``template=False`` leaves the template
    (``theme``) out: for a panel that puts the data into a figure it already styled. The content,
    as plain dicts: :func:`trace_figure_data`. At paper sizes (:func:`paper_layout`) the key becomes
    short legend entries, the point labels move to the layer axis ("L3 / #1234") and the figure is
    taller (see :data:`PAPER_HEIGHT_SCALE`).
    """
    d = trace_figure_data(trace, title=title, correlations=correlations, focus=focus)
    rows = d["rows"]
    titles = (("direction similarity of each step (1 − score)", "activation correlation with the origin",
               "MSE to the partner and margin, per step") if rows == 3 else
              ("direction similarity of each step (1 − score)", "MSE to the partner and margin, per step"))
    paper_titles = (("step similarity (1 − score)", "activation r with the origin", "MSE and margin per step")
                    if rows == 3 else ("step similarity (1 − score)", "MSE and margin per step"))
    fig = _subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.09, subplot_titles=titles,
                    row_heights=[0.4, 0.3, 0.3] if rows == 3 else [0.55, 0.45])
    for row, t in d["traces"]:
        fig.add_trace(t, row=row, col=1)
    fig.update_xaxes(title_text="layer", row=rows, col=1)
    lay = dict(d["layout"])
    title_text = lay.pop("title.text")
    fig.update_layout(lay)
    fig.add_annotation(text=TRACE_KEY, name="key", xref="paper", yref="paper", x=0, y=0, xanchor="left",
                       yanchor="top", yshift=-50, align="left", showarrow=False, font=dict(size=11))
    return _layout(fig, title_text, theme=theme, with_template=template, height=640 if rows == 3 else 540,
                   margin=dict(l=60, r=20, t=95, b=125), showlegend=False, kind="trace",
                   info={"rows": rows, "subplot_titles": paper_titles,
                         "layer_features": [[int(l), int(f)] for l, f in zip(trace.layers, trace.features)]})


def _order_columns(per_col: dict[int, list[tuple[int, int]]],
                   links: Mapping[tuple[tuple[int, int], tuple[int, int]], Any],
                   layers: Sequence[int], first: Sequence[tuple[int, int]]) -> None:
    """Order each column's nodes to keep links from crossing: the first column as the traces were
    given, then each node at the mean rank of its neighbours (barycentre), swept forward and
    back a few times; "no partner" nodes go last."""
    rank = {k: i for i, k in enumerate(first)}
    per_col[layers[0]].sort(key=lambda k: rank.get(k, len(rank) + k[1]))
    nbr: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for (src, dst) in links:
        nbr.setdefault(src, []).append(dst)
        nbr.setdefault(dst, []).append(src)

    def sweep(order: Sequence[int]) -> None:
        for l in order:
            pos = {k: i for ll in per_col for i, k in enumerate(per_col[ll])}

            def key(k: tuple[int, int]) -> tuple:
                near = [pos[n] / max(len(per_col[n[0]]), 1) for n in nbr.get(k, ()) if n[0] != l and n in pos]
                return (k[1] < 0, float(np.mean(near)) if near else 2.0, k[1])

            per_col[l].sort(key=key)

    for _ in range(3):
        sweep(layers[1:])
        sweep(layers[-2::-1])


#: the flow figure's key: what the link and node colours mean
FLOW_KEY = (f"links: {_glyph('rgba(0,114,178,0.7)', '■')} accepted / {_glyph('rgba(213,94,0,0.7)', '■')} rejected "
            f"by the calibrated criterion · nodes: {_glyph(COLORS['origin'], '■')} traced origin, "
            f"{_glyph(COLORS['focus'], '■')} focus, {_glyph(COLORS['none'], '■')} no partner")


def make_flow_figure(chain: Any = None, layer: int | None = None, features: int | Iterable[int] = (), *,
                     traces: Sequence[Any] | None = None, accepted_only: bool = False,
                     title: str | None = None, theme: str | None = None, focus: tuple[int, int] | None = None):
    """A layered flow graph (Sankey) of a few features through depth, like Feature Flow's graphs.

    Give ``chain`` + ``layer`` + ``features`` (traced with ``chain.trace``) or ready ``traces``.
    Nodes are (layer, feature); features that merge (many-to-one matches) share a node; a step
    without partner ends in a grey "no partner" node; link colour: accepted (by the calibrated
    criterion) blue, rejected vermillion; the traced origins are sky blue; a key under the flow
    says so. Nodes are ordered to keep links from crossing; labels are vector text (no shadow,
    which PDF export would rasterise); each node's ``customdata`` is ``[layer, feature]``.
    ``focus``: a (layer, feature) node drawn in the focus colour.

    At paper sizes (:func:`paper_layout`) the node labels lose their layer ("#1234"; the columns
    get "L3" headings instead) and the columns are spaced to fit them; where the ids still do not
    fit, every other inner column and then all inner columns go unlabelled (the first and last
    keep theirs: export at "double" width, or fewer features, to read every id).
    """
    go = _go()
    if traces is None:
        if chain is None or layer is None or not hasattr(chain, "trace"):
            raise TypeError("make_flow_figure needs a chain with .trace(layer, feature) plus layer and "
                            "features, or traces=[FeatureTrace, ...]")
        feats = [int(features)] if isinstance(features, (int, np.integer)) else [int(f) for f in features]
        if not feats:
            raise ValueError("make_flow_figure needs at least one feature")
        traces = [chain.trace(layer, f, accepted_only=accepted_only) for f in feats]
    traces = list(traces)
    if not traces:
        raise ValueError("make_flow_figure needs at least one trace")
    all_layers = sorted({int(l) for tr in traces for l in tr.layers})
    col = {l: i for i, l in enumerate(all_layers)}
    present: list[tuple[int, int]] = []
    seen: set = set()
    origins = {(int(tr.origin_layer), int(tr.origin_feature)) for tr in traces}
    for tr in traces:
        for l, f in zip(tr.layers, tr.features):
            k = (int(l), int(f))
            if f >= 0 and k not in seen:
                seen.add(k)
                present.append(k)
    links: dict[tuple[tuple[int, int], tuple[int, int]], list] = {}
    for tr in traces:
        for st in tr.steps:
            src = (int(st.layer), int(st.feature))
            dst = (int(st.next_layer), int(st.next_feature) if st.next_feature >= 0 else -1)
            for k in (src, dst):
                if k not in seen:
                    seen.add(k)
                    present.append(k)
            ent = links.setdefault((src, dst), [0, bool(st.matched), st.mse, st.margin])
            ent[0] += 1
    per_col: dict[int, list[tuple[int, int]]] = {l: [] for l in all_layers}
    for k in present:
        per_col.setdefault(k[0], []).append(k)
    first_col = [(int(tr.layers[0]), int(tr.features[0])) for tr in traces]
    _order_columns(per_col, links, [l for l in all_layers if per_col.get(l)], first_col)
    keys = [k for l in all_layers for k in per_col.get(l, [])]
    index = {k: i for i, k in enumerate(keys)}
    ncol = max(len(all_layers) - 1, 1)
    tallest = max(len(v) for v in per_col.values())
    xs, ys = [0.0] * len(keys), [0.0] * len(keys)
    for l, ks in per_col.items():
        for r, k in enumerate(ks):
            # the last column stops short of the edge so that its labels (drawn to the left) fit
            xs[index[k]] = 0.001 + 0.94 * col[l] / ncol
            ys[index[k]] = 0.02 + 0.96 * (r + 0.5) / max(len(ks), 1)
    labels = [f"L{l} #{f}" if f >= 0 else f"L{l} no partner" for l, f in keys]
    colors = [COLORS["none"] if f < 0 else (COLORS["focus"] if focus is not None and (l, f) == tuple(focus) else
              COLORS["origin"] if (l, f) in origins else COLORS["matched"]) for l, f in keys]
    link_items = list(links.items())
    fig = go.Figure(go.Sankey(
        arrangement="fixed", textfont=dict(shadow="none", size=11),
        node=dict(label=labels, x=xs, y=ys, color=colors, pad=14, thickness=14,
                  customdata=[[l, f] for l, f in keys],
                  hovertemplate="%{label}<extra></extra>"),
        link=dict(
            source=[index[s_] for (s_, _), _ in link_items], target=[index[d] for (_, d), _ in link_items],
            value=[v[0] for _, v in link_items],
            color=["rgba(0,114,178,0.45)" if v[1] else "rgba(213,94,0,0.45)" for _, v in link_items],
            customdata=[[fmt_float(v[2]), fmt_float(v[3]), "accepted" if v[1] else "not accepted"]
                        for _, v in link_items],
            hovertemplate="%{source.label} → %{target.label}<br>mse %{customdata[0]}, margin %{customdata[1]}"
                          "<br>%{customdata[2]}<extra></extra>",
        ),
    ))
    fig.add_annotation(text=FLOW_KEY, name="key", xref="paper", yref="paper", x=0, y=0, xanchor="left",
                       yanchor="top", yshift=-4, align="left", showarrow=False, font=dict(size=11))
    return _layout(fig, title or f"feature flow from layer {traces[0].origin_layer}: "
                   + ", ".join(f"#{tr.origin_feature}" for tr in traces[:8]) + (" …" if len(traces) > 8 else ""),
                   theme=theme, height=max(320, 34 * tallest + 160), margin=dict(l=20, r=20, t=70, b=40),
                   kind="flow", info={"columns": [[float(xs[index[per_col[l][0]]]), int(l)] for l in all_layers
                                                  if per_col.get(l)]})


#: Feature Flow's classes and their colours (the same as the HTML repr's)
FLOW_CLASS_COLORS = {"translated": PALETTE[0], "processed": PALETTE[3], "newborn": PALETTE[2],
                     "unexplained": "#999999"}
_FLOW_NODE = {"residual": (PALETTE[0], "circle"), "mlp": (PALETTE[3], "square"), "attn": (PALETTE[4], "diamond")}


def make_feature_flow_figure(flow: Any, *, title: str | None = None, theme: str | None = None):
    """Stacked shares of Feature Flow's classes (translated, processed, newborn, unexplained) per
    layer of a :class:`~saematch_nb.core.flow.FeatureFlow`; the hover names each layer's
    calibrated thresholds t_R, t_M, t_A."""
    go = _go()
    per = list(getattr(flow, "by_layer", ()) or ())
    if not per:
        raise ValueError("make_feature_flow_figure needs a FeatureFlow with at least one layer")
    xs = [int(fl.layer) for fl in per]
    shares = [fl.shares() for fl in per]

    def t(fl: Any, m: str) -> str:
        v = float(fl.thresholds.get(m, float("nan")))
        return fmt_float(v, 3) if np.isfinite(v) else "—"

    thr = [f"t_R {t(fl, 'R')}, t_M {t(fl, 'M')}, t_A {t(fl, 'A')}" for fl in per]
    fig = go.Figure()
    for k, color in FLOW_CLASS_COLORS.items():
        fig.add_trace(go.Bar(
            x=xs, y=[sh[k] for sh in shares], name=k, marker=dict(color=color),
            customdata=np.stack([thr, [fmt_float(fl.n, 6) for fl in per]], axis=1),
            hovertemplate=f"layer %{{x}}: {k} %{{y:.1%}} of %{{customdata[1]}} features<br>%{{customdata[0]}}"
                          "<extra></extra>"))
    fig.update_layout(barmode="stack")
    fig.update_yaxes(range=[0, 1], tickformat=".0%", title_text="share of the layer's features")
    fig.update_xaxes(tickmode="array", tickvals=xs, title_text="residual layer")
    alpha = getattr(flow, "alpha", None)
    sub = f"<br><sup>thresholds per layer and module from a null, alpha {fmt_float(alpha)}</sup>" if alpha else ""
    return _layout(fig, title or f"Feature Flow classes per layer{sub}", theme=theme, height=420, kind="feature_flow")


def make_flow_graph_figure(graph: Any, *, title: str | None = None, theme: str | None = None):
    """A :class:`~saematch_nb.core.flow.FlowGraph` drawn by layer: residual features on the middle
    rows, MLP features above and attention features below, each module node half a layer before the
    residual feature it writes into; edge width and opacity follow the top-1 cosine, dashed edges are
    below the layer's calibrated threshold. Each node's ``customdata`` is ``[kind, layer, feature]``."""
    go = _go()
    nodes = list(getattr(graph, "nodes", ()) or ())
    if not nodes:
        raise ValueError("make_flow_graph_figure needs a FlowGraph with at least one node")
    pos: dict[int, tuple[float, float]] = {}
    by_col: dict[tuple[str, int], list[int]] = {}
    for i, n in enumerate(nodes):
        by_col.setdefault((n.kind, int(n.layer)), []).append(i)
    tallest = max(len(v) for k, v in by_col.items() if k[0] == "residual") if any(
        k[0] == "residual" for k in by_col) else 1
    for (kind, L), idx in by_col.items():
        idx.sort(key=lambda i: nodes[i].feature)
        for r, i in enumerate(idx):
            if kind == "residual":
                pos[i] = (float(L), r - (len(idx) - 1) / 2.0)
            else:
                base = tallest / 2.0 + 1.0
                off = base + r if kind == "mlp" else -(base + r)
                pos[i] = (L - 0.5, off)
    fig = go.Figure()
    for e in getattr(graph, "edges", ()):
        (x0, y0), (x1, y1) = pos[e.source], pos[e.target]
        w = float(e.weight)
        color = _FLOW_NODE.get(e.kind, _FLOW_NODE["residual"])[0]
        fig.add_trace(go.Scatter(
            x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False, opacity=0.35 + 0.65 * max(0.0, min(1.0, w)),
            line=dict(color=color, width=1 + 5 * max(0.0, w), dash="solid" if e.high else "dash"),
            hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=[(x0 + x1) / 2], y=[(y0 + y1) / 2], mode="markers", showlegend=False, marker=dict(size=8, opacity=0),
            hovertemplate=escape(f"{nodes[e.source].label} → {nodes[e.target].label}: {e.kind} s={fmt_float(w, 3)}"
                                 + ("" if e.high else " (below threshold)")) + "<extra></extra>"))
    for kind, (color, symbol) in _FLOW_NODE.items():
        idx = [i for i, n in enumerate(nodes) if n.kind == kind]
        if not idx:
            continue
        fig.add_trace(go.Scatter(
            x=[pos[i][0] for i in idx], y=[pos[i][1] for i in idx], mode="markers+text", name=kind,
            text=[f"#{nodes[i].feature}" for i in idx], textposition="top center",
            marker=dict(color=color, symbol=symbol, size=[18 if nodes[i].origin else 12 for i in idx],
                        line=dict(width=[3 if nodes[i].origin else 0 for i in idx], color="#000000")),
            customdata=[[kind, int(nodes[i].layer), int(nodes[i].feature)] for i in idx],
            hovertext=[escape(nodes[i].label + (f" ({nodes[i].cls})" if nodes[i].cls else "")) for i in idx],
            hovertemplate="%{hovertext}<extra></extra>"))
    layers = sorted({int(n.layer) for n in nodes})
    fig.update_xaxes(tickmode="array", tickvals=layers, ticktext=[f"L{L}" for L in layers], title_text="layer",
                     zeroline=False)
    ys = [y for _x, y in pos.values()]
    # room above the top row for its labels (scatter text is clipped to the plot area)
    fig.update_yaxes(visible=False, range=[min(ys) - 0.6, max(ys) + 1.0])
    head = f"flow of feature {graph.origin_feature} of layer {graph.origin_layer}"
    sub = (f"<br><sup>residual steps with s(R) ≥ {fmt_float(graph.min_residual)}, modules with s ≥ "
           f"{fmt_float(graph.min_module)}; dashed: below the calibrated threshold</sup>")
    return _layout(fig, title or head + sub, theme=theme, height=max(360, 60 * (tallest + 4)), kind="flow_graph")


#: How much taller than its preset a figure is drawn by :func:`paper_layout` (unless ``height_in``
#: is given): the trace figure stacks two or three panels, which 2.4 in cannot hold legibly at a
#: column's width. Keyed by the figure's kind and number of panels.
PAPER_HEIGHT_SCALE = {("trace", 2): 1.35, ("trace", 3): 1.75}

# A conservative mean glyph width in ems for the sans-serif the presets ask for (Helvetica /
# Arial / Liberation Sans: digits 0.556 em, lower case about 0.5): text is wrapped with it before
# plotly lays it out, so that no title, axis title or key runs off the page.
_EM = 0.58
_LINE = 1.3  # plotly's line spacing (svg_text_utils.LINE_SPACING)


def _visible_len(text: str) -> int:
    import html as _html
    import re

    return len(_html.unescape(re.sub(r"<[^>]+>", "", text)))


def _wrap(text: str, width_px: float, size: float) -> list[str]:
    """``text`` (plotly's HTML subset, no <br>) in lines of at most ``width_px`` at font ``size``,
    broken at spaces (tags are kept whole: a span's style never splits)."""
    import re

    max_chars = max(8, int(width_px / (_EM * size)))
    words = re.split(r"(?<!<span) (?![^<]*>)", text)
    lines: list[str] = []
    cur = ""
    for w in words:
        cand = f"{cur} {w}" if cur else w
        if cur and _visible_len(cand) > max_chars:
            lines.append(cur)
            cur = w
        else:
            cur = cand
    if cur:
        lines.append(cur)
    return lines or [""]


def _split_title(text: str) -> tuple[list[str], list[str]]:
    import re

    main, sub = [], []
    for part in re.split(r"<br\s*/?>", text or ""):
        m = re.fullmatch(r"\s*<sup>(.*)</sup>\s*", part)
        (sub if m else main).append(m.group(1) if m else part)
    return [p for p in main if p.strip()], [p for p in sub if p.strip()]


def _legend_entries(fig: Any) -> list[str]:
    if fig.layout.showlegend is False:
        return []
    shown = [t for t in fig.data if getattr(t, "showlegend", None) is not False and t.type not in ("sankey",)]
    if len(shown) < 2 and not any(getattr(t, "showlegend", None) for t in shown):
        return []
    seen, names = set(), []
    for t in shown:
        group = getattr(t, "legendgroup", None)
        key = group or t.name
        if key not in seen or not group:
            seen.add(key)
            names.append(str(t.name or ""))
    return names


def _legend_rows(names: Sequence[str], width: float, px: float) -> int:
    rows, used = 1, 0.0
    for n in names:
        w = 30 + 8 + _visible_len(n) * _EM * px + 10  # swatch, gap, text, item gap
        if used and used + w > width:
            rows, used = rows + 1, 0.0
        used += w
    return rows


def paper_layout(fig: Any, preset: str = "single", *, width_in: float | None = None, height_in: float | None = None,
                 font_pt: float | None = None, theme: str | None = "light"):
    """A copy of ``fig`` laid out for a paper: ``preset`` "single" (one column, 3.25 in, 8 pt),
    "double" (text width, 6.75 in, 9 pt) or "slide"; ``width_in`` / ``height_in`` / ``font_pt``
    override the preset. Sizes are physical: :func:`save_figure` writes PDF and SVG at exactly
    this size (1 in = 96 plotly pixels) and raster images at ``dpi``.

    Not only the size: every text is set in the preset's font size and the layout is redone for
    it (checked on the rendered figure at every preset by tests/display/test_figure_layout.py):
    the title is left-aligned and wrapped to the width, the legend is one or more horizontal rows
    under it, long axis titles wrap, margins grow to fit tick labels (plotly's automargin), and
    per figure (recognised by the ``layout.meta`` saematch_nb's ``make_*_figure`` set):

    - panels (chain, trace figures): short left-aligned panel titles in a band above each panel;
    - trace figure: a shorter key above the panels, the feature ids move from the points to the
      layer axis ("L3" over "#1234") and the figure is taller than the preset
      (:data:`PAPER_HEIGHT_SCALE`, 1.35× with two panels, 1.75× with the correlation panel);
    - chain overlay: one legend entry per run, named by the run;
    - flow (Sankey): node labels "#1234" under column headings "L3", columns spaced to fit them
      (inner columns lose their labels where the ids cannot fit; see :func:`make_flow_figure`);
    - threshold labels move inside the plot, under its top edge.

    ``theme``: the template (white "light" by default; None keeps the figure's)."""
    if not isinstance(preset, str) or preset not in PAPER_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {tuple(PAPER_PRESETS)}")
    p = PAPER_PRESETS[preset]
    # finite and positive: inf overflowed in round(), 0 or less made an empty page
    w = _finite_number(width_in if width_in is not None else p["width_in"], "width_in (inches)", positive=True)
    h = _finite_number(height_in if height_in is not None else p["height_in"], "height_in (inches)", positive=True)
    pt = _finite_number(font_pt if font_pt is not None else p["font_pt"], "font_pt (points)", positive=True)
    go = _go()
    out = go.Figure(fig)
    meta = _meta(out)
    kind, rows = meta.get("figure", ""), int(meta.get("rows", 1) or 1)
    if height_in is None:
        h *= PAPER_HEIGHT_SCALE.get((kind, rows), 1.0)
    W, H = round(w * _PX_PER_IN), round(h * _PX_PER_IN)
    px = pt * _PX_PER_PT
    out.update_layout(width=W, height=H, autosize=False, font=dict(size=px, family="Helvetica, Arial, sans-serif"))
    if theme is not None:
        out.update_layout(template=template(theme))
    out.update_traces(textfont_size=px * 0.9, selector=lambda t: hasattr(t, "textfont"))
    pad = 0.5 * px

    # the title: left-aligned, wrapped, the subtitle a size smaller; it pushes the top margin
    ts, ss = px * 1.15, px * 0.9
    main, sub = _split_title(out.layout.title.text or "")
    lines = [ln for m in main for ln in _wrap(m, W - 2 * pad, ts)]
    sub_lines = [ln for m in sub for ln in _wrap(m, W - 2 * pad, ss)]
    title_h = 0.0
    if lines or sub_lines:
        text = "<br>".join(lines + [f"<span style='font-size:{ss:.1f}px'>{ln}</span>" for ln in sub_lines])
        n = len(lines) + len(sub_lines)
        # plotly's "top" anchor lifts a title of n lines by about 0.35 em per line after the
        # first (measured in chromium): the anchor goes down by as much
        y_px = 0.3 * px + 0.35 * ts + 0.4 * ts * (n - 1)
        out.update_layout(title=dict(text=text, x=0, xref="container", xanchor="left", y=1 - y_px / H,
                                     yref="container", yanchor="top", pad=dict(l=pad, t=0, b=0), automargin=True,
                                     font=dict(size=ts)))
        title_h = 0.5 * px + _LINE * ts * n

    # the legend: horizontal rows under the title (it pushes the top margin too); a chain overlay
    # names its runs; the trace figure has a key instead, a shorter one, right above its panels
    if kind == "chain" and meta.get("runs"):
        for t in out.data:
            if t.showlegend:
                t.name = t.legendgroup
    key_h = 0.0
    if kind == "trace":
        # the key right above the panels (plotly's legend would take each point's own colour)
        key_lines = _wrap(_TRACE_PAPER_KEY, W - 6 * px, px * 0.9)
        for a in out.layout.annotations:
            if a.name == "key":
                a.update(text="<br>".join(key_lines), y=1, yanchor="bottom", yshift=0.3 * px, x=0, xanchor="left",
                         font=dict(size=px * 0.9))
        key_h = len(key_lines) * _LINE * px * 0.9 + 0.3 * px
    names = _legend_entries(out)
    legend_h = 0.0
    if names:
        n_rows = _legend_rows(names, W - 2 * pad, px)
        legend_h = n_rows * max(20.0, _LINE * px + 6)
        out.update_layout(legend=dict(orientation="h", xref="container", x=0, xanchor="left", yref="container",
                                      y=1 - (title_h + 0.2 * px) / H, yanchor="top", font=dict(size=px),
                                      itemwidth=30, tracegroupgap=0, bgcolor="rgba(0,0,0,0)", title_text=""))
    top = title_h + (legend_h + 0.2 * px if names else 0.0) + key_h + 0.6 * px

    if kind == "flow":
        _paper_flow(out, meta, W, H, px, top)
        return out

    # axes: margins pushed by tick labels and titles; titles wrapped to the room they have
    b_est = 0.6 * px
    xkeys = [k for k in out.layout if k.startswith("xaxis")]
    ykeys = [k for k in out.layout if k.startswith("yaxis")]
    plot_w = W - 6 * px
    tick_lines = 2 if kind == "trace" else 1
    for k in xkeys:
        ax = out.layout[k]
        ax.update(automargin=True, ticklabelstandoff=round(0.25 * px), title_standoff=0.3 * px,
                  title_font_size=px, tickfont_size=px * 0.95)
        if ax.title.text:
            if kind == "trace":
                ax.title.text = None  # the ticks read "L3": the axis says "layer" itself
            else:
                tl = _wrap(ax.title.text, plot_w, px)
                ax.title.text = "<br>".join(tl)
                b_est = max(b_est, (tick_lines + len(tl)) * _LINE * px + 1.2 * px)
    b_est = max(b_est, tick_lines * _LINE * px + 1.2 * px)
    plot_h = max(H - top - b_est, 40.0)
    if rows > 1 and kind in ("chain", "trace"):
        _paper_panels(out, meta, rows, plot_h, px)
    for k in ykeys:
        ax = out.layout[k]
        ax.update(automargin=True, ticklabelstandoff=round(0.3 * px), title_standoff=0.3 * px,
                  title_font_size=px, tickfont_size=px * 0.95)
        if ax.title.text:
            d = ax.domain or (0, 1)
            tl = _wrap(ax.title.text, max(plot_h * (d[1] - d[0]), 30.0), px)
            ax.title.text = "<br>".join(tl)
    if kind == "trace":
        _paper_trace_ticks(out, meta, rows, px)
    for a in out.layout.annotations:
        if a.name == "key" or not isinstance(a.yref, str):
            continue
        if a.yref.endswith("domain") and a.y == 1 and a.yanchor == "bottom":
            # threshold labels: inside the plot under its top edge, off the legend above
            a.update(yanchor="top", bgcolor="rgba(255,255,255,0.75)", font=dict(size=px * 0.9))
    out.update_layout(margin=dict(l=pad, r=max(1.5 * px, 14.0), t=top, b=b_est, autoexpand=True))
    return out


def _paper_panels(out: Any, meta: Mapping[str, Any], rows: int, plot_h: float, px: float) -> None:
    """Panels of a make_subplots figure stacked with a title band above each: short titles,
    left-aligned, never on the panel above."""
    weights = [0.4, 0.3, 0.3] if rows == 3 else [0.55, 0.45] if meta.get("figure") == "trace" else [0.5, 0.5]
    band = 1.6 * px / plot_h
    gap = 0.5 * px / plot_h
    avail = 1.0 - rows * band - (rows - 1) * gap
    titles = list(meta.get("subplot_titles") or [])
    top = 1.0 - band
    anns = list(out.layout.annotations)
    for r in range(rows):
        hgt = avail * weights[r] / sum(weights)
        out.layout["yaxis" if r == 0 else f"yaxis{r + 1}"].domain = (max(0.0, top - hgt), top)
        if r < len(anns) and r < len(titles):
            anns[r].update(text=titles[r], x=0, xref="paper", xanchor="left", y=top, yref="paper",
                           yanchor="bottom", yshift=1, font=dict(size=px))
        top = top - hgt - gap - band


def _paper_trace_ticks(out: Any, meta: Mapping[str, Any], rows: int, px: float) -> None:
    """The trace figure's feature ids on its layer axis ("L3" over "#1234"), not on the points."""
    lf = {int(l): int(f) for l, f in meta.get("layer_features") or []}
    bottom = out.layout["xaxis" if rows == 1 else f"xaxis{rows}"]
    vals = list(bottom.tickvals or sorted(lf))
    bottom.ticktext = [f"L{v}<br>{'#' + str(lf[int(v)]) if lf.get(int(v), -1) >= 0 else '—'}" for v in vals]
    bottom.tickfont = dict(size=px * 0.9)
    for t in out.data:
        if t.type == "scatter" and t.mode and "text" in t.mode:
            t.mode = t.mode.replace("+text", "").replace("text+", "")
    # no labels over the points: the room kept above 1 for them goes
    for k, top in (("yaxis", 1.08), ("yaxis2", 1.1)):
        ax = out.layout[k]
        if rows > 2 or k == "yaxis":
            if ax.range is not None and ax.range[1] > top:
                ax.range = (ax.range[0], top)


def _paper_flow(out: Any, meta: Mapping[str, Any], W: int, H: int, px: float, top: float) -> None:
    """The Sankey at paper size: "#1234" labels, "L3" column headings, columns spaced for the
    labels (inner ones unlabelled where they cannot fit), the key wrapped under it."""
    sk = out.data[0]
    fs = px * 0.9
    cols = [(float(x), int(l)) for x, l in meta.get("columns") or []]
    keys = [tuple(int(v) for v in c) for c in sk.node.customdata]
    labels = [f"#{f}" if f >= 0 else "none" for _l, f in keys]
    order = [l for _x, l in cols]
    thick = max(6.0, 1.1 * px)
    side = 0.5 * px
    plot_w = W - 2 * side

    def width(l: int, shown: set) -> float:
        if l not in shown:
            return 0.0
        return max((_visible_len(lb) for lb, k in zip(labels, keys) if k[0] == l), default=0) * _EM * fs + 6

    n = len(order)
    inner = order[1:-1]
    # all labelled; then every other inner column (the penultimate, whose labels face the last
    # column's, among them); then the first and last only; then none
    for shown in (set(order), set(order) - set(inner[::-2]), {order[0], order[-1]}, set()):
        need = [thick + width(order[c], shown) + (width(order[-1], shown) if c == n - 2 else 0) + 4
                for c in range(n - 1)]
        if sum(need) <= plot_w - thick:
            break
    xs_px = [thick / 2]
    slack = max(0.0, plot_w - thick - sum(need)) / max(n - 1, 1)
    for c in range(n - 1):
        xs_px.append(xs_px[-1] + need[c] + slack)
    colx = {l: min(max(x / plot_w, 0.0), 1.0) for l, x in zip(order, xs_px)}
    sk.node.x = [colx.get(l, 0.5) for l, _f in keys]
    sk.node.label = [lb if l in shown else "" for lb, (l, _f) in zip(labels, keys)]
    sk.node.thickness = thick
    sk.node.pad = max(4.0, 0.8 * px)
    sk.textfont = dict(size=fs, shadow="none")
    key = next((a for a in out.layout.annotations if a.name == "key"), None)
    key_lines = _wrap(FLOW_KEY, W - 2 * side, fs) if key is not None else []
    heads = [dict(text=f"L{l}", x=colx[l], xref="paper", xanchor="center" if 0 < c < n - 1 else
                  ("left" if c == 0 else "right"), y=1, yref="paper", yanchor="bottom", yshift=2, showarrow=False,
                  font=dict(size=fs)) for c, l in enumerate(order)]
    anns = heads
    if key is not None:
        anns = heads + [dict(text="<br>".join(key_lines), name="key", xref="paper", yref="paper", x=0, y=0,
                             xanchor="left", yanchor="top", yshift=-2, align="left", showarrow=False,
                             font=dict(size=fs))]
    out.layout.annotations = anns
    b = len(key_lines) * _LINE * fs + 0.6 * px
    out.update_layout(margin=dict(l=side, r=side, t=top + _LINE * fs + 2, b=b, autoexpand=True))


# -- export --------------------------------------------------------------------------------------
_IMAGE_FORMATS = ("png", "pdf", "svg", "jpeg", "jpg", "webp")
_BROWSER_HELP = (
    "Writing {fmt} files uses kaleido, which drives a Chromium browser, and none was found. "
    "Install one (Debian/Ubuntu: `apt-get install -y chromium`; or run `plotly_get_chrome`), or set "
    "BROWSER_PATH to a Chrome/Chromium executable. Saving as .html works without it."
)


# plotly's size for a figure that sets none; Chromium draws nothing larger than 16384 px a side
_PLOTLY_DEFAULT_PX = (700, 500)
MAX_IMAGE_SIDE_PX = 16384


def _check_pixels(w: float, h: float, scale: float, dpi: float | None) -> None:
    """A raster image of at least one and at most MAX_IMAGE_SIDE_PX pixels a side."""
    px = (int(w * scale), int(h * scale))  # whole pixels, as the browser draws them (0.7 px is none)
    how = f"dpi={dpi:g}" if dpi is not None else f"scale={scale:g}"
    if min(px) < 1:
        raise InvalidArgumentError(f"{how} gives a {px[0]}×{px[1]} pixel image of a {w:g}×{h:g} px figure: "
                                   "nothing to see; use a larger dpi / scale (e.g. dpi=300)")
    if max(px) > MAX_IMAGE_SIDE_PX:
        raise InvalidArgumentError(f"{how} gives a {px[0]}×{px[1]} pixel image, more than the {MAX_IMAGE_SIDE_PX} "
                                   "pixels a side a browser can draw; use a smaller dpi / scale, or .pdf / .svg")


def _finite_number(value: Any, name: str, *, positive: bool = False) -> float:
    """``value`` as a finite float (> 0 with ``positive``); display's own copy of core's check
    (display sits below core and imports only the leaf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not np.isfinite(v) or (positive and not v > 0):
        raise InvalidArgumentError(f"{name} must be a finite{' positive' if positive else ''} number, got {value!r}")
    return v


def _find_browser() -> str | None:
    """The Chrome/Chromium kaleido would use, or None (checked first, so the error is clear)."""
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if os.path.exists(env) else None
    try:
        from choreographer.browsers.chromium import Chromium

        p = Chromium.find_browser(skip_local=False)
        if p:
            return str(p)
    except Exception:  # choreographer's layout changes between versions; fall back to PATH
        pass
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


_VECTOR_FORMATS = ("pdf", "svg")
_RENDER_TIMEOUT_S = 90.0  # kaleido's own default for one image
_START_TIMEOUT_S = 120.0


class _Exporter:
    """One kaleido with one headless Chromium kept open for all of this process's exports (kaleido
    1.x's ``Kaleido`` is an async browser session; plotly's ``write_image`` starts and stops a
    Chromium per image, 3-4 s each). It runs in a daemon thread with its own event loop, so a
    notebook's running loop is never touched; every wait is bounded; :func:`close_export_browser`
    (also called at exit) stops it. Its page loads no MathJax (figures here use none; kaleido's
    default fetches it from a CDN, which an offline machine waits on)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: Any = None
        self._k: Any = None
        self._registered = False

    def _start(self, browser: str) -> None:
        import asyncio

        import kaleido

        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="saematch-kaleido", daemon=True).start()

        async def start() -> Any:
            k = kaleido.Kaleido(n=1, timeout=_RENDER_TIMEOUT_S, mathjax=False, path=browser)
            await k.open()
            return k

        try:
            self._k = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=_START_TIMEOUT_S)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            raise
        self._loop = loop
        if not self._registered:
            atexit.register(self.close)
            self._registered = True

    def render(self, fig_dict: dict, opts: dict, browser: str) -> bytes:
        import asyncio

        with self._lock:
            if self._k is None:
                self._start(browser)
            fut = asyncio.run_coroutine_threadsafe(self._k.calc_fig(fig_dict, opts=opts), self._loop)
            try:
                return fut.result(timeout=_RENDER_TIMEOUT_S + 15)
            except BaseException:
                fut.cancel()
                raise

    def close(self) -> None:
        import asyncio

        with self._lock:
            k, loop = self._k, self._loop
            self._k = self._loop = None
            if k is None:
                return
            try:
                asyncio.run_coroutine_threadsafe(k.close(), loop).result(timeout=30)
            except Exception:  # closing is best effort: the browser may be gone already
                pass
            finally:
                loop.call_soon_threadsafe(loop.stop)

    @property
    def running(self) -> bool:
        return self._k is not None


_EXPORTER = _Exporter()


def close_export_browser() -> None:
    """Stop the Chromium that :func:`save_figure` keeps open between image exports (it is started
    by the first .png / .pdf / .svg export and stopped at exit; the next export starts another)."""
    _EXPORTER.close()


def _render_image(fig: Any, fmt: str, width: Any, height: Any, scale: float, browser: str, name: str) -> bytes:
    """The image bytes from kaleido; a failure is retried once on a fresh browser (kaleido fails
    now and then on a page that is not ready, e.g. ``JavascriptError: kaleido_scopes is not
    defined``), a second one is a FigureExportError saying what to do."""
    import kaleido

    fig_dict = fig.to_dict()
    w = width or fig_dict.get("layout", {}).get("width") or _PLOTLY_DEFAULT_PX[0]
    h = height or fig_dict.get("layout", {}).get("height") or _PLOTLY_DEFAULT_PX[1]
    opts = dict(format=fmt, width=w, height=h, scale=scale)
    if not hasattr(kaleido, "Kaleido"):  # kaleido 0.x: no session to keep; plotly drives it
        try:
            return fig.to_image(format=fmt, width=w, height=h, scale=scale)
        except Exception as exc:
            raise _export_error(name, exc) from exc
    errors: list[BaseException] = []
    for _attempt in range(2):
        try:
            return _EXPORTER.render(fig_dict, opts, browser)
        except Exception as exc:  # noqa: PERF203 - one retry
            errors.append(exc)
            _EXPORTER.close()  # the next try starts a fresh browser and page
    raise _export_error(name, errors[-1], tries=len(errors)) from errors[-1]


def _export_error(name: str, exc: BaseException, tries: int = 1) -> FigureExportError:
    what = f"{type(exc).__name__}: {exc}".strip()
    if "chrome" in type(exc).__name__.lower() or "browser" in str(exc).lower():
        return FigureExportError(_BROWSER_HELP.format(fmt=name) + f" ({what})")
    again = " twice (the second time in a fresh browser)" if tries > 1 else ""
    return FigureExportError(
        f"kaleido could not write {name}{again}: {what}. Try again; if it keeps failing, check that "
        "Chromium starts (`chromium --headless --disable-gpu --dump-dom about:blank`), update kaleido "
        "(pip install -U kaleido), or save as .html (no browser needed) and export from the page.")


def save_figure(fig: Any, path: str | os.PathLike, *, width: int | None = None, height: int | None = None,
                scale: float = 2.0, preset: str | None = None, dpi: float | None = None,
                width_in: float | None = None, height_in: float | None = None, font_pt: float | None = None) -> Path:
    """Write a figure for a paper or a web page, by the file's extension.

    - ``.html``: self-contained page with plotly.js embedded (no CDN: it opens offline).
    - ``.pdf`` / ``.svg``: vector, at the figure's physical size (``width`` / ``height`` in plotly
      pixels of 1/96 in; ``scale`` does not apply: a vector page is not magnified).
    - ``.png`` / ``.jpeg`` / ``.webp``: raster, ``scale`` times the pixel size (``dpi=300`` sets the
      scale for that resolution at the physical size).
    - ``.json``: plotly's JSON.

    ``preset``: "single" / "double" / "slide" (:data:`PAPER_PRESETS`): the column width, its
    height and font size, with ``width_in`` / ``height_in`` / ``font_pt`` to adjust
    (:func:`paper_layout`). Images go through kaleido, which needs Chrome/Chromium (``apt-get
    install -y chromium`` on Debian); a clear error says so if it is missing.

    Every size is checked before anything is written: ``width`` / ``height`` / ``scale`` /
    ``dpi`` / ``width_in`` / ``height_in`` / ``font_pt`` finite and positive, ``preset`` one of
    the named ones, and a raster image between 1 and :data:`MAX_IMAGE_SIDE_PX` pixels a side
    (``dpi=0.1`` would make a 0-pixel "PNG", ``dpi=1e6`` one no browser can draw).

    Images: the first one starts a headless Chromium that later ones reuse (about 0.1-0.3 s per
    image instead of 3-4 s; :func:`close_export_browser` stops it). A kaleido failure is retried
    once in a fresh browser; a second failure is a :class:`FigureExportError` saying what to do.
    A figure drawn in the transparent "auto" theme is written on white.
    """
    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if not hasattr(fig, "write_html"):
        raise TypeError(f"save_figure expects a plotly Figure, got {type(fig).__name__}")
    if ext not in ("html", "htm", "json") + _IMAGE_FORMATS:
        raise ValueError(f"cannot save a figure as {path.name!r}: use .html, .json, .png, .pdf, .svg, .jpeg or .webp")
    # plotly and kaleido ignore or mangle bad sizes (width=-10 ignored, scale 0 taken as 1): refuse them
    for name, v in (("width", width), ("height", height)):
        if v is not None:  # checked; passed on as given (plotly takes the number it was given)
            _finite_number(v, f"{name} (plotly pixels)", positive=True)
    scale = _finite_number(scale, "scale", positive=True)
    if preset is not None or width_in is not None or height_in is not None or font_pt is not None:
        # "" is no preset name (it was taken as "single"); only None means the default
        fig = paper_layout(fig, "single" if preset is None else preset, width_in=width_in, height_in=height_in,
                           font_pt=font_pt)
    elif _meta(fig).get("theme") == "auto" and ext != "json":
        # a live figure's transparent "auto" theme: a file gets the white one (a page or a paper
        # has no notebook background behind it)
        fig = _go().Figure(fig)
        fig.update_layout(template=template("light"))
    if dpi is not None:
        scale = _finite_number(dpi, "dpi", positive=True) / _PX_PER_IN
    if ext in _VECTOR_FORMATS:
        scale = 1.0  # kaleido would otherwise enlarge the page (a 700 px figure at scale 2: 14.6 in)
    elif ext not in ("html", "htm", "json"):
        _check_pixels(width or fig.layout.width or _PLOTLY_DEFAULT_PX[0],
                      height or fig.layout.height or _PLOTLY_DEFAULT_PX[1], scale, dpi)
    # written whole or not at all: a failed export never leaves a half-written file under the real name
    if ext in ("html", "htm"):
        return atomic_write(path, lambda fh: fig.write_html(
            fh, include_plotlyjs=True, full_html=True, default_width=width or "100%",
            default_height=height or "100%"), text=True)
    if ext == "json":
        return atomic_write(path, fig.write_json, text=True)
    try:
        import kaleido  # noqa: F401
    except ImportError as exc:
        raise FigureExportError(
            f"writing .{ext} needs kaleido: pip install kaleido (or saematch_nb[export]); "
            "saving as .html works without it"
        ) from exc
    browser = _find_browser()
    if browser is None:
        raise FigureExportError(_BROWSER_HELP.format(fmt=f".{ext}"))
    return atomic_write(path, _render_image(fig, "jpeg" if ext == "jpg" else ext, width or fig.layout.width,
                                            height or fig.layout.height, scale, browser, path.name))

