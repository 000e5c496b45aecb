"""The result of matching every neighbouring pair of a list of SAEs: :class:`MatchChain`.

Trace features through depth, compose partner maps, measure how long features persist, save and
load. The chain keeps the :class:`~saematch_nb.core.stack.SAEStack` it was built from (when built
by :func:`saematch_nb.match_chain`, or attached with :meth:`MatchChain.attach`), so every later step
of an analysis (examples, evaluation, co-activation, steering) takes the chain and never needs the
SAEs again. Building a chain (cache, executors, memory accounting) is core/runner.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ._checks import as_index
from .results import (FeatureTrace, LayerMatch, ResultFileError, ResultMismatchError, TraceStep, jsonable,
                      check_format_version)
from .options import MatchOptions
from .pair import conflict
from .stack import SAEStack
from .weights import SAEInfo

# 2: LayerMatch files of the null-calibrated criterion
FORMAT_VERSION = 2


# -- the result -----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class MatchChain:
    """Matches of every neighbouring pair of a list of SAEs.

    ``pairs[t]`` matches the SAE at ``layers[t]`` to the one at ``layers[t+1]``; ``infos[t]``
    identifies the SAE at ``layers[t]``. ``options``: what the pairs were matched with,
``MatchOptions.key()`` (a plain mapping, as saved; ``MatchOptions.of(chain.options)`` gives the value);
    ``stats``: timings, cache hits/misses, peak memory (see :func:`match_chain`).

    Vocabulary used below: a step ``i -> partner[i]`` of a pair is *accepted* when the pair's
    calibrated criterion says so (``matched[i]``, which implies ``partner[i] != -1``).
    """

    pairs: tuple[LayerMatch, ...]
    layers: tuple[int, ...]
    infos: tuple[SAEInfo, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    stats: Mapping[str, Any] = field(default_factory=dict)
    #: the SAEs of the analysis (None for a chain loaded from disk without them: see attach)
    stack: SAEStack | None = field(default=None, repr=False, compare=False)
    # traces, inverses, lifetimes of *these* pairs: never passed on by dataclasses.replace
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

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

    def _side(self, p: int, a: str, b: str) -> Any:
        """Attribute ``a`` of the pair starting at position p, or ``b`` of the last pair for the
        last layer (each layer's facts live in the pairs on either side of it)."""
        return getattr(self.pairs[p], a) if p < len(self.pairs) else getattr(self.pairs[-1], b)

    def n_features(self, layer: int) -> int:
        return int(self._side(self._pos(layer), "n_a", "n_b"))

    def fingerprint(self, layer: int) -> str:
        """Weights hash of the SAE at ``layer`` as the chain's matches recorded it ("" = unknown)."""
        return str(self._side(self._pos(layer), "fingerprint_a", "fingerprint_b") or "")

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(self.fingerprint(L) for L in self.layers)

    def attach(self, saes: Any) -> "MatchChain":
        """This chain with its SAEs attached (e.g. after :meth:`load`), checked layer by layer
        against the weights hashes its matches recorded. A list as long as the chain is taken in the
        chain's layer order, or, failing that, in the SAEs' own depth order (as match_chain took it)."""
        if not isinstance(saes, (Mapping, SAEStack, str, os.PathLike)) and hasattr(saes, "__iter__"):
            saes = list(saes)  # a generator is read once
        if isinstance(saes, (Mapping, SAEStack)) or len(saes) != len(self.layers):
            return self._attached(SAEStack.build(saes))
        try:
            return self._attached(SAEStack.build(saes, layers=self.layers))
        except ResultMismatchError as first:
            try:
                st = SAEStack.build(saes)
            except ValueError:
                raise first from None
            if tuple(st.layers) != self.layers:
                raise first from None
            return self._attached(st)

    def _attached(self, st: SAEStack) -> "MatchChain":
        if tuple(st.layers) != self.layers:
            raise ValueError(f"the SAEs given are for layers {st.layers}, the chain has layers {self.layers}")
        for L in self.layers:
            want = self.fingerprint(L)
            got = st.fingerprint(L)
            if want and got != want:
                raise ResultMismatchError(
                    f"the SAE given for layer {L} (weights hash {got}) is not the one this chain was "
                    f"matched on (hash {want}): attach the SAEs the chain was built from")
        return replace(self, stack=st)

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
                             matched=bool(lm.matched[i]) and j >= 0, score=float(lm.score[i]),
                             threshold=float(lm.threshold))

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
        self._pos(layer_from), self._pos(layer_to)  # an unknown layer is a KeyError naming the chain's
        n_from, n_to = self.n_features(layer_from), self.n_features(layer_to)
        if (direct.n_a, direct.n_b) != (n_from, n_to):
            raise ValueError(
                f"the direct match is {direct.n_a}→{direct.n_b} features but layers {layer_from}→"
                f"{layer_to} of the chain have {n_from}→{n_to}: pass match(sae_{layer_from}, "
                f"sae_{layer_to}) of the same SAEs"
            )
        fp_a, fp_b = self.fingerprint(layer_from), self.fingerprint(layer_to)
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

    def check_composition(self, layer_from: int, layer_to: int, *, saes: Any = None, raw: bool = False,
                          cache: bool = True, cache_dir: str | os.PathLike | None = None,
                          **options: Any) -> float:
        """Match ``layer_from`` → ``layer_to`` directly (the chain's options; match options given
        as keywords override them) and return :meth:`agreement` with the composed chain. The SAEs
        come from the chain; ``saes=`` (the same list or {layer: sae} mapping) is accepted and
        checked against it."""
        from .pair import match_pair

        opts = MatchOptions.of(self.options, **options)
        direct = match_pair(self._stack_for(saes), layer_from, layer_to, opts, cache=cache, cache_dir=cache_dir)
        return self.agreement(layer_from, layer_to, direct, raw=raw)

    def _stack_for(self, saes: Any = None) -> SAEStack:
        from .stack import stack_of

        return stack_of(self, saes)

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
        """Write to a folder: one LayerMatch ``pair_NNN.npz`` per pair + ``chain.json``.

        Atomic for the whole folder: the chain is written to a hidden sibling folder, then swapped
        in by renames, so an interrupted save (Ctrl-C, kill, full disk) leaves the old chain or the
        new one, whole, never a mix. The folder is the chain's own: an existing folder must be
        empty or hold a chain (other files there are an error, never deleted). ``chain.json``
        records each pair file's sha256, each layer's weights hash and a checksum of the layer
        list, which :meth:`load` verifies."""
        d = _target(path, saving=True)
        if d.exists() and not d.is_dir():
            raise NotADirectoryError(f"{d} exists and is not a folder: MatchChain.save needs a folder")
        if d.is_dir():
            foreign = sorted(x.name for x in d.iterdir() if not _CHAIN_ENTRY.fullmatch(x.name))
            if foreign:
                shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                raise FileExistsError(
                    f"{d} holds files MatchChain.save did not write ({shown}): a saved chain is a folder of "
                    "its own, replaced whole by the next save. Save to a new or empty folder (e.g. "
                    f"{d / 'chain'}), or move those files out")
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = _sibling(d, "saving")
        tmp.mkdir()
        try:
            records = []
            for t, lm in enumerate(self.pairs):
                f = lm.save(tmp / f"pair_{t:03d}.npz")
                records.append({"file": f.name, "sha256": _sha256(f)})
            meta = {
                "format_version": FORMAT_VERSION, "kind": "MatchChain", "layers": list(self.layers),
                "infos": [i.to_dict() for i in self.infos], "options": jsonable(self.options),
                "stats": jsonable(self.stats), "files": [r["file"] for r in records], "pairs": records,
                "fingerprints": list(self.fingerprints),
            }
            meta["digest"] = _digest(meta)
            (tmp / "chain.json").write_text(json.dumps(meta, indent=1))
            _swap_in(tmp, d)
        except BaseException:  # nothing half-written is left behind, and the old chain stays
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _remove_leftovers(d)
        return d

    @classmethod
    def load(cls, path: str | os.PathLike, saes: Any = None) -> "MatchChain":
        """Read a chain written by :meth:`save`; with ``saes``, attach them (checked against the
        chain's weights hashes) so that later steps need not be given them.

        The pair files are checked against ``chain.json`` (their sha256, the weights hashes of
        each layer, the checksum of the layer list) and against each other (pair t's SAE B is pair
        t+1's SAE A): a pair file from another chain, swapped files or an edited layer list are a
        :class:`ResultFileError` naming the file, never a silently wrong chain."""
        d = _target(path)
        f = d / "chain.json"
        if not f.exists():
            aside = [x for x in sorted(d.parent.glob(f".{d.name}.old-*")) if (x / "chain.json").exists()] \
                if not d.exists() and d.parent.is_dir() else []
            if aside:
                raise FileNotFoundError(
                    f"{d} does not exist, but {aside[-1]} holds the chain an interrupted MatchChain.save "
                    f"moved aside: rename it to {d} (or save the chain again)")
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
        layers, infos, files, records, fps = _read_meta(meta, f)
        pairs = []
        for t, name in enumerate(files):
            p = d / name
            if not p.is_file():
                raise ResultFileError(f"{f} lists the pair file {name}, but {p} is missing: the folder is "
                                      "incomplete; save the chain again")
            if records is not None and _sha256(p) != records[t]["sha256"]:
                raise ResultFileError(
                    f"{p} is not the pair file this chain saved (its content differs from the sha256 in "
                    f"{f.name}): it was replaced, copied from another chain or damaged; save the chain again")
            pairs.append(LayerMatch.load(p))
        for t in range(len(pairs) - 1):
            why = conflict(pairs, t)
            if why:
                why = why.replace(f"pair {t + 1}", files[t + 1]).replace(f"pair {t}", files[t])
                raise ResultFileError(
                    f"{d}: the pair files do not come from one chain ({why}): they were swapped or copied "
                    "from another chain; save the chain again")
        if fps is not None:
            for t, lm in enumerate(pairs):
                for side, got, want in (("A", lm.fingerprint_a, fps[t]), ("B", lm.fingerprint_b, fps[t + 1])):
                    if want and got and got != want:
                        raise ResultFileError(
                            f"{d / files[t]} matches an SAE {side} of weights hash {got}, but {f.name} says "
                            f"layer {layers[t if side == 'A' else t + 1]} has hash {want}: the pair file comes "
                            "from another chain; save the chain again")
        try:
            chain = cls(pairs=tuple(pairs), layers=tuple(layers), infos=tuple(infos),
                        options=meta.get("options") or {}, stats=meta.get("stats") or {})
        except ValueError as e:
            raise ResultFileError(f"{f} does not describe its pair files: {e}; save the chain again") from e
        return chain if saes is None else chain.attach(saes)

    # -- reprs ----------------------------------------------------------------------------------
    def __repr__(self) -> str:
        from ..display import text

        return text.chain_text(self)

    def _repr_html_(self) -> str:
        from ..display import html

        return html.chain_html(self)



# -- the saved folder -----------------------------------------------------------------------------
# what MatchChain.save writes into its folder (and older versions' temporary files)
_CHAIN_ENTRY = re.compile(r"chain\.json|pair_\d{3,}\.npz|\.chain\.json\.\d+(\.[0-9a-f]+)?\.tmp"
                          r"|\.pair_\d{3,}\.npz\.\d+(\.[0-9a-f]+)?\.tmp")
# the fields of chain.json the checksum covers: what says which SAE and file is at which layer
_DIGESTED = ("layers", "infos", "files", "pairs", "fingerprints")


def _target(path: str | os.PathLike, saving: bool = False) -> Path:
    d = Path(os.path.abspath(os.fspath(path)))
    if d.is_symlink():  # the folder it names is replaced, not the link
        d = d.resolve()
    cwd = Path.cwd()
    if saving and (d == cwd or d in cwd.parents):  # renamed under the process, it would be nowhere
        raise ValueError(f"{d} is the current folder or one above it: save the chain to a sub-folder "
                         f"(e.g. {d / 'chain'})")
    return d


def _sibling(d: Path, kind: str) -> Path:
    return d.parent / f".{d.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digest(meta: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps({k: meta.get(k) for k in _DIGESTED}, sort_keys=True).encode()).hexdigest()


def _swap_in(tmp: Path, d: Path) -> None:
    """Put the finished folder ``tmp`` at ``d`` by renames: at every moment ``d`` is the old chain or
    the new one (between the two renames, the old one is whole in a ``.<name>.old-*`` sibling,
    which :meth:`MatchChain.load` points to)."""
    if not d.exists():
        try:
            os.rename(tmp, d)
            return
        except OSError:  # made meanwhile (another save): swap below
            pass
    old = _sibling(d, "old")
    moved = False
    try:
        os.rename(d, old)
        moved = True
        os.rename(tmp, d)
    except BaseException:
        if moved and not d.exists():
            os.rename(old, d)  # the old chain back where it was
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(d: Path) -> None:
    """Folders of saves to ``d`` that a killed process left behind (``d`` now holds a whole chain)."""
    for x in d.parent.glob(f".{d.name}.*-*-*"):
        kind, _, rest = x.name[len(d.name) + 2:].partition("-")
        pid = rest.split("-")[0]
        if kind not in ("saving", "old") or not pid.isdigit() or not x.is_dir():
            continue
        if int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another save in progress
        shutil.rmtree(x, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    return True


def _read_meta(meta: Mapping[str, Any], f: Path):
    """The fields of chain.json, checked: one ResultFileError naming the file and the field."""
    def bad(field_: str, what: str) -> ResultFileError:
        return ResultFileError(f"{f}: the field {field_!r} {what}; the file is damaged or was edited: "
                               "save the chain again (MatchChain.save), or recompute it")

    for name in ("layers", "infos", "files"):
        if name not in meta:
            raise bad(name, "is missing")
        if not isinstance(meta[name], list):
            raise bad(name, f"must be a list, got {type(meta[name]).__name__}")
    layers, infos, files = meta["layers"], meta["infos"], meta["files"]
    if any(isinstance(x, bool) or not isinstance(x, int) for x in layers):
        raise bad("layers", f"must hold integers, got {layers!r}")
    if len(layers) < 2 or len(set(layers)) != len(layers):
        raise bad("layers", f"must hold at least two distinct layers, got {layers!r}")
    if len(files) != len(layers) - 1:
        raise bad("files", f"must name {len(layers) - 1} pair files for {len(layers)} layers, got {len(files)}")
    for x in files:  # plain names inside the folder: never a path elsewhere
        if not isinstance(x, str) or not re.fullmatch(r"[^/\\]+\.npz", x) or x.startswith("."):
            raise bad("files", f"must hold pair file names (pair_NNN.npz), got {x!r}")
    if len(infos) != len(layers):
        raise bad("infos", f"must hold one entry per layer ({len(layers)}), got {len(infos)}")
    out_infos = []
    for x in infos:
        if not isinstance(x, dict):
            raise bad("infos", f"must hold objects, got {type(x).__name__}")
        for k in SAEInfo.__dataclass_fields__:
            v = x.get(k)
            ok = v is None or ((isinstance(v, int) and not isinstance(v, bool)) if k == "layer" else isinstance(v, str))
            if not ok:
                raise bad("infos", f"has {k}={v!r}, which must be {'an integer' if k == 'layer' else 'a string'} "
                                   "or null")
        out_infos.append(SAEInfo.from_dict(x))
    for name in ("options", "stats"):
        if meta.get(name) is not None and not isinstance(meta[name], dict):
            raise bad(name, f"must be an object, got {type(meta[name]).__name__}")
    # written since issue 22; chains saved before have none of them (checked for continuity only)
    records = meta.get("pairs")
    if records is not None:
        if not (isinstance(records, list) and len(records) == len(files) and all(
                isinstance(r, dict) and r.get("file") == x and isinstance(r.get("sha256"), str)
                for r, x in zip(records, files))):
            raise bad("pairs", "must hold one {file, sha256} per pair file, in the order of 'files'")
    fps = meta.get("fingerprints")
    if fps is not None and not (isinstance(fps, list) and len(fps) == len(layers)
                                and all(isinstance(x, str) for x in fps)):
        raise bad("fingerprints", "must hold one weights hash (a string) per layer")
    digest = meta.get("digest")
    if digest is not None and digest != _digest(meta):
        raise ResultFileError(
            f"{f} was edited: its layers, SAE identities or pair files no longer agree with the checksum "
            "MatchChain.save wrote (a chain's layers come from the SAEs it was matched on: pass a "
            "{layer: sae} mapping to match_chain to number them); save the chain again")
    return layers, out_infos, files, records, fps


__all__ = ["MatchChain", "FORMAT_VERSION"]
