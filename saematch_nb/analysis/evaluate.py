"""Hidden-state approximation (SAE Match Eq. 5): how well does layer t's SAE code, moved through a
match, predict layer t+1's residual stream?

For each adjacent pair (t, t+1) and each method, one forward pass per batch with two hooks: one
captures x_t at ``blocks.t.hook_resid_post``; the other, at ``blocks.{t+1}.hook_resid_post``,
computes x̂_{t+1}, accumulates the explained variance against the clean x_{t+1}, and returns
x̂_{t+1} in its place (BOS position left clean, as the paper excludes BOS). ΔL is the mean
next-token cross-entropy of that run minus the clean run's. Hooks are attached with
``model.hooks(...)``, which removes them even when a method raises.

Methods (f = SAE_t.encode(x_t); the *folded* code f / θ_t is moved, so that the target decoder
sees it in its own units: x̂ = Σ_i (f_i / θ_t,i) · θ_{t+1,P(i)} · W_dec(t+1)[P(i)] + b_dec(t+1);
for SAEs without threshold θ = 1):

- ``folded+matched``: P from ``match(fold=True)`` (or the chain's pair).
- ``folded+accepted``: as folded+matched for the features the criterion accepts; the others
  (no partner in the next layer) are decoded with layer t's own decoder row, as in ``pruned@q``.
- ``unfolded+matched``: P from ``match(fold=False)``.
- ``identity``: P = identity (needs equal widths).
- ``cosine``: top-1 cosine of the decoder rows (many-to-one: codes landing on one slot add up).
- ``skip``: x̂_{t+1} = x_t (drop layer t+1).
- ``recon_current``: SAE_{t+1}(x_{t+1}); ``recon_previous``: SAE_t(x_t).
- ``pruned@q`` (App. B): as folded+matched, but features whose matched MSE is above the q-quantile
  are decoded with layer t's own decoder row (kept from the previous layer).
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np

from ..core._checks import positive_int
from ..core.metrics import EVAccumulator
from ..core.stack import SAEStack, stack_of
from ..core.weights import SAEWeights
from ..sources.activations import tokenize

METHODS = ("folded+matched", "folded+accepted", "unfolded+matched", "identity", "cosine", "skip",
           "recon_current", "recon_previous")


def _theta(w: SAEWeights):
    import torch

    return w.threshold if w.threshold is not None else torch.ones(w.d_sae, device=w.W_dec.device)


def _transfer(w_a: SAEWeights, w_b: SAEWeights, perm: np.ndarray, keep_prev: np.ndarray | None = None,
              raw: bool = False):
    """x_t -> x̂_{t+1} through the mapping ``perm`` (A-feature -> B slot, -1 = dropped)."""
    import torch

    dev = w_a.W_dec.device  # all SAE math runs where the weights are (evaluate: the model's device)
    perm_t = torch.as_tensor(np.array(perm, dtype=np.int64), device=dev)
    th_a, th_b = _theta(w_a), _theta(w_b)
    ok = perm_t >= 0
    if keep_prev is not None:
        kp = torch.as_tensor(np.array(keep_prev, dtype=bool), device=dev)
        ok = ok & ~kp
    src = torch.nonzero(ok).squeeze(1)
    dst = perm_t[src]
    # Folded code of A moved into B's slots, in B's units (scale θ_b / θ_a).
    scale = torch.ones(src.numel(), device=dev) if raw else th_b[dst] / th_a[src]
    prev_rows = None if keep_prev is None else torch.nonzero(kp).squeeze(1)

    def fn(x):
        f = w_a.encode(x)
        flat = f.reshape(-1, f.shape[-1])
        g = torch.zeros(flat.shape[0], w_b.d_sae, dtype=flat.dtype, device=flat.device)
        g.index_add_(1, dst, flat[:, src] * scale)  # many-to-one maps add up
        out = g @ w_b.W_dec + w_b.b_dec
        if prev_rows is not None and prev_rows.numel():
            out = out + flat[:, prev_rows] @ w_a.W_dec[prev_rows]
        return out.reshape(*f.shape[:-1], -1)

    return fn


def _eval_stack(chain: Any, saes: Any) -> tuple[Any, SAEStack, list[int]]:
    """(chain or None, the analysis' SAE stack, its layers). ``evaluate(chain, ...)`` uses the
    chain's SAEs (``saes=`` given too are checked against them); ``evaluate(saes, ...)`` (no
    chain) needs SAEs that say which layer they read."""
    if chain is not None and not hasattr(chain, "pairs"):
        if saes is not None:
            raise ValueError("give the SAEs once: evaluate(chain, model, texts) or evaluate(saes, model, texts)")
        chain, saes = None, chain
    if chain is not None:
        if saes is None:
            return chain, stack_of(chain), [int(x) for x in chain.layers]
        # SAEs given again: used as given (lazy ones loaded pair by pair, nothing kept after) and
        # checked pair by pair against the hashes the chain's matches recorded
        items = saes if isinstance(saes, Mapping) else list(saes)
        if not isinstance(items, Mapping) and len(items) != len(chain.layers):
            raise ValueError(f"the chain has {len(chain.layers)} layers but {len(items)} SAEs were given")
        stack = SAEStack.build(items, layers=None if isinstance(items, Mapping) else chain.layers)
        if tuple(stack.layers) != tuple(chain.layers):
            raise ValueError(f"the SAEs given are for layers {stack.layers}, the chain has layers {chain.layers}")
        stack.verify_against = chain
        return chain, stack, [int(x) for x in chain.layers]
    if saes is None:
        raise ValueError("evaluate needs the chain (or the SAEs): evaluate(chain, model, texts)")
    stack = SAEStack.build(saes)
    layers = [stack.info(L).layer for L in stack.layers]
    if any(L is None for L in layers):
        raise ValueError("cannot tell which layer each SAE reads: give SAEs whose info has a layer "
                         "(hook blocks.{L}.hook_resid_post) or a MatchChain")
    if not isinstance(saes, Mapping):
        stack.relabel(layers)  # read from the SAEs themselves
    return None, stack, [int(x) for x in stack.layers]


def _check_pair(chain: Any, t: int, stack: SAEStack, la: int, lb: int) -> None:
    lm = chain.pairs[t]
    if lm.fingerprint_a and (lm.fingerprint_a != stack.fingerprint(la) or lm.fingerprint_b != stack.fingerprint(lb)):
        raise ValueError(f"pair {t} of the chain was computed from other SAEs than those given "
                         "(weights hashes differ): pass the SAEs the chain was built from, or leave "
                         "them out (the chain has them)")


def evaluate(
    chain: Any, model: Any, texts: Any, *, saes: Sequence[Any] | Mapping[int, Any] | None = None,
    methods: Sequence[str] = METHODS, quantile: float | Sequence[float] | None = None,
    batch_size: int = 8, context: int | None = None, max_tokens: int | None = None,
    exclude_bos: bool = True, progress: bool = True, options: Any = None,
    transfer: str = "folded", max_docs: int | None = None,
):
    """EV and ΔL of every adjacent pair for every method: a tidy DataFrame, one row per
    (pair, method), columns layer_from, layer_to, method, explained_variance (the residual's mean
    removed: ``1 - Var(x̂ - x) / Var(x)``), explained_variance_mean_kept (``1 - E|x̂ - x|² /
    Var(x)``: a constant offset counts as error), delta_loss, loss, clean_loss, n_tokens, seconds.

    ``chain``: a MatchChain (its pairs give ``folded+matched``), or a list of SAEs (then ``saes``
    may be omitted). ``saes``: the chain's SAEs in layer order (or ``{layer: sae}``), anything
    ``as_weights`` takes. Pairs are evaluated one after the other and only the two SAEs of the
    current pair are held (lazy handles and paths are loaded when their pair comes and dropped
    after it), on the model's device (``model.cfg.device``), in float32. Matches a method needs
    and the chain lacks are computed with ``saematch_nb.match``, with ``options`` (a
    :class:`~saematch_nb.MatchOptions` or a mapping of its fields; default: match's defaults),
    the method's own setting on top (fold, method). ``quantile``: add ``pruned@q``
    rows for each q in [0, 1] (App. B): features whose matched MSE is above the q-quantile of the
    pair's MSEs, and features without partner, are decoded by layer t's own decoder row
    (``f_i · W_dec(t)[i]``, f in layer t's units); the others are moved as in ``folded+matched``;
    the bias is ``b_dec(t+1)``. So pruned@1 is folded+matched (with a full permutation) and
    pruned@0 is recon_previous with b_dec(t+1) for b_dec(t), except the feature(s) of least MSE.
    ``transfer``: "folded" (default: the folded code f/θ_t is moved, exact under the rescaling
    symmetry that folding removes) or "raw" (the paper's Eq. 5 read literally:
    x̂ = (P f) W_dec(t+1) + b_dec(t+1); the same thing when both SAEs have unit-norm decoders and
    equal thresholds). ``texts``: as for ``collect_activations`` (a list of strings, the demo
    bundle, a dataset name or ``("dataset_name", n_docs)``); ``max_docs``: at most this many.
    """
    if transfer not in ("folded", "raw"):
        raise ValueError(f"transfer must be 'folded' or 'raw', got {transfer!r}")
    # max_tokens=0 gave loss and ΔL 0.0 and EV NaN, a table of nothing
    if max_tokens is not None:
        max_tokens = positive_int(max_tokens, "max_tokens (tokens to evaluate on; None for all)")
    batch_size = positive_int(batch_size, "batch_size")
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    chain, stack, layers = _eval_stack(chain, saes)
    n = len(layers)
    if n < 2:
        raise ValueError(f"evaluate needs at least two SAEs, got {n}")
    for t in range(len(layers) - 1):
        if layers[t + 1] != layers[t] + 1:
            raise ValueError(f"evaluate compares adjacent layers; got layers {layers[t]} -> {layers[t + 1]}")
    methods = list(methods)
    qs = [] if quantile is None else ([quantile] if np.isscalar(quantile) else list(quantile))
    for q in qs:
        if not 0 <= float(q) <= 1:
            raise ValueError(f"quantile must be in [0, 1], got {q}")
        methods.append(f"pruned@{float(q):g}")
    bad = [m for m in methods if m not in METHODS and not m.startswith("pruned@")]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {METHODS} or pruned@q")
    from ..core.options import MatchOptions

    mk = MatchOptions.of(options)  # checked before any forward pass

    docs = tokenize(model, texts, context=context, max_docs=max_docs)
    first = 1 if exclude_bos else 0
    if max_tokens is not None:
        out, kept = [], 0
        for d in docs:
            if kept >= max_tokens:
                break
            d = d[: first + max_tokens - kept]
            out.append(d)
            kept += d.size - first
        docs = out
    device = torch.device(getattr(model.cfg, "device", None) or "cpu")
    batches = []
    for s in range(0, len(docs), batch_size):
        b = docs[s:s + batch_size]
        L_max = max(d.size for d in b)
        toks = torch.zeros(len(b), L_max, dtype=torch.long)
        mask = torch.zeros(len(b), L_max, dtype=torch.bool)  # positions whose hidden state counts
        lmask = torch.zeros(len(b), L_max - 1, dtype=torch.bool)  # predictions that count
        for i, d in enumerate(b):
            toks[i, :d.size] = torch.from_numpy(d)
            mask[i, first:d.size] = True
            lmask[i, first:d.size - 1] = True
        batches.append((toks.to(device), mask.to(device), lmask))

    def loss_of(toks, lmask):
        with torch.no_grad():
            per_tok = model(toks, return_type="loss", loss_per_token=True)
        return float(per_tok[lmask.to(per_tok.device)].sum()), int(lmask.sum())

    clean_sum = clean_n = 0
    for toks, _, lmask in batches:
        s, n_ = loss_of(toks, lmask)
        clean_sum += s
        clean_n += n_
    clean = clean_sum / max(clean_n, 1)

    def load(L: int) -> SAEWeights:
        w = stack.weights(L)  # the stack holds at most two lazy SAEs: SAE t and SAE t+1
        return w if w.W_dec.device == device else w.to(device)

    rows: list[dict] = []
    bar = tqdm(total=(n - 1) * len(methods), desc="evaluate", unit="run", disable=not progress)
    for t in range(n - 1):
        la, lb = layers[t], layers[t + 1]
        if getattr(stack, "verify_against", None) is not None:
            _check_pair(chain, t, stack, la, lb)
        rows += _evaluate_pair(model, chain, stack, t, la, lb, load(la), load(lb), methods, mk, transfer,
                               batches, loss_of, clean, bar)
    bar.close()
    return pd.DataFrame(rows)


def _evaluate_pair(model, chain, stack, t, la, lb, wa, wb, methods, mk, transfer, batches, loss_of, clean, bar):
    """The rows of one pair; everything built for it (matches, transfer closures) dies on return."""
    import torch

    from ..core.match import match_weights

    memo: dict[str, Any] = {}

    def get_match(kind: str):
        if kind not in memo:
            if kind == "folded" and chain is not None and chain.options.get("fold", True) \
                    and chain.options.get("method", "lap") == "lap":
                memo[kind] = chain.pairs[t]
            else:
                kw = {"folded": dict(fold=True), "unfolded": dict(fold=False),
                      "cosine": dict(method="cosine")}[kind]
                bt = mk.bad_threshold
                # the stack's converted and folded SAEs: nothing converted or folded again here
                memo[kind] = match_weights(stack.weights(la), stack.weights(lb),
                                           stack.folded(la, bad_threshold=bt), stack.folded(lb, bad_threshold=bt),
                                           mk.replace(**kw))
        return memo[kind]

    wdev = wa.W_dec.device
    rows = []
    for m in methods:
        t0 = time.perf_counter()
        fn = _method_fn(m, wa, wb, get_match, raw=(transfer == "raw"))
        ev = EVAccumulator()
        store: dict[str, Any] = {}

        def grab(act, hook):
            store["x_t"] = act.detach()
            return act

        def replace(act, hook, fn=fn, ev=ev, store=store):
            x_next = act.detach()
            # SAE math on the weights' device (the model's); no copy when they are the same.
            x_hat = fn(store["x_t"].to(wdev), x_next.to(wdev)).to(act.device, act.dtype)
            mk_ = store["mask"].to(act.device)
            ev.update(x_hat[mk_], x_next[mk_])
            # Positions that do not count (BOS, padding) keep their clean state.
            return torch.where(mk_[..., None], x_hat, act)

        hooks = [(f"blocks.{la}.hook_resid_post", grab), (f"blocks.{lb}.hook_resid_post", replace)]
        ls = ln = 0
        with model.hooks(fwd_hooks=hooks):
            for toks, mask, lmask in batches:
                store["mask"] = mask
                s, n_ = loss_of(toks, lmask)
                ls += s
                ln += n_
        loss = ls / max(ln, 1)
        rows.append({"layer_from": la, "layer_to": lb, "method": m,
                     "explained_variance": ev.value(),
                     "explained_variance_mean_kept": ev.value(residual_mean="kept"),
                     "delta_loss": loss - clean, "loss": loss,
                     "clean_loss": clean, "n_tokens": ev.n, "transfer": transfer,
                     "seconds": time.perf_counter() - t0})
        bar.update(1)
    return rows


def _method_fn(m: str, wa: SAEWeights, wb: SAEWeights, get_match, raw: bool = False):
    """(x_t, x_{t+1}) -> x̂_{t+1} for method ``m``."""
    if m == "skip":
        return lambda x, y: x
    if m == "recon_current":
        return lambda x, y: wb.forward(y)
    if m == "recon_previous":
        return lambda x, y: wa.forward(x)
    if m == "identity":
        if wa.d_sae != wb.d_sae:
            raise ValueError(f"identity needs equal widths, got {wa.d_sae} and {wb.d_sae}")
        f = _transfer(wa, wb, np.arange(wa.d_sae), raw=raw)
    elif m == "folded+matched":
        f = _transfer(wa, wb, get_match("folded").partner, raw=raw)
    elif m == "unfolded+matched":
        f = _transfer(wa, wb, get_match("unfolded").partner, raw=raw)
    elif m == "cosine":
        f = _transfer(wa, wb, get_match("cosine").permutation, raw=raw)
    elif m == "folded+accepted":
        lm = get_match("folded")
        f = _transfer(wa, wb, lm.permutation, keep_prev=~np.asarray(lm.matched, bool), raw=raw)
    elif m.startswith("pruned@"):
        q = float(m.split("@", 1)[1])
        lm = get_match("folded")
        cut = np.quantile(lm.mse, q)
        keep_prev = (lm.mse > cut) | (lm.partner < 0)
        f = _transfer(wa, wb, lm.permutation, keep_prev=keep_prev, raw=raw)
    else:  # pragma: no cover - validated by evaluate
        raise ValueError(m)
    return lambda x, y: f(x)


# -- co-activation: does the data-free match agree with the data? ---------------------------------
from dataclasses import dataclass, field  # noqa: E402


@dataclass(frozen=True, eq=False)
class Coactivation:
    """Data-based checks of every pair of a chain (see :func:`coactivation`).

    ``features[t]``: one row per A-feature of pair t (partner, matched, matching_score, pearson,
    sufficiency, necessity, jaccard, data_partner, data_pearson, agrees, active). ``to_pandas()``:
    one row per pair with the means over active A-features, for matched and random pairs.
    """

    layers: tuple[int, ...]
    features: tuple[Any, ...]
    summary_rows: tuple[dict, ...]
    options: dict = field(default_factory=dict)

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(list(self.summary_rows))

    def __repr__(self) -> str:
        df = self.to_pandas()
        cols = ["layer_from", "layer_to", "agreement", "matching_score", "matching_score_random",
                "pearson", "pearson_random", "jaccard", "jaccard_random"]
        return "Coactivation\n" + df[[c for c in cols if c in df]].to_string(index=False,
                                                                            float_format=lambda v: f"{v:.3f}")

    def _repr_html_(self) -> str:
        from ..display import wrap_output

        # pandas escapes cell text in to_html; the table holds only numbers and layer ids.
        table = self.to_pandas().to_html(index=False, float_format=lambda v: f"{v:.3f}", classes="smn-table")
        return wrap_output(f'<div class="smn-header"><span class="smn-kind">Coactivation</span></div>{table}',
                           repr(self), kind="coactivation")


def coactivation(
    chain_or_match: Any, acts: Any, saes: Sequence[Any] | Mapping[int, Any] | None = None, *, frac: float = 0.2,
    n_random: int | None = None, seed: int = 0, batch_tokens: int = 4096, block_bytes: int = 512 * 2**20,
    progress: bool = True, layer: int | None = None,
) -> Coactivation:
    """Co-activation, Pearson and Lerner relations of SAE Match's partners on real activations, the
    data's best-Pearson partner of every feature and the agreement rate between the two.

    ``chain_or_match``: a MatchChain or one LayerMatch; ``acts``: :class:`Activations` holding
    both layers of every pair; ``saes``: not needed with a chain (its SAEs are used); else
    ``{layer: sae}`` or a list in ``acts.layers`` order. SAEs given must be those the matches were
    computed from (checked by weight hash, as in :func:`evaluate`); ``acts`` needs only ``.layers``
    and ``.batches(layer, n)`` (rows of the same tokens, in the same order, at every layer).
    ``layer``: with a chain, only the pair starting at this layer (default: every pair).
    Random pairs (A-feature i with a random B-feature) give the chance level of every statistic.
    Two passes over the tokens per pair (maxima and Pearson blocks, then the pair statistics);
    the Pearson matrix is built in blocks of A-features of at most ``block_bytes``.
    """
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from ..core.metrics import CrossMoments, PairStats, agreement_rate

    if hasattr(chain_or_match, "pairs"):
        if layer is None:
            pairs, layers = list(chain_or_match.pairs), list(chain_or_match.layers)
        else:  # the one pair starting at `layer` (chain.pair names a layer with no pair)
            lm = chain_or_match.pair(layer)
            p = chain_or_match.layers.index(int(layer))
            pairs, layers = [lm], [chain_or_match.layers[p], chain_or_match.layers[p + 1]]
    else:
        lm = chain_or_match
        layers = [lm.info_a.layer, lm.info_b.layer]
        if None in layers:
            raise ValueError("this LayerMatch does not record its layers (info_a/info_b.layer); pass a MatchChain")
        pairs = [lm]
    if saes is None:
        if getattr(chain_or_match, "stack", None) is None:
            raise ValueError("coactivation needs the SAEs: pass a MatchChain built by match_chain (it keeps "
                             "them), or saes=[...] (the SAEs the match was computed from)")
        stack = chain_or_match.stack
    elif isinstance(saes, Mapping):
        stack = SAEStack.build({int(k): v for k, v in saes.items()})
    else:
        saes = list(saes)
        if len(saes) == len(layers):
            stack = SAEStack.build(saes, layers=layers)
        elif len(saes) == len(acts.layers):
            stack = SAEStack.build(saes, layers=acts.layers)
        else:
            raise ValueError(f"got {len(saes)} SAEs; pass one per chain layer {layers} or a {{layer: sae}} mapping")
    missing = [L for L in layers if L not in acts.layers]
    if missing:
        raise ValueError(f"activations of layers {missing} were not collected (have {acts.layers})")
    rng = np.random.default_rng(seed)
    feats, summary = [], []
    bar = tqdm(total=len(pairs), desc="coactivation", unit="pair", disable=not progress)
    for t, lm in enumerate(pairs):
        la, lb = layers[t], layers[t + 1]
        wa, wb = stack.weights(la), stack.weights(lb)
        if (wa.d_sae, wb.d_sae) != (lm.n_a, lm.n_b):
            raise ValueError(f"pair {la}->{lb}: SAE widths {wa.d_sae}, {wb.d_sae} do not match the match's "
                             f"{lm.n_a}, {lm.n_b}")
        fa_, fb_ = stack.fingerprint(la), stack.fingerprint(lb)
        if lm.fingerprint_a and (lm.fingerprint_a, lm.fingerprint_b) != (fa_, fb_):
            which = " and ".join(f"layer {L}" for L, ok in ((la, lm.fingerprint_a == fa_),
                                                            (lb, lm.fingerprint_b == fb_)) if not ok)
            raise ValueError(
                f"pair {la}->{lb}: the match was computed from other SAEs than those given for {which} "
                f"(weight hashes: match {lm.fingerprint_a}/{lm.fingerprint_b}, given {fa_}/{fb_}). Pass the "
                "SAEs the chain was built from, keyed by their layers ({layer: sae}), or rebuild the "
                "chain from these SAEs with saematch_nb.match_chain(saes)")
        n_a, n_b = wa.d_sae, wb.d_sae
        blk = max(1, int(block_bytes // (8 * max(n_b, 1))))
        blocks = [slice(s, min(s + blk, n_a)) for s in range(0, n_a, blk)]
        max_a = torch.zeros(n_a)
        max_b = torch.zeros(n_b)
        d_idx = np.full(n_a, -1, np.int64)
        d_val = np.zeros(n_a)

        def encoded():
            for xa, xb in zip(acts.batches(la, batch_tokens), acts.batches(lb, batch_tokens)):
                with torch.no_grad():
                    yield wa.encode(xa), wb.encode(xb)

        for bi, sl in enumerate(blocks):
            cm = CrossMoments(sl, n_b)
            for fa, fb in encoded():
                if bi == 0:
                    max_a = torch.maximum(max_a, fa.max(0).values)
                    max_b = torch.maximum(max_b, fb.max(0).values)
                cm.update(fa, fb)
            d_idx[sl], d_val[sl] = cm.best()
        partner = lm.partner
        has = partner >= 0
        a_idx = np.flatnonzero(has)
        r_b = rng.integers(0, n_b, size=n_a if n_random is None else min(n_random, n_a))
        r_a = np.arange(n_a) if n_random is None else rng.choice(n_a, size=len(r_b), replace=False)
        ps = PairStats(a_idx, partner[a_idx], max_a.numpy(), max_b.numpy(), frac)
        pr = PairStats(r_a, r_b, max_a.numpy(), max_b.numpy(), frac)
        for fa, fb in encoded():
            ps.update(fa, fb)
            pr.update(fa, fb)
        res, rres = ps.result(), pr.result()
        active = (max_a.numpy() > 0)
        df = pd.DataFrame({"feature": np.arange(n_a), "partner": partner, "matched": lm.matched,
                           "active": active, "data_partner": d_idx, "data_pearson": d_val})
        for k, v in res.items():
            col = np.full(n_a, np.nan)
            col[a_idx] = v
            df[k] = col
        df["agrees"] = (df.partner == df.data_partner) & (df.partner >= 0)
        feats.append(df.set_index("feature"))
        ok = active & has
        row = {"layer_from": la, "layer_to": lb, "n_features": n_a, "n_active": int(active.sum()),
               "agreement": agreement_rate(partner, d_idx, mask=active),
               "agreement_accepted": agreement_rate(partner, d_idx, mask=active & lm.matched)}
        row["n_accepted"] = int((active & lm.matched).sum())
        acc = active & has & lm.matched
        for k in ("matching_score", "pearson", "jaccard"):
            v = df[k].to_numpy()[acc]
            row[f"{k}_accepted"] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        ra_active = active[r_a]
        for k in ("matching_score", "pearson", "sufficiency", "necessity", "jaccard"):
            v = df[k].to_numpy()[ok]
            row[k] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            rv = rres[k][ra_active]
            row[f"{k}_random"] = float(np.nanmean(rv)) if np.isfinite(rv).any() else float("nan")
        summary.append(row)
        bar.update(1)
    bar.close()
    return Coactivation(tuple(layers), tuple(feats), tuple(summary), {"frac": frac, "seed": seed})


# -- activation-based persistence: layer t's features read off layer t+k's residual stream --------
def read_off_persistence(saes: Any, acts: Any, *, max_k: int | None = None,
                         null_quantile: float = 0.99, batch_tokens: int = 4096, seed: int = 0,
                         progress: bool = True):
    """How many layers each SAE feature stays readable in the residual stream, from data alone.

    Feature i of layer t's SAE is encoded from layer t's residual stream and, with the same
    encoder, from layer t+k's; the Pearson correlation of the two over the tokens says whether
    the direction is still there k layers later. The cut-off comes from a null: the
    ``null_quantile`` (default 99%) of the correlation between feature i at layer t and a random
    *other* feature of the same SAE read off layer t+k, so about 1% of unrelated pairs pass. A
    feature persists k layers when it passes at every k' <= k.

    ``saes``: the MatchChain of the analysis (its SAEs), ``{layer: sae}`` or a list in
    ``acts.layers`` order; ``acts``: :class:`Activations` with every layer of ``saes``.
    Returns a DataFrame indexed by (layer, k): n_features,
    persisting (features passing at every k' <= k), fraction, threshold (the null's cut-off),
    median_pearson (over all features at that k).
    """
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    from ..core.metrics import PairStats

    if not 0.5 < float(null_quantile) < 1.0:
        raise ValueError(f"null_quantile must be in (0.5, 1), got {null_quantile!r}")
    from .examples import check_acts, examples_stack

    acts = check_acts(saes, acts, "read_off_persistence")
    stack = examples_stack(acts, saes, None)
    layers = sorted(L for L in stack.layers if L in acts.layers)
    if len(layers) < 2:
        raise ValueError(f"read_off_persistence needs activations of at least two SAE layers; have {layers}")
    rng = np.random.default_rng(seed)
    rows = []
    jobs = [(s, k) for s in range(len(layers)) for k in range(1, len(layers) - s)
            if max_k is None or k <= max_k]
    bar = tqdm(total=len(jobs), desc="read-off persistence", unit="pair", disable=not progress)
    for s, L in enumerate(layers):
        w = stack.weights(L)
        n = w.d_sae
        # null pairs (i, j != i); several draws for small SAEs, so the quantile rests on >= 2048
        reps = int(min(32, max(1, -(-2048 // max(n, 1)))))
        null_a = np.tile(np.arange(n), reps)
        null_b = (null_a + rng.integers(1, max(n, 2), size=null_a.size)) % max(n, 1)
        alive = np.ones(n, bool)
        for k in range(1, len(layers) - s):
            if max_k is not None and k > max_k:
                break
            Lk = layers[s + k]
            same = PairStats(np.arange(n), np.arange(n))
            null = PairStats(null_a, null_b)
            for x0, xk in zip(acts.batches(L, batch_tokens), acts.batches(Lk, batch_tokens)):
                with torch.no_grad():
                    f0, fk = w.encode(x0), w.encode(xk)
                same.update(f0, fk)
                null.update(f0, fk)
            r, r0 = same.result()["pearson"], null.result()["pearson"]
            thr = float(np.quantile(r0, null_quantile))
            alive &= r >= thr
            rows.append({"layer": L, "k": k, "to_layer": Lk, "n_features": n, "persisting": int(alive.sum()),
                         "fraction": float(alive.mean()), "threshold": thr,
                         "median_pearson": float(np.median(r))})
            bar.update(1)
    bar.close()
    return pd.DataFrame(rows).set_index(["layer", "k"])
