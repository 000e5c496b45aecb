"""HTML and text of activation examples: highlighted tokens (background alpha = activation / max),
Neuronpedia features, and a trace's examples side by side. Static HTML, no script; every token and
description passes through ``_util.escape`` (via ``token_html`` / ``link``)."""

from __future__ import annotations

from typing import Any

from ._util import DASH, css, escape, fmt_float, fmt_pct, link, token_html, wrap_output


def _more_html(ex: Any) -> str:
    """The longer context of an example, folded under "more" (a <details>: no script)."""
    before, after = getattr(ex, "before", "") or "", getattr(ex, "after", "") or ""
    if not before and not after:
        return ""
    c = ex.center
    window = (escape("".join(ex.tokens[:c])) + f"<strong>{escape(ex.tokens[c])}</strong>"
              + escape("".join(ex.tokens[c + 1:])))
    return (f'<details class="smn-more"><summary title="the longer context">more</summary>'
            f'<span class="smn-more-text">…{escape(before)}{window}{escape(after)}…</span></details>')


def _example_html(ex: Any, max_value: float) -> str:
    spans = "".join(token_html(t, v, max_value, highlight=(i == ex.center))
                    for i, (t, v) in enumerate(zip(ex.tokens, ex.values)))
    return (f'<div class="smn-ex"><span class="smn-ex-val">{escape(fmt_float(ex.value, 3))}</span>'
            f'<span class="smn-toks">{spans} {_more_html(ex)}</span></div>')


def _feature_title(layer: Any, feature: int, url: str | None) -> str:
    name = f"layer {layer} · feature {feature}" if layer is not None else f"feature {feature}"
    return link(url, name, title="open on Neuronpedia") if url else escape(name)


def histogram_html(hist: Any) -> str:
    """The activation histogram of one feature (``(edges, counts)``, log-spaced edges) as CSS bars
    over the bins it occupies, with the value range under it; empty string when there is none."""
    if hist is None:
        return ""
    edges, counts = hist
    counts = [int(c) for c in counts]
    nz = [i for i, c in enumerate(counts) if c > 0]
    if not nz:
        return ""
    lo, hi = nz[0], nz[-1]
    top = max(counts)
    cols = "".join(
        f'<div class="smn-density-col" style="height: {100.0 * counts[i] / top:.1f}%" '
        f'title="{escape(fmt_float(edges[i], 3))} – {escape(fmt_float(edges[i + 1], 3))}: {counts[i]} tokens"></div>'
        for i in range(lo, hi + 1))
    return (f'<div class="smn-ex-meta">activation histogram (log-spaced bins, {sum(counts):,} tokens)</div>'
            f'<div class="smn-density">{cols}</div><div class="smn-density-axis">'
            f'<span>{escape(fmt_float(edges[lo], 3))}</span><span>{escape(fmt_float(edges[hi + 1], 3))}</span></div>')


def histogram_text(hist: Any) -> str:
    if hist is None:
        return ""
    edges, counts = hist
    nz = [i for i, c in enumerate(counts) if c > 0]
    if not nz:
        return ""
    return (f"activations {fmt_float(edges[nz[0]], 3)} – {fmt_float(edges[nz[-1] + 1], 3)} over "
            f"{int(sum(counts)):,} tokens")


def logits_html(effect: Any) -> str:
    """Top logit effects ``(up, down)`` (lists of (token, value)) as two columns."""
    if not effect:
        return ""
    up, down = effect
    rows = "".join(f'<span class="smn-logit-up smn-mono">{escape(repr(t))} {escape(fmt_float(v, 2))}</span>'
                   f'<span class="smn-logit-down smn-mono">{escape(repr(d))} {escape(fmt_float(w, 2))}</span>'
                   for (t, v), (d, w) in zip(up, down))
    return (f'<div class="smn-ex-meta">top logit effects (decoder · unembedding): raises / lowers</div>'
            f'<div class="smn-logits">{rows}</div>')


def logits_text(effect: Any) -> str:
    if not effect:
        return ""
    up, down = effect
    return ("raises " + ", ".join(repr(t) for t, _ in up) + "; lowers " + ", ".join(repr(t) for t, _ in down))


def feature_examples_body(fx: Any, *, max_top: int | None = None, logits: Any = None) -> str:
    top = fx.top if max_top is None else fx.top[:max_top]
    mx = fx.max_value or 0.0
    parts = [f'<div class="smn-header"><span class="smn-kind">FeatureExamples</span>'
             f'<span class="smn-title">{_feature_title(fx.layer, fx.feature, fx.url)}</span>'
             f'<span class="smn-sub">max {escape(fmt_float(mx, 3))} · active on '
             f'{escape(fmt_pct(fx.frac_active))} of tokens</span></div>']
    parts.append(histogram_html(getattr(fx, "histogram", None)))
    parts.append(logits_html(logits))
    if not top:
        parts.append('<div class="smn-sub">never active on these texts</div>')
    else:
        parts.append('<div class="smn-ex-group">top activations</div>')
        parts += [_example_html(e, mx) for e in top]
    for label, exs in fx.quantiles:
        if exs:
            parts.append(f'<div class="smn-ex-group">{escape(label)}</div>')
            parts += [_example_html(e, mx) for e in exs]
    return f'<div class="smn-examples">{"".join(parts)}</div>'


def feature_examples_text(fx: Any, *, max_top: int = 5) -> str:
    head = (f"FeatureExamples(layer {fx.layer}, feature {fx.feature}: max {fmt_float(fx.max_value, 3)}, "
            f"active {fmt_pct(fx.frac_active)})")
    lines = [head] + ([f"  {fx.url}"] if fx.url else [])
    h = histogram_text(getattr(fx, "histogram", None))
    if h:
        lines.append(f"  {h}")
    for e in fx.top[:max_top]:
        ctx = "".join(("[[" + t + "]]") if i == e.center else t for i, t in enumerate(e.tokens))
        lines.append(f"  {fmt_float(e.value, 3):>8}  {ctx!r}")
    if not fx.top:
        lines.append("  never active on these texts")
    return "\n".join(lines)


def feature_examples_html(fx: Any) -> str:
    return wrap_output(feature_examples_body(fx), feature_examples_text(fx), kind="examples")


def trace_example_column(layer: Any, feat: Any, examples_by_layer: Any, *, max_top: int = 5, logits: Any = None,
                         focused: bool = False) -> str:
    """One column of :func:`trace_examples_body`: feature ``feat`` of ``layer`` (``logits``: its
    ``(up, down)`` logit effects or None); ``focused`` outlines it."""
    cls = "smn-ex-col smn-ex-col-focus" if focused else "smn-ex-col"
    if feat is None or feat < 0:
        return (f'<div class="{cls}"><div class="smn-sub">layer {escape(layer)}: {DASH} '
                f'(the trace does not reach it)</div></div>')
    try:
        fx = examples_by_layer[layer][feat]
    except (KeyError, IndexError):
        return (f'<div class="{cls}"><div class="smn-sub">layer {escape(layer)} · feature '
                f'{escape(feat)}: no activation examples collected</div></div>')
    return f'<div class="{cls}">{feature_examples_body(fx, max_top=max_top, logits=logits)}</div>'


def trace_examples_head(trace: Any) -> str:
    return (f'<div class="smn-header"><span class="smn-kind">Trace examples</span><span class="smn-title">'
            f'layer {escape(trace.origin_layer)} · feature {escape(trace.origin_feature)}</span>'
            f'<span class="smn-sub">every step of the trace, side by side</span></div>')


def panel_examples_head_html(trace: Any) -> str:
    """The heading of a panel's trace examples, with the CSS (the panel sends it once per trace)."""
    return (f'<div class="smn-output smn-out-trace-examples"><style>{css()}</style>'
            f'<div class="smn-wrap">{trace_examples_head(trace)}</div></div>')


def panel_example_column_html(layer: Any, feat: Any, examples_by_layer: Any, *, logits: Any = None,
                              focused: bool = False) -> str:
    """One column of a panel's trace examples (:func:`trace_example_column`), styled by the CSS of
    :func:`panel_examples_head_html`: a panel re-sends only the columns that change."""
    col = trace_example_column(layer, feat, examples_by_layer, logits=logits, focused=focused)
    return f'<div class="smn-output smn-out-trace-examples"><div class="smn-wrap">{col}</div></div>'


def trace_examples_body(trace: Any, examples_by_layer: Any, *, max_top: int = 5, logits: Any = None,
                        focus: Any = None) -> str:
    """One column per layer of ``trace`` (scrolling sideways on long chains): the feature's
    examples with its activation histogram and, with ``logits`` (``{layer: (up, down)}``), its
    top logit effects. ``focus``: the layer whose column is outlined."""
    cols = [trace_example_column(layer, feat, examples_by_layer, max_top=max_top,
                                 logits=logits.get(layer) if isinstance(logits, dict) else None,
                                 focused=focus is not None and layer == focus)
            for layer, feat in zip(trace.layers, trace.features)]
    return trace_examples_head(trace) + f'<div class="smn-ex-row">{"".join(cols)}</div>'


def trace_examples_text(trace: Any, examples_by_layer: Any, *, max_top: int = 2, logits: Any = None) -> str:
    out = [f"Trace examples: layer {trace.origin_layer}, feature {trace.origin_feature}"]
    for layer, feat in zip(trace.layers, trace.features):
        if feat is None or feat < 0:
            out.append(f"layer {layer}: {DASH} (the trace does not reach it)")
            continue
        try:
            out.append(feature_examples_text(examples_by_layer[layer][feat], max_top=max_top))
        except (KeyError, IndexError):
            out.append(f"layer {layer} feature {feat}: no activation examples collected")
            continue
        eff = logits.get(layer) if isinstance(logits, dict) else None
        if eff:
            out.append(f"  {logits_text(eff)}")
    return "\n".join(out)


def trace_examples_html(trace: Any, examples_by_layer: Any, *, max_top: int = 5, logits: Any = None,
                        focus: Any = None) -> str:
    """Every step of ``trace`` with its examples, side by side (``examples_by_layer[layer][feature]``
    -> FeatureExamples, e.g. the result of ``collect_examples``)."""
    return wrap_output(trace_examples_body(trace, examples_by_layer, max_top=max_top, logits=logits, focus=focus),
                       trace_examples_text(trace, examples_by_layer, logits=logits), kind="trace-examples")


# -- Neuronpedia features -------------------------------------------------------------------------
def neuronpedia_feature_text(f: Any) -> str:
    desc = "; ".join(f.explanations[:3]) if f.explanations else "no explanation"
    return (f"NeuronpediaFeature({f.model_id}/{f.source}/{f.index}: {desc!r}, max {fmt_float(f.max_value, 3)}, "
            f"{len(f.activations)} examples)\n  {f.url}")


def neuronpedia_feature_body(f: Any, *, max_top: int = 5) -> str:
    parts = [f'<div class="smn-header"><span class="smn-kind">Neuronpedia</span><span class="smn-title">'
             f'{link(f.url, f"{f.model_id}/{f.source}/{f.index}", title="open on Neuronpedia")}</span></div>']
    if f.explanations:
        parts.append("".join(f'<div class="smn-np-expl">{escape(e)}</div>' for e in f.explanations[:3]))
    else:
        parts.append('<div class="smn-sub">no explanation</div>')
    mx = f.max_value or None
    for a in f.activations[:max_top]:
        spans = "".join(token_html(t, v, mx, highlight=(i == a.max_index))
                        for i, (t, v) in enumerate(zip(a.tokens, a.values)))
        parts.append(f'<div class="smn-ex"><span class="smn-ex-val">{escape(fmt_float(a.max_value, 3))}</span>'
                     f'<span class="smn-toks">{spans}</span></div>')
    return f'<div class="smn-examples">{"".join(parts)}</div>'


def neuronpedia_feature_html(f: Any) -> str:
    return wrap_output(neuronpedia_feature_body(f), neuronpedia_feature_text(f), kind="neuronpedia")
