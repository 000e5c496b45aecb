"""Building a :class:`~saematch_nb.core.chain.MatchChain`: ``match_chain``.

``match_chain`` builds the analysis' :class:`~saematch_nb.core.stack.SAEStack` once, then matches
every neighbouring pair (:mod:`saematch_nb.core.pair`): sequentially (the stack holds at most two
lazy SAEs, each layer converted, hashed and folded once), or on any ``concurrent.futures.Executor``
(process pool, dask.distributed, Ray: each task gets the two SAE *handles or paths* and loads its
own weights). Every finished pair goes to the disk cache at once (core/cache.py), so a crash
mid-chain loses no finished pair; cached pairs are checked against the SAEs at hand before they
are trusted. Memory is accounted (peak resident set, SAE weights held) in the chain's ``stats``.

The steps, in order (each a method of :class:`_Run`): read the cached pairs; drop cached
neighbours that disagree about the SAE they share; compute the missing pairs, then drop cached
pairs that the weights loaded meanwhile prove stale, and compute those (until none is left); read
each SAE's identity and layer; assemble the chain and its stats.
"""

from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import Executor, as_completed
from dataclasses import replace
from typing import Any, Mapping, Sequence

from ..errors import SaematchWarning
from ._memory import peak_rss_bytes
from .cost import default_device
from .cache import CacheWarning, MatchCache, identity, pair_key
from .chain import MatchChain
from .options import MatchOptions
from .pair import conflict, expect, match_held, stale, task
from . import pair as _pair
from .results import LayerMatch
from .stack import SAEStack, check_one_per_layer, weights_bytes
from .weights import SAEInfo


def match_chain(
    saes: Sequence[Any] | Mapping[int, Any] | SAEStack,
    *,
    options: MatchOptions | Mapping[str, Any] | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    executor: Executor | None = None,
    progress: bool = True,
    **keywords: Any,
) -> MatchChain:
    """Match every neighbouring pair of ``saes`` with :func:`saematch_nb.match`.

    ``saes``: a list (or any iterable, read once; or a ``{layer: sae}`` mapping) of anything
    ``as_weights`` accepts, or an :class:`~saematch_nb.core.stack.SAEStack`. SAEs are matched in
    depth order: a mapping by its keys, a list by the layers its SAEs say (sorted; two SAEs on one
    layer are an error), else, where a layer is unknown before loading, in list order (see
    :meth:`SAEStack.build <saematch_nb.core.stack.SAEStack.build>`). Prefer lazy handles (``saematch_nb.load_saes``) or
    paths: they are loaded two at a time and dropped as soon as their pairs are done, and their
    identity (for the cache) needs no loading. ``options`` (a :class:`~saematch_nb.MatchOptions`)
    and ``keywords`` (its fields: fold, params, method, allow_unmatched, solver, device, alpha, ...;
    keywords win) are what ``match`` does with every pair. The chain keeps the SAE stack: later
    steps (``collect_examples``, ``evaluate``, ``coactivation``, ``steer``, the widgets) take the
    chain and need no SAEs.

    ``cache``: read/write finished pairs under ``cache_dir`` (default ``$SAEMATCH_CACHE_DIR`` or
    the user cache folder, ``~/.cache/saematch_nb`` on Linux). Each pair is written the moment it is
    done: after a crash, re-running resumes from the finished pairs. ``executor``: any
    ``concurrent.futures`` executor; one task per missing pair, each loading its own two SAEs (see
    docs/CLUSTER.md).

    ``stats`` of the result: ``cache_hits``, ``cache_misses``, ``computed``, ``seconds``,
    ``pairs`` (per pair: cached, seconds), ``max_saes_held`` / ``peak_held_weights_bytes``
    (SAE weights this process worked with at once), ``rss_peak_before_bytes`` /
    ``rss_peak_after_bytes`` / ``rss_peak_rise_bytes`` (this process's peak resident memory,
    VmHWM on Linux: the rise is how far the chain pushed the peak; 0 when an earlier peak was
    higher; None on Windows), ``python_peak_bytes`` (only when tracemalloc is tracing), ``stack``
    (the stack's conversions, loads, folds and hashes). In executor mode the workers' peaks are per
    pair in ``pairs[t]["worker_maxrss_bytes"]``.
    """
    opts = MatchOptions.of(options, **keywords)
    default_device(opts.device)  # a GPU this machine lacks is said before any SAE is loaded
    run = _Run.start(saes, opts, cache=cache, cache_dir=cache_dir,
                     executor=executor, progress=progress)
    try:
        run.read_cache()
        run.drop_conflicting_neighbours()
        run.compute_missing()
    finally:
        run.close()
    run.read_identities()
    return run.result()


class _Run:
    """The state of one ``match_chain`` call, advanced by its steps (see the module docstring)."""

    def __init__(self, saes: Any, stack: SAEStack, options: MatchOptions, store: MatchCache | None,
                 executor: Executor | None, progress: bool) -> None:
        from tqdm.auto import tqdm

        self.t_start, self.rss0 = time.perf_counter(), peak_rss_bytes()
        self.given, self.stack, self.options, self.store, self.executor = saes, stack, options, store, executor
        self.n = len(stack) - 1
        self.pairs: list[LayerMatch | None] = [None] * self.n
        self.per_pair: list[dict] = [{} for _ in range(self.n)]
        self.held = {"n": 0, "bytes": 0}
        # what identifies each SAE: the converted weights of in-memory SAEs (hashed once, by the
        # stack), else the handle or path (a handle without a cache_key is loaded once, alone, to
        # fingerprint it)
        self.items = [stack.handoff(L) for L in stack.layers]
        self.keys: list[str] | None = None
        if store is not None:
            for L in stack.in_memory_layers:
                stack.fingerprint(L)
            ids = [identity(x) for x in self.items]
            self.keys = [pair_key(ids[t], ids[t + 1], options.key()) for t in range(self.n)]
        self.bar = tqdm(total=self.n, desc="matching layer pairs", unit="pair", disable=not progress)

    @classmethod
    def start(cls, saes: Any, options: MatchOptions, *, cache: bool, cache_dir: Any, executor: Executor | None,
              progress: bool) -> "_Run":
        if isinstance(saes, (str, os.PathLike)) or not (hasattr(saes, "__iter__") or isinstance(saes, SAEStack)):
            raise TypeError("match_chain needs a list of SAEs (handles, paths or weights), "
                            f"got {type(saes).__name__}")
        if not isinstance(saes, (Mapping, SAEStack)):
            saes = list(saes)  # a generator (or any one-pass iterable) is read once, here
        if len(saes) < 2:
            raise ValueError(f"match_chain needs at least two SAEs, got {len(saes)}")
        # in-memory SAEs become SAEWeights once (tensors are shared); handles and paths stay lazy
        stack = SAEStack.build(saes)
        return cls(saes, stack, options, MatchCache(cache_dir) if cache else None, executor, progress)

    # -- the pairs' state: the progress bar and the hit count follow it, never patched by hand ----
    @property
    def hits(self) -> int:
        return sum(bool(p.get("cached")) for p in self.per_pair)

    def _show(self) -> None:
        self.bar.n = sum(p is not None for p in self.pairs)
        self.bar.set_postfix(cached=self.hits)  # refreshes the bar

    def _done(self, t: int, lm: LayerMatch, info: dict) -> None:
        self.pairs[t], self.per_pair[t] = lm, info
        self._show()

    def _doubt(self, t: int, why: str) -> None:
        """A cached pair that cannot be trusted: warned, counted, computed again."""
        warnings.warn(why, CacheWarning, stacklevel=4)
        self.store.rejected += 1
        self.pairs[t], self.per_pair[t] = None, {}
        self._show()

    # -- the steps ----------------------------------------------------------------------------
    def read_cache(self) -> None:
        """Pairs already on disk: nothing is loaded for them."""
        if self.store is None:
            return
        for t in range(self.n):
            t0 = time.perf_counter()
            lm = self.store.get(self.keys[t], expect(self.items[t], self.items[t + 1]))
            if lm is not None:
                self._done(t, lm, {"cached": True, "seconds": time.perf_counter() - t0})

    def drop_conflicting_neighbours(self) -> None:
        """Files are trusted on their key only as far as they agree: two cached neighbours that
        disagree about their shared SAE cannot both be right; both are recomputed."""
        bad: dict[int, str] = {}
        for t in range(self.n - 1):
            why = conflict(self.pairs, t)
            if why:
                bad[t] = bad[t + 1] = f"recomputing cached pairs {t} and {t + 1} of {self.store.dir}: {why}"
        for t, why in sorted(bad.items()):
            self._doubt(t, why)

    def compute_missing(self) -> None:
        """Compute every pair not read from the cache; then cached pairs that the weights loaded
        meanwhile prove stale (handles are keyed by name) are computed too. Ends: each round leaves
        fewer cached pairs to doubt."""
        todo = [t for t in range(self.n) if self.pairs[t] is None]
        while todo:
            if self.executor is None:
                self._compute_here(todo)
            else:
                self._compute_on_executor(todo)
            seen: dict[int, tuple] = {}  # the SAEs' (hash, width) as the pairs just computed saw them
            for t in todo:
                seen[t] = (self.pairs[t].fingerprint_a, self.pairs[t].n_a)
                seen[t + 1] = (self.pairs[t].fingerprint_b, self.pairs[t].n_b)
            todo = []
            for t in range(self.n):
                why = stale(self.pairs[t], seen.get(t), seen.get(t + 1)) if self.per_pair[t].get("cached") else None
                if why:
                    self._doubt(t, f"recomputing cached pair {t} ({self.keys[t]}): {why}")
                    todo.append(t)

    def _compute_here(self, todo: list[int]) -> None:
        st = self.stack
        for t in todo:
            t0 = time.perf_counter()
            La, Lb = st.layers[t], st.layers[t + 1]
            try:
                lm = match_held(st, La, Lb, self.options)
            except Exception as e:
                _add_note(e, self._resume_note(t))
                raise
            # the two SAEs of this pair are what the chain works with at once
            self.held["n"] = max(self.held["n"], 2)
            self.held["bytes"] = max(self.held["bytes"], weights_bytes(st.weights(La)) + weights_bytes(st.weights(Lb)))
            self._done(t, self._store(t, lm), {"cached": False, "seconds": time.perf_counter() - t0})

    def _compute_on_executor(self, todo: list[int]) -> None:
        # workers load their own SAEs: handles / paths are sent (or the weights if that is all there is)
        futures = {self.executor.submit(task, self.items[t], self.items[t + 1], self.options, _pair.MATCHER): t
                   for t in todo}
        errors: dict[int, BaseException] = {}
        for fut in as_completed(futures):
            t = futures[fut]
            try:
                lm, wstats = fut.result()
            except Exception as e:  # finish (and cache) the other pairs before raising
                errors[t] = e
                continue
            lm = replace(lm)  # rebuilt: arrays read-only again after pickling
            self._done(t, self._store(t, lm),
                       {"cached": False, "seconds": wstats["load_seconds"] + wstats["match_seconds"], **wstats})
        if errors:
            e = errors[min(errors)]
            _add_note(e, self._resume_note(min(errors), n_failed=len(errors)))
            raise e

    def _store(self, t: int, lm: LayerMatch) -> LayerMatch:
        return lm if self.store is None else self.store.put(self.keys[t], lm)  # as each completes

    def close(self) -> None:
        self.bar.close()
        self.stack.release()  # lazy SAEs and folded copies: nothing held past the chain's own work

    def read_identities(self) -> None:
        """Each SAE's hash and info, from the pairs (a cached pair's were checked above); a list
        of lazy SAEs whose layers were unknown before loading is numbered by the layers they say."""
        st, pairs = self.stack, self.pairs
        for t, lm in enumerate(pairs):
            st.note_fingerprint(st.layers[t], lm.fingerprint_a)
            st.note_fingerprint(st.layers[t + 1], lm.fingerprint_b)
        for pos, L in enumerate(st.layers):
            info = st.known_info(L)
            if info is None or info == SAEInfo():
                st.set_info(L, pairs[pos].info_a if pos < self.n else pairs[-1].info_b)
        if isinstance(self.given, (Mapping, SAEStack)):
            return
        said = [st.known_info(L).layer for L in st.layers]
        if list(st.layers) == list(range(len(st))) and None not in said and said != list(st.layers):
            # matched in list order (the layers were unknown before loading): fine in depth order,
            # never renumbered otherwise
            done = ("; the finished pairs are cached: the corrected call reuses them" if self.store is not None
                    and not self.store.write_failures else "")
            try:
                check_one_per_layer(said, " once loaded")
            except ValueError as e:
                raise ValueError(f"{e}{done}") from None
            if said != sorted(said):
                raise ValueError(
                    f"the SAEs read layers {said} once loaded, but were matched in list order (their layers "
                    "are not known before loading): pass them in depth order (sorted by layer) or as a "
                    f"{{layer: sae}} mapping{done}")
            st.relabel(said)

    def result(self) -> MatchChain:
        import tracemalloc

        st, store, hits = self.stack, self.store, self.hits
        stats: dict[str, Any] = {
            "cache_hits": hits, "cache_misses": self.n - hits, "computed": self.n - hits,
            "cache_rejected": store.rejected if store is not None else 0,
            "cache_dir": str(store.dir) if store is not None else None,
            "executor": type(self.executor).__name__ if self.executor is not None else None,
            "seconds": time.perf_counter() - self.t_start,
            "max_saes_held": self.held["n"], "peak_held_weights_bytes": self.held["bytes"],
            "rss_peak_before_bytes": self.rss0, "rss_peak_after_bytes": peak_rss_bytes(),
            "pairs": self.per_pair, "stack": dict(st.stats),
        }
        after = stats["rss_peak_after_bytes"]  # None where the platform cannot say (Windows)
        stats["rss_peak_rise_bytes"] = None if after is None or self.rss0 is None else after - self.rss0
        if tracemalloc.is_tracing():
            stats["python_peak_bytes"] = tracemalloc.get_traced_memory()[1]
        return MatchChain(pairs=tuple(self.pairs), layers=tuple(st.layers), infos=st.infos,
                          options=self.options.key(), stats=stats, stack=st)

    def _resume_note(self, t: int, n_failed: int = 1) -> str:
        done, store = sum(p is not None for p in self.pairs), self.store
        if store is None:
            where = "they are lost because cache=False"
        elif store.write_failures:
            where = (f"{store.dir} could not be written, so they are not cached: choose a writable "
                     "cache_dir (or $SAEMATCH_CACHE_DIR) to resume after a failure")
        else:
            where = f"they are cached in {store.dir}; run match_chain again to resume"
        return (f"saematch_nb.match_chain: pair {t} failed ({n_failed} pair(s) failed in all); "
                f"{done} finished pair(s): {where}")


class FailedPairWarning(SaematchWarning, RuntimeWarning):
    """Python 3.10 only: a failed pair's note (which pairs finished, where they are cached) shown
    as a warning, since exceptions take notes only from 3.11."""


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
    warnings.warn(note, FailedPairWarning, stacklevel=3)


__all__ = ["match_chain", "FailedPairWarning"]
