"""Plotly figures of matches, chains and traces, and ``save_figure`` for papers.

plotly is imported inside each function, so importing this module costs nothing. Every figure is
a ``plotly.graph_objects.Figure``; strings from SAE ids and labels are passed to plotly as data
(plotly renders them as text, not markup), and hover text goes through ``escape``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import SaematchError
from ._util import escape, fmt_float

__all__ = [
    "make_mse_figure", "make_margin_figure", "make_chain_figure", "make_trace_figure",
    "make_flow_figure", "save_figure", "FigureExportError", "COLORS",
]

COLORS = {"matched": "#1f77b4", "unmatched": "#d62728", "threshold": "#555555", "margin": "#ff7f0e",
          "none": "#aaaaaa"}
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


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


def _layout(fig: Any, title: str | None, **kw: Any) -> Any:
    # plotly reads a small HTML subset in titles and labels: user strings are passed escaped
    import plotly.io as pio

    # the user's template wins (e.g. plotly_dark in a dark notebook); plotly's stock default has a
    # grey plot area that prints badly, so it is swapped for plotly_white
    template = "plotly_white" if pio.templates.default in (None, "plotly") else pio.templates.default
    fig.update_layout(title=dict(text=title, font=dict(size=15)), template=template,
                      margin=dict(l=60, r=20, t=70, b=50), **kw)
    return fig


# -- one pair ------------------------------------------------------------------------------------
def _threshold_on_mse(lm: Any) -> bool:
    """The criterion's threshold is on ``score``; it is an MSE cut-off only when score is the MSE."""
    s, m = np.asarray(lm.score, dtype=np.float64), np.asarray(lm.mse, dtype=np.float64)
    return s.shape == m.shape and bool(np.allclose(s, m, rtol=1e-5, atol=1e-12, equal_nan=True))


def make_mse_figure(lm: Any, *, x: str = "mse", bins: int = 60, log_y: bool = False,
                    title: str | None = None):
    """Histogram of the matched MSE (``x="mse"``) or of the criterion score (``x="score"``),
    matched and not-matched features stacked in two colours, with the threshold as a dashed line
    (drawn on the MSE axis only when the criterion's score is the MSE itself)."""
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
        for name, mask, color in (("matched", matched, COLORS["matched"]),
                                  ("not matched", ~matched, COLORS["unmatched"])):
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
    _layout(fig, title or f"{'matched MSE' if x == 'mse' else 'criterion score'}, {_pair_title(lm)}",
            barmode="stack", bargap=0, xaxis_title="matched MSE (folded parameters)" if x == "mse" else "criterion score: direction distance (1 − mean cosine)",
            yaxis_title="features", yaxis_type="log" if log_y else None)
    return fig


def make_margin_figure(lm: Any, *, max_points: int = 20000, seed: int = 0, title: str | None = None):
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
    for name, mask, color in (("matched", matched, COLORS["matched"]),
                              ("not matched", ~matched, COLORS["unmatched"])):
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
    return _layout(fig, title or f"MSE vs margin{note}, {_pair_title(lm)}",
                   xaxis_title="matched MSE", yaxis_title="margin (runner-up MSE − matched MSE)")


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
                      bands: bool = True):
    """Matched fraction (top) and matched MSE median with its q10–q90 band (bottom) across depth.

    ``chain_or_dict``: a MatchChain (or list of LayerMatch), or ``{name: chain}`` to overlay
    several runs, e.g. ``{"folded": c1, "unfolded": c2, "identity": c3}`` as in the paper's Fig. 3.
    """
    go = _go()
    runs = dict(chain_or_dict) if isinstance(chain_or_dict, Mapping) else {"": chain_or_dict}
    if not runs:
        raise ValueError("make_chain_figure needs at least one chain")
    fig = _subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                    subplot_titles=("matched fraction", "matched MSE: median, q10–q90 band"))
    for k, (name, ch) in enumerate(runs.items()):
        xs, labels, c = _chain_rows(ch)
        color = _PALETTE[k % len(_PALETTE)]
        tag = f"{escape(name)}: " if name else ""
        fig.add_trace(go.Scatter(
            x=xs, y=c["matched_fraction"], mode="lines+markers", name=f"{tag}matched fraction" if name else "matched fraction",
            legendgroup=name or "chain", line=dict(color=color), customdata=labels,
            hovertemplate=f"{escape(name)} %{{customdata}}<br>matched %{{y:.1%}}<extra></extra>",
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
            legendgroup=name or "chain", line=dict(color=color, dash="solid"),
            customdata=np.stack([labels, c["mse_q10"], c["mse_q90"]], axis=1),
            hovertemplate=(f"{escape(name)} %{{customdata[0]}}<br>median %{{y:.4g}}<br>"
                           "q10 %{customdata[1]:.4g}, q90 %{customdata[2]:.4g}<extra></extra>"),
        ), row=2, col=1)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=1)
    fig.update_yaxes(type="log" if log_mse else None, title_text="MSE", row=2, col=1)
    fig.update_xaxes(title_text="layer (pair starts at)", row=2, col=1)
    return _layout(fig, title or "SAE Match across depth", height=560)


def make_trace_figure(trace: Any, *, title: str | None = None):
    """A feature across layers: its index at each layer (top) and MSE / margin of each step (bottom)."""
    go = _go()
    present = [(l, f) for l, f in zip(trace.layers, trace.features) if f >= 0]
    fig = _subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1, row_heights=[0.55, 0.45],
                    subplot_titles=("feature index", "per-step MSE and margin"))
    marks = []
    for l, _ in present:
        m = []
        if l == trace.origin_layer:
            m.append("origin")
        if trace.born_layer is not None and l == trace.born_layer:
            m.append("born")
        if trace.dies_layer is not None and l == trace.dies_layer:
            m.append("dies")
        marks.append(", ".join(m))
    fig.add_trace(go.Scatter(
        x=[l for l, _ in present], y=[f for _, f in present], mode="lines+markers+text", name="feature",
        text=[f"#{f}" + (f" ({m})" if m else "") for (_, f), m in zip(present, marks)], textposition="top center",
        marker=dict(size=[14 if l == trace.origin_layer else 9 for l, _ in present], color=COLORS["matched"]),
        hovertemplate="layer %{x}<br>feature %{y}<extra></extra>",
    ), row=1, col=1)
    steps = list(trace.steps)
    xs = [(s.layer + s.next_layer) / 2 for s in steps]
    fig.add_trace(go.Bar(
        x=xs, y=[s.mse for s in steps], name="MSE per step",
        marker_color=[COLORS["matched"] if s.matched else COLORS["unmatched"] for s in steps],
        customdata=[[s.layer, s.feature, s.next_layer, s.next_feature, "matched" if s.matched else "not matched"]
                    for s in steps],
        hovertemplate=("L%{customdata[0]} #%{customdata[1]} → L%{customdata[2]} #%{customdata[3]}<br>"
                       "mse %{y:.4g} (%{customdata[4]})<extra></extra>"),
    ), row=2, col=1)
    fig.add_trace(go.Scatter(
        x=xs, y=[s.margin for s in steps], mode="markers", name="margin",
        marker=dict(symbol="diamond", size=9, color=COLORS["margin"]),
        hovertemplate="margin %{y:.4g}<extra></extra>",
    ), row=2, col=1)
    fig.update_xaxes(title_text="layer", dtick=1, row=2, col=1)
    born = "present from the first layer" if trace.born_layer is None else f"born at layer {trace.born_layer}"
    dies = "survives to the last layer" if trace.dies_layer is None else f"dies at layer {trace.dies_layer}"
    return _layout(fig, title or f"feature {trace.origin_feature} of layer {trace.origin_layer}<br><sup>{born}, {dies}</sup>",
                   height=480)


def make_flow_figure(chain: Any = None, layer: int | None = None, features: int | Iterable[int] = (), *,
                     traces: Sequence[Any] | None = None, accepted_only: bool = False,
                     title: str | None = None):
    """A layered flow graph (Sankey) of a few features through depth, like Feature Flow's graphs.

    Give ``chain`` + ``layer`` + ``features`` (traced with ``chain.trace``) or ready ``traces``.
    Nodes are (layer, feature); features that merge (many-to-one matches) share a node; a step
    without partner ends in a grey "no partner" node; link colour: matched blue, rejected red.
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
    nodes: dict[tuple[int, int], int] = {}
    origins = {(int(tr.origin_layer), int(tr.origin_feature)) for tr in traces}

    def node(l: int, f: int) -> int:
        key = (int(l), int(f))
        if key not in nodes:
            nodes[key] = len(nodes)
        return nodes[key]

    for tr in traces:
        for l, f in zip(tr.layers, tr.features):
            if f >= 0:
                node(l, f)
    links: dict[tuple[int, int], list] = {}
    for tr in traces:
        for s in tr.steps:
            src = node(s.layer, s.feature)
            dst = node(s.next_layer, s.next_feature if s.next_feature >= 0 else -1)
            ent = links.setdefault((src, dst), [0, bool(s.matched), s.mse, s.margin])
            ent[0] += 1
    keys = list(nodes)
    # fixed layout: one column per layer, features stacked in index order
    per_col: dict[int, list[tuple[int, int]]] = {}
    for k in keys:
        per_col.setdefault(k[0], []).append(k)
    xs, ys = [0.0] * len(keys), [0.0] * len(keys)
    ncol = max(len(all_layers) - 1, 1)
    for l, ks in per_col.items():
        ks.sort(key=lambda k: (k[1] < 0, k[1]))
        for r, k in enumerate(ks):
            xs[nodes[k]] = 0.001 + 0.998 * col[l] / ncol
            ys[nodes[k]] = 0.001 + 0.998 * (r + 0.5) / len(ks)
    labels = [f"L{l} #{f}" if f >= 0 else f"L{l} no partner" for l, f in keys]
    colors = [COLORS["none"] if f < 0 else (COLORS["margin"] if (l, f) in origins else COLORS["matched"])
              for l, f in keys]
    link_items = list(links.items())
    fig = go.Figure(go.Sankey(
        arrangement="fixed",
        node=dict(label=labels, x=xs, y=ys, color=colors, pad=12, thickness=14,
                  hovertemplate="%{label}<extra></extra>"),
        link=dict(
            source=[s for (s, _), _ in link_items], target=[d for (_, d), _ in link_items],
            value=[v[0] for _, v in link_items],
            color=["rgba(31,119,180,0.45)" if v[1] else "rgba(214,39,40,0.45)" for _, v in link_items],
            customdata=[[fmt_float(v[2]), fmt_float(v[3]), "matched" if v[1] else "not matched"]
                        for _, v in link_items],
            hovertemplate="%{source.label} → %{target.label}<br>mse %{customdata[0]}, margin %{customdata[1]}"
                          "<br>%{customdata[2]}<extra></extra>",
        ),
    ))
    return _layout(fig, title or f"feature flow from layer {traces[0].origin_layer}: "
                   + ", ".join(f"#{tr.origin_feature}" for tr in traces[:8]) + (" …" if len(traces) > 8 else ""),
                   height=max(320, 60 * max(len(v) for v in per_col.values()) + 120))


# -- export --------------------------------------------------------------------------------------
_IMAGE_FORMATS = ("png", "pdf", "svg", "jpeg", "jpg", "webp")
_BROWSER_HELP = (
    "Writing {fmt} files uses kaleido, which drives a Chromium browser, and none was found. "
    "Install one (Debian/Ubuntu: `apt-get install -y chromium`; or run `plotly_get_chrome`), or set "
    "BROWSER_PATH to a Chrome/Chromium executable. Saving as .html works without it."
)


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


def save_figure(fig: Any, path: str | os.PathLike, *, width: int | None = None, height: int | None = None,
                scale: float = 2.0) -> Path:
    """Write a figure for a paper or a web page, by the file's extension.

    - ``.html``: self-contained page with plotly.js embedded (no CDN: it opens offline).
    - ``.png`` / ``.pdf`` / ``.svg`` / ``.jpeg`` / ``.webp``: static image via kaleido, which needs
      Chrome/Chromium (``apt-get install -y chromium`` on Debian); a clear error says so if missing.
    - ``.json``: plotly's JSON.
    """
    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if not hasattr(fig, "write_html"):
        raise TypeError(f"save_figure expects a plotly Figure, got {type(fig).__name__}")
    if ext not in ("html", "htm", "json") + _IMAGE_FORMATS:
        raise ValueError(f"cannot save a figure as {path.name!r}: use .html, .json, .png, .pdf, .svg, .jpeg or .webp")
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
                fig.write_image(str(tmp), format="jpeg" if ext == "jpg" else ext, width=width, height=height,
                                scale=scale)
            except Exception as exc:
                if "chrome" in type(exc).__name__.lower() or "browser" in str(exc).lower():
                    raise FigureExportError(_BROWSER_HELP.format(fmt=f".{ext}") + f" ({exc})") from exc
                raise
        os.replace(tmp, path)  # a failed export never leaves a half-written file under the real name
    finally:
        if tmp.exists():
            tmp.unlink()
    return path

