"""Building a :class:`~saematch_nb.core.chain.MatchChain`: ``match_chain`` and its machinery.

``match_chain`` builds the analysis' :class:`~saematch_nb.core.stack.SAEStack` once, then matches
every neighbouring pair: sequentially (the stack holds at most two lazy SAEs, each layer converted,
hashed and folded once), or on any ``concurrent.futures.Executor`` (process pool,
dask.distributed, Ray: each task gets the two SAE *handles or paths* and loads its own weights).
Every finished pair goes to the disk cache at once (core/cache.py), so a crash mid-chain loses no
finished pair; cached pairs are checked against the SAEs at hand before they are trusted. Memory
is accounted (peak resident set, SAE weights held) in the chain's ``stats``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import time
import warnings
from concurrent.futures import Executor, as_completed
from dataclasses import replace
from typing import Any, Mapping, Sequence

from ._memory import peak_rss_bytes
from .cache import CacheWarning, MatchCache, identity, normalize_options, pair_key
from .chain import MatchChain, _inconsistent
from .results import LayerMatch
from .stack import SAEStack, _weights_bytes, check_one_per_layer
from .weights import SAEInfo, SAEWeights, as_weights

# Where the pair matcher lives, as "module:function" so that worker processes can import it.
_MATCH_TARGET = "saematch_nb.core.match:match"


def _resolve(target: str):
    mod, attr = target.split(":")
    return getattr(importlib.import_module(mod), attr)


def _add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)`` where Python has it (3.11+); on 3.10 the note goes into
    ``__notes__`` too and is shown as a warning, so the real error is still what is raised."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
        return
    try:
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]
    except AttributeError:  # an exception type that refuses new attributes
        pass
    warnings.warn(note, RuntimeWarning, stacklevel=3)


def _pair_task(item_a: Any, item_b: Any, match_kwargs: dict, target: str):
    """One pair, run in a worker: load both SAEs there, match, return the result (no tensors)."""
    t0 = time.perf_counter()
    wa, wb = as_weights(item_a), as_weights(item_b)
    t1 = time.perf_counter()
    lm = _resolve(target)(wa, wb, **match_kwargs)
    return lm, {"load_seconds": t1 - t0, "match_seconds": time.perf_counter() - t1,
                "worker_pid": os.getpid(), "worker_maxrss_bytes": peak_rss_bytes()}


# -- what the stack knows without loading ---------------------------------------------------------
def _item(stack: SAEStack, pos: int) -> Any:
    """What identifies / is sent for the SAE at position ``pos``: its converted weights when it
    is in memory (hashed once, on the stack's copy), else the lazy source (handle, path)."""
    return stack._kept.get(pos, stack.sources[pos])


def _known(obj: Any) -> tuple[int | None, str | None]:
    """(d_sae, weights hash) of an SAE when known without loading it (None = unknown)."""
    if isinstance(obj, SAEWeights):
        return obj.d_sae, obj.fingerprint()
    width = getattr(obj, "width", None) if hasattr(obj, "to_weights") else None
    return (width if isinstance(width, int) and not isinstance(width, bool) else None), None


def _expect(a: Any, b: Any) -> dict[str, Any]:
    """What a cached pair of ``a`` -> ``b`` must hold (MatchCache.get's ``expect``)."""
    (n_a, fp_a), (n_b, fp_b) = _known(a), _known(b)
    return {"n_a": n_a, "n_b": n_b, "fingerprint_a": fp_a, "fingerprint_b": fp_b}


def _stale(lm: LayerMatch, a: tuple | None, b: tuple | None) -> str | None:
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


def _match_held(stack: SAEStack, pa: int, pb: int, call_kw: dict) -> LayerMatch:
    """Match the stack's SAEs at positions ``pa`` and ``pb``: converted, hashed and folded by
    the stack (once per analysis), not again here. A matcher put in ``_MATCH_TARGET`` instead of
    :func:`saematch_nb.match` (tests, benchmarks) gets the stack's weights and does the rest."""
    from .match import match, match_weights

    La, Lb = stack.layers[pa], stack.layers[pb]
    wa, wb = stack.weights(La), stack.weights(Lb)
    stack.fingerprint(La), stack.fingerprint(Lb)  # counted once; match reads the cached hash
    fn = _resolve(_MATCH_TARGET)
    if fn is not match:
        return fn(wa, wb, **call_kw)
    bt = call_kw.get("bad_threshold", "raise")
    return match_weights(wa, wb, stack.folded(La, bad_threshold=bt), stack.folded(Lb, bad_threshold=bt),
                         **call_kw)


def match_pair(stack: SAEStack, layer_a: int, layer_b: int, match_kwargs: Mapping[str, Any], *,
               cache: bool = True, cache_dir: str | os.PathLike | None = None) -> LayerMatch:
    """One pair of the stack's layers (not necessarily adjacent) through the cache
    (``MatchChain.check_composition``)."""
    fn = _resolve(_MATCH_TARGET)
    kw = dict(match_kwargs)
    pa, pb = stack.pos(layer_a), stack.pos(layer_b)
    store = MatchCache(cache_dir) if cache else None
    key = None
    if store is not None:
        a, b = _item(stack, pa), _item(stack, pb)
        key = pair_key(identity(a), identity(b), normalize_options(kw, fn))
        lm = store.get(key, _expect(a, b))
        if lm is not None:
            return lm
    lm = _match_held(stack, pa, pb, {"progress": False, **kw})
    if store is not None:
        lm = store.put(key, lm)
    return lm


# -- match_chain ----------------------------------------------------------------------------------
def match_chain(
    saes: Sequence[Any] | Mapping[int, Any] | SAEStack,
    *,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    executor: Executor | None = None,
    progress: bool = True,
    **match_kwargs: Any,
) -> MatchChain:
    """Match every neighbouring pair of ``saes`` with :func:`saematch_nb.match`.

    ``saes``: a list (or any iterable, read once; or a ``{layer: sae}`` mapping) of anything
    ``as_weights`` accepts, or an :class:`~saematch_nb.core.stack.SAEStack`. SAEs are matched in
    depth order: a mapping by its keys, a list by the layers its SAEs say (sorted; two SAEs on one
    layer are an error), else, where a layer is unknown before loading, in list order (see
    :meth:`SAEStack.build <saematch_nb.core.stack.SAEStack.build>`). Prefer lazy handles (``saematch_nb.load_saes``) or
    paths: they are loaded two at a time and dropped as soon as their pairs are done, and their
    identity (for the cache) needs no loading. ``match_kwargs`` go to ``match`` (fold, params,
    method, allow_unmatched, solver, device, alpha, ...). The chain keeps the SAE stack: later
    steps (``collect_examples``, ``evaluate``, ``coactivation``, ``steer``, the widgets) take the
    chain and need no SAEs.

    ``cache``: read/write finished pairs under ``cache_dir`` (default ``$SAEMATCH_CACHE_DIR`` or
    ``~/.cache/saematch_nb``). Each pair is written the moment it is done: after a crash,
    re-running resumes from the finished pairs. ``executor``: any ``concurrent.futures``
    executor; one task per missing pair, each loading its own two SAEs (see docs/CLUSTER.md).

    ``stats`` of the result: ``cache_hits``, ``cache_misses``, ``computed``, ``seconds``,
    ``pairs`` (per pair: cached, seconds), ``max_saes_held`` / ``peak_held_weights_bytes``
    (SAE weights this process worked with at once), ``rss_peak_before_bytes`` /
    ``rss_peak_after_bytes`` / ``rss_peak_rise_bytes`` (this process's peak resident memory,
    VmHWM on Linux: the rise is how far the chain pushed the peak; 0 when an earlier peak was
    higher), ``python_peak_bytes`` (only when tracemalloc is tracing), ``stack`` (the stack's
    conversions, loads, folds and hashes). In executor mode the workers' peaks are per pair in
    ``pairs[t]["worker_maxrss_bytes"]``.
    """
    import tracemalloc

    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    rss0 = peak_rss_bytes()
    if isinstance(saes, (str, os.PathLike)) or not (hasattr(saes, "__iter__") or isinstance(saes, SAEStack)):
        raise TypeError("match_chain needs a list of SAEs (handles, paths or weights), "
                        f"got {type(saes).__name__}")
    if not isinstance(saes, (Mapping, SAEStack)):
        saes = list(saes)  # a generator (or any one-pass iterable) is read once, here
    match_fn = _resolve(_MATCH_TARGET)
    try:  # a misspelt option fails here, not in every worker
        inspect.signature(match_fn).bind(None, None, **match_kwargs)
    except TypeError as e:
        raise TypeError(f"match_chain: {e}; options are passed to saematch_nb.match "
                        "(fold, params, method, allow_unmatched, solver, device, ...)") from None
    n_given = len(saes)
    if n_given < 2:
        raise ValueError(f"match_chain needs at least two SAEs, got {n_given}")
    # In-memory SAEs become SAEWeights once (tensors are shared); handles and paths stay lazy.
    stack = SAEStack.build(saes)
    options = normalize_options(match_kwargs, match_fn)
    call_kw = {"progress": False, **match_kwargs}
    store = MatchCache(cache_dir) if cache else None
    T = len(stack)
    items = [_item(stack, p) for p in range(T)]
    if store is not None:  # in-memory SAEs are keyed by their hash: the stack computes it, once
        for p in stack._kept:
            stack.fingerprint(stack.layers[p])
    # A handle without a cache_key is loaded once more, alone, to fingerprint it for the cache.
    ids = [identity(x) for x in items] if store is not None else None
    keys_ = [pair_key(ids[t], ids[t + 1], options) for t in range(T - 1)] if ids else None
    n_pairs = T - 1
    pairs: list[LayerMatch | None] = [None] * n_pairs
    per_pair: list[dict] = [{} for _ in range(n_pairs)]
    hits = 0
    held = {"n": 0, "bytes": 0}

    bar = tqdm(total=n_pairs, desc="matching layer pairs", unit="pair", disable=not progress)
    try:
        # Cache first: nothing is loaded for pairs already on disk.
        if store is not None:
            for t in range(n_pairs):
                t0 = time.perf_counter()
                lm = store.get(keys_[t], _expect(items[t], items[t + 1]))
                if lm is not None:
                    pairs[t] = lm
                    per_pair[t] = {"cached": True, "seconds": time.perf_counter() - t0}
                    hits += 1
                    bar.update(1)
            # Files are trusted on their key only as far as they agree: two cached neighbours
            # that disagree about their shared SAE cannot both be right; both are recomputed.
            bad = set()
            for t in range(n_pairs - 1):
                why = _inconsistent(pairs, t)
                if why:
                    warnings.warn(f"recomputing cached pairs {t} and {t + 1} of {store.dir}: {why}",
                                  CacheWarning, stacklevel=2)
                    bad.update((t, t + 1))
            for t in bad:
                store.rejected += 1
                hits -= 1
                pairs[t], per_pair[t] = None, {}
                bar.update(-1)
        bar.set_postfix(cached=hits)
        todo = [t for t in range(n_pairs) if pairs[t] is None]
        while True:  # ends: each round leaves fewer cached pairs to doubt
            if executor is None:
                _run_sequential(todo, stack, pairs, per_pair, held, call_kw, store, keys_, bar)
            else:
                _run_executor(executor, todo, items, pairs, per_pair, call_kw, store, keys_, bar)
            # Handles are keyed by name: check cached pairs against the weights that were loaded
            # anyway (fingerprints of the pairs just computed); a stale one is computed again.
            seen: dict[int, tuple] = {}
            for t in todo:
                seen[t] = (pairs[t].fingerprint_a, pairs[t].n_a)
                seen[t + 1] = (pairs[t].fingerprint_b, pairs[t].n_b)
            todo = []
            for t in range(n_pairs):
                if not per_pair[t].get("cached"):
                    continue
                why = _stale(pairs[t], seen.get(t), seen.get(t + 1))
                if why:
                    warnings.warn(f"recomputing cached pair {t} ({keys_[t]}): {why}", CacheWarning,
                                  stacklevel=2)
                    store.rejected += 1
                    hits -= 1
                    pairs[t], per_pair[t] = None, {}
                    bar.update(-1)
                    todo.append(t)
            if not todo:
                break
    finally:
        bar.close()
        stack.release()  # lazy SAEs and folded copies: nothing held past the chain's own work

    # every pair's hashes are the stack's too (a cached pair's are checked against them above)
    for t, lm in enumerate(pairs):
        stack.note_fingerprint(stack.layers[t], lm.fingerprint_a)
        stack.note_fingerprint(stack.layers[t + 1], lm.fingerprint_b)
    infos = []
    for pos in range(T):
        info = stack._infos.get(pos)
        if info is None or info == SAEInfo():
            info = pairs[pos].info_a if pos < n_pairs else pairs[-1].info_b
            stack._infos[pos] = info
        infos.append(info)
    layers = list(stack.layers)
    if not isinstance(saes, Mapping) and not isinstance(saes, SAEStack):
        ls = [i.layer for i in infos]  # a lazy handle or a path may say its layer only once loaded
        if layers == list(range(T)) and None not in ls and ls != layers:
            # matched in list order (the layers were unknown before loading): fine in depth order,
            # never renumbered otherwise
            done = ("; the finished pairs are cached: the corrected call reuses them" if store is not None
                    and not store.write_failures else "")
            try:
                check_one_per_layer(ls, " once loaded")
            except ValueError as e:
                raise ValueError(f"{e}{done}") from None
            if ls != sorted(ls):
                raise ValueError(
                    f"the SAEs read layers {ls} once loaded, but were matched in list order (their layers "
                    "are not known before loading): pass them in depth order (sorted by layer) or as a "
                    f"{{layer: sae}} mapping{done}")
            layers = ls
            stack.layers = tuple(ls)

    stats: dict[str, Any] = {
        "cache_hits": hits, "cache_misses": n_pairs - hits, "computed": n_pairs - hits,
        "cache_rejected": store.rejected if store is not None else 0,
        "cache_dir": str(store.dir) if store is not None else None,
        "executor": type(executor).__name__ if executor is not None else None,
        "seconds": time.perf_counter() - t_start,
        "max_saes_held": held["n"], "peak_held_weights_bytes": held["bytes"],
        "rss_peak_before_bytes": rss0, "rss_peak_after_bytes": peak_rss_bytes(),
        "pairs": per_pair, "stack": dict(stack.stats),
    }
    stats["rss_peak_rise_bytes"] = stats["rss_peak_after_bytes"] - rss0
    if tracemalloc.is_tracing():
        stats["python_peak_bytes"] = tracemalloc.get_traced_memory()[1]
    return MatchChain(pairs=tuple(pairs), layers=tuple(layers), infos=tuple(infos),
                      options=options, stats=stats, stack=stack)


def _run_sequential(todo, stack: SAEStack, pairs, per_pair, held, call_kw, store, keys_, bar) -> None:
    for t in todo:
        t0 = time.perf_counter()
        try:
            lm = _match_held(stack, t, t + 1, call_kw)
            # the two SAEs of this pair are what the chain works with at once
            held["n"] = max(held["n"], 2)
            held["bytes"] = max(held["bytes"], sum(_weights_bytes(stack.weights(L))
                                                   for L in (stack.layers[t], stack.layers[t + 1])))
        except Exception as e:
            _add_note(e, _resume_note(t, pairs, store))
            raise
        if store is not None:
            lm = store.put(keys_[t], lm)
        pairs[t] = lm
        per_pair[t] = {"cached": False, "seconds": time.perf_counter() - t0}
        bar.update(1)


def _run_executor(executor, todo, items, pairs, per_pair, call_kw, store, keys_, bar) -> None:
    # Workers load their own SAEs: send handles/paths (or the weights if that is all we have).
    futures = {executor.submit(_pair_task, items[t], items[t + 1], call_kw, _MATCH_TARGET): t
               for t in todo}
    errors: dict[int, BaseException] = {}
    for fut in as_completed(futures):
        t = futures[fut]
        try:
            lm, wstats = fut.result()
        except Exception as e:  # finish (and cache) the other pairs before raising
            errors[t] = e
            continue
        lm = replace(lm)  # rebuild: arrays read-only again after pickling
        if store is not None:
            lm = store.put(keys_[t], lm)  # as each completes, not at the end
        pairs[t] = lm
        per_pair[t] = {"cached": False, "seconds": wstats["load_seconds"] + wstats["match_seconds"],
                       **wstats}
        bar.update(1)
    if errors:
        e = errors[min(errors)]
        _add_note(e, _resume_note(min(errors), pairs, store, n_failed=len(errors)))
        raise e


def _resume_note(t: int, pairs: list, store: MatchCache | None, n_failed: int = 1) -> str:
    done = sum(p is not None for p in pairs)
    if store is None:
        where = "they are lost because cache=False"
    elif store.write_failures:
        where = (f"{store.dir} could not be written, so they are not cached: choose a writable "
                 "cache_dir (or $SAEMATCH_CACHE_DIR) to resume after a failure")
    else:
        where = f"they are cached in {store.dir}; run match_chain again to resume"
    return (f"saematch_nb.match_chain: pair {t} failed ({n_failed} pair(s) failed in all); "
            f"{done} finished pair(s): {where}")


__all__ = ["match_chain", "match_pair"]
