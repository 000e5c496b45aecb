"""One pair of a chain's SAEs: matched from the stack, through the cache, or in a worker.

Below both the runner (``match_chain``) and the chain (``MatchChain.check_composition``), so
neither imports the other for it. Also here: what the stack knows of an SAE without loading it
(for the cache's checks), when a cached pair no longer fits the SAEs at hand (``stale``), and when
two neighbouring pairs cannot both be right (``conflict``: the runner's cached pairs, a saved
chain's pair files).

The pair matcher is :func:`saematch_nb.match`. ``MATCHER`` names it as "module:function" so that
worker processes import it by name; tests and benchmarks put another matcher there (it gets both
SAEs' weights and the options as keywords).
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any, Sequence

from ._memory import peak_rss_bytes
from .cache import MatchCache, identity, pair_key
from .options import MatchOptions
from .results import LayerMatch
from .stack import SAEStack
from .weights import SAEWeights, as_weights

MATCHER = "saematch_nb.core.match:match"


def _resolve(target: str):
    mod, attr = target.split(":")
    return getattr(importlib.import_module(mod), attr)


def matcher():
    """The pair matcher in use (``MATCHER`` resolved)."""
    return _resolve(MATCHER)


# -- what is known of an SAE without loading it ---------------------------------------------------
def known(obj: Any) -> tuple[int | None, str | None]:
    """(d_sae, weights hash) of an SAE when known without loading it (None = unknown)."""
    if isinstance(obj, SAEWeights):
        return obj.d_sae, obj.fingerprint()
    width = getattr(obj, "width", None) if hasattr(obj, "to_weights") else None
    return (width if isinstance(width, int) and not isinstance(width, bool) else None), None


def expect(a: Any, b: Any) -> dict[str, Any]:
    """What a cached pair of ``a`` -> ``b`` must hold (``MatchCache.get``'s ``expect``)."""
    (n_a, fp_a), (n_b, fp_b) = known(a), known(b)
    return {"n_a": n_a, "n_b": n_b, "fingerprint_a": fp_a, "fingerprint_b": fp_b}


def stale(lm: LayerMatch, a: tuple | None, b: tuple | None) -> str | None:
    """Why a cached match does not fit SAEs loaded since, given as (weights hash, d_sae) per side
    (None = it fits or nothing known)."""
    for side, now, then in (("A", a, (lm.fingerprint_a, lm.n_a)), ("B", b, (lm.fingerprint_b, lm.n_b))):
        if now is None:
            continue
        if now[0] and then[0] and now[0] != then[0]:
            return f"SAE {side} now has weights hash {now[0]}, the cached match was made from {then[0]}"
        if now[1] != then[1]:
            return f"SAE {side} now has {now[1]} features, the cached match has {then[1]}"
    return None


def conflict(pairs: Sequence[LayerMatch | None], t: int) -> str | None:
    """Why pairs t and t+1 cannot both be right: they disagree about the SAE they share (cached
    pairs in match_chain, saved pair files in MatchChain.load)."""
    x, y = pairs[t], pairs[t + 1]
    if x is None or y is None:
        return None
    if x.n_b != y.n_a:
        return f"pair {t} ends with {x.n_b} features but pair {t + 1} starts with {y.n_a}"
    if x.fingerprint_b and y.fingerprint_a and x.fingerprint_b != y.fingerprint_a:
        return (f"pair {t} ends with an SAE of weights hash {x.fingerprint_b} but pair {t + 1} starts "
                f"with one of hash {y.fingerprint_a}")
    return None


# -- matching ---------------------------------------------------------------------------------
def match_held(stack: SAEStack, layer_a: int, layer_b: int, options: MatchOptions) -> LayerMatch:
    """Match two of the stack's SAEs: converted, hashed and folded by the stack (once per
    analysis), not again here. Another matcher put in ``MATCHER`` gets the stack's weights."""
    from .match import match, match_weights

    wa, wb = stack.weights(layer_a), stack.weights(layer_b)
    stack.fingerprint(layer_a), stack.fingerprint(layer_b)  # counted once; match reads the cached hash
    fn = matcher()
    if fn is not match:
        return fn(wa, wb, progress=False, **options.kwargs())
    bt = options.bad_threshold
    return match_weights(wa, wb, stack.folded(layer_a, bad_threshold=bt), stack.folded(layer_b, bad_threshold=bt),
                         options)


def task(item_a: Any, item_b: Any, options: MatchOptions, target: str) -> tuple[LayerMatch, dict]:
    """One pair, run in a worker: load both SAEs there, match, return the result (no tensors)."""
    t0 = time.perf_counter()
    wa, wb = as_weights(item_a), as_weights(item_b)
    t1 = time.perf_counter()
    lm = _resolve(target)(wa, wb, progress=False, **options.kwargs())
    return lm, {"load_seconds": t1 - t0, "match_seconds": time.perf_counter() - t1,
                "worker_pid": os.getpid(), "worker_maxrss_bytes": peak_rss_bytes()}


def match_pair(stack: SAEStack, layer_a: int, layer_b: int, options: MatchOptions, *,
               cache: bool = True, cache_dir: str | os.PathLike | None = None) -> LayerMatch:
    """One pair of the stack's layers (not necessarily adjacent) through the cache
    (``MatchChain.check_composition``)."""
    store = MatchCache(cache_dir) if cache else None
    key = None
    if store is not None:
        a, b = stack.handoff(layer_a), stack.handoff(layer_b)
        key = pair_key(identity(a), identity(b), options.key())
        lm = store.get(key, expect(a, b))
        if lm is not None:
            return lm
    lm = match_held(stack, layer_a, layer_b, options)
    if store is not None:
        lm = store.put(key, lm)
    return lm


__all__ = ["MATCHER", "matcher", "match_pair", "match_held", "task", "known", "expect", "stale", "conflict"]
