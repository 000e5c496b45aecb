"""Activation examples of SAE features: top-k contexts and samples from lower activation bins.

One streaming pass over a layer's stored activations serves all of its features at once: each
batch is encoded, and per feature a running top-k (the kept candidates merged with the batch's
non-zeros and cut back to k) and, per activation bin (fraction of the feature's running maximum),
a reservoir of uniformly sampled tokens (the R largest random keys, the vectorised form of
reservoir sampling) are kept. Codes are sparse, so both are flat lists of non-zeros cut back per
feature with one lexsort per batch (O(nnz log nnz)), not dense [features × tokens] top-k. At the
end the reservoirs are re-binned against the final maximum. Only indices and values are stored per
feature; the per-token activations of a context are computed when a feature's examples are asked
for (a handful of rows re-encoded for one feature).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .._atomic import atomic_write
from ..core._checks import as_index, as_indices
from ..core.cache import cache_folder
from ..core.stack import SAEStack, stack_of
from ..core.weights import SAEInfo, SAEWeights
from ..errors import ArgumentTypeError
from ..sources.activations import Activations

# Activation histogram of every feature: fixed log-spaced edges (a tenth of a decade each, 1e-3 to
# 1e4), so one pass fills it exactly, whatever the feature's final maximum turns out to be.
HIST_EDGES = np.logspace(-3.0, 4.0, 71)
# 2: the activation histogram (act_hist) is part of every cached layer
_CACHE_VERSION = 2


@dataclass(frozen=True)
class Example:
    """One context: ``tokens`` around the example token (at ``center``), with the feature's
    activation on every token (``values``)."""

    doc: int
    pos: int
    value: float
    tokens: tuple[str, ...]
    values: tuple[float, ...]
    center: int
    #: the document's text just before / after the window (up to ``MORE`` tokens each side; no
    #: activations): what a reader unfolds as "more"
    before: str = ""
    after: str = ""


MORE = (80, 40)  # tokens of context beyond the window, before / after it


@dataclass(frozen=True, eq=False)
class FeatureExamples:
    """Top-k contexts of one feature and samples from lower activation bins
    (``quantiles``: ``(label, examples)`` from the highest bin down)."""

    layer: int | None
    feature: int
    max_value: float
    frac_active: float
    top: tuple[Example, ...]
    quantiles: tuple[tuple[str, tuple[Example, ...]], ...]
    info: SAEInfo = field(default_factory=SAEInfo)
    #: (edges, counts): the histogram of the feature's non-zero activations (None: not collected)
    histogram: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def url(self) -> str | None:
        return self.info.neuronpedia_url(self.feature)

    def to_pandas(self):
        import pandas as pd

        rows = [{"group": "top", "rank": r, "doc": e.doc, "pos": e.pos, "value": e.value,
                 "token": e.tokens[e.center], "context": "".join(e.tokens)} for r, e in enumerate(self.top)]
        for label, exs in self.quantiles:
            rows += [{"group": label, "rank": r, "doc": e.doc, "pos": e.pos, "value": e.value,
                      "token": e.tokens[e.center], "context": "".join(e.tokens)} for r, e in enumerate(exs)]
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        from ..display.examples import feature_examples_text

        return feature_examples_text(self)

    def _repr_html_(self) -> str:
        from ..display.examples import feature_examples_html

        return feature_examples_html(self)


@dataclass(frozen=True, eq=False)
class LayerExamples:
    """Example indices of every feature of one layer's SAE (rows into ``acts``)."""

    layer: int
    top_rows: np.ndarray  # [n, k] int64, -1 = empty
    top_vals: np.ndarray  # [n, k] float32
    sample_rows: np.ndarray  # [n, n_bins, per_bin]
    sample_vals: np.ndarray
    max_value: np.ndarray  # [n]
    n_active: np.ndarray  # [n]
    acts: Activations = field(repr=False)
    stack: SAEStack = field(repr=False)  # the analysis' SAEs: the layer's weights on demand
    window: tuple[int, int] = (20, 6)
    act_hist: np.ndarray | None = None  # [n, len(HIST_EDGES) - 1] counts of the non-zero activations

    @property
    def sae(self) -> SAEWeights:
        """The layer's SAE (from the analysis' stack: not held here, so that examples of 26 large
        layers do not keep 26 SAEs alive)."""
        return self.stack.weights(self.layer)

    @property
    def n_features(self) -> int:
        return int(self.top_rows.shape[0])

    def _context(self, row: int, feature: int) -> Example:
        return self._contexts([row], feature)[0]

    def _contexts(self, rows_: list[int], feature: int) -> list[Example]:
        """The windows around ``rows_``, with the feature's activation on every token of each:
        one activation call for all of them (the explorer draws ~20 per feature on every click)."""
        import torch

        a = self.acts
        spans = []
        for row in rows_:
            d, p = int(a.doc[row]), int(a.pos[row])
            toks = a.doc_tokens(d)
            lo, hi = max(0, p - self.window[0]), min(toks.size, p + self.window[1] + 1)
            spans.append((d, p, toks, lo, hi, a.rows_of(d, np.arange(lo, hi))))
        if not spans:
            return []
        allrows = np.concatenate([sp[5] for sp in spans])
        vals = np.zeros(allrows.size, np.float32)
        ok = allrows >= 0
        if ok.any():
            x = torch.from_numpy(np.asarray(a.layer(self.layer)[allrows[ok]], dtype=np.float32))
            with torch.no_grad():  # the architecture's own rule (TopK: exact, every feature competes)
                vals[ok] = self.sae.feature_activation(x, feature).numpy()
        out, at = [], 0
        for d, p, toks, lo, hi, _r in spans:
            v = vals[at:at + hi - lo]
            at += hi - lo
            before = "".join(a.token_str(t) for t in toks[max(0, lo - MORE[0]):lo])
            after = "".join(a.token_str(t) for t in toks[hi:hi + MORE[1]])
            out.append(Example(doc=d, pos=p, value=float(v[p - lo]), tokens=tuple(a.token_str(t) for t in toks[lo:hi]),
                               values=tuple(float(t) for t in v), center=p - lo, before=before, after=after))
        return out

    def feature(self, i: int) -> FeatureExamples:
        i = as_index(i, "feature")  # int(2.7) would silently show feature 2
        if not 0 <= i < self.n_features:
            raise IndexError(f"feature {i} out of range: layer {self.layer} has {self.n_features} features")
        top_rs = [int(r) for r in self.top_rows[i] if r >= 0]
        nb = self.sample_rows.shape[1]
        bins = [[int(r) for r in self.sample_rows[i, b] if r >= 0] for b in range(nb - 1, -1, -1)]
        ctx = self._contexts(top_rs + [r for rs in bins for r in rs], i)
        top, at, quant = tuple(ctx[:len(top_rs)]), len(top_rs), []
        for b, rs in zip(range(nb - 1, -1, -1), bins):
            quant.append((f"{b / nb:.0%}–{(b + 1) / nb:.0%} of max", tuple(ctx[at:at + len(rs)])))
            at += len(rs)
        hist = None if self.act_hist is None else (HIST_EDGES, self.act_hist[i])
        return FeatureExamples(layer=self.layer, feature=i, max_value=float(self.max_value[i]),
                               frac_active=float(self.n_active[i]) / max(self.acts.n_tokens, 1),
                               top=top, quantiles=tuple(quant), info=self.sae.info, histogram=hist)

    def activations(self, feature: int) -> np.ndarray:
        """Feature ``feature``'s activation on every collected token (float32 [n_tokens]), by the
        architecture's own rule; one matrix-vector product over the layer's stored activations."""
        import torch

        feature = as_index(feature, "feature")
        if not 0 <= feature < self.n_features:
            raise IndexError(f"feature {feature} out of range: layer {self.layer} has {self.n_features} features")
        out = np.empty(self.acts.n_tokens, np.float32)
        r = 0
        w = self.sae
        for x in self.acts.batches(self.layer, 16384):
            with torch.no_grad():
                out[r:r + x.shape[0]] = w.feature_activation(x, feature).numpy()
            r += x.shape[0]
        return out

    def top_tokens(self, n: int = 3, features: Any = None) -> list[tuple[str, ...]]:
        """For every feature (or those in ``features``), the distinct tokens of its top
        activations, most frequent first (at most ``n``): a one-glance summary for the finder."""
        tid = self.acts.token_ids
        rows = self.top_rows
        out = []
        for i in (range(rows.shape[0]) if features is None else as_indices(features, "features")):
            rs = rows[i][rows[i] >= 0]
            if rs.size == 0:
                out.append(())
                continue
            ids, first, counts = np.unique(tid[rs], return_index=True, return_counts=True)
            order = np.lexsort((first, -counts))
            out.append(tuple(self.acts.token_str(int(t)) for t in ids[order][:n]))
        return out

    __getitem__ = feature

    def __repr__(self) -> str:
        dead = int((self.n_active == 0).sum())
        return (f"LayerExamples(layer {self.layer}: {self.n_features} features, top-{self.top_rows.shape[1]}, "
                f"{self.sample_rows.shape[1]} bins × {self.sample_rows.shape[2]} samples, {dead} never active)")


@dataclass(frozen=True, eq=False)
class Examples:
    """Examples of every collected layer: ``examples[layer][feature]`` -> FeatureExamples."""

    layers: Mapping[int, LayerExamples]
    stats: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, layer: int) -> LayerExamples:
        layer = as_index(layer, "layer")  # int(1.9) would silently give layer 1
        try:
            return self.layers[layer]
        except KeyError:
            raise KeyError(f"no examples for layer {layer} (layers {sorted(self.layers)})") from None

    def for_trace(self, trace: Any, **kw: Any) -> "TraceExamples":
        """The examples of every step of a FeatureTrace, side by side (an HTML object)."""
        return TraceExamples(trace, self, **kw)

    def trace_correlations(self, trace: Any) -> dict[int, float]:
        """Pearson's r of the feature's activations at every layer of ``trace`` with the origin's,
        over the collected tokens (``{layer: r}``; 1 at the origin, NaN where a feature never fires):
        how similar the traced features are *on data*, next to the data-free match."""
        L0, f0 = int(trace.origin_layer), int(trace.origin_feature)
        if L0 not in self.layers:
            return {}
        ref = self[L0].activations(f0).astype(np.float64)
        out = {}
        for L, f in zip(trace.layers, trace.features):
            if f < 0 or int(L) not in self.layers:
                continue
            a = ref if (int(L), int(f)) == (L0, f0) else self[int(L)].activations(int(f)).astype(np.float64)
            out[int(L)] = _pearson(ref, a)
        return out

    def __repr__(self) -> str:
        return f"Examples(layers={sorted(self.layers)}, {self.stats.get('seconds', 0):.1f} s)"


def collect_examples(
    chain: Any, acts: Activations, *, saes: Sequence[Any] | Mapping[int, Any] | None = None,
    layers: Sequence[int] | None = None, k: int = 10, n_bins: int = 4, per_bin: int = 3,
    window: tuple[int, int] = (20, 6), batch_tokens: int | None = None, seed: int = 0, cache: bool = True,
    cache_dir: str | os.PathLike | None = None, progress: bool = True,
) -> Examples:
    """Top-``k`` examples and ``per_bin`` samples in each of ``n_bins`` activation bins (fractions
    of the feature's max, the top bin excluded from the samples) for every feature of every layer.

    ``chain``: the MatchChain of the analysis (its SAEs are used; ``saes=`` given as well are
    checked against them), or the SAEs themselves: one per collected layer, a list in
    ``acts.layers`` order or a ``{layer: sae}`` mapping (``collect_examples(saes, acts)``).
    An SAE that says which layer it reads (its hook ``blocks.{L}...`` or ``info.layer``) must
    read the layer whose activations it is run on; one that does not say is taken as given.
    """
    from tqdm.auto import tqdm

    from .steering import check_reads_layer

    t0 = time.perf_counter()
    acts = check_acts(chain, acts, "collect_examples")
    stack = examples_stack(acts, chain, saes)
    # integers only: a layer 1.9 would be run as layer 1 and keyed 1.9
    layers = list(acts.layers if layers is None else as_indices(layers, "layers"))
    k, n_bins, per_bin = as_index(k, "k"), as_index(n_bins, "n_bins"), as_index(per_bin, "per_bin")
    if k < 1 or n_bins < 1 or per_bin < 0:
        raise ValueError("k and n_bins must be >= 1 and per_bin >= 0")
    out = {}
    unwritable = False  # warned once per call, not once per layer
    bar = tqdm(total=len(layers) * acts.n_tokens, desc="examples", unit="tok", disable=not progress)
    for L in layers:  # every check before the first layer is scanned
        if L not in stack:
            raise KeyError(f"no SAE given for layer {L} (SAEs for layers {stack.layers})")
        if L not in acts.layers:
            raise KeyError(f"layer {L} was not collected (layers {acts.layers})")
        # an SAE of another layer would run on these activations without a sound (as steering
        # checks); here what is known without loading, below the loaded SAE's own info
        check_reads_layer(stack.source(L), L, _OTHER_LAYER.format(L=L))
    for L in layers:
        w = stack.weights(L)
        check_reads_layer(w, L, _OTHER_LAYER.format(L=L))
        if w.d_in != acts.d_model:
            raise ValueError(f"SAE of layer {L} reads d_in={w.d_in} but activations have d_model={acts.d_model}")
        key = hashlib.sha256(json.dumps([acts.key, L, stack.fingerprint(L), k, n_bins, per_bin, seed,
                                         _CACHE_VERSION]).encode()).hexdigest()[:20]
        root = cache_folder("examples", cache_dir)
        f = root / f"{key}.npz"
        arrays = None
        if cache:
            try:
                with np.load(f) as z:
                    arrays = {n: z[n] for n in z.files}
                bar.update(acts.n_tokens)
            except Exception:  # missing, unreadable or damaged: computed (again)
                arrays = None
        if arrays is None:
            arrays = _scan_layer(acts, L, w, k, n_bins, per_bin, batch_tokens, seed, bar)
            if cache:
                try:
                    atomic_write(f, lambda fh: np.savez(fh, **arrays))
                except OSError as e:  # computed: a cache that cannot be written is no error
                    if not unwritable:
                        from ..core.cache import warn_unwritable

                        warn_unwritable(root, e, "examples")
                    unwritable = True
        for a in arrays.values():
            a.setflags(write=False)
        del w  # held by the stack as long as it holds it, not by this loop
        out[L] = LayerExamples(layer=L, acts=acts, stack=stack, window=tuple(window), **arrays)
    bar.close()
    return Examples(out, {"seconds": time.perf_counter() - t0})


_OTHER_LAYER = ("its features would be read off the activations of layer {L}; key each SAE by the layer it "
                "reads ({{layer: sae}}) and collect that layer's activations")


def _is_acts(obj: Any) -> bool:  # duck-typed: Activations, or anything that reads like them
    return hasattr(obj, "batches") and hasattr(obj, "layers")


def check_acts(chain: Any, acts: Any, what: str) -> Activations:
    """``acts`` must be the activations (the chain, or the SAEs, come first in every analysis call:
    ``what(chain, acts)``); the old order is said plainly."""
    if _is_acts(acts):
        return acts
    if _is_acts(chain):
        raise ArgumentTypeError(f"{what}(chain, acts) takes the chain (or the SAEs) first and the activations "
                                "second (the chain comes first in every analysis call)")
    raise ArgumentTypeError(f"{what}(chain, acts) needs the Activations of collect_activations second, got "
                            f"{type(acts).__name__}")


def examples_stack(acts: Activations, chain: Any, saes: Any) -> SAEStack:
    """The SAE stack for ``acts``: a chain's (SAEs given too are checked against it); a plain list
    of SAEs is one per collected layer, in ``acts.layers`` order (as it always was)."""
    if chain is not None and (hasattr(chain, "pairs") or isinstance(chain, SAEStack)):
        return stack_of(chain, saes)
    given = chain if chain is not None else saes
    if given is None:
        raise ValueError("collect_examples needs the chain of the analysis (or its SAEs): "
                         "collect_examples(chain, acts)")
    if isinstance(given, Mapping) and "W_enc" not in given:
        return SAEStack.build(given)
    items = list(given)
    if len(items) != len(acts.layers):
        raise ValueError(f"got {len(items)} SAEs for {len(acts.layers)} collected layers {acts.layers}; "
                         "pass one per layer, a {layer: sae} mapping, or the MatchChain")
    return SAEStack.build(items, layers=acts.layers)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _group_top(group: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Indices of the entries that are among the ``k`` highest ``score`` of their ``group``."""
    order = np.lexsort((-score, group))
    g = group[order]
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    first = np.repeat(start, np.diff(np.r_[start, g.size]))
    return order[(np.arange(g.size) - first) < k]


def _scan_layer(acts, L, w, k, n_bins, per_bin, batch_tokens, seed, bar) -> dict[str, np.ndarray]:
    """One pass over the layer. SAE codes are sparse, so the running top-k and the per-bin
    reservoirs are kept as flat (feature, row, value[, key]) lists: each batch's non-zeros are
    merged in and every group is cut back to its k best by one lexsort, costing O(nnz log nnz)
    per batch instead of O(features × tokens)."""
    import torch

    n = w.d_sae
    bt = batch_tokens or 4096
    rng = np.random.default_rng(seed)
    R = max(per_bin, 1) * 2  # oversample: re-binning at the end moves some samples between bins
    t_f = np.zeros(0, np.int64)
    t_r = np.zeros(0, np.int64)
    t_v = np.zeros(0, np.float32)
    s_f = np.zeros(0, np.int64)
    s_b = np.zeros(0, np.int64)
    s_r = np.zeros(0, np.int64)
    s_v = np.zeros(0, np.float32)
    s_k = np.zeros(0, np.float64)
    run_max = np.zeros(n, np.float32)
    n_active = np.zeros(n, np.int64)
    nh = HIST_EDGES.size - 1
    hist = np.zeros(n * nh, np.int64)
    row0 = 0
    for x in acts.batches(L, bt):
        with torch.no_grad():
            f = w.encode(x)
        rr, ff = torch.nonzero(f > 0, as_tuple=True)
        vv = f[rr, ff].numpy().astype(np.float32)
        rr = rr.numpy().astype(np.int64) + row0
        ff = ff.numpy().astype(np.int64)
        B = f.shape[0]
        n_active += np.bincount(ff, minlength=n)
        np.maximum.at(run_max, ff, vv)
        hb = np.clip(np.searchsorted(HIST_EDGES, vv, side="right") - 1, 0, nh - 1)
        hist += np.bincount(ff * nh + hb, minlength=n * nh)
        # running top-k per feature
        t_f = np.r_[t_f, ff]
        t_r = np.r_[t_r, rr]
        t_v = np.r_[t_v, vv]
        keep = _group_top(t_f, t_v, k)
        t_f, t_r, t_v = t_f[keep], t_r[keep], t_v[keep]
        # reservoirs: per (feature, bin of the running max), the R largest random keys
        bins = np.minimum((vv / np.maximum(run_max[ff], 1e-12) * n_bins).astype(np.int64), n_bins - 1)
        s_f = np.r_[s_f, ff]
        s_b = np.r_[s_b, bins]
        s_r = np.r_[s_r, rr]
        s_v = np.r_[s_v, vv]
        s_k = np.r_[s_k, rng.random(ff.size)]
        keep = _group_top(s_f * n_bins + s_b, s_k, R)
        s_f, s_b, s_r, s_v, s_k = s_f[keep], s_b[keep], s_r[keep], s_v[keep], s_k[keep]
        row0 += B
        bar.update(B)
    # dense per-feature tables
    top_v = torch.zeros((n, k))
    top_r = torch.full((n, k), -1, dtype=torch.long)
    o = np.lexsort((-t_v, t_f))
    t_f, t_r, t_v = t_f[o], t_r[o], t_v[o]
    rank = np.arange(t_f.size) - np.searchsorted(t_f, t_f, "left")
    top_v[t_f, rank] = torch.from_numpy(t_v)
    top_r[t_f, rank] = torch.from_numpy(t_r)
    M = n_bins * R
    res_v = torch.zeros((n, M))
    res_r = torch.full((n, M), -1, dtype=torch.long)
    res_key = torch.full((n, M), -float("inf"), dtype=torch.float64)
    o = np.argsort(s_f, kind="stable")
    s_f, s_r, s_v, s_k = s_f[o], s_r[o], s_v[o], s_k[o]
    rank = np.arange(s_f.size) - np.searchsorted(s_f, s_f, "left")
    res_v[s_f, rank] = torch.from_numpy(s_v)
    res_r[s_f, rank] = torch.from_numpy(s_r)
    res_key[s_f, rank] = torch.from_numpy(s_k)
    run_max = torch.from_numpy(run_max)
    n_active = torch.from_numpy(n_active)
    top_v[top_r < 0] = -float("inf")
    res_v = res_v.reshape(n, n_bins, R)
    res_r = res_r.reshape(n, n_bins, R)
    res_key = res_key.reshape(n, n_bins, R)
    top_r[~torch.isfinite(top_v) | (top_v <= 0)] = -1
    # Re-bin every reservoir sample against the final max; keep per_bin per bin, the top bin left
    # to the top-k.
    flat_v = res_v.reshape(n, -1)
    flat_r = res_r.reshape(n, -1)
    flat_k = res_key.reshape(n, -1)
    fb = (flat_v / run_max.clamp_min(1e-12)[:, None] * n_bins).long().clamp(0, n_bins - 1)
    s_rows = torch.full((n, n_bins, per_bin), -1, dtype=torch.long)
    s_vals = torch.zeros((n, n_bins, per_bin))
    top_set = top_r
    for bi in range(n_bins):
        ok = (fb == bi) & torch.isfinite(flat_k) & (flat_r >= 0)
        # not already among the top-k
        ok &= ~(flat_r[:, :, None] == top_set[:, None, :]).any(-1)
        kk = torch.where(ok, flat_k, torch.full_like(flat_k, -float("inf")))
        if per_bin:
            val, j = torch.topk(kk, per_bin, dim=1)
            r = torch.gather(flat_r, 1, j)
            v = torch.gather(flat_v, 1, j)
            r[~torch.isfinite(val)] = -1
            s_rows[:, bi] = r
            s_vals[:, bi] = v
    if n_bins > 1:  # the top bin is what the top-k already shows
        s_rows[:, n_bins - 1] = -1
    return {"top_rows": top_r.numpy(), "top_vals": top_v.clamp_min(0).numpy().astype(np.float32),
            "sample_rows": s_rows.numpy(), "sample_vals": s_vals.numpy().astype(np.float32),
            "max_value": run_max.numpy().astype(np.float32), "n_active": n_active.numpy(),
            "act_hist": hist.reshape(n, nh).astype(np.int32)}


class TraceExamples:
    """What :meth:`Examples.for_trace` returns: the examples of every step of a trace, rendered
    side by side in a notebook (``saematch_nb.display.examples.trace_examples_html``)."""

    def __init__(self, trace: Any, examples_by_layer: Any, *, max_top: int = 5) -> None:
        self.trace, self.examples, self.max_top = trace, examples_by_layer, max_top

    def _repr_html_(self) -> str:
        from ..display.examples import trace_examples_html

        return trace_examples_html(self.trace, self.examples, max_top=self.max_top)

    def __repr__(self) -> str:
        from ..display.examples import trace_examples_text

        return trace_examples_text(self.trace, self.examples)
