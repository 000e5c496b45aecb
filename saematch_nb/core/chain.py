"""Chains of layer matches: match every neighbouring pair of a list of SAEs, then trace features
through depth, compose partner maps and measure how long features persist.

``match_chain`` loads SAEs pairwise (layer t and t+1; t is dropped once t+1's pair is done), so
a 26-layer chain of 65k SAEs never holds more than two of them; every finished pair goes to the
disk cache at once (core/cache.py). With ``executor=`` pairs run in parallel on any
``concurrent.futures.Executor`` (process pool, dask.distributed, Ray): each task gets the two
SAE *handles or paths* and loads its own weights.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import resource
import sys
import time
import warnings
from concurrent.futures import Executor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ._checks import as_index
from .cache import CacheWarning, MatchCache, identity, is_lazy, normalize_options, pair_key
from .results import (FeatureTrace, LayerMatch, ResultFileError, ResultMismatchError, TraceStep, _jsonable,
                      check_format_version)
from .weights import SAEInfo, SAEWeights, as_weights

# 2: LayerMatch files of the null-calibrated criterion
FORMAT_VERSION = 2
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


def _maxrss_bytes() -> int:
    """Peak resident memory of this process so far (bytes)."""
    try:  # Linux: the address space's own high-water mark (ru_maxrss also counts the parent's at exec)
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)  # Linux reports KiB


def _weights_bytes(w: SAEWeights) -> int:
    return sum(int(t.numel()) * int(t.element_size())
               for t in (w.W_enc, w.b_enc, w.W_dec, w.b_dec, w.threshold) if t is not None)


def _pair_task(item_a: Any, item_b: Any, match_kwargs: dict, target: str):
    """One pair, run in a worker: load both SAEs there, match, return the result (no tensors)."""
    t0 = time.perf_counter()
    wa, wb = as_weights(item_a), as_weights(item_b)
    t1 = time.perf_counter()
    lm = _resolve(target)(wa, wb, **match_kwargs)
    return lm, {"load_seconds": t1 - t0, "match_seconds": time.perf_counter() - t1,
                "worker_pid": os.getpid(), "worker_maxrss_bytes": _maxrss_bytes()}


# -- the result -----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class MatchChain:
    """Matches of every neighbouring pair of a list of SAEs.

    ``pairs[t]`` matches the SAE at ``layers[t]`` to the one at ``layers[t+1]``; ``infos[t]``
    identifies the SAE at ``layers[t]``. ``options``: the match options (defaults filled in);
    ``stats``: timings, cache hits/misses, peak memory (see :func:`match_chain`).

    Vocabulary used below: a step ``i -> partner[i]`` of a pair is *accepted* when the pair's
    calibrated criterion says so (``matched[i]``, which implies ``partner[i] != -1``).
    """

    pairs: tuple[LayerMatch, ...]
    layers: tuple[int, ...]
    infos: tuple[SAEInfo, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    stats: Mapping[str, Any] = field(default_factory=dict)
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple(self.pairs))
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        object.__setattr__(self, "infos", tuple(self.infos))
        object.__setattr__(self, "options", dict(self.options))
        object.__setattr__(self, "stats", dict(self.stats))
        if not self.pairs:
            raise ValueError("a MatchChain needs at least one pair (two SAEs)")
        if len(self.layers) != len(self.pairs) + 1 or len(self.infos) != len(self.layers):
            raise ValueError(
                f"a chain of {len(self.pairs)} pairs needs {len(self.pairs) + 1} layers and infos, "
                f"got {len(self.layers)} layers and {len(self.infos)} infos"
            )
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"chain layers must be distinct, got {self.layers}")
        for t in range(len(self.pairs) - 1):
            if self.pairs[t].n_b != self.pairs[t + 1].n_a:
                raise ValueError(
                    f"pair {t} ends with {self.pairs[t].n_b} features but pair {t + 1} starts with "
                    f"{self.pairs[t + 1].n_a}: the pairs do not come from one list of SAEs"
                )

    # -- lookup ---------------------------------------------------------------------------------
    def _pos(self, layer: int) -> int:
        try:
            return self.layers.index(as_index(layer, "layer"))
        except ValueError:
            raise KeyError(f"layer {layer} is not in this chain (layers {self.layers})") from None

    def n_features(self, layer: int) -> int:
        p = self._pos(layer)
        return self.pairs[p].n_a if p < len(self.pairs) else self.pairs[-1].n_b

    def pair(self, layer_from: int) -> LayerMatch:
        """The match of ``layer_from`` to the next layer of the chain."""
        p = self._pos(layer_from)
        if p == len(self.pairs):
            raise KeyError(f"layer {layer_from} is the last layer of the chain: no pair starts there")
        return self.pairs[p]

    def _inverse(self, t: int, kind: str) -> np.ndarray:
        """Map from B-features of pair t back to A-features (-1 = none).

        kind "accepted": accepted steps only; "partner": any partner; "permutation": the raw
        solver assignment. For many-to-one methods (cosine) the preferred source is an accepted
        one, then the lowest MSE.
        """
        key = (t, kind)
        inv = self._memo.get(key)
        if inv is None:
            lm = self.pairs[t]
            fwd = lm.permutation if kind == "permutation" else lm.partner
            ok = fwd >= 0
            if kind == "accepted":
                ok &= lm.matched
            pref = np.lexsort((lm.mse, ~lm.matched))  # accepted first, then by MSE
            pref = pref[ok[pref]]
            targets, first = np.unique(fwd[pref], return_index=True)
            inv = np.full(lm.n_b, -1, dtype=np.int64)
            inv[targets] = pref[first]
            inv.setflags(write=False)
            self._memo[key] = inv
        return inv

    # -- tracing --------------------------------------------------------------------------------
    def trace(self, layer: int, feature: int, *, accepted_only: bool = False) -> FeatureTrace:
        """Follow feature ``feature`` of ``layer`` forward and backward through the chain.

        Forward: ``partner`` of each pair, while it is not -1. Backward: the inverse of each
        pair's partner map (the A-feature whose partner is the current one). With
        ``accepted_only=True`` the walk also stops at the first step the criterion rejects.
        Every step taken is in ``steps`` with its MSE, margin and ``matched`` flag; ``features``
        is -1 at layers the walk did not reach.

        Birth and death use the calibrated criterion, counting from the origin outwards:

        - ``dies_layer``: the last layer reached from the origin through accepted steps only,
          i.e. the feature "dies" after the last accepted step of the unbroken run starting at
          the origin (a rejected or missing partner ends it, even if later steps are accepted
          again). ``None`` when that run reaches the chain's last layer (it survives).
        - ``born_layer``: the first layer reached backward from the origin through accepted
          steps only; ``None`` when that run reaches the chain's first layer (the feature is
          present from the start of the chain; it may be older).
        """
        p = self._pos(layer)
        n = self.n_features(layer)
        feature = as_index(feature, "feature")
        if not 0 <= feature < n:
            raise IndexError(f"feature {feature} is out of range: layer {layer} has {n} features")
        T = len(self.layers)
        feats = [-1] * T
        feats[p] = feature
        steps: list[TraceStep] = []

        def step(t: int, i: int) -> TraceStep:
            lm = self.pairs[t]
            j = int(lm.partner[i])
            return TraceStep(layer=self.layers[t], feature=i, next_layer=self.layers[t + 1],
                             next_feature=j, mse=float(lm.mse[i]), margin=float(lm.margin[i]),
                             matched=bool(lm.matched[i]) and j >= 0)

        last = p  # end of the accepted run forward
        alive = True
        f = feature
        for t in range(p, T - 1):
            s = step(t, f)
            steps.append(s)
            alive = alive and s.matched
            if alive:
                last = t + 1
            if s.next_feature < 0 or (accepted_only and not s.matched):
                break
            feats[t + 1] = f = s.next_feature

        first = p
        alive = True
        f = feature
        for t in range(p - 1, -1, -1):
            i = int(self._inverse(t, "partner")[f])
            if i < 0:
                break
            s = step(t, i)
            if accepted_only and not s.matched:
                break
            steps.append(s)
            alive = alive and s.matched
            if alive:
                first = t
            feats[t] = f = i

        steps.sort(key=lambda s: self.layers.index(s.layer))
        return FeatureTrace(
            origin_layer=self.layers[p], origin_feature=feature, layers=self.layers,
            features=tuple(feats), steps=tuple(steps),
            born_layer=None if first == 0 else self.layers[first],
            dies_layer=None if last == T - 1 else self.layers[last],
            infos=self.infos,
        )

    def compose(self, layer_from: int, layer_to: int, *, raw: bool = False) -> np.ndarray:
        """Composed map from the features of ``layer_from`` to those of ``layer_to`` (-1 = broken).

        Default: only accepted steps (``matched``) are followed, so -1 means the feature has no
        accepted path. ``raw=True`` composes the solver's raw assignments (``permutation``),
        ignoring the criterion, as in the paper's P(A→C) ≈ P(B→C)·P(A→B). ``layer_to`` before
        ``layer_from`` composes the inverse maps.
        """
        p, q = self._pos(layer_from), self._pos(layer_to)
        m = np.arange(self.n_features(layer_from), dtype=np.int64)
        ts = range(p, q) if q >= p else range(p - 1, q - 1, -1)
        for t in ts:
            lm = self.pairs[t]
            v = m >= 0
            nxt = np.full(m.shape, -1, dtype=np.int64)
            if q >= p:
                if raw:
                    nxt[v] = lm.permutation[m[v]]
                else:
                    ok = v.copy()
                    ok[v] = lm.matched[m[v]] & (lm.partner[m[v]] >= 0)
                    nxt[ok] = lm.partner[m[ok]]
            else:
                inv = self._inverse(t, "permutation" if raw else "accepted")
                nxt[v] = inv[m[v]]
            m = nxt
        m.setflags(write=False)
        return m

    # -- statistics -----------------------------------------------------------------------------
    def _lifetimes(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per layer: accepted steps forward (lifetime) and backward (age) of every feature."""
        got = self._memo.get("lifetimes")
        if got is None:
            T = len(self.layers)
            life = [np.zeros(self.n_features(x), dtype=np.int64) for x in self.layers]
            age = [np.zeros(self.n_features(x), dtype=np.int64) for x in self.layers]
            for t in range(T - 2, -1, -1):
                lm = self.pairs[t]
                ok = lm.matched & (lm.partner >= 0)
                life[t][ok] = 1 + life[t + 1][lm.partner[ok]]
            for t in range(T - 1):
                lm = self.pairs[t]
                ok = lm.matched & (lm.partner >= 0)
                # many-to-one: the oldest source wins
                np.maximum.at(age[t + 1], lm.partner[ok], age[t][ok] + 1)
            got = (life, age)
            self._memo["lifetimes"] = got
        return got

    def persistence(self, by: str = "feature", *, normalize: bool = False):
        """For how many consecutive layers features keep an accepted partner.

        ``by="feature"``: DataFrame indexed by (layer, feature) with ``lifetime`` (accepted steps
        forward: the feature is still there ``lifetime`` layers later), ``age`` (accepted steps
        backward), ``survives`` (the run reaches the last layer: lifetime is censored) and
        ``from_start`` (it reaches the first layer).
        ``by="layer"``: distribution per start layer: rows = layer, columns = lifetime 0..T-1,
        values = number of features (fraction of the layer's features with ``normalize=True``);
        a feature at position s can live at most T-1-s more layers.
        """
        import pandas as pd

        life, age = self._lifetimes()
        T = len(self.layers)
        if by == "feature":
            frames = []
            for s, x in enumerate(self.layers):
                frames.append(pd.DataFrame({
                    "layer": x, "feature": np.arange(len(life[s])), "lifetime": life[s],
                    "age": age[s], "survives": life[s] == T - 1 - s, "from_start": age[s] == s,
                }))
            return pd.concat(frames, ignore_index=True).set_index(["layer", "feature"])
        if by == "layer":
            counts = np.stack([np.bincount(life[s], minlength=T) for s in range(T)])
            df = pd.DataFrame(counts, index=pd.Index(self.layers, name="layer"),
                              columns=pd.Index(range(T), name="lifetime"))
            if normalize:
                df = df.div(df.sum(axis=1), axis=0)
            return df
        raise ValueError(f"persistence(by=...) must be 'feature' or 'layer', got {by!r}")

    def agreement(self, layer_from: int, layer_to: int, direct: LayerMatch, *,
                  raw: bool = False) -> float:
        """Fraction of features of ``layer_from`` whose composed map to ``layer_to`` equals the
        direct match ``direct`` (layer_from → layer_to): the paper's P(A→C) ≈ P(B→C)·P(A→B).

        Default: among features with an unbroken accepted path, compare with ``direct.partner``
        (NaN if no feature has one). ``raw=True``: over all features, raw composed assignments
        against ``direct.permutation``.
        """
        p, q = self._pos(layer_from), self._pos(layer_to)
        n_from, n_to = self.n_features(layer_from), self.n_features(layer_to)
        if (direct.n_a, direct.n_b) != (n_from, n_to):
            raise ValueError(
                f"the direct match is {direct.n_a}→{direct.n_b} features but layers {layer_from}→"
                f"{layer_to} of the chain have {n_from}→{n_to}: pass match(sae_{layer_from}, "
                f"sae_{layer_to}) of the same SAEs"
            )
        fp_a = self.pairs[p].fingerprint_a if p < len(self.pairs) else self.pairs[-1].fingerprint_b
        fp_b = self.pairs[q].fingerprint_a if q < len(self.pairs) else self.pairs[-1].fingerprint_b
        for side, mine, theirs in (("A", fp_a, direct.fingerprint_a), ("B", fp_b, direct.fingerprint_b)):
            if mine and theirs and mine != theirs:
                raise ResultMismatchError(
                    f"the direct match's SAE {side} (weights hash {theirs}) is not the chain's SAE at "
                    f"that layer (hash {mine}): match the same SAEs the chain was built from"
                )
        comp = self.compose(layer_from, layer_to, raw=raw)
        if raw:
            return float(np.mean(comp == direct.permutation)) if len(comp) else float("nan")
        sel = comp >= 0
        return float(np.mean(comp[sel] == direct.partner[sel])) if sel.any() else float("nan")

    def check_composition(self, saes: Sequence[Any] | Mapping[int, Any], layer_from: int,
                          layer_to: int, *, raw: bool = False, cache: bool = True,
                          cache_dir: str | os.PathLike | None = None, **match_kwargs: Any) -> float:
        """Match ``layer_from`` → ``layer_to`` directly (same options as the chain, overridable)
        and return :meth:`agreement` with the composed chain. ``saes``: the same list (or
        {layer: sae} mapping) the chain was built from."""
        items = _as_layer_map(saes, self.layers)
        kw = {k: v for k, v in self.options.items()}
        kw.update(match_kwargs)
        direct, _ = _match_cached(items[layer_from], items[layer_to], kw,
                                  MatchCache(cache_dir) if cache else None)
        return self.agreement(layer_from, layer_to, direct, raw=raw)

    # -- tables ---------------------------------------------------------------------------------
    def summary(self):
        """One row per pair (LayerMatch.summary() plus whether it came from the cache)."""
        import pandas as pd

        per_pair = self.stats.get("pairs") or [{} for _ in self.pairs]
        rows = []
        for t, lm in enumerate(self.pairs):
            row = lm.summary()
            row["layer_a"], row["layer_b"] = self.layers[t], self.layers[t + 1]
            info = per_pair[t] if t < len(per_pair) else {}
            row["cached"] = info.get("cached")
            row["seconds"] = info.get("seconds")
            rows.append(row)
        return pd.DataFrame(rows).rename_axis("pair")

    def to_pandas(self):
        """One row per (layer, feature) of every pair's A side: partner in the next layer, MSE,
        margin, matched."""
        import pandas as pd

        frames = []
        for t, lm in enumerate(self.pairs):
            df = lm.to_pandas().reset_index()
            df.insert(0, "layer", self.layers[t])
            df.insert(2, "next_layer", self.layers[t + 1])
            frames.append(df)
        return pd.concat(frames, ignore_index=True).set_index(["layer", "feature"])

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write to a folder: one LayerMatch ``pair_NNN.npz`` per pair + ``chain.json`` (last)."""
        d = Path(path)
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(f"{d} exists and is not a folder: MatchChain.save needs a folder")
        d.mkdir(parents=True, exist_ok=True)
        files = []
        for t, lm in enumerate(self.pairs):
            files.append(lm.save(d / f"pair_{t:03d}.npz").name)
        meta = {
            "format_version": FORMAT_VERSION, "kind": "MatchChain", "layers": list(self.layers),
            "infos": [i.to_dict() for i in self.infos], "options": _jsonable(self.options),
            "stats": _jsonable(self.stats), "files": files,
        }
        tmp = d / f".chain.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, d / "chain.json")  # the chain is complete once chain.json is there
        return d

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MatchChain":
        d = Path(path)
        f = d / "chain.json"
        if not f.exists():
            raise FileNotFoundError(f"{d} holds no chain.json: not a folder written by MatchChain.save")
        try:
            meta = json.loads(f.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ResultFileError(f"{f} is not readable JSON ({e}); it is damaged or truncated: "
                                  "recompute the chain and save it again") from e
        if not isinstance(meta, dict) or meta.get("kind") != "MatchChain":
            kind = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
            raise ResultFileError(f"{f} describes a {kind!r}, not a MatchChain")
        check_format_version(meta, f, "MatchChain", FORMAT_VERSION)
        pairs = tuple(LayerMatch.load(d / name) for name in meta["files"])
        return cls(pairs=pairs, layers=tuple(meta["layers"]),
                   infos=tuple(SAEInfo.from_dict(i) for i in meta["infos"]),
                   options=meta.get("options", {}), stats=meta.get("stats", {}))

    # -- reprs ----------------------------------------------------------------------------------
    def __repr__(self) -> str:
        from ..display import text

        return text.chain_text(self)

    def _repr_html_(self) -> str:
        from ..display import html

        return html.chain_html(self)


# -- building a chain ---------------------------------------------------------------------------
def _as_layer_map(saes: Any, layers: Sequence[int]) -> dict[int, Any]:
    if isinstance(saes, Mapping):
        return {int(k): v for k, v in saes.items()}
    saes = list(saes)
    if len(saes) != len(layers):
        raise ValueError(f"expected the {len(layers)} SAEs the chain was built from, got {len(saes)}")
    return dict(zip(layers, saes))


def _peek_info(obj: Any) -> SAEInfo | None:
    """The SAE's info when it is known without loading weights."""
    if isinstance(obj, SAEWeights):
        return obj.info
    info = getattr(obj, "info", None) if hasattr(obj, "to_weights") else None
    return info if isinstance(info, SAEInfo) else None


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


def _match_cached(a: Any, b: Any, match_kwargs: dict, store: MatchCache | None):
    """One pair through the cache (used by check_composition)."""
    fn = _resolve(_MATCH_TARGET)
    key = pair_key(identity(a), identity(b), normalize_options(match_kwargs, fn)) if store else None
    if store is not None:
        lm = store.get(key, _expect(a, b))
        if lm is not None:
            return lm, True
    call_kw = {"progress": False, **match_kwargs}
    lm = fn(as_weights(a), as_weights(b), **call_kw)
    if store is not None:
        lm = store.put(key, lm)
    return lm, False


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


def _inconsistent(pairs: list, t: int) -> str | None:
    """Why cached pairs t and t+1 cannot both be right: they disagree about the SAE they share."""
    x, y = pairs[t], pairs[t + 1]
    if x is None or y is None:
        return None
    if x.n_b != y.n_a:
        return f"pair {t} ends with {x.n_b} features but pair {t + 1} starts with {y.n_a}"
    if x.fingerprint_b and y.fingerprint_a and x.fingerprint_b != y.fingerprint_a:
        return (f"pair {t} ends with an SAE of weights hash {x.fingerprint_b} but pair {t + 1} starts "
                f"with one of hash {y.fingerprint_a}")
    return None


def match_chain(
    saes: Sequence[Any] | Mapping[int, Any],
    *,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    executor: Executor | None = None,
    progress: bool = True,
    **match_kwargs: Any,
) -> MatchChain:
    """Match every neighbouring pair of ``saes`` with :func:`saematch_nb.match`.

    ``saes``: a list (or ``{layer: sae}`` mapping) of anything ``as_weights`` accepts. Prefer
    lazy handles (``saematch_nb.load_saes``) or paths: they are loaded two at a time and dropped
    as soon as their pairs are done, and their identity (for the cache) needs no loading.
    ``match_kwargs`` go to ``match`` (fold, params, method, allow_unmatched, solver, device).

    ``cache``: read/write finished pairs under ``cache_dir`` (default ``$SAEMATCH_CACHE_DIR`` or
    ``~/.cache/saematch_nb``). Each pair is written the moment it is done: after a crash,
    re-running resumes from the finished pairs. ``executor``: any ``concurrent.futures``
    executor; one task per missing pair, each loading its own two SAEs (see docs/CLUSTER.md).

    ``stats`` of the result: ``cache_hits``, ``cache_misses``, ``computed``, ``seconds``,
    ``pairs`` (per pair: cached, seconds), ``max_saes_held`` / ``peak_held_weights_bytes``
    (SAE weights this process held at once), ``rss_peak_before_bytes`` /
    ``rss_peak_after_bytes`` / ``rss_peak_rise_bytes`` (this process's peak resident memory,
    VmHWM on Linux: the rise is how far the chain pushed the peak; 0 when an earlier peak was
    higher), ``python_peak_bytes`` (only when tracemalloc is tracing). In executor mode the
    workers' peaks are per pair in ``pairs[t]["worker_maxrss_bytes"]``.
    """
    import tracemalloc

    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    rss0 = _maxrss_bytes()
    if isinstance(saes, Mapping):
        keys = sorted(saes)
        items = [saes[k] for k in keys]
        given_layers: list[int | None] | None = [int(k) for k in keys]
    else:
        if isinstance(saes, (str, os.PathLike)) or not hasattr(saes, "__iter__"):
            raise TypeError("match_chain needs a list of SAEs (handles, paths or weights), "
                            f"got {type(saes).__name__}")
        items = list(saes)
        given_layers = None
    if len(items) < 2:
        raise ValueError(f"match_chain needs at least two SAEs, got {len(items)}")
    # In-memory objects (sae-lens SAEs, mappings) become SAEWeights once (tensors are shared);
    # handles and paths stay as they are, to be loaded two at a time. A handle without a
    # cache_key is loaded once more, alone, to fingerprint it for the cache.
    items = [x if (is_lazy(x) or hasattr(x, "to_weights") or isinstance(x, SAEWeights))
             else as_weights(x) for x in items]

    match_fn = _resolve(_MATCH_TARGET)
    try:  # a misspelt option fails here, not in every worker
        inspect.signature(match_fn).bind(None, None, **match_kwargs)
    except TypeError as e:
        raise TypeError(f"match_chain: {e}; options are passed to saematch_nb.match "
                        "(fold, params, method, allow_unmatched, solver, device, ...)") from None
    options = normalize_options(match_kwargs, match_fn)
    call_kw = {"progress": False, **match_kwargs}
    store = MatchCache(cache_dir) if cache else None
    ids = [identity(x) for x in items] if store is not None else None
    keys_ = [pair_key(ids[t], ids[t + 1], options) for t in range(len(items) - 1)] if ids else None
    T = len(items)
    n_pairs = T - 1
    pairs: list[LayerMatch | None] = [None] * n_pairs
    per_pair: list[dict] = [{} for _ in range(n_pairs)]
    hits = 0
    held: dict[int, SAEWeights] = {}
    held_peak_bytes = held_peak_n = 0

    def note_held() -> None:
        nonlocal held_peak_bytes, held_peak_n
        held_peak_n = max(held_peak_n, len(held))
        held_peak_bytes = max(held_peak_bytes, sum(_weights_bytes(w) for w in held.values()))

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
                _run_sequential(todo, items, pairs, per_pair, held, note_held, call_kw, store, keys_, bar)
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
        held.clear()

    infos = []
    for pos in range(T):
        info = _peek_info(items[pos])
        if info is None or info == SAEInfo():
            info = pairs[pos].info_a if pos < n_pairs else pairs[-1].info_b
        infos.append(info)
    if given_layers is not None:
        layers = given_layers
    else:
        ls = [i.layer for i in infos]
        layers = ls if (None not in ls and len(set(ls)) == len(ls)) else list(range(T))

    stats: dict[str, Any] = {
        "cache_hits": hits, "cache_misses": n_pairs - hits, "computed": n_pairs - hits,
        "cache_rejected": store.rejected if store is not None else 0,
        "cache_dir": str(store.dir) if store is not None else None,
        "executor": type(executor).__name__ if executor is not None else None,
        "seconds": time.perf_counter() - t_start,
        "max_saes_held": held_peak_n, "peak_held_weights_bytes": held_peak_bytes,
        "rss_peak_before_bytes": rss0, "rss_peak_after_bytes": _maxrss_bytes(),
        "pairs": per_pair,
    }
    stats["rss_peak_rise_bytes"] = stats["rss_peak_after_bytes"] - rss0
    if tracemalloc.is_tracing():
        stats["python_peak_bytes"] = tracemalloc.get_traced_memory()[1]
    return MatchChain(pairs=tuple(pairs), layers=tuple(layers), infos=tuple(infos),
                      options=options, stats=stats)


def _run_sequential(todo, items, pairs, per_pair, held, note_held, call_kw, store, keys_, bar) -> None:
    for t in todo:
        t0 = time.perf_counter()
        # Keep only the two SAEs of this pair (t+1 is reused by the next pair).
        for pos in [p for p in held if p not in (t, t + 1)]:
            del held[pos]
        try:
            for pos in (t, t + 1):
                if pos not in held:
                    held[pos] = as_weights(items[pos])
            note_held()
            lm = _resolve(_MATCH_TARGET)(held[t], held[t + 1], **call_kw)
        except Exception as e:
            _add_note(e, _resume_note(t, pairs, store))
            raise
        if store is not None:
            lm = store.put(keys_[t], lm)
        pairs[t] = lm
        per_pair[t] = {"cached": False, "seconds": time.perf_counter() - t0}
        bar.update(1)
    held.clear()


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


__all__ = ["MatchChain", "match_chain"]
