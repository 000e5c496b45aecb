"""HTML and text of activation examples: highlighted tokens (background alpha = activation / max),
Neuronpedia features, and a trace's examples side by side. Static HTML, no script; every token and
description passes through ``_util.escape`` (via ``token_html`` / ``link``)."""

from __future__ import annotations

from typing import Any

from ._util import DASH, escape, fmt_float, fmt_pct, link, token_html, wrap_output


def _example_html(ex: Any, max_value: float) -> str:
    spans = "".join(token_html(t, v, max_value, highlight=(i == ex.center))
                    for i, (t, v) in enumerate(zip(ex.tokens, ex.values)))
    return (f'<div class="smn-ex"><span class="smn-ex-val">{escape(fmt_float(ex.value, 3))}</span>'
            f'<span class="smn-toks">{spans}</span></div>')


def _feature_title(layer: Any, feature: int, url: str | None) -> str:
    name = f"layer {layer} · feature {feature}" if layer is not None else f"feature {feature}"
    return link(url, name, title="open on Neuronpedia") if url else escape(name)


def feature_examples_body(fx: Any, *, max_top: int | None = None) -> str:
    top = fx.top if max_top is None else fx.top[:max_top]
    mx = fx.max_value or 0.0
    parts = [f'<div class="smn-header"><span class="smn-kind">FeatureExamples</span>'
             f'<span class="smn-title">{_feature_title(fx.layer, fx.feature, fx.url)}</span>'
             f'<span class="smn-sub">max {escape(fmt_float(mx, 3))} · active on '
             f'{escape(fmt_pct(fx.frac_active))} of tokens</span></div>']
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
    for e in fx.top[:max_top]:
        ctx = "".join(("[[" + t + "]]") if i == e.center else t for i, t in enumerate(e.tokens))
        lines.append(f"  {fmt_float(e.value, 3):>8}  {ctx!r}")
    if not fx.top:
        lines.append("  never active on these texts")
    return "\n".join(lines)


def feature_examples_html(fx: Any) -> str:
    return wrap_output(feature_examples_body(fx), feature_examples_text(fx), kind="examples")


def trace_examples_body(trace: Any, examples_by_layer: Any, *, max_top: int = 5) -> str:
    cols = []
    for layer, feat in zip(trace.layers, trace.features):
        if feat is None or feat < 0:
            cols.append(f'<div class="smn-ex-col"><div class="smn-sub">layer {escape(layer)}: {DASH}</div></div>')
            continue
        try:
            fx = examples_by_layer[layer][feat]
        except (KeyError, IndexError):
            cols.append(f'<div class="smn-ex-col"><div class="smn-sub">layer {escape(layer)} · feature '
                        f'{escape(feat)}: no examples collected</div></div>')
            continue
        cols.append(f'<div class="smn-ex-col">{feature_examples_body(fx, max_top=max_top)}</div>')
    head = (f'<div class="smn-header"><span class="smn-kind">Trace examples</span><span class="smn-title">'
            f'layer {escape(trace.origin_layer)} · feature {escape(trace.origin_feature)}</span></div>')
    return head + f'<div class="smn-ex-row">{"".join(cols)}</div>'


def trace_examples_text(trace: Any, examples_by_layer: Any, *, max_top: int = 2) -> str:
    out = [f"Trace examples: layer {trace.origin_layer}, feature {trace.origin_feature}"]
    for layer, feat in zip(trace.layers, trace.features):
        if feat is None or feat < 0:
            out.append(f"layer {layer}: {DASH}")
            continue
        try:
            out.append(feature_examples_text(examples_by_layer[layer][feat], max_top=max_top))
        except (KeyError, IndexError):
            out.append(f"layer {layer} feature {feat}: no examples collected")
    return "\n".join(out)


def trace_examples_html(trace: Any, examples_by_layer: Any, *, max_top: int = 5) -> str:
    """Every step of ``trace`` with its examples, side by side (``examples_by_layer[layer][feature]``
    -> FeatureExamples, e.g. the result of ``collect_examples``)."""
    return wrap_output(trace_examples_body(trace, examples_by_layer, max_top=max_top),
                       trace_examples_text(trace, examples_by_layer), kind="trace-examples")


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
        spans = "".join(token_html(t, v, mx, highlight=(i == a.max_index)) for i, (t, v) in enumerate(zip(a.tokens, a.values)))
        parts.append(f'<div class="smn-ex"><span class="smn-ex-val">{escape(fmt_float(a.max_value, 3))}</span>'
                     f'<span class="smn-toks">{spans}</span></div>')
    return f'<div class="smn-examples">{"".join(parts)}</div>'


def neuronpedia_feature_html(f: Any) -> str:
    return wrap_output(neuronpedia_feature_body(f), neuronpedia_feature_text(f), kind="neuronpedia")
