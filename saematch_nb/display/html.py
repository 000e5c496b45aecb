"""Static HTML reprs (no JavaScript, no CDN), in the manner of xarray's formatting_html.

Each public ``*_html`` returns one self-contained notebook output: the stylesheet once, a
``<pre>`` text fallback (shown where a renderer strips <style>, e.g. GitHub), and the rich body.
The ``*_body`` functions return the rich markup alone, for nesting (a chain shows its pairs) and
for :func:`report_html`. All strings that did not originate here go through ``escape``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Sequence

from .._version import __version__
from . import text as _text
from ._util import (
    DASH, UNCERTAIN_MARGIN, attr, check_no_script, css, escape, fmt_float, fmt_int, link, margin_uncertain,
    wrap_output,
)

__all__ = [
    "layer_match_html", "chain_html", "trace_html", "handle_html", "saes_html", "weights_html",
    "error_html", "report_html", "steering_html", "steering_body", "diff_html", "edge_html",
    "explorer_header_html", "trace_steps_html", "explorer_notice_html", "earlier_layers_html", "node_key_html",
    "figure_svg_html", "panel_snapshot_html", "sweep_html", "chain_summary_html", "finder_header_html",
    "finder_notice_html", "finder_query_text", "finder_count_text",
    "finder_table_html", "layer_match_body", "chain_body", "trace_body", "handle_body",
    "saes_body", "weights_body", "svg_line_chart", "feature_flow_html", "feature_flow_body", "flow_graph_html",
    "flow_graph_body",
]

_ARROW = '<span class="smn-arrow"> → </span>'


# -- building blocks ------------------------------------------------------------------------------
def _header(kind: str, title_html: str, sub_html: str = "") -> str:
    sub = f'<span class="smn-sub">{sub_html}</span>' if sub_html else ""
    return (f'<div class="smn-header"><span class="smn-kind">{escape(kind)}</span>'
            f'<span class="smn-title">{title_html}</span>{sub}</div>')


def _grid(rows: Iterable[tuple[str, str]]) -> str:
    """Key/value grid; keys are escaped here, values must already be HTML."""
    cells = "".join(f'<div class="smn-key">{escape(k)}</div><div class="smn-val">{v}</div>' for k, v in rows)
    return f'<div class="smn-facts">{cells}</div>'


def _kv_html(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return DASH
    return ", ".join(f'<span class="smn-muted">{escape(k)}</span>=<span class="smn-mono">{escape(v)}</span>'
                     for k, v in pairs)


def _bar(frac: float, label: str) -> str:
    pct = 0.0 if frac is None or not math.isfinite(frac) else max(0.0, min(100.0, 100.0 * frac))
    return (f'<span class="smn-bar" title={attr(label)}><span class="smn-bar-fill" '
            f'style="width: {pct:.1f}%"></span></span>{escape(label)}')


def _details(summary_html: str, body_html: str, *, open_: bool = False) -> str:
    o = " open" if open_ else ""
    return f'<details class="smn-details"{o}><summary>{summary_html}</summary>{body_html}</details>'


def _status_html(status: str) -> str:
    cls = "smn-ok" if status == _text.ACCEPTED else "smn-no"
    return f'<span class="{cls}">{escape(status)}</span>'


def _table(head: Sequence[tuple[str, bool]], rows: Iterable[Sequence[str]], row_classes: Iterable[str] | None = None,
           caption: str = "") -> str:
    """head: (title, numeric?) pairs, titles escaped here; rows: cells already HTML; caption: plain text."""
    th = "".join(f'<th class="smn-num">{escape(t)}</th>' if num else f"<th>{escape(t)}</th>" for t, num in head)
    body = []
    rcs = list(row_classes) if row_classes is not None else None
    for i, row in enumerate(rows):
        tds = "".join(f'<td class="smn-num">{c}</td>' if head[j][1] else f"<td>{c}</td>" for j, c in enumerate(row))
        rc = f' class="{rcs[i]}"' if rcs and rcs[i] else ""
        body.append(f"<tr{rc}>{tds}</tr>")
    cap = f'<caption class="smn-caption">{escape(caption)}</caption>' if caption else ""
    return f'<table class="smn-table">{cap}<thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>'


# -- LayerMatch -----------------------------------------------------------------------------------
def _hist_html(f: Mapping[str, Any]) -> str:
    h = f["hist"]
    totals = [m + u for m, u in zip(h["matched"], h["unmatched"])]
    top = max(totals) if totals else 0
    edges = [h["lo"] + (h["hi"] - h["lo"]) * i / h["bins"] for i in range(h["bins"] + 1)]
    cols = []
    for i, (m, u) in enumerate(zip(h["matched"], h["unmatched"])):
        hm = 100.0 * m / top if top else 0.0
        hu = 100.0 * u / top if top else 0.0
        last = h["overflow"] and i == h["bins"] - 1
        rng = f"≥ {fmt_float(edges[i])}" if last else f"{fmt_float(edges[i])} – {fmt_float(edges[i + 1])}"
        tip = f"MSE {rng}: {m} {_text.ACCEPTED}, {u} {_text.REJECTED} or without partner"
        cols.append(f'<div class="smn-hist-col" title={attr(tip)}>'
                    f'<div class="smn-hist-m" style="height: {hm:.2f}%"></div>'
                    f'<div class="smn-hist-u" style="height: {hu:.2f}%"></div></div>')
    return (
        f'<div class="smn-hist">{"".join(cols)}</div>'
        f'<div class="smn-hist-axis"><span>{escape(f["hist_lo"])}</span><span>{escape(f["hist_hi"])}</span></div>'
        f'<div class="smn-legend"><span class="smn-swatch smn-swatch-m"></span>{_text.ACCEPTED}'
        f'<span class="smn-swatch smn-swatch-u"></span>{_text.REJECTED} or without partner · '
        f'{escape(_text._hist_caption(f))}</div>'
    )


def _extremes_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return '<div class="smn-muted">(none)</div>'
    head = [("A feature", True), ("", False), ("B feature", True), ("mse", True), ("margin", True), ("", False)]
    cells = [[link(r["url_a"], r["a_s"], title="open on Neuronpedia"), _ARROW,
              link(r["url_b"], r["b_s"], title="open on Neuronpedia"),
              escape(r["mse"]), escape(r["margin"]), _status_html(r["status"])] for r in rows]
    return _table(head, cells)


def layer_match_body(lm: Any, *, header: bool = True) -> str:
    f = _text.layer_match_facts(lm)
    title = f"{link(f['url_a'], f['label_a'])}{_ARROW}{link(f['url_b'], f['label_b'])}"
    rows = [
        ("layers", f"{escape(f['layer_a'])}{_ARROW}{escape(f['layer_b'])}"),
        ("features", f"{escape(f['n_a'])}{_ARROW}{escape(f['n_b'])} · d_in {escape(f['d_in'])}"),
        ("options", _kv_html(f["options"])),
        ("solver", escape(f["solver"])),
        ("accepted", f"{_bar(f['matched_frac'], f['matched_pct'])} ({escape(f['n_matched'])} of "
                    f"{escape(f['n_a'])}), {escape(f['n_unpartnered'])} without partner"),
        ("criterion", escape(f["criterion"])),
        ("MSE", f"mean {escape(f['mse_mean'])}, q10 {escape(f['mse_q10'])}, median {escape(f['mse_q50'])}, "
                f"q90 {escape(f['mse_q90'])}"),
    ]
    if f["stats"]:
        rows.append(("stats", _kv_html(f["stats"])))
    parts = [_header("LayerMatch", title, escape(f["model"]) if f["model"] else "")] if header else []
    parts += [
        _grid(rows),
        f'<div class="smn-section"><div class="smn-section-title">MSE histogram</div>{_hist_html(f)}</div>',
        _details('best matches <span class="smn-sub">(lowest MSE among the accepted)</span>',
                 _extremes_table(f["best"]), open_=True),
        _details('worst matches <span class="smn-sub">(highest MSE)</span>', _extremes_table(f["worst"])),
    ]
    return "".join(parts)


def layer_match_html(lm: Any) -> str:
    return wrap_output(layer_match_body(lm), _text.layer_match_text(lm), kind="layer-match")


# -- inline SVG chart (no script; tooltips via <title>) -------------------------------------------
def svg_line_chart(
    xs: Sequence[float],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    band: tuple[Sequence[float], Sequence[float]] | None = None,
    title: str = "",
    y_range: tuple[float, float] | None = None,
    y_format=fmt_float,
    x_labels: Sequence[str] | None = None,
    width: int = 560,
    height: int = 150,
) -> str:
    """A small static line chart as inline SVG. ``band`` shades between two curves (e.g. q10-q90)."""
    ml, mr, mt, mb = 52, 10, 18, 20
    pw, ph = width - ml - mr, height - mt - mb
    xs = [float(x) for x in xs]
    vals = [float(v) for _, ys in series for v in ys if v is not None and math.isfinite(float(v))]
    if band is not None:
        vals += [float(v) for ys in band for v in ys if v is not None and math.isfinite(float(v))]
    if not xs or not vals:
        return f'<div class="smn-muted">{escape(title)}: no data</div>'
    y0, y1 = y_range if y_range is not None else (min(0.0, min(vals)), max(vals))
    if y1 <= y0:
        y1 = y0 + 1.0
    x0, x1 = min(xs), max(xs)
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x1 + 0.5

    def px(x: float) -> float:
        return ml + pw * (x - x0) / (x1 - x0)

    def py(y: float) -> float:
        return mt + ph * (1 - (y - y0) / (y1 - y0))

    parts = [f'<svg class="smn-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label={attr(title)}>']
    if title:
        parts.append(f'<text class="smn-chart-title" x="{ml}" y="12">{escape(title)}</text>')
    parts.append(f'<line class="smn-axis" x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}"/>')
    parts.append(f'<line class="smn-axis" x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}"/>')
    for yv in (y0, (y0 + y1) / 2, y1):
        parts.append(f'<text class="smn-tick" x="{ml - 4}" y="{py(yv) + 3:.1f}" text-anchor="end">'
                     f"{escape(y_format(yv))}</text>")
    step = max(1, math.ceil(len(xs) / 13))
    labels = list(x_labels) if x_labels is not None else [fmt_float(x) for x in xs]
    for i in range(0, len(xs), step):
        parts.append(f'<text class="smn-tick" x="{px(xs[i]):.1f}" y="{height - 5}" text-anchor="middle">'
                     f"{escape(labels[i])}</text>")
    if band is not None:
        lo, hi = band
        pts = [(px(x), py(float(v))) for x, v in zip(xs, hi) if v is not None and math.isfinite(float(v))]
        pts += [(px(x), py(float(v))) for x, v in reversed(list(zip(xs, lo)))
                if v is not None and math.isfinite(float(v))]
        if pts:
            parts.append(f'<polygon class="smn-band" points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in pts)}"/>')
    for k, (name, ys) in enumerate(series):
        pts = [(x, float(v)) for x, v in zip(xs, ys) if v is not None and math.isfinite(float(v))]
        if not pts:
            continue
        c = k % 4
        parts.append(f'<polyline class="smn-series-{c}" points="'
                     + " ".join(f"{px(x):.1f},{py(v):.1f}" for x, v in pts) + '"/>')
        lab = dict(zip(xs, labels))
        for x, v in pts:
            parts.append(f'<circle class="smn-dot-{c}" cx="{px(x):.1f}" cy="{py(v):.1f}" r="2.5">'
                         f"<title>{escape(name)} at {escape(lab.get(x, fmt_float(x)))}: "
                         f"{escape(y_format(v))}</title></circle>")
    if len(series) > 1:
        for k, (name, _) in enumerate(series):
            parts.append(f'<text class="smn-tick" x="{ml + pw - 4}" y="{mt + 10 + 11 * k}" text-anchor="end">'
                         f'<tspan class="smn-dot-{k % 4}">■</tspan> {escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# -- MatchChain -----------------------------------------------------------------------------------
def chain_body(chain: Any, *, pairs_open: bool = False, charts: bool = True) -> str:
    """The chain's repr body; ``charts=False`` leaves out the two static charts (for a panel that
    draws them as a plotly figure right below)."""
    f = _text.chain_facts(chain)
    title = f"{escape(f['n_pairs'])} pairs over layers {escape(f['layer_range'])}"
    parts = [_header("MatchChain", title, escape(f["model"]) if f["model"] else "")]
    parts.append(_grid([("layers", escape(f["layers"])), ("options", _kv_html(f["options"])),
                        ("stats", _kv_html(f["stats"]))]))
    rows = f["rows"]
    if rows and charts:
        xs, xl = [], []
        for i, r in enumerate(rows):
            la = r["raw"].get("layer_a")
            xs.append(float(la) if la is not None else float(i))
            xl.append(f"{r['layer_a']}→{r['layer_b']}")
        frac = [r["raw"].get("matched_fraction") for r in rows]
        med = [r["raw"].get("mse_median") for r in rows]
        q10 = [r["raw"].get("mse_q10") for r in rows]
        q90 = [r["raw"].get("mse_q90") for r in rows]
        svg = (svg_line_chart(xs, [("accepted fraction", frac)], title="accepted fraction across depth",
                              y_range=(0.0, 1.0), y_format=lambda v: f"{100 * v:.0f}%", x_labels=xl)
               + svg_line_chart(xs, [("MSE median", med)], band=(q10, q90),
                                title="MSE to the assigned partner across depth (median, band q10–q90)",
                                x_labels=xl))
        parts.append(f'<div class="smn-section">{svg}</div>')
    if rows:
        head = [("pair", False), ("SAEs", False), ("widths", True), ("accepted", False), ("no partner", True),
                ("MSE median", True), ("MSE q90", True), ("time", True), ("cached", False)]
        cells = [[f"{escape(r['layer_a'])}{_ARROW}{escape(r['layer_b'])}",
                  f"{escape(r['sae_a'])}{_ARROW}{escape(r['sae_b'])}",
                  f"{escape(r['n_a'])}{_ARROW}{escape(r['n_b'])}",
                  _bar(r["matched_frac"], r["matched_pct"]), escape(r["unpartnered"]),
                  escape(r["mse_median"]), escape(r["mse_q90"]), escape(r["seconds"]), escape(r["cached"])]
                 for r in rows]
        parts.append(_table(head, cells, caption="layer pairs"))
        details = []
        for r, lm in zip(rows, f["pairs"]):
            summ = (f"{escape(r['layer_a'])}{_ARROW}{escape(r['layer_b'])} "
                    f'<span class="smn-sub">{escape(r["matched_pct"])} accepted, '
                    f'MSE median {escape(r["mse_median"])}</span>')
            details.append(_details(summ, layer_match_body(lm, header=False), open_=pairs_open))
        parts.append(_details('pairs <span class="smn-sub">(details per layer pair)</span>',
                              "".join(details), open_=pairs_open))
    else:
        parts.append('<div class="smn-muted">no layer pairs</div>')
    return "".join(parts)


def chain_html(chain: Any) -> str:
    return wrap_output(chain_body(chain), _text.chain_text(chain), kind="chain")


# -- FeatureTrace ---------------------------------------------------------------------------------
def _node_html(n: Mapping[str, Any]) -> str:
    cls = ("smn-node" + (" smn-node-origin" if n["origin"] else "") + ("" if n["present"] else " smn-node-absent")
           + (" smn-node-gone" if n["present"] and not n["alive"] else ""))
    badges = ""
    if n["born"]:
        badges += '<span class="smn-badge smn-born" title="the accepted run starts here">first</span>'
    if n["dies"]:
        badges += '<span class="smn-badge smn-dies" title="the accepted run ends here">last</span>'
    if n["origin"]:
        badges += '<span class="smn-badge smn-muted">origin</span>'
    feat = link(n["url"], n["feature"], title="open on Neuronpedia") if n["present"] else escape(n["feature"])
    tip = f" title={attr(n['label'])}" if n.get("label") else ""
    return (f'<div class="{cls}"{tip}><span class="smn-node-layer">L{escape(n["layer"])}</span>'
            f'<span class="smn-node-feat">{feat}</span>{badges}</div>')


def _edge_html(s: Mapping[str, Any] | None) -> str:
    if s is None:
        return '<div class="smn-edge"><span class="smn-edge-line">·</span></div>'
    cls = "smn-edge smn-edge-ok" if s["matched"] else "smn-edge smn-edge-no"
    # the arrow is the criterion's decision; the margin is a separate signal, flagged when thin
    unsure = bool(s.get("uncertain"))
    tip = (f"L{s['layer']} #{s['feature']} → L{s['next_layer']} #{s['next_feature']}: {s['status']}"
           + (" by the calibrated criterion (direction distance within the threshold, mutual best)"
              if s["status"] in ("accepted", "rejected") else "")
           + (f"; margin {s['margin']} is not clearly positive (at most {UNCERTAIN_MARGIN:.0%} of the MSE): "
              "an uncertain step" if unsure else ""))
    flag = ' <span class="smn-edge-unsure" title="margin not clearly positive: uncertain">?</span>' if unsure else ""
    return (f'<div class="{cls}{" smn-edge-uncertain" if unsure else ""}" title={attr(tip)}>'
            f'<span class="smn-edge-line">⟶</span>mse {escape(s["mse"])}<br>margin {escape(s["margin"])}{flag}</div>')


def trace_body(tr: Any, *, header: bool = True) -> str:
    f = _text.trace_facts(tr)
    nodes, steps = f["nodes"], f["steps"]
    by_pair = {(s["layer"], s["next_layer"]): s for s in steps}
    by_layer = {s["layer"]: s for s in steps}
    row = []
    for k, n in enumerate(nodes):
        row.append(_node_html(n))
        if k + 1 < len(nodes):
            s = by_pair.get((n["layer"], nodes[k + 1]["layer"])) or by_layer.get(n["layer"])
            row.append(_edge_html(s))
    shown = {(s["layer"], s["next_layer"]) for s in steps if (s["layer"], s["next_layer"]) in
             {(nodes[k]["layer"], nodes[k + 1]["layer"]) for k in range(len(nodes) - 1)}}
    extra = [s for s in steps if (s["layer"], s["next_layer"]) not in shown]
    parts = []
    if header:
        title = f"feature {escape(f['origin_feature'])} of layer {escape(f['origin_layer'])}"
        sub = f"{escape(_text.trace_span(f))}; {escape(f['born'])}; {escape(f['dies'])}"
        parts.append(_header("FeatureTrace", title, sub))
    parts.append(f'<div class="smn-trace">{"".join(row)}</div>')
    if extra:  # steps that do not join neighbouring layers of the row (kept so no fact is lost)
        cells = [[f"L{escape(s['layer'])} #{escape(s['feature'])}", _ARROW,
                  f"L{escape(s['next_layer'])} #{escape(s['next_feature'])}", escape(s["mse"]),
                  escape(s["margin"]), _status_html(s["status"])] for s in extra]
        parts.append(_table([("from", False), ("", False), ("to", False), ("mse", True), ("margin", True),
                             ("", False)], cells))
    return "".join(parts)


def trace_html(tr: Any) -> str:
    return wrap_output(trace_body(tr), _text.trace_text(tr), kind="trace")


def trace_steps_html(tr: Any) -> str:
    """The trace's nodes and steps without its heading (a panel shows the heading above)."""
    return wrap_output(trace_body(tr, header=False), _text.trace_text(tr), kind="trace")


def edge_html(step: Any) -> str:
    """One step of a trace as the explorer draws it between two nodes (a TraceStep)."""
    st = _text.step_status(bool(step.matched), int(step.next_feature))
    return _edge_html({"matched": bool(step.matched), "layer": _text._layer(step.layer),
                       "feature": fmt_int(step.feature), "next_layer": _text._layer(step.next_layer),
                       "next_feature": fmt_int(step.next_feature) if step.next_feature >= 0 else DASH,
                       "mse": fmt_float(step.mse), "margin": fmt_float(step.margin), "status": st,
                       "uncertain": step.next_feature >= 0 and margin_uncertain(step.mse, step.margin)})


def _neuronpedia_links(tr: Any, layer: int) -> list[tuple[Any, int, str, bool]]:
    """(layer, feature, url, focused) of the trace's features whose SAE has a Neuronpedia id."""
    out = []
    for L, feat in zip(tr.layers, tr.features):
        info = _text._trace_info(tr, L)
        url = info.neuronpedia_url(feat) if (info is not None and feat >= 0) else None
        if url:
            out.append((L, int(feat), url, L == layer))
    return out


def explorer_header_body(tr: Any, layer: int, *, explanation: str | None = None) -> str:
    f = _text.trace_facts(tr)
    title = f"feature {escape(f['origin_feature'])} of layer {escape(f['origin_layer'])}"
    sub = f"{escape(_text.trace_span(f))}; {escape(f['born'])}; {escape(f['dies'])}"
    info = _text._trace_info(tr, layer)
    label = (f' <span class="smn-muted smn-mono">({escape(info.label)})</span>'
             if info is not None and info.label else "")
    parts = [_header("FeatureTrace", title, sub),
             f'<div class="smn-section-title">{escape(_text.focus_line(tr, layer))}{label}</div>']
    links = _neuronpedia_links(tr, layer)
    if links:  # the same links as the trace's static repr (its nodes), the focus in bold
        items = " · ".join((f"<strong>{link(u, f'L{L} #{ft}', title='open on Neuronpedia')}</strong>" if foc
                            else link(u, f"L{L} #{ft}", title="open on Neuronpedia")) for L, ft, u, foc in links)
        parts.append(f'<div class="smn-np-links"><span class="smn-muted">Neuronpedia:</span> {items}</div>')
    if explanation:
        parts.append(f'<div class="smn-np-expl">Neuronpedia explanation of layer {escape(layer)} · feature '
                     f'{escape(tr.feature_at(layer))}: {escape(explanation)}</div>')
    return "".join(parts)


def explorer_header_text(tr: Any, layer: int, *, explanation: str | None = None) -> str:
    f = _text.trace_facts(tr)
    out = (f"FeatureTrace: feature {f['origin_feature']} of layer {f['origin_layer']}\n"
           f"  {_text.trace_span(f)}; {f['born']}; {f['dies']}\n  {_text.focus_line(tr, layer)}")
    for L, ft, u, foc in _neuronpedia_links(tr, layer):
        if foc:
            out += f"\n  Neuronpedia: {u}"
    if explanation:
        out += f"\n  explanation: {explanation}"
    return out


def explorer_header_html(tr: Any, layer: int, *, explanation: str | None = None) -> str:
    """The explorer's heading: the trace's origin, how far it goes, what is shown at ``layer``,
    the Neuronpedia pages of the trace's features (where its SAEs have a Neuronpedia id) and the
    focused feature's ``explanation`` when one is known."""
    return wrap_output(explorer_header_body(tr, layer, explanation=explanation),
                       explorer_header_text(tr, layer, explanation=explanation), kind="panel")


def explorer_notice_html(layer: Any, feature: Any, source: str | None, *, new_trace: bool = True,
                         error: bool = False, serial: int = 0) -> str:
    """The explorer's notice that another panel opened a feature in it: what, from where, and what
    the explorer did. ``serial`` makes each notice a new value (its highlight plays again)."""
    where = f" from {source}" if source else ""
    if error:
        did = "it could not be shown: see the message below"
    elif new_trace:
        did = "a new trace starts there"
    else:
        did = "it is on the trace shown: the focus moved there"
    text = f"Opened layer {layer} · feature {feature}{where}: {did}."
    return (f'<div class="smn-output smn-out-notice"><style>{css()}</style>'
            f'<div class="smn-notice" data-n="{int(serial)}" role="status">{escape(text)}</div></div>')


def earlier_layers_html(layers: Sequence[Any]) -> str:
    """The note before the columns of the layers moved to the end of the explorer's sideways row."""
    names = ", ".join(f"L{escape(L)}" for L in layers)
    return (f'<div class="smn-output smn-out-note"><div class="smn-earlier-note">↩ earlier layers: {names}<br>'
            f'<span class="smn-muted">(the row starts next to the layer in focus)</span></div></div>')


def node_key_html() -> str:
    """The key of the explorer's node buttons."""
    return (f'<div class="smn-output smn-out-note"><style>{css()}</style><div class="smn-node-key">'
            '<span class="smn-key-focus">L2 #5</span> the layer in focus · '
            '<span class="smn-key-run">L1 #7</span> the accepted run (every step from the origin accepted) · '
            '<span class="smn-key-beyond">L4 #9</span> the assignment\'s partner beyond the run, not accepted · '
            '<span class="smn-muted">L5 —</span> not reached · * the origin</div></div>')


def _scatter_series(t: Mapping[str, Any]) -> list[tuple[float, float]]:
    xs, ys = t.get("x"), t.get("y")
    if xs is None or ys is None:
        return []
    out = []
    for x, y in zip(list(xs), list(ys)):
        try:
            xf, yf = float(x), float(y)
        except (TypeError, ValueError):
            continue
        if math.isfinite(xf) and math.isfinite(yf):
            out.append((xf, yf))
    return out


def figure_svg_html(fig: Any, *, width: int = 640, height: int = 150) -> str:
    """A static picture of a plotly figure's line and marker traces, one small SVG chart per
    y axis (:func:`svg_line_chart`), for a panel's snapshot: no script, no export engine. Other
    trace types (bars, Sankey) are named, not drawn."""
    d = fig.to_plotly_json() if hasattr(fig, "to_plotly_json") else dict(fig)
    lay = d.get("layout") or {}
    title = (lay.get("title") or {}).get("text") or ""
    title = re.sub(r"<[^>]+>", " ", str(title)).strip()
    by_axis: dict[str, list[tuple[str, list[tuple[float, float]]]]] = {}
    other = []
    for t in d.get("data") or []:
        if t.get("type", "scatter") not in ("scatter", "scattergl"):
            other.append(str(t.get("type")))
            continue
        pts = _scatter_series(t)
        if pts:
            by_axis.setdefault(t.get("yaxis") or "y", []).append((str(t.get("name") or ""), pts))
    charts = []
    for ax in sorted(by_axis, key=lambda a: int(a[1:] or 1)):
        series = by_axis[ax]
        xs = sorted({x for _, pts in series for x, _y in pts})
        aligned = [(name, [dict(pts).get(x) for x in xs]) for name, pts in series]
        key = "yaxis" + ax[1:]
        ytitle = ((lay.get(key) or {}).get("title") or {}).get("text") or ", ".join(n for n, _ in series)
        charts.append(svg_line_chart(xs, aligned, title=re.sub(r"<[^>]+>", " ", str(ytitle)), width=width,
                                     height=height, x_labels=[fmt_float(x, 3) for x in xs]))
    note = f'<div class="smn-muted">not drawn here: {escape(", ".join(sorted(set(other))))}</div>' if other else ""
    if not charts and not note:
        return ""
    head = f'<div class="smn-section-title">{escape(title)}</div>' if title else ""
    return f'<div class="smn-figure-snapshot">{head}{"".join(charts)}{note}</div>'


def panel_snapshot_html(kind: str, parts: Sequence[str]) -> str:
    """A panel's static snapshot: its parts (HTML made by this package's display functions; any
    ``<script`` is refused) under a note that it is a snapshot, for notebooks read without the
    panel's kernel."""
    body = "".join(check_no_script(str(p), f"{kind} snapshot") for p in parts)
    note = (f'<div class="smn-sub">{escape(kind)}: a static snapshot of the panel (the live panel needs '
            "its kernel: run the notebook to use it)</div>")
    return f'<div class="smn-output smn-out-panel smn-snapshot">{note}{body}</div>'



# -- SAE handles, lists, weights ------------------------------------------------------------------
def _fact_rows_html(rows: Sequence[tuple[str, str]], url: str | None) -> list[tuple[str, str]]:
    return [(k, link(url, v, title="open on Neuronpedia") if (k == "neuronpedia_id" and url) else
             f'<span class="smn-mono">{escape(v)}</span>' if k in ("hook_name", "sae_id", "path", "fingerprint")
             else escape(v)) for k, v in rows]


def handle_body(h: Any) -> str:
    f = _text.handle_facts(h)
    return _header("SAEHandle", escape(f["label"]), "not loaded") + _grid(_fact_rows_html(f["rows"], f["url"]))


def handle_html(h: Any) -> str:
    return wrap_output(handle_body(h), _text.handle_text(h), kind="handle")


def saes_body(handles: Sequence[Any]) -> str:
    hs = list(handles)
    models = sorted({str(getattr(h, "model_name")) for h in hs if getattr(h, "model_name", None)})
    title = f"{escape(fmt_int(len(hs)))} SAEs"
    parts = [_header("SAEList", title, escape(", ".join(models)) if models else "")]
    cols, rows = _text.saes_rows(hs)
    if rows:
        cells = []
        for h, row in zip(hs, rows):
            info = getattr(h, "info", None)
            url = info.neuronpedia_url() if info is not None else None
            cells.append([link(url, v, title="open on Neuronpedia") if c == "neuronpedia_id" else
                          f'<span class="smn-mono">{escape(v)}</span>' if c in ("sae_id", "hook_name", "path")
                          else escape(v) for c, v in zip(cols, row)])
        parts.append(_table([(c, c in ("layer", "width", "l0")) for c in cols], cells))
    return "".join(parts)


def saes_html(handles: Sequence[Any]) -> str:
    return wrap_output(saes_body(handles), _text.saes_text(handles), kind="saes")


def weights_body(w: Any) -> str:
    f = _text.weights_facts(w)
    return _header("SAEWeights", escape(f["label"])) + _grid(_fact_rows_html(f["rows"], f["url"]))


def weights_html(w: Any) -> str:
    return wrap_output(weights_body(w), _text.weights_text(w), kind="weights")


# -- misc -----------------------------------------------------------------------------------------
def error_html(message: Any) -> str:
    """An error message for widgets and reports (escaped; shown in the theme's error colour)."""
    msg = str(message)
    return wrap_output(f'<div class="smn-error">{escape(msg)}</div>', f"error: {msg}", kind="error")


def report_html(
    chain: Any,
    traces: Iterable[Any] = (),
    *,
    title: str = "saematch_nb report",
    intro: str | None = None,
    sections: Iterable[tuple[str, str]] = (),
    pairs_open: bool = False,
) -> str:
    """A self-contained static HTML page: chain summary (or one LayerMatch), traces, extra sections.

    ``chain``: a MatchChain (anything with ``pairs``) or a LayerMatch. ``intro``: plain text,
    escaped. ``sections``: (heading, html) pairs whose HTML was made by saematch_nb.display
    functions (``*_body`` or ``*_html``); any ``<script`` in them is refused. The page inlines the
    CSS, carries no script and loads nothing from the network.
    """
    parts = [f"<h1>{escape(title)}</h1>",
             f'<p class="smn-sub">made with saematch_nb {escape(__version__)}</p>']
    if intro:
        parts.append(f"<p>{escape(intro)}</p>")
    if chain is not None:
        if hasattr(chain, "pairs"):
            parts.append("<h2>Layer pairs</h2>" + chain_body(chain, pairs_open=pairs_open))
        else:
            parts.append("<h2>Layer match</h2>" + layer_match_body(chain))
    trs = list(traces or ())
    if trs:
        parts.append("<h2>Feature traces</h2>"
                     + "".join(f'<div class="smn-section">{trace_body(t)}</div>' for t in trs))
    for heading, fragment in sections:
        parts.append(f"<h2>{escape(heading)}</h2>" + check_no_script(str(fragment), f"section {heading!r}"))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{css()}</style></head>"
        f'<body class="smn-page"><div class="smn-wrap">{"".join(parts)}</div></body></html>\n'
    )


# -- steering -------------------------------------------------------------------------------------
def _ws_html(tok: str) -> str:
    """A piece of model text, escaped, newlines shown as ↵ and kept as line breaks."""
    return escape(_text.show_ws(tok))


def diff_html(marked: Sequence[tuple[str, bool]], cls: str) -> str:
    """Tokens of one text with those that differ from the other text marked (``<mark>``)."""
    return "".join(f'<mark class="smn-diff {cls}">{_ws_html(t)}</mark>' if d else _ws_html(t) for t, d in marked)


def steering_body(res: Any) -> str:
    f = _text.steering_facts(res)
    title = f"mode {escape(f['mode'])}, feature {escape(f['origin'])}, {len(f['rows'])} steered layers"
    cells = [[f"L{escape(l)} #{escape(feat)}", escape(s), f'<span class="smn-mono">at {escape(h)}</span>']
             for l, feat, h, s in f["rows"]]
    gen = _table([("prompt", False), ("baseline", False), ("steered", False)],
                 [[f'<span class="smn-gen">{_ws_html(f["prompt"])}</span>',
                   f'<span class="smn-gen">{diff_html(f["baseline_diff"], "smn-diff-del")}</span>',
                   f'<span class="smn-gen">{diff_html(f["steered_diff"], "smn-diff-add")}</span>']],
                 caption="generations (greedy, same seed; differing tokens marked)")
    return (_header("SteeringResult", title) + _grid([("options", _kv_html(f["options"])),
                                                     ("strength", escape(f["units"]))])
            + _table([("feature", False), ("strength", True), ("hook", False)], cells, caption="steered layers")
            + gen + f'<div class="smn-sub">{escape(f["diff_line"])}</div>')


def steering_html(res: Any) -> str:
    """A steering result (analysis/steering.py): the plan per layer and the two generations."""
    return wrap_output(steering_body(res), _text.steering_text(res), kind="steering")


def _nice_range(vals: Sequence[float]) -> tuple[float, float]:
    """An axis range around ``vals`` (0 included) on round numbers: ticks read 0 / 6 / 12, not
    0 / 5.922 / 11.99."""
    fin = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
    lo, hi = min([0.0] + fin), max([0.0] + fin)
    if hi <= lo:
        return lo, lo + 1.0
    base = 10 ** math.floor(math.log10(hi - lo)) / 10
    # the smallest round step that covers the range in at most 4 steps, an even number of them (the
    # chart's middle tick is then a round number too)
    for step in (base * m for m in (1, 2, 2.5, 3, 4, 5, 6, 10, 20, 25, 30, 40, 50, 60, 100)):
        a, b = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
        n = b - a + (b - a) % 2
        if n <= 4:
            return a * step, (a + n) * step
    return lo, hi


def _round_tick(v: float) -> str:
    return f"{v:.3g}" if v else "0"


def sweep_text(df: Any, *, mode: str = "add", origin: Any = None, target_from: str | None = None) -> str:
    rows = df.to_dict("records") if hasattr(df, "to_dict") else list(df)
    tgt = rows[0]["target"] if rows else ""
    head = (f"strength sweep ({mode} mode" + (f", L{origin[0]} #{origin[1]}" if origin else "") + "): "
            f"KL(clean ‖ steered) of the next-token distribution and Δ log p({tgt!r}), mean over the prompt")
    if target_from:
        head += f"; target from {target_from}"
    has_text = bool(rows) and "text" in rows[0]
    lines = [head, "  strength  KL        Δ log p" + ("   generated" if has_text else "")]
    lines += [f"  {fmt_float(r['strength']):<9} {fmt_float(r['kl'], 3):<9} {fmt_float(r['target_delta_logprob'], 3):<8}"
              + (f"  {r['text']!r}" if has_text else "") for r in rows]
    return "\n".join(lines)


def sweep_body(df: Any, *, mode: str = "add", origin: Any = None, target_from: str | None = None) -> str:
    rows = df.to_dict("records") if hasattr(df, "to_dict") else list(df)
    tgt = rows[0]["target"] if rows else ""
    xs = [float(r["strength"]) for r in rows]
    labels = [_round_tick(x) for x in xs]
    kl = [r["kl"] for r in rows]
    dlp = [r["target_delta_logprob"] for r in rows]
    # one chart per unit (nats of KL, a change of log-probability), each on round ticks
    chart = (svg_line_chart(xs, [("KL (nats)", kl)], title="KL(clean ‖ steered), nats", x_labels=labels,
                            y_range=_nice_range(kl), y_format=_round_tick, width=360, height=140)
             + svg_line_chart(xs, [(f"Δ log p({tgt!r})", dlp)], title=f"Δ log p({tgt!r})", x_labels=labels,
                              y_range=_nice_range(dlp), y_format=_round_tick, width=360, height=140))
    has_text = bool(rows) and "text" in rows[0]
    cells = [[escape(_round_tick(float(r["strength"]))), escape(fmt_float(r["kl"], 3)),
              escape(fmt_float(r["target_delta_logprob"], 3))]
             + ([f'<span class="smn-gen">{escape(r["text"])}</span>'] if has_text else []) for r in rows]
    title = f"{escape(mode)} mode" + (f", L{escape(origin[0])} #{escape(origin[1])}" if origin else "")
    head = [("strength", True), ("KL(clean ‖ steered)", True), (f"Δ log p({tgt!r})", True)]
    if has_text:
        head.append(("generated (greedy)", False))
    how = f"from {target_from}" if target_from else "the one the strongest setting raises most"
    return (_header("Strength sweep", title, "mean over the prompt's positions; one forward pass per strength")
            + f'<div class="smn-sweep">{chart}</div>'
            + '<div class="smn-sweep-gens">'
            + _table(head, cells, caption=f"target token {tgt!r}: {how}") + "</div>")


def sweep_html(df: Any, *, mode: str = "add", origin: Any = None, target_from: str | None = None) -> str:
    """A strength sweep (``analysis.steering.strength_sweep``, with a ``text`` column: the text
    generated at each strength) as two charts (one unit each) and a table."""
    return wrap_output(sweep_body(df, mode=mode, origin=origin, target_from=target_from),
                       sweep_text(df, mode=mode, origin=origin, target_from=target_from), kind="panel")


def chain_summary_html(chain: Any, *, charts: bool = False) -> str:
    """The chain's repr for the overview panel; by default without its static charts: the panel draws
    the same two charts as a plotly figure right below (issue #23: they were shown twice)."""
    return wrap_output(chain_body(chain, charts=charts), _text.chain_text(chain), kind="chain")


def finder_query_text(query: Mapping[str, Any]) -> str:
    """The finder's query in words: "sorted by margin (largest first), layer 2, ..."."""
    sort = query.get("sort")
    desc = query.get("descending")
    order = "" if desc is None else (" (largest first)" if desc else " (smallest first)")
    parts = [f"sorted by {sort}{order}"]
    if query.get("layer") is not None:
        parts.append(f"layer {query['layer']}")
    lo, hi = query.get("min_persistence") or 0, query.get("max_persistence")
    if lo > 1 and hi is not None:  # (every feature persists on one layer, its own)
        parts.append(f"persisting on {lo} to {hi} layers")
    elif lo > 1:
        parts.append(f"persisting on ≥ {lo} layers")
    elif hi is not None:
        parts.append(f"persisting on ≤ {hi} layers (short-lived)")
    if query.get("newborn"):
        parts.append("newborn (no accepted step in)")
    if query.get("dying"):
        parts.append("dying (no accepted step out)")
    if query.get("accepted_only"):
        parts.append("next step accepted")
    if query.get("token"):
        parts.append(f"a top token contains {query['token']!r}")
    if query.get("explanation"):
        parts.append(f"explanation contains {query['explanation']!r}")
    return ", ".join(parts)


def finder_count_text(n_rows: int, total: int | None = None) -> str:
    """"showing 20 of 1,234 features" when the list is cut, else "12 features"."""
    if total is not None and total > n_rows:
        return f"showing {n_rows:,} of {total:,} features"
    return f"{n_rows:,} feature" + ("" if n_rows == 1 else "s")


def finder_header_html(n_rows: int, query: Mapping[str, Any], total: int | None = None,
                       columns: str | None = None, hint: str = "choose a row to open it in the explorer") -> str:
    """What the finder lists: how many of how many, the query in words, and (``columns``) the
    header line of the list's columns (``display.text.finder_lines``), in the list's font."""
    text = f"{finder_count_text(n_rows, total)}, {finder_query_text(query)}"
    body = _header("FeatureFinder", escape(text), escape(hint))
    if columns:
        body += f'<div class="smn-finder-cols">{escape(columns)}</div>'
    return wrap_output(body, f"FeatureFinder: {text}" + (f"\n{columns}" if columns else ""), kind="finder")


def finder_notice_html(text: str) -> str:
    """The finder's line under its list: what choosing a row did."""
    return wrap_output(f'<div class="smn-finder-notice">{escape(text)}</div>', text, kind="finder")


_FINDER_COLS = ("layer", "feature", "persistence", "lifetime", "age", "partner", "mse", "margin", "accepted",
                "density", "max_activation", "top_tokens", "explanation")


def finder_table_html(df: Any) -> str:
    """The finder's DataFrame as a static table (the panel's snapshot)."""
    cols = [c for c in _FINDER_COLS if c in df.columns]
    num = {"layer", "feature", "persistence", "lifetime", "age", "partner", "mse", "margin", "density",
           "max_activation"}

    def cell(c: str, v: Any) -> str:
        if c == "density":
            return escape(_text.fmt_pct(v))
        if c in ("mse", "margin", "max_activation"):
            return escape(fmt_float(v))
        return escape(v)

    rows = [[cell(c, r[c]) for c in cols] for r in df.to_dict("records")]
    body = _table([(c, c in num) for c in cols], rows, caption="features found")
    return wrap_output(body, df.to_string(index=False) if len(df) else "(no features)", kind="finder")


# -- FeatureFlow, FlowGraph (core/flow.py) --------------------------------------------------------
def _class_stack(fracs: Mapping[str, float], shares: Mapping[str, str]) -> str:
    segs = "".join(
        f'<span class="smn-stack-seg smn-cls-{k}" style="width: {100.0 * max(0.0, min(1.0, fracs[k])):.1f}%" '
        f"title={attr(f'{k} {shares[k]}')}></span>" for k in _text.FLOW_CLASSES)
    return f'<span class="smn-stack">{segs}</span>'


def _class_legend() -> str:
    return ('<div class="smn-legend">' + "".join(
        f'<span class="smn-swatch smn-cls-{k}"></span>{escape(k)}' for k in _text.FLOW_CLASSES) + "</div>")


def feature_flow_body(flow: Any) -> str:
    f = _text.feature_flow_facts(flow)
    title = f"{escape(f['n_layers'])} layers ({escape(f['layer_range'])}), modules {escape(f['modules'])}"
    parts = [_header("FeatureFlow", title, escape(f["model"]) if f["model"] else ""),
             _grid([("rule", escape(f["rule"])), ("options", _kv_html(f["options"])), ("time", escape(f["seconds"]))])]
    head = [("layer", True), ("from", True), ("features", True), ("t_R", True), ("t_M", True), ("t_A", True),
            ("classes", False)] + [(k, True) for k in _text.FLOW_CLASSES]
    cells = [[escape(r["layer"]), escape(r["prev"]), escape(r["n"]), escape(r["t"]["R"]), escape(r["t"]["M"]),
              escape(r["t"]["A"]), _class_stack(r["fracs"], r["shares"])]
             + [escape(r["shares"][k]) for k in _text.FLOW_CLASSES] for r in f["rows"]]
    parts.append(_table(head, cells, caption="class shares per layer (thresholds t: calibrated per layer and module)"))
    parts.append(_class_legend())
    details = []
    for r in f["rows"]:
        body = _grid([(k, f'<span class="smn-mono">{escape(v)}</span>') for k, v in r["saes"]]
                     + [(f"null {k}", escape(v)) for k, v in r["nulls"]])
        details.append(_details(f"layer {escape(r['layer'])}", body))
    parts.append(_details('SAEs and nulls <span class="smn-sub">(per layer)</span>', "".join(details)))
    return "".join(parts)


def feature_flow_html(flow: Any) -> str:
    return wrap_output(feature_flow_body(flow), _text.feature_flow_text(flow), kind="flow")


def _flow_node_html(n: Mapping[str, Any]) -> str:
    cls = "smn-node smn-flow-node smn-flow-" + escape(n["kind"]) + (" smn-node-origin" if n["origin"] else "")
    badge = (f'<span class="smn-badge smn-cls-text-{escape(n["cls"])}">{escape(n["cls"])}</span>'
             if n["cls"] else "")
    kind = "" if n["kind"] == "residual" else escape(n["kind"].upper() if n["kind"] == "mlp" else n["kind"])
    return (f'<div class="{cls}" title={attr(n["label"])}><span class="smn-node-layer">{kind} L{escape(n["layer"])}'
            f'</span><span class="smn-node-feat">#{escape(n["feature"])}</span>{badge}</div>')


def flow_graph_body(g: Any) -> str:
    f = _text.flow_graph_facts(g)
    c = f["counts"]
    sub = (f"{c['residual']} residual, {c['mlp']} MLP, {c['attn']} attention nodes; {f['n_edges']} edges; {f['cuts']}"
           + ("; successors truncated" if f["truncated"] else ""))
    parts = [_header("FlowGraph", escape(f["origin"]), escape(sub))]
    layers = sorted({n["layer"] for n in f["nodes"]})
    cols = []
    for L in layers:
        here = [n for n in f["nodes"] if n["layer"] == L]
        order = {"mlp": 0, "attn": 1, "residual": 2}
        here.sort(key=lambda n: (order[n["kind"]], n["feature"]))
        cols.append(f'<div class="smn-flow-col"><div class="smn-section-title">L{escape(L)}</div>'
                    + "".join(_flow_node_html(n) for n in here) + "</div>")
    parts.append(f'<div class="smn-flow-cols">{"".join(cols)}</div>')
    if f["edges"]:
        cells = [[escape(e["source"]), _ARROW, escape(e["target"]), escape(e["kind"]), escape(e["weight"]),
                  '<span class="smn-ok">above</span>' if e["high"] else '<span class="smn-no">below</span>']
                 for e in f["edges"]]
        parts.append(_table([("from", False), ("", False), ("to", False), ("kind", False), ("s", True),
                             ("threshold", False)], cells,
                            caption="edges (weight: top-1 cosine; threshold: the layer's calibrated one)"))
    else:
        parts.append('<div class="smn-muted">no edge passes the cuts</div>')
    return "".join(parts)


def flow_graph_html(g: Any) -> str:
    return wrap_output(flow_graph_body(g), _text.flow_graph_text(g), kind="flow-graph")


def flow_predecessors_html(flow: Any, layer: int, feature: int) -> str:
    """A feature's module predecessors as the explorer shows them (read-only): per module (residual
    of the layer before, MLP, attention) its top-1 feature, the cosine s, the layer's calibrated
    threshold and whether s reaches it, and the feature's class. ``flow``: a FeatureFlow."""
    title = f"Feature Flow: where L{escape(layer)} #{escape(feature)} comes from"
    try:
        preds = flow.predecessors(layer, feature)
        cls = str(flow.layer(layer).classes[int(feature)])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        msg = e.args[0] if getattr(e, "args", None) else e
        return (f'<div class="smn-section"><div class="smn-section-title">{title}</div>'
                f'<div class="smn-muted">{escape(msg)}</div></div>')
    names = {"R": "residual (layer before)", "M": "MLP", "A": "attention"}
    cells = [[escape(names.get(m, m)), f"L{escape(p['layer'])} #{escape(p['feature'])}", escape(fmt_float(p["s"], 3)),
              escape(fmt_float(p["threshold"], 3)),
              '<span class="smn-ok">above</span>' if p["high"] else '<span class="smn-no">below</span>']
             for m, p in preds.items()]
    table = _table([("module", False), ("top-1", False), ("s", True), ("threshold", True), ("", False)], cells)
    return (f'<div class="smn-section"><div class="smn-section-title">{title} '
            f'<span class="smn-badge smn-cls-text-{escape(cls)}">{escape(cls)}</span></div>{table}</div>')


# -- small result tables (flow checks) --------------------------------------------------------------
def table_html(df: Any, *, title: str, kind: str = "table") -> str:
    """A pandas DataFrame as one output: header ``title``, the table (numbers right-aligned, floats to
    4 significant digits), the text fallback ``title`` + ``df.to_string()``. Every cell is escaped."""
    cols = [str(c) for c in df.columns]
    num = [df[c].dtype.kind in "fiu" for c in df.columns]

    def cell(v: Any, is_num: bool) -> str:
        if is_num and isinstance(v, float):
            return escape(fmt_float(v))
        return escape(str(v))

    rows = [[cell(v, n) for v, n in zip(r, num)] for r in df.itertuples(index=False)]
    body = _header(kind, escape(title)) + _table(list(zip(cols, num)), rows)
    return wrap_output(body, f"{title}\n{df.to_string(index=False)}")
