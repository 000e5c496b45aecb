"""Plotly figures of matches, chains and traces, and ``save_figure`` for papers.

plotly is imported inside each function, so importing this module costs nothing. Every figure is
a ``plotly.graph_objects.Figure``; strings from SAE ids and labels are passed to plotly as data
(plotly renders them as text, not markup), and hover text goes through ``escape``.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import ArgumentTypeError, InvalidArgumentError, SaematchError
from ._util import escape, fmt_float

__all__ = [
    "make_mse_figure", "make_margin_figure", "make_chain_figure", "make_trace_figure",
    "make_flow_figure", "make_feature_flow_figure", "make_flow_graph_figure", "FLOW_CLASS_COLORS",
    "save_figure", "FigureExportError", "COLORS", "PALETTE", "PAPER_PRESETS",
    "paper_layout", "set_theme", "get_theme", "template",
]

# Okabe & Ito's colour-blind-safe palette (Color Universal Design): blue, vermillion, orange,
# bluish green, reddish purple, sky blue, yellow, black.
PALETTE = ("#0072B2", "#D55E00", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
COLORS = {"matched": PALETTE[0], "unmatched": PALETTE[1], "threshold": "#666666", "margin": PALETTE[2],
          "none": "#999999", "focus": PALETTE[3], "correlation": PALETTE[4]}
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


def set_theme(theme: str = "light") -> None:
    """The template of saematch_nb's figures: ``"light"`` (default) or ``"dark"`` (for JupyterLab's
    dark theme; a kernel cannot see the notebook's theme, so it is asked for). A plotly default
    template the user set (``plotly.io.templates.default``) still wins."""
    if theme not in ("light", "dark"):
        raise ValueError(f"theme must be 'light' or 'dark', got {theme!r}")
    _THEME["name"] = theme


def get_theme() -> str:
    return _THEME["name"]


@functools.lru_cache(maxsize=4)
def _template(theme: str):
    import plotly.io as pio

    go = _go()
    t = go.layout.Template(pio.templates["plotly_dark" if theme == "dark" else "plotly_white"])
    t.layout.colorway = list(PALETTE if theme == "light" else ("#56B4E9",) + PALETTE[1:5] + ("#F0E442", "#FFFFFF"))
    return t


def template(theme: str | None = None):
    """saematch_nb's plotly template: plotly_white / plotly_dark with the colour-blind-safe palette."""
    theme = theme or _THEME["name"]
    if theme not in ("light", "dark"):
        raise ValueError(f"theme must be 'light' or 'dark', got {theme!r}")
    return _template(theme)


def _layout(fig: Any, title: str | None, *, theme: str | None = None, with_template: bool = True, **kw: Any) -> Any:
    # plotly reads a small HTML subset in titles and labels: user strings are passed escaped
    import plotly.io as pio

    kw.setdefault("margin", dict(l=60, r=20, t=70, b=50))
    if with_template:
        # the user's template wins (e.g. plotly_dark set as plotly's default); plotly's stock
        # default has a grey plot area that prints badly, so it is replaced by ours
        user = pio.templates.default not in (None, "plotly")
        kw["template"] = pio.templates.default if (user and theme is None) else template(theme)
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
            theme=theme, barmode="stack", bargap=0,
            xaxis_title=("MSE to the assigned partner (folded parameters)" if x == "mse"
                         else "criterion score: direction distance (1 − mean cosine)"),
            yaxis_title="features", yaxis_type="log" if log_y else None)
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
    return _layout(fig, title or f"MSE vs margin{note}, {_pair_title(lm)}", theme=theme,
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
            x=xs, y=c["matched_fraction"], mode="lines+markers", name=f"{tag}accepted fraction" if name else "accepted fraction",
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
    return _layout(fig, title or "SAE Match across depth", theme=theme, height=560)


def trace_figure_data(trace: Any, *, title: str | None = None, correlations: Mapping[int, float] | None = None,
                      focus: int | None = None) -> dict:
    """The content of :func:`make_trace_figure` as plain dicts (no plotly objects): ``rows``,
    ``traces`` (a list of ``(row, trace dict)``) and ``layout`` (the layout properties that differ
    from one trace to the next: title, axis ranges and ticks, focus lines). A panel showing one
    chain's traces updates its figure from these without building a new one."""
    steps = sorted(trace.steps, key=lambda s: (s.layer, s.next_layer))
    has_corr = bool(correlations)
    rows = 3 if has_corr else 2
    xs = [(s.layer + s.next_layer) / 2 for s in steps]
    status = ["accepted" if s.matched else ("no partner" if s.next_feature < 0 else "rejected") for s in steps]
    sim = [1.0 - float(getattr(s, "score", float("nan"))) for s in steps]
    bound = [1.0 - float(getattr(s, "threshold", float("nan"))) for s in steps]
    step_data = [[s.next_layer, s.next_feature, s.layer, s.feature, st, fmt_float(s.mse), fmt_float(s.margin)]
                 for s, st in zip(steps, status)]
    traces: list[tuple[int, dict]] = [(1, dict(
        type="scatter", x=xs, y=sim, mode="markers+text", name="step similarity",
        text=[f"#{s.feature}→#{s.next_feature}" if s.next_feature >= 0 else f"#{s.feature}→·" for s in steps],
        textposition="top center", textfont=dict(size=10),
        marker=dict(size=11, color=[COLORS["matched"] if s.matched else COLORS["unmatched"] for s in steps],
                    symbol=["circle" if s.matched else "x" for s in steps]),
        customdata=step_data,
        hovertemplate=("L%{customdata[2]} #%{customdata[3]} → L%{customdata[0]} #%{customdata[1]}<br>"
                       "similarity %{y:.3f} (%{customdata[4]})<br>mse %{customdata[5]}, margin %{customdata[6]}"
                       "<extra></extra>")))]
    if any(np.isfinite(bound)):
        bx, by = [], []
        for s, b in zip(steps, bound):  # one flat segment per step: each pair has its own bound
            bx += [s.layer + 0.15, s.next_layer - 0.15, None]
            by += [b, b, None]
        traces.append((1, dict(type="scatter", x=bx, y=by, mode="lines", name="acceptance bound",
                               line=dict(color=COLORS["threshold"], dash="dash", width=1.5), hoverinfo="skip")))
    layout: dict = {"yaxis.range": [min([0.0] + [v for v in sim if np.isfinite(v)]) - 0.05, 1.08]}
    if has_corr:
        present = [(int(l), int(f)) for l, f in zip(trace.layers, trace.features) if f >= 0 and int(l) in correlations]
        traces.append((2, dict(
            type="scatter", x=[l for l, _ in present], y=[float(correlations[l]) for l, _ in present],
            mode="lines+markers+text", name="activation correlation", text=[f"#{f}" for _, f in present],
            textposition="top center", textfont=dict(size=10), line=dict(color=COLORS["correlation"]),
            marker=dict(size=[13 if l == trace.origin_layer else 9 for l, _ in present], color=COLORS["correlation"]),
            customdata=[[l, f] for l, f in present],
            hovertemplate="L%{customdata[0]} #%{customdata[1]}<br>r with the origin %{y:.3f}<extra></extra>")))
        layout["yaxis2.range"] = [-0.05, 1.1]
    traces.append((rows, dict(
        type="bar", x=xs, y=[s.mse for s in steps], name="MSE per step", width=0.5,
        marker=dict(color=[COLORS["matched"] if s.matched else COLORS["unmatched"] for s in steps]),
        customdata=step_data,
        hovertemplate=("L%{customdata[2]} #%{customdata[3]} → L%{customdata[0]} #%{customdata[1]}<br>"
                       "mse %{y:.4g} (%{customdata[4]})<extra></extra>"))))
    traces.append((rows, dict(
        type="scatter", x=xs, y=[s.margin for s in steps], mode="markers", name="margin",
        marker=dict(symbol="diamond", size=9, color=COLORS["margin"]), customdata=step_data,
        hovertemplate="margin %{y:.4g}<extra></extra>")))
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


def make_trace_figure(trace: Any, *, title: str | None = None, correlations: Mapping[int, float] | None = None,
                      focus: int | None = None, theme: str | None = None, template: bool = True):
    """A feature across layers, on axes that mean something:

    - **direction similarity of each step** (1 − the criterion's score: the mean cosine of the two
      features' folded decoder rows and encoder columns), drawn between the two layers it joins,
      with the pair's acceptance bound (1 − threshold) dashed: a step above the bound is accepted;
    - with ``correlations`` (``{layer: r}``, e.g. ``Examples.trace_correlations(trace)``), the
      **activation correlation with the origin**: Pearson's r of the feature's activations at each
      layer with the origin's, over the collected tokens (1 at the origin);
    - **MSE to the partner** per step (bars, accepted / not accepted) and the **margin** (markers).

    Feature ids label the points (they are names, not values). ``focus``: a layer to mark (the
    explorer's current one). Points carry ``customdata = [layer, feature, ...]`` of the feature
    they lead to, so a click can select it. ``template=False`` leaves the template (``theme``) out:
    for a panel that puts the data into a figure it already styled. The content, as plain dicts:
    :func:`trace_figure_data`.
    """
    d = trace_figure_data(trace, title=title, correlations=correlations, focus=focus)
    rows = d["rows"]
    titles = (("direction similarity of each step (1 − score)", "activation correlation with the origin",
               "MSE to the partner and margin, per step") if rows == 3 else
              ("direction similarity of each step (1 − score)", "MSE to the partner and margin, per step"))
    fig = _subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.09, subplot_titles=titles,
                    row_heights=[0.4, 0.3, 0.3] if rows == 3 else [0.55, 0.45])
    for row, t in d["traces"]:
        fig.add_trace(t, row=row, col=1)
    fig.update_xaxes(title_text="layer", row=rows, col=1)
    lay = dict(d["layout"])
    title_text = lay.pop("title.text")
    fig.update_layout(lay)
    return _layout(fig, title_text, theme=theme, with_template=template, height=600 if rows == 3 else 500,
                   margin=dict(l=60, r=20, t=95, b=110), legend=dict(orientation="h", yanchor="top", y=-0.16, x=0))


def _order_columns(per_col: dict[int, list[tuple[int, int]]], links: Mapping[tuple[tuple[int, int], tuple[int, int]], Any],
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


def make_flow_figure(chain: Any = None, layer: int | None = None, features: int | Iterable[int] = (), *,
                     traces: Sequence[Any] | None = None, accepted_only: bool = False,
                     title: str | None = None, theme: str | None = None, focus: tuple[int, int] | None = None):
    """A layered flow graph (Sankey) of a few features through depth, like Feature Flow's graphs.

    Give ``chain`` + ``layer`` + ``features`` (traced with ``chain.trace``) or ready ``traces``.
    Nodes are (layer, feature); features that merge (many-to-one matches) share a node; a step
    without partner ends in a grey "no partner" node; link colour: accepted blue, rejected
    vermillion. Nodes are ordered to keep links from crossing; labels are vector text (no shadow,
    which PDF export would rasterise); each node's ``customdata`` is ``[layer, feature]``.
    ``focus``: a (layer, feature) node drawn in the focus colour.
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
              COLORS["margin"] if (l, f) in origins else COLORS["matched"]) for l, f in keys]
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
    return _layout(fig, title or f"feature flow from layer {traces[0].origin_layer}: "
                   + ", ".join(f"#{tr.origin_feature}" for tr in traces[:8]) + (" …" if len(traces) > 8 else ""),
                   theme=theme, height=max(320, 34 * tallest + 140), margin=dict(l=20, r=20, t=70, b=20))


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
    return _layout(fig, title or f"Feature Flow classes per layer{sub}", theme=theme, height=420)


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
    fig.update_yaxes(visible=False)
    head = f"flow of feature {graph.origin_feature} of layer {graph.origin_layer}"
    sub = (f"<br><sup>residual steps with s(R) ≥ {fmt_float(graph.min_residual)}, modules with s ≥ "
           f"{fmt_float(graph.min_module)}; dashed: below the calibrated threshold</sup>")
    return _layout(fig, title or head + sub, theme=theme, height=max(360, 60 * (tallest + 4)))


def paper_layout(fig: Any, preset: str = "single", *, width_in: float | None = None, height_in: float | None = None,
                 font_pt: float | None = None, theme: str | None = "light"):
    """A copy of ``fig`` sized for a paper: ``preset`` "single" (one column, 3.25 in, 8 pt),
    "double" (text width, 6.75 in, 9 pt) or "slide"; ``width_in`` / ``height_in`` / ``font_pt``
    override the preset. Sizes are physical: :func:`save_figure` writes PDF and SVG at exactly
    this size (1 in = 96 plotly pixels) and raster images at ``dpi``."""
    if not isinstance(preset, str) or preset not in PAPER_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {tuple(PAPER_PRESETS)}")
    p = PAPER_PRESETS[preset]
    # finite and positive: inf overflowed in round(), 0 or less made an empty page
    w = _finite_number(width_in if width_in is not None else p["width_in"], "width_in (inches)", positive=True)
    h = _finite_number(height_in if height_in is not None else p["height_in"], "height_in (inches)", positive=True)
    pt = _finite_number(font_pt if font_pt is not None else p["font_pt"], "font_pt (points)", positive=True)
    go = _go()
    out = go.Figure(fig)
    px = pt * _PX_PER_PT
    leg = out.layout.legend
    below = leg.orientation == "h" and leg.y is not None and leg.y < 0  # room for a legend under the plot
    out.update_layout(width=round(w * _PX_PER_IN), height=round(h * _PX_PER_IN), autosize=False,
                      font=dict(size=px, family="Helvetica, Arial, sans-serif"),
                      title=dict(font=dict(size=px * 1.15)), legend=dict(font=dict(size=px)),
                      margin=dict(l=round(5 * px), r=round(1.5 * px), t=round(4.5 * px),
                                  b=round((9 if below else 4) * px)))
    if theme is not None:
        out.update_layout(template=template(theme))
    out.update_annotations(font_size=px)  # subplot titles
    out.update_traces(textfont_size=px * 0.9, selector=lambda t: hasattr(t, "textfont"))
    return out


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
    if dpi is not None:
        scale = _finite_number(dpi, "dpi", positive=True) / _PX_PER_IN
    if ext in _VECTOR_FORMATS:
        scale = 1.0  # kaleido would otherwise enlarge the page (a 700 px figure at scale 2: 14.6 in)
    elif ext not in ("html", "htm", "json"):
        _check_pixels(width or fig.layout.width or _PLOTLY_DEFAULT_PX[0],
                      height or fig.layout.height or _PLOTLY_DEFAULT_PX[1], scale, dpi)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if ext in ("html", "htm"):
            fig.write_html(str(tmp), include_plotlyjs=True, full_html=True,
                           default_width=width or "100%", default_height=height or "100%")
        elif ext == "json":
            fig.write_json(str(tmp))
        else:
            try:
                import kaleido  # noqa: F401
            except ImportError as exc:
                raise FigureExportError(
                    f"writing .{ext} needs kaleido: pip install kaleido (or saematch_nb[export]); "
                    "saving as .html works without it"
                ) from exc
            if _find_browser() is None:
                raise FigureExportError(_BROWSER_HELP.format(fmt=f".{ext}"))
            try:
                fig.write_image(str(tmp), format="jpeg" if ext == "jpg" else ext,
                                width=width or fig.layout.width, height=height or fig.layout.height, scale=scale)
            except Exception as exc:
                if "chrome" in type(exc).__name__.lower() or "browser" in str(exc).lower():
                    raise FigureExportError(_BROWSER_HELP.format(fmt=f".{ext}") + f" ({exc})") from exc
                raise
        os.replace(tmp, path)  # a failed export never leaves a half-written file under the real name
    finally:
        if tmp.exists():
            tmp.unlink()
    return path

