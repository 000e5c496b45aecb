"""Plain-text reprs, and the "facts" both the text and the HTML reprs are drawn from.

Each ``*_facts`` function reads a result once (duck typing only) and returns plain Python values
with the numbers already formatted; ``*_text`` lays them out as lines and ``display.html`` as
markup. Sharing the formatted strings is what keeps the two reprs showing the same facts.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ._util import (
    DASH, fmt_bytes, fmt_float, fmt_int, fmt_pct, fmt_seconds, fmt_value,
)

__all__ = [
    "layer_match_text", "chain_text", "trace_text", "handle_text", "saes_text", "weights_text",
    "layer_match_facts", "chain_facts", "trace_facts", "handle_facts", "weights_facts",
    "steering_text", "steering_facts", "format_stat", "N_EXTREMES", "N_BINS", "token_diff", "show_ws",
    "strength_units", "step_status", "focus_line", "node_tip", "born_text", "dies_text",
    "ACCEPTED", "REJECTED", "NO_PARTNER",
    "feature_flow_text", "feature_flow_facts", "flow_graph_text", "flow_graph_facts", "FLOW_CLASSES",
    "finder_lines", "NBSP", "SORT_MARK",
]

N_EXTREMES = 5  # best / worst matches shown
# One word per idea, in every repr, figure and panel: the assignment gives each feature a partner;
# the calibrated criterion *accepts* the partner as the same feature or *rejects* it.
ACCEPTED, REJECTED, NO_PARTNER = "accepted", "rejected", "no partner"
# Run statistics a user reads; the rest (resident-memory samples, the cache folder, the executor,
# the SAE stack's counters) stay in ``chain.stats`` and out of the reprs.
_INTERNAL_STATS = ("rss_", "python_peak", "cache_dir", "executor", "stack", "computed", "cache_rejected")
N_BINS = 24  # histogram bins
_SPARK = " ▁▂▃▄▅▆▇█"

_FIRST_OPTIONS = ("method", "fold", "params", "allow_unmatched", "solver")
_TIME_KEYS = ("seconds", "time_s", "solve_seconds", "total_seconds", "wall_seconds", "time")
_GAP_KEYS = ("gap", "certified_gap")


# -- small shared pieces ----------------------------------------------------------------------------
def _layer(x: Any) -> str:
    return DASH if x is None else str(int(x))


def format_stat(key: str, value: Any) -> str:
    """A stat value formatted by what its name says it is (seconds, bytes, counts...)."""
    k = key.lower()
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        if k in _TIME_KEYS or k.endswith(("_seconds", "_time", "_s", "seconds")):
            return fmt_seconds(value)
        if "bytes" in k or "memory" in k or k.endswith(("_mem", "_rss")):
            return fmt_bytes(value)
    return fmt_value(value)


def _options(options: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    opts = dict(options or {})
    keys = [k for k in _FIRST_OPTIONS if k in opts] + sorted(k for k in opts if k not in _FIRST_OPTIONS)
    return [(str(k), fmt_value(opts[k])) for k in keys]


def _kv_line(pairs: Sequence[tuple[str, str]]) -> str:
    return ", ".join(f"{k}={v}" for k, v in pairs) if pairs else DASH


def _first(d: Mapping[str, Any], keys: Sequence[str]) -> tuple[str | None, Any]:
    for k in keys:
        if k in d and d[k] is not None:
            return k, d[k]
    return None, None


# -- LayerMatch -------------------------------------------------------------------------------------
def _histogram(mse: np.ndarray, matched: np.ndarray, bins: int = N_BINS) -> dict[str, Any]:
    """Counts of matched / not-matched features per MSE bin; the top 1% folds into the last bin
    so that a long tail does not squash the bulk into one bar."""
    mse = np.asarray(mse, dtype=np.float64)
    ok = np.isfinite(mse)
    m, mm = mse[ok], np.asarray(matched, dtype=bool)[ok]
    if m.size == 0:
        return {"lo": 0.0, "hi": 0.0, "matched": [0] * bins, "unmatched": [0] * bins,
                "overflow": False, "bins": bins}
    lo = min(0.0, float(m.min()))
    hi = float(np.quantile(m, 0.99))
    overflow = bool(hi < m.max())
    if hi <= lo:
        hi, overflow = float(m.max()), False
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    idx = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, bins - 1)
    cm = np.bincount(idx[mm], minlength=bins)
    cu = np.bincount(idx[~mm], minlength=bins)
    return {"lo": lo, "hi": hi, "matched": cm.tolist(), "unmatched": cu.tolist(),
            "overflow": overflow, "bins": bins}


def _spark(counts: Sequence[int]) -> str:
    top = max(counts) if counts else 0
    if top <= 0:
        return " " * len(counts)
    return "".join(_SPARK[0 if c == 0 else max(1, int(round(8 * c / top)))] for c in counts)


def _extreme_rows(lm: Any, idx: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    margin = np.asarray(lm.alt_mse, dtype=np.float64) - np.asarray(lm.mse, dtype=np.float64)
    for a in np.asarray(idx, dtype=np.int64).tolist():
        b = int(lm.permutation[a])
        partner = int(lm.partner[a])
        status = step_status(bool(lm.matched[a]), partner)
        rows.append({
            "a": a, "b": b, "a_s": fmt_int(a), "b_s": fmt_int(b) if b >= 0 else DASH,
            "mse": fmt_float(lm.mse[a]), "margin": fmt_float(margin[a]), "status": status,
            "url_a": lm.info_a.neuronpedia_url(a) if lm.info_a is not None else None,
            "url_b": lm.info_b.neuronpedia_url(b) if (lm.info_b is not None and b >= 0) else None,
        })
    return rows


def step_status(accepted: bool, partner: int) -> str:
    """The one word for a step: accepted, rejected (a partner the criterion does not accept) or no partner."""
    return ACCEPTED if accepted else (NO_PARTNER if partner < 0 else REJECTED)


def _user_stat(key: str) -> bool:
    return not str(key).startswith(_INTERNAL_STATS)


def layer_match_facts(lm: Any) -> dict[str, Any]:
    """Everything the LayerMatch reprs show, formatted once."""
    n_a = int(lm.n_a)
    mse = np.asarray(lm.mse, dtype=np.float64)
    matched = np.asarray(lm.matched, dtype=bool)
    q = lm.mse_quantiles((0.1, 0.5, 0.9))
    stats = dict(lm.stats or {})
    solver_key, solver = _first(stats, ("solver", "method"))
    time_key, seconds = _first(stats, _TIME_KEYS)
    gap_key, gap = _first(stats, _GAP_KEYS)
    used = {k for k in (solver_key, time_key, gap_key) if k}
    solver_parts = []
    if solver is not None:
        solver_parts.append(fmt_value(solver))
    if seconds is not None:
        solver_parts.append(fmt_seconds(seconds))
    if gap is not None:
        g = fmt_float(gap)
        solver_parts.append(f"certified gap {g}" + (" (proven optimal)" if float(gap) == 0 else ""))
    other = [(str(k), format_stat(str(k), v)) for k, v in sorted(stats.items(), key=lambda kv: str(kv[0]))
             if k not in used and _user_stat(k) and not isinstance(v, (Mapping, list, tuple, np.ndarray))]
    hist = _histogram(mse, matched)
    return {
        "criterion": criterion_line(lm),
        "kind": "LayerMatch",
        "label_a": lm.info_a.label, "label_b": lm.info_b.label,
        "layer_a": _layer(lm.info_a.layer), "layer_b": _layer(lm.info_b.layer),
        "model": lm.info_a.model_name or lm.info_b.model_name,
        "n_a": fmt_int(n_a), "n_b": fmt_int(lm.n_b), "d_in": fmt_int(lm.d_in),
        "options": _options(lm.options),
        "solver": ", ".join(solver_parts) if solver_parts else DASH,
        "stats": other,
        "matched_pct": fmt_pct(lm.matched_fraction) if n_a else DASH,
        "matched_frac": float(lm.matched_fraction) if n_a else 0.0,
        "n_matched": fmt_int(int(matched.sum())),
        "n_unpartnered": fmt_int(int((np.asarray(lm.partner) < 0).sum())),
        "threshold": fmt_float(lm.threshold),
        "mse_mean": fmt_float(float(mse.mean()) if n_a else float("nan")),
        "mse_q10": fmt_float(q[0.1]), "mse_q50": fmt_float(q[0.5]), "mse_q90": fmt_float(q[0.9]),
        "hist": hist, "hist_lo": fmt_float(hist["lo"]), "hist_hi": fmt_float(hist["hi"]),
        "best": _extreme_rows(lm, lm.best(N_EXTREMES)),
        "worst": _extreme_rows(lm, lm.worst(N_EXTREMES)),
        "url_a": lm.info_a.neuronpedia_url(), "url_b": lm.info_b.neuronpedia_url(),
    }


def criterion_line(lm: Any) -> str:
    """How ``matched`` was decided for this pair, in one line (the same in text and HTML)."""
    c = dict(getattr(lm, "calibration", None) or {})
    if not c:
        return f"threshold {fmt_float(lm.threshold)} on the score"
    if c.get("expert"):
        return f"threshold {fmt_float(c.get('threshold'))} on the direction distance (expert), mutual best"
    exp = getattr(lm, "expected_false_matches", float("nan"))
    dup = c.get("n_duplicates") or 0
    dup_s = f", {dup} within-SAE duplicates left out" if dup else ""
    return (f"threshold {fmt_float(c.get('threshold'))} on the direction distance (the null's "
            f"{fmt_pct(c.get('alpha'))} quantile: each SAE's features against their own{dup_s}), mutual best; "
            f"about {fmt_float(exp, 2)} false matches expected")


def _hist_caption(f: Mapping[str, Any]) -> str:
    h = f["hist"]
    tail = f"; values above {f['hist_hi']} counted in the last bin" if h["overflow"] else ""
    return f"{h['bins']} bins from {f['hist_lo']} to {f['hist_hi']}{tail}"


def _rows_text(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    if not rows:
        return ["    (none)"]
    wa = max(len(r["a_s"]) for r in rows)
    wb = max(len(r["b_s"]) for r in rows)
    return [f"    {r['a_s']:>{wa}} → {r['b_s']:>{wb}}   mse {r['mse']:<9} margin {r['margin']:<9} {r['status']}"
            for r in rows]


def layer_match_text(lm: Any) -> str:
    f = layer_match_facts(lm)
    lines = [
        f"LayerMatch: {f['label_a']} → {f['label_b']}",
        f"  layers     {f['layer_a']} → {f['layer_b']}",
        f"  features   {f['n_a']} → {f['n_b']}   d_in {f['d_in']}",
        f"  options    {_kv_line(f['options'])}",
        f"  solver     {f['solver']}",
        f"  accepted   {f['matched_pct']} ({f['n_matched']} of {f['n_a']}), "
        f"{f['n_unpartnered']} without partner",
        f"  criterion  {f['criterion']}",
        f"  MSE        mean {f['mse_mean']}, q10 {f['mse_q10']}, median {f['mse_q50']}, q90 {f['mse_q90']}",
        f"  histogram  |{_spark([m + u for m, u in zip(f['hist']['matched'], f['hist']['unmatched'])])}| "
        f"({_hist_caption(f)})",
    ]
    if f["stats"]:
        lines.append(f"  stats      {_kv_line(f['stats'])}")
    lines.append("  best matches (A → B, mse, margin; lowest MSE among the accepted):")
    lines += _rows_text(f["best"])
    lines.append("  worst matches (A → B, mse, margin; highest MSE):")
    lines += _rows_text(f["worst"])
    return "\n".join(lines)


_CHAIN_STATS_FIRST = ("seconds", "cache_hits", "cache_misses", "peak_held_weights_bytes",
                      "rss_peak_after_bytes", "python_peak_bytes", "max_saes_held")


# -- MatchChain -------------------------------------------------------------------------------------
def chain_facts(chain: Any) -> dict[str, Any]:
    pairs = list(getattr(chain, "pairs", ()) or ())
    chain_layers = [int(x) for x in (getattr(chain, "layers", ()) or ())]
    stats = dict(getattr(chain, "stats", {}) or {})
    per_pair = stats.get("pairs") if isinstance(stats.get("pairs"), (list, tuple)) else []
    rows = []
    for t, lm in enumerate(pairs):
        s = dict(lm.summary())
        if len(chain_layers) == len(pairs) + 1:  # the chain's layers win over the SAE infos'
            s["layer_a"], s["layer_b"] = chain_layers[t], chain_layers[t + 1]
        pp = per_pair[t] if t < len(per_pair) and isinstance(per_pair[t], Mapping) else {}
        rows.append({
            "layer_a": _layer(s.get("layer_a")), "layer_b": _layer(s.get("layer_b")),
            "sae_a": str(s.get("sae_a")), "sae_b": str(s.get("sae_b")),
            "n_a": fmt_int(s.get("n_a")), "n_b": fmt_int(s.get("n_b")),
            "matched_pct": fmt_pct(s.get("matched_fraction")),
            "matched_frac": float(s.get("matched_fraction") or 0.0),
            "unpartnered": fmt_int(s.get("unpartnered", 0)),
            "mse_median": fmt_float(s.get("mse_median")), "mse_q90": fmt_float(s.get("mse_q90")),
            "seconds": fmt_seconds(pp["seconds"]) if pp.get("seconds") is not None else DASH,
            "cached": DASH if pp.get("cached") is None else ("yes" if pp["cached"] else "no"),
            "raw": s,
        })
    layers = chain_layers
    infos = list(getattr(chain, "infos", ()) or ())
    model = next((i.model_name for i in infos if getattr(i, "model_name", None)), None)
    keys = [k for k in _CHAIN_STATS_FIRST if k in stats] + [k for k in stats if k not in _CHAIN_STATS_FIRST]
    stats_rows = [(str(k), format_stat(str(k), stats[k])) for k in keys
                  if stats[k] is not None and _user_stat(k)
                  and not isinstance(stats[k], (Mapping, list, tuple, np.ndarray))]
    return {
        "kind": "MatchChain",
        "n_pairs": fmt_int(len(pairs)),
        "layers": ", ".join(str(x) for x in layers) if layers else DASH,
        "layer_range": f"{layers[0]} … {layers[-1]}" if layers else DASH,
        "model": model,
        "options": _options(getattr(chain, "options", None)),
        "stats": stats_rows,
        "rows": rows,
        "pairs": pairs,
    }


def chain_text(chain: Any) -> str:
    f = chain_facts(chain)
    model = f" ({f['model']})" if f["model"] else ""
    lines = [
        f"MatchChain: {f['n_pairs']} pairs over layers {f['layer_range']}{model}",
        f"  layers     {f['layers']}",
        f"  options    {_kv_line(f['options'])}",
        f"  stats      {_kv_line(f['stats'])}",
    ]
    if f["rows"]:
        lines.append("  layer pairs:")
        table = [("pair", "SAEs", "widths", "accepted", "no partner", "MSE median", "MSE q90", "time",
                  "cached")]
        for r in f["rows"]:
            table.append((f"{r['layer_a']} → {r['layer_b']}", f"{r['sae_a']} → {r['sae_b']}",
                          f"{r['n_a']} → {r['n_b']}", r["matched_pct"], r["unpartnered"],
                          r["mse_median"], r["mse_q90"], r["seconds"], r["cached"]))
        widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
        for row in table:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


# -- FeatureTrace -----------------------------------------------------------------------------------
def _trace_info(tr: Any, layer: int) -> Any:
    infos = tuple(getattr(tr, "infos", ()) or ())
    layers = tuple(tr.layers)
    if len(infos) == len(layers) and layer in layers:
        return infos[layers.index(layer)]
    for info in infos:  # infos not aligned with layers: find by the info's own layer
        if getattr(info, "layer", None) == layer:
            return info
    return None


def trace_facts(tr: Any) -> dict[str, Any]:
    nodes = []
    layers = list(tr.layers)
    lo = layers.index(tr.born_layer) if tr.born_layer in layers else 0
    hi = layers.index(tr.dies_layer) if tr.dies_layer in layers else len(layers) - 1
    for k, (layer, feat) in enumerate(zip(tr.layers, tr.features)):
        info = _trace_info(tr, layer)
        nodes.append({
            "layer": _layer(layer), "feature": fmt_int(feat) if feat >= 0 else DASH,
            "present": feat >= 0, "origin": layer == tr.origin_layer,
            "alive": lo <= k <= hi,  # inside the accepted run around the origin
            "born": tr.born_layer is not None and layer == tr.born_layer,
            "dies": tr.dies_layer is not None and layer == tr.dies_layer,
            "url": info.neuronpedia_url(feat) if (info is not None and feat >= 0) else None,
            "label": info.label if info is not None else None,
        })
    steps = []
    for s in tr.steps:
        steps.append({
            "layer": _layer(s.layer), "next_layer": _layer(s.next_layer),
            "feature": fmt_int(s.feature), "next_feature": fmt_int(s.next_feature) if s.next_feature >= 0 else DASH,
            "mse": fmt_float(s.mse), "margin": fmt_float(s.margin), "matched": bool(s.matched),
            "status": step_status(bool(s.matched), int(s.next_feature)),
        })
    return {
        "kind": "FeatureTrace",
        "origin_layer": _layer(tr.origin_layer), "origin_feature": fmt_int(tr.origin_feature),
        "length": fmt_int(tr.length), "n_layers": fmt_int(len(tr.layers)), "alive": fmt_int(hi - lo + 1),
        "lo": _layer(layers[lo]) if layers else DASH, "hi": _layer(layers[hi]) if layers else DASH,
        "first": _layer(layers[0]) if layers else DASH, "last": _layer(layers[-1]) if layers else DASH,
        "born": born_text(tr.born_layer, layers),
        "dies": dies_text(tr.dies_layer, layers),
        "nodes": nodes, "steps": steps,
    }


def born_text(born: Any, layers: Sequence[int]) -> str:
    """Where the accepted run starts: inside the chain (a first layer) or at its first layer."""
    if born is not None:
        return f"first seen at layer {_layer(born)}"
    return f"present at layer {_layer(layers[0])}, the chain's first" if layers else "present at the first layer"


def dies_text(dies: Any, layers: Sequence[int]) -> str:
    """Where the accepted run ends: a last layer inside the chain, or the chain's last layer."""
    if dies is not None:
        return f"last seen at layer {_layer(dies)}"
    return f"still present at layer {_layer(layers[-1])}, the chain's last" if layers else "present at the last layer"


def focus_line(tr: Any, layer: int) -> str:
    """What the explorer shows at ``layer`` of the trace ``tr``, in one sentence."""
    layers = list(tr.layers)
    f = tr.features[layers.index(layer)] if layer in layers else -1
    alive = tr.alive_layers if hasattr(tr, "alive_layers") else ()
    if f < 0:
        reached = [l for l, x in zip(layers, tr.features) if x >= 0]
        side = "after" if reached and layer > max(reached) else "before"
        end = max(reached) if side == "after" else min(reached)
        return (f"layer {layer}: the trace does not reach it (no partner {side} layer {end}); "
                "type a feature to start a new trace here")
    if layer == tr.origin_layer:
        return f"layer {layer}: feature {f}, the origin of the trace"
    if layer in alive:
        return f"layer {layer}: feature {f}, the traced partner (every step from the origin accepted)"
    edge = tr.dies_layer if layer > tr.origin_layer else tr.born_layer
    where = "last" if layer > tr.origin_layer else "first"
    return (f"layer {layer}: feature {f}, the assignment's partner beyond the accepted run ({where} seen at "
            f"layer {edge}): not accepted as the same feature")


def node_tip(tr: Any, layer: int, extra: str = "") -> str:
    """Hover text of one node of a trace: the feature, its step onwards and ``extra`` facts."""
    layers = list(tr.layers)
    f = tr.features[layers.index(layer)]
    if f < 0:
        return f"layer {layer}: not reached by the trace"
    parts = [f"L{layer} #{f}"]
    info = _trace_info(tr, layer)
    if info is not None and getattr(info, "label", None):
        parts[0] += f" ({info.label})"
    s = next((x for x in tr.steps if x.layer == layer), None)
    if s is not None:
        nxt = f"#{s.next_feature}" if s.next_feature >= 0 else "no partner"
        parts.append(f"to L{s.next_layer} {nxt}: mse {fmt_float(s.mse)}, margin {fmt_float(s.margin)}, "
                     f"{step_status(bool(s.matched), int(s.next_feature))}")
    if extra:
        parts.append(extra)
    return " · ".join(parts)


def trace_span(f: dict[str, Any]) -> str:
    """How far the feature goes under the criterion, and how far the assignment alone follows it."""
    alive, n, length = (int(f[k].replace(",", "")) for k in ("alive", "n_layers", "length"))
    if alive == n:
        return f"the same feature on all {f['n_layers']} layers (every step accepted)"
    where = f"layer {f['lo']}" if alive == 1 else f"layers {f['lo']}–{f['hi']}"
    beyond = (f"; the assignment's partners continue it on {length - alive} more, not accepted"
              if length > alive else "")
    return f"the same feature on {where} ({f['alive']} of {f['n_layers']} layers){beyond}"


def trace_text(tr: Any) -> str:
    f = trace_facts(tr)
    lines = [
        f"FeatureTrace: feature {f['origin_feature']} of layer {f['origin_layer']}",
        f"  {trace_span(f)}; {f['born']}; {f['dies']}",
    ]
    cells = []
    for n in f["nodes"]:
        marks = ("*" if n["origin"] else "") + (" first" if n["born"] else "") + (" last" if n["dies"] else "")
        cells.append((f"L{n['layer']}", n["feature"] + marks))
    if cells:
        w = [max(len(a), len(b)) for a, b in cells]
        lines.append("  layer    " + "  ".join(a.ljust(x) for (a, _), x in zip(cells, w)).rstrip())
        lines.append("  feature  " + "  ".join(b.ljust(x) for (_, b), x in zip(cells, w)).rstrip())
    for s in f["steps"]:
        lines.append(f"  L{s['layer']} #{s['feature']} → L{s['next_layer']} #{s['next_feature']}   "
                     f"mse {s['mse']}  margin {s['margin']}  {s['status']}")
    lines.append("  (* origin; first / last: where the accepted run starts and ends)")
    return "\n".join(lines)


# -- SAE handles and weights ------------------------------------------------------------------------
_HANDLE_FIELDS = ("release", "sae_id", "layer", "hook_name", "hook_name_out", "model_name", "neuronpedia_id", "path",
                  "width", "l0", "device", "dtype")


def handle_facts(h: Any) -> dict[str, Any]:
    rows = []
    for k in _HANDLE_FIELDS:
        v = getattr(h, k, None)
        if v is None:
            continue
        if k == "width":
            v = fmt_int(v)
        elif k == "l0":
            v = fmt_float(v)
        rows.append((k, str(v)))
    info = getattr(h, "info", None)
    url = info.neuronpedia_url() if info is not None else None
    label = info.label if info is not None else (getattr(h, "sae_id", None) or getattr(h, "path", None) or "SAE")
    return {"kind": "SAEHandle", "label": str(label), "rows": rows, "url": url}


def handle_text(h: Any) -> str:
    f = handle_facts(h)
    lines = [f"SAEHandle: {f['label']} (not loaded)"]
    w = max((len(k) for k, _ in f["rows"]), default=0)
    lines += [f"  {k.ljust(w)}  {v}" for k, v in f["rows"]]
    return "\n".join(lines)


_LIST_COLS = ("layer", "sae_id", "hook_name", "width", "l0", "neuronpedia_id")


def saes_rows(handles: Sequence[Any]) -> tuple[list[str], list[list[str]]]:
    """Columns (only those some handle has) and formatted rows of a list of handles."""
    hs = list(handles)
    cols = [c for c in _LIST_COLS if any(getattr(h, c, None) is not None for h in hs)]
    if any(getattr(h, "path", None) for h in hs):
        cols.append("path")
    elif any(getattr(h, "release", None) for h in hs):
        cols.append("release")
    rows = []
    for h in hs:
        row = []
        for c in cols:
            v = getattr(h, c, None)
            row.append(DASH if v is None else fmt_int(v) if c in ("layer", "width") else
                       fmt_float(v) if c == "l0" else str(v))
        rows.append(row)
    return cols, rows


def saes_text(handles: Sequence[Any]) -> str:
    hs = list(handles)
    models = sorted({str(getattr(h, "model_name")) for h in hs if getattr(h, "model_name", None)})
    lines = [f"SAEList: {fmt_int(len(hs))} SAEs" + (f" of {', '.join(models)}" if models else "")]
    cols, rows = saes_rows(hs)
    if rows:
        table = [cols] + rows
        w = [max(len(r[c]) for r in table) for c in range(len(cols))]
        lines += ["  " + "  ".join(cell.ljust(x) for cell, x in zip(r, w)).rstrip() for r in table]
    return "\n".join(lines)


def weights_facts(w: Any) -> dict[str, Any]:
    info = w.info
    rows = [("architecture", str(w.architecture)), ("d_in", fmt_int(w.d_in)), ("d_sae", fmt_int(w.d_sae))]
    if getattr(w, "k", None):
        rows.append(("k", fmt_int(w.k)))
    rows.append(("folded", str(bool(w.folded))))
    rows.append(("apply_b_dec_to_input", str(bool(getattr(w, "apply_b_dec_to_input", False)))))
    rows.append(("dtype", str(w.W_enc.dtype).replace("torch.", "")))
    rows.append(("device", str(w.W_enc.device)))
    thr = getattr(w, "threshold", None)
    if thr is not None and thr.numel():
        t = thr.detach().float()
        rows.append(("threshold", f"mean {fmt_float(t.mean().item())}, min {fmt_float(t.min().item())}, "
                                  f"max {fmt_float(t.max().item())}"))
    for k in ("layer", "hook_name", "model_name", "release", "sae_id", "neuronpedia_id", "path"):
        v = getattr(info, k, None)
        if v is not None:
            rows.append((k, str(v)))
    fp = getattr(w, "_cache", {}).get("fingerprint") if isinstance(getattr(w, "_cache", None), dict) else None
    if fp:  # only when already computed: hashing 300 MB of weights is not a repr's job
        rows.append(("fingerprint", str(fp)))
    return {"kind": "SAEWeights", "label": info.label, "rows": rows, "url": info.neuronpedia_url()}


def weights_text(w: Any) -> str:
    f = weights_facts(w)
    lines = [f"SAEWeights: {f['label']}"]
    width = max(len(k) for k, _ in f["rows"])
    lines += [f"  {k.ljust(width)}  {v}" for k, v in f["rows"]]
    return "\n".join(lines)


# -- steering (sources/steering.py: SteeringResult with a SteeringPlan) ----------------------------
def split_tokens(text: str) -> list[str]:
    """Words and the whitespace between them: the units of a diff when no model tokens are known."""
    import re

    return re.findall(r"\s+|[^\s]+", text)


def token_diff(a: Sequence[str], b: Sequence[str]) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """Each token of ``a`` and of ``b`` with whether it differs from the other side (difflib's
    longest matching blocks: tokens outside them are marked)."""
    import difflib

    a, b = list(a), list(b)
    same_a, same_b = [False] * len(a), [False] * len(b)
    for blk in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks():
        for k in range(blk.size):
            same_a[blk.a + k] = same_b[blk.b + k] = True
    return [(t, not m) for t, m in zip(a, same_a)], [(t, not m) for t, m in zip(b, same_b)]


def show_ws(text: str) -> str:
    """Text with its newlines made visible (↵ before each line break) and tabs as ⇥."""
    return str(text).replace("\t", "⇥").replace("\n", "↵\n")


def _block(label: str, text: str, width: int = 10) -> list[str]:
    lines = show_ws(text).split("\n")
    pad = " " * (width + 2)
    return [f"  {label.ljust(width)}{lines[0]}"] + [pad + ln for ln in lines[1:]]


def steering_facts(res: Any) -> dict[str, Any]:
    plan = res.plan
    rows = [(_layer(l), fmt_int(f), str(h), fmt_float(s))
            for l, f, h, s in zip(plan.layers, plan.features, plan.hook_names, plan.strengths)]
    origin = tuple(getattr(plan, "origin", ()) or ())
    base_t = tuple(getattr(res, "baseline_tokens", ()) or ()) or tuple(split_tokens(str(res.baseline)))
    steer_t = tuple(getattr(res, "steered_tokens", ()) or ()) or tuple(split_tokens(str(res.steered)))
    base_d, steer_d = token_diff(base_t, steer_t)
    n_diff = sum(1 for _, d in steer_d if d)
    mode = str(getattr(plan, "mode", "add"))
    return {
        "kind": "SteeringResult",
        "mode": mode,
        "origin": f"L{_layer(origin[0])} #{fmt_int(origin[1])}" if len(origin) == 2 else DASH,
        "rows": rows,
        "options": _options(getattr(res, "options", None)),
        "prompt": str(res.prompt), "baseline": str(res.baseline), "steered": str(res.steered),
        "baseline_diff": base_d, "steered_diff": steer_d,
        "changed": str(res.baseline) != str(res.steered),
        "diff_line": (f"{n_diff} of {len(steer_d)} steered tokens differ from the baseline"
                      if str(res.baseline) != str(res.steered) else "the steered text is the same as the baseline"),
        "units": strength_units(mode),
    }


def strength_units(mode: str) -> str:
    """What a strength means in ``mode`` (the panel and the result say the same)."""
    if mode == "scale":
        return ("scale mode: r multiplies the feature's own contribution where it fires "
                "(0 removes it, 1 changes nothing, 2 doubles it, < 0 pushes away)")
    return ("add mode: s times the feature's folded decoder row is added at every token of each steered "
            "layer (s = 1 adds what the feature writes when it fires at its threshold)")


def steering_text(res: Any) -> str:
    f = steering_facts(res)
    lines = [f"SteeringResult: mode {f['mode']}, feature {f['origin']}, {len(f['rows'])} steered layers",
             f"  options   {_kv_line(f['options'])}", f"  strength  {f['units']}"]
    lines += [f"  L{l} #{feat}  strength {s}  at {h}" for l, feat, h, s in f["rows"]]
    lines += _block("prompt", f["prompt"]) + _block("baseline", f["baseline"]) + _block("steered", f["steered"])
    lines.append(f"  {f['diff_line']}")
    return "\n".join(lines)


# -- FeatureFlow (core/flow.py) ---------------------------------------------------------------------
FLOW_CLASSES = ("translated", "processed", "newborn", "unexplained")
_FLOW_MODULES = (("R", "residual"), ("M", "mlp"), ("A", "attn"))


def _thr(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return DASH
    return DASH if not np.isfinite(v) else fmt_float(v)


def feature_flow_facts(flow: Any) -> dict[str, Any]:
    """Everything the FeatureFlow reprs show, formatted once."""
    per = list(getattr(flow, "by_layer", ()) or ())
    alpha = getattr(flow, "alpha", None)
    rows = []
    models = set()
    for fl in per:
        shares = fl.shares()
        infos = dict(fl.infos)
        for inf in infos.values():
            if inf is not None and getattr(inf, "model_name", None):
                models.add(str(inf.model_name))
        cal = dict(fl.calibration)
        saes = []
        for key, name in (("res", "residual"), ("R", "before"), ("M", "mlp"), ("A", "attn")):
            inf = infos.get(key)
            if inf is not None:
                extra = " (through W_O)" if key == "A" and cal.get("A", {}).get("projected_through_W_O") else ""
                saes.append((name, f"{inf.label}{extra}"))
        nulls = []
        for m, name in _FLOW_MODULES:
            c = cal.get(m)
            if c:
                q = c.get("quantiles", {})
                nulls.append((name, f"t={_thr(c.get('threshold'))} (null median {_thr(q.get('0.5'))}, q99 "
                                    f"{_thr(q.get('0.99'))}, {fmt_int(c.get('n_null'))} values)"))
        rows.append({
            "layer": _layer(fl.layer), "prev": _layer(fl.prev_layer), "n": fmt_int(fl.n),
            "t": {m: _thr(fl.thresholds.get(m)) for m, _ in _FLOW_MODULES},
            "n_mod": {m: fmt_int(fl.n_modules.get(m, 0)) if fl.n_modules.get(m, 0) else DASH for m, _ in _FLOW_MODULES},
            "shares": {k: fmt_pct(shares[k]) for k in FLOW_CLASSES},
            "fracs": {k: float(shares[k]) if np.isfinite(shares[k]) else 0.0 for k in FLOW_CLASSES},
            "saes": saes, "nulls": nulls,
        })
    layers = [int(fl.layer) for fl in per]
    modules = [name for m, name in _FLOW_MODULES if any(fl.n_modules.get(m, 0) for fl in per)]
    a = fmt_float(alpha) if alpha is not None else DASH
    rule = (f"alpha={a} per module test: each threshold is the (1 - alpha) point of its pair's null (the "
            "layer's features reflected about their mean in their principal axes, against the module's decoders); "
            "a feature with no counterpart in a module passes it with probability <= alpha")
    stats = dict(getattr(flow, "stats", {}) or {})
    return {
        "kind": "FeatureFlow", "n_layers": fmt_int(len(per)),
        "layer_range": f"{layers[0]} … {layers[-1]}" if layers else DASH,
        "model": ", ".join(sorted(models)) if models else None, "modules": ", ".join(modules) or DASH,
        "alpha": a, "rule": rule, "rows": rows,
        "options": _options(getattr(flow, "options", None)),
        "seconds": fmt_seconds(stats["seconds"]) if stats.get("seconds") is not None else DASH,
    }


def feature_flow_text(flow: Any) -> str:
    f = feature_flow_facts(flow)
    model = f" ({f['model']})" if f["model"] else ""
    lines = [f"FeatureFlow: {f['n_layers']} layers ({f['layer_range']}), modules {f['modules']}{model}",
             f"  {f['rule']}", f"  options    {_kv_line(f['options'])}; {f['seconds']}"]
    table = [("layer", "from", "features", "t_R", "t_M", "t_A") + FLOW_CLASSES]
    for r in f["rows"]:
        table.append((r["layer"], r["prev"], r["n"], r["t"]["R"], r["t"]["M"], r["t"]["A"])
                     + tuple(r["shares"][k] for k in FLOW_CLASSES))
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    for row in table:
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for r in f["rows"]:
        lines.append(f"  layer {r['layer']} SAEs: " + ", ".join(f"{k} {v}" for k, v in r["saes"]))
    return "\n".join(lines)


def flow_graph_facts(g: Any) -> dict[str, Any]:
    nodes = list(getattr(g, "nodes", ()) or ())
    edges = []
    for e in getattr(g, "edges", ()) or ():
        s, t = nodes[e.source], nodes[e.target]
        edges.append({"source": s.label, "target": t.label, "kind": str(e.kind), "weight": fmt_float(e.weight, 3),
                      "high": bool(e.high), "layer": int(t.layer), "source_layer": int(s.layer)})
    edges.sort(key=lambda r: (r["layer"], r["kind"] != "residual", r["target"]))
    counts = {k: sum(1 for n in nodes if n.kind == k) for k in ("residual", "mlp", "attn")}
    return {
        "kind": "FlowGraph", "origin": f"feature {fmt_int(g.origin_feature)} of layer {_layer(g.origin_layer)}",
        "n_nodes": fmt_int(len(nodes)), "n_edges": fmt_int(len(edges)), "counts": counts,
        "cuts": f"residual steps cut where s(R) < {fmt_float(g.min_residual)}, module nodes below "
                f"{fmt_float(g.min_module)} dropped",
        "truncated": bool(getattr(g, "truncated", False)),
        "nodes": [{"label": n.label, "kind": n.kind, "layer": int(n.layer), "feature": int(n.feature),
                   "cls": n.cls, "origin": bool(n.origin)} for n in nodes],
        "edges": edges, "labels": dict(getattr(g, "labels", {}) or {}),
    }


def flow_graph_text(g: Any) -> str:
    f = flow_graph_facts(g)
    c = f["counts"]
    lines = [f"FlowGraph: {f['origin']} ({c['residual']} residual, {c['mlp']} MLP, {c['attn']} attention nodes; "
             f"{f['n_edges']} edges)", f"  {f['cuts']}" + ("; successors truncated" if f["truncated"] else "")]
    res = sorted((n for n in f["nodes"] if n["kind"] == "residual"), key=lambda n: (n["layer"], n["feature"]))
    lines.append("  residual: " + ", ".join(f"{n['label']}{' *' if n['origin'] else ''}"
                                          f"{' (' + n['cls'] + ')' if n['cls'] else ''}" for n in res))
    for e in f["edges"]:
        lines.append(f"  {e['source']} → {e['target']}  {e['kind']}  s={e['weight']}"
                     f"{' (above threshold)' if e['high'] else ''}")
    return "\n".join(lines)


# -- the finder's list (widgets/finder.py) ---------------------------------------------------------
# One line per feature in fixed-width columns, laid out for a monospace <select>. A browser
# collapses runs of spaces in an <option> whatever its CSS says, so the padding (and the spaces
# inside tokens) are no-break spaces; the header line uses the same widths.
NBSP = "\u00a0"
# key, header, right-aligned
_FINDER_LINE_COLS = (
    ("layer", "layer", False), ("feature", "feature", True), ("persistence", "persists", True),
    ("age", "age", True), ("lifetime", "lifetime", True), ("mse", "mse", True), ("margin", "margin", True),
    ("accepted", "accepted", False), ("density", "fires", True), ("max_activation", "max act", True),
    ("explanation", "explanation", False), ("top_tokens", "top tokens", False),
)
FINDER_EXPLANATION_CHARS = 48
SORT_MARK = {True: "↓", False: "↑"}  # largest first / smallest first


def _finder_cell(key: str, r: Mapping[str, Any]) -> str:
    v = r.get(key)
    if key == "layer":  # "L2 ... #170": as the explorer's nodes and the finder's notice name it
        return f"L{int(v)}"
    if key == "feature":
        return f"#{int(v)}"
    if key in ("persistence", "age", "lifetime"):
        return str(int(v))
    if key in ("mse", "margin", "max_activation"):
        return DASH if v is None or v != v else fmt_float(v, 3)
    if key == "accepted":
        last = r.get("partner", -1) < 0 and r.get("mse") != r.get("mse")  # the last layer: no next step
        return DASH if last else ("yes" if v else "no")
    if key == "density":
        return fmt_pct(v)
    text = "" if v is None else str(v)
    if key == "explanation" and len(text) > FINDER_EXPLANATION_CHARS:
        text = text[:FINDER_EXPLANATION_CHARS - 1] + "…"
    return text


def finder_lines(df: Any, sort: str | None = None, descending: bool | None = None) -> tuple[str, list[str]]:
    """The finder's list as text: (the column headers, one line per row of ``df``, a
    ``find_features`` DataFrame). Every column of ``df`` the finder knows is shown, so the value
    a list is sorted by is always in view; its header carries ↓ (largest first) or ↑."""
    cols = [c for c in _FINDER_LINE_COLS if c[0] in df.columns]
    if "explanation" in df.columns and not df["explanation"].astype(bool).any():
        cols = [c for c in cols if c[0] != "explanation"]  # explanations known for none of these rows
    records = df.to_dict("records")
    cells = [[_finder_cell(k, r) for k, _h, _r in cols] for r in records]
    heads = [h + (" " + SORT_MARK[bool(descending)] if k == sort and descending is not None else "")
             for k, h, _r in cols]
    widths = [max([len(heads[j])] + [len(row[j]) for row in cells]) for j in range(len(cols))]

    def line(parts: Sequence[str]) -> str:
        out = []
        for j, (p, (_k, _h, right)) in enumerate(zip(parts, cols)):
            if j == len(cols) - 1:
                out.append(p)  # the last column is not padded
            else:
                out.append(p.rjust(widths[j]) if right else p.ljust(widths[j]))
        return "  ".join(out).rstrip()

    return line(heads), [line(row).replace(" ", NBSP) for row in cells]
