"""The SAEs of one analysis, keyed by layer: built once, shared by every step.

:class:`SAEStack` is what ``match_chain`` builds from whatever the user has (sae-lens SAEs, lazy
handles, folders, ``params.npz`` paths, ``SAEWeights``, mappings) and what the resulting
``MatchChain`` keeps, so that examples, evaluation, co-activation and steering take the chain and
never need the SAEs again. For each layer it holds the source as given, its identity
(:class:`SAEInfo`) and, once known, its weights hash; it gives the weights and the folded weights
on demand:

- an SAE already in memory (sae-lens SAE, mapping, SAEWeights) is converted to SAEWeights once
  and kept (float32 CPU tensors are shared with the source, not copied);
- a lazy one (handle, path) is loaded when asked for, and at most ``max_held`` (default 2) of
  them are held at a time, the least recently used dropped first: a 26-layer chain of 65k SAEs
  never holds more than two;
- folded copies are kept while they fit ``fold_budget_bytes`` (default 1 GiB), so a layer is
  folded once per analysis unless the SAEs are too large to keep folded;
- the weights hash of a layer is computed once (the hash of a lazy SAE's weights is kept when the
  weights themselves are dropped).

``stats`` counts conversions, loads, folds and hashes: what tests/core/test_stack.py and the
closing notes measure.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from .weights import SAEInfo, SAEWeights, as_weights

DEFAULT_MAX_HELD = 2
DEFAULT_FOLD_BUDGET = 1 << 30


def is_lazy_source(obj: Any) -> bool:
    """True for sources loaded on demand (handles with ``to_weights``, paths)."""
    return isinstance(obj, (str, os.PathLike)) or (hasattr(obj, "to_weights") and not isinstance(obj, SAEWeights))


def weights_bytes(w: SAEWeights) -> int:
    """Bytes of an SAE's tensors."""
    return sum(int(t.numel()) * int(t.element_size())
               for t in (w.W_enc, w.b_enc, w.W_dec, w.b_dec, w.threshold) if t is not None)


def peek_info(obj: Any) -> SAEInfo | None:
    """The SAE's identity when it is known without loading weights."""
    if isinstance(obj, SAEWeights):
        return obj.info
    info = getattr(obj, "info", None) if hasattr(obj, "to_weights") else None
    return info if isinstance(info, SAEInfo) else None


@dataclass(eq=False)
class SAEStack:
    """Layer-keyed SAEs (see the module docstring). Build with :meth:`build`."""

    layers: tuple[int, ...]
    sources: tuple[Any, ...]
    max_held: int = DEFAULT_MAX_HELD
    fold_budget_bytes: int = DEFAULT_FOLD_BUDGET
    stats: dict = field(default_factory=lambda: {"converted": 0, "loaded": 0, "folded": 0, "hashed": 0})
    _kept: dict = field(default_factory=dict, repr=False)  # pos -> SAEWeights (in-memory sources)
    _held: OrderedDict = field(default_factory=OrderedDict, repr=False)  # pos -> SAEWeights (lazy, LRU)
    _folded: OrderedDict = field(default_factory=OrderedDict, repr=False)  # (pos, bad_threshold) -> folded
    _fingerprints: dict = field(default_factory=dict, repr=False)
    _infos: dict = field(default_factory=dict, repr=False)
    peak_held: int = 0
    #: a chain this stack's SAEs must agree with (checked by whoever uses them), or None
    verify_against: Any = field(default=None, repr=False)

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def build(cls, saes: Any, *, layers: Sequence[int] | None = None, max_held: int = DEFAULT_MAX_HELD,
              fold_budget_bytes: int = DEFAULT_FOLD_BUDGET) -> "SAEStack":
        """From a list, a ``{layer: sae}`` mapping, or another stack (returned as it is).

        A list is put in depth order, as a mapping is: when every SAE says its layer (its hook, known
        without loading: in-memory SAEs, handles with ``info``), the stack is sorted by it, so
        ``[sae_2, sae_0, sae_1]`` matches 0 → 1 → 2, never 2 → 0 → 1. Two SAEs that say the same
        layer are an error (a mapping says which layer each stands for), never renumbered. When a
        layer is unknown (paths, bare handles), the list keeps its order and the layers are its
        positions 0..n-1 (``match_chain`` reads them off the SAEs once loaded). ``layers=``: the
        layer of each SAE of the list, in list order (kept as given)."""
        if isinstance(saes, SAEStack):
            return saes
        given: list[int] | None = None
        if isinstance(saes, Mapping) and not _looks_like_arrays(saes):
            keys = sorted(saes, key=int)
            items = [saes[k] for k in keys]
            given = [int(k) for k in keys]
        else:
            if isinstance(saes, (str, os.PathLike)) or not hasattr(saes, "__iter__") or _looks_like_arrays(saes):
                raise TypeError("expected a list of SAEs (sae-lens SAEs, handles, paths or SAEWeights) or a "
                                f"{{layer: sae}} mapping, got {type(saes).__name__}")
            items = list(saes)
        if layers is not None:
            layers = [int(x) for x in layers]
            if len(layers) != len(items):
                raise ValueError(f"got {len(items)} SAEs for {len(layers)} layers {layers}")
            given = layers
        if max_held < 1:
            raise ValueError(f"max_held must be at least 1, got {max_held}")
        # in-memory SAEs become SAEWeights once, now (their identity is in their weights)
        kept: list[SAEWeights | None] = []
        infos: list[SAEInfo | None] = []
        converted = 0
        for x in items:
            if not is_lazy_source(x):
                w = x if isinstance(x, SAEWeights) else as_weights(x)
                converted += not isinstance(x, SAEWeights)
                kept.append(w)
                infos.append(w.info)
            else:
                kept.append(None)
                infos.append(peek_info(x))
        order = list(range(len(items)))
        if given is None:
            ls = [None if i is None else i.layer for i in infos]
            check_one_per_layer(ls)
            if None in ls:  # unknown before loading: list order, positions as layers
                given = list(order)
            else:  # depth order, as a mapping's keys
                order.sort(key=lambda p: ls[p])
                given = [ls[p] for p in order]
        if len(set(given)) != len(given):
            raise ValueError(f"two SAEs are given for one layer: layers {given}")
        stack = cls(layers=tuple(int(x) for x in given), sources=tuple(items[p] for p in order),
                    max_held=int(max_held), fold_budget_bytes=int(fold_budget_bytes))
        stack.stats["converted"] += converted
        for pos, p in enumerate(order):
            if kept[p] is not None:
                stack._kept[pos] = kept[p]
            if infos[p] is not None:
                stack._infos[pos] = infos[p]
        return stack

    # -- lookup ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sources)

    def __iter__(self) -> Iterator[int]:
        return iter(self.layers)

    def __contains__(self, layer: Any) -> bool:
        try:
            return int(layer) in self.layers
        except (TypeError, ValueError):
            return False

    def pos(self, layer: int) -> int:
        try:
            return self.layers.index(int(layer))
        except ValueError:
            raise KeyError(f"no SAE for layer {layer}: this analysis has SAEs for layers {self.layers}") from None

    def source(self, layer: int) -> Any:
        """The SAE as the user gave it (e.g. the sae-lens SAE, for ``model.add_sae``)."""
        return self.sources[self.pos(layer)]

    def info(self, layer: int) -> SAEInfo:
        """The SAE's identity (loads a lazy SAE only when its handle does not say)."""
        p = self.pos(layer)
        if p not in self._infos:
            self._infos[p] = self.weights(layer).info
        return self._infos[p]

    @property
    def infos(self) -> tuple[SAEInfo, ...]:
        return tuple(self.info(L) for L in self.layers)

    def known_info(self, layer: int) -> SAEInfo | None:
        """The SAE's identity when known without loading it (None: not yet)."""
        return self._infos.get(self.pos(layer))

    def set_info(self, layer: int, info: SAEInfo) -> None:
        """Record the identity learned elsewhere (a cached match of this SAE carries it)."""
        self._infos[self.pos(layer)] = info

    @property
    def in_memory_layers(self) -> tuple[int, ...]:
        """Layers whose SAEs were given in memory (kept converted for the stack's life)."""
        return tuple(self.layers[p] for p in sorted(self._kept))

    def handoff(self, layer: int) -> Any:
        """What identifies the layer's SAE for the cache and is sent to a worker: its converted
        weights when in memory (hashed once, on the stack's copy), else the lazy source."""
        p = self.pos(layer)
        return self._kept.get(p, self.sources[p])

    def relabel(self, layers: Sequence[int]) -> None:
        """Number the SAEs by the layers they say once loaded (a list of paths is matched in list
        order, its layers unknown before loading); the order stays."""
        layers = tuple(int(x) for x in layers)
        if len(layers) != len(self.sources) or len(set(layers)) != len(layers):
            raise ValueError(f"relabel needs {len(self.sources)} distinct layers, got {list(layers)}")
        self.layers = layers

    # -- weights --------------------------------------------------------------------------------
    def weights(self, layer: int) -> SAEWeights:
        """The layer's SAEWeights (float32, CPU): kept for in-memory SAEs, loaded for lazy ones
        (at most ``max_held`` lazy ones held at a time)."""
        p = self.pos(layer)
        if p in self._kept:
            return self._kept[p]
        w = self._held.get(p)
        if w is None:
            # make room first: never more than max_held lazy SAEs alive, the new one included
            while len(self._held) >= self.max_held:
                old = next(iter(self._held))
                del self._held[old]  # no local reference left: the SAE is freed now, not later
                for k in [k for k in self._folded if k[0] == old]:
                    del self._folded[k]
            w = as_weights(self.sources[p])
            self.stats["loaded"] += 1
            fp = self._fingerprints.get(p)
            if fp is not None:  # the same source loaded again: its hash is known
                w._cache["fingerprint"] = fp
            self._held[p] = w
            self._infos.setdefault(p, w.info)
        else:
            self._held.move_to_end(p)
        self.peak_held = max(self.peak_held, len(self._held))
        return w

    def folded(self, layer: int, *, bad_threshold: str = "raise") -> SAEWeights:
        """The layer's folded SAEWeights (``saematch_nb.fold``), kept while the folded copies fit
        ``fold_budget_bytes`` (and, for a lazy SAE, while its weights are held)."""
        from .fold import fold

        p = self.pos(layer)
        key = (p, bad_threshold)
        got = self._folded.get(key)
        if got is not None:
            self._folded.move_to_end(key)
            return got
        w = self.weights(layer)
        f = w if w.folded else fold(w, bad_threshold=bad_threshold)
        if not w.folded:
            self.stats["folded"] += 1
        self._folded[key] = f
        while len(self._folded) > 1 and sum(weights_bytes(x) for x in self._folded.values()) > self.fold_budget_bytes:
            self._folded.popitem(last=False)
        return f

    def fingerprint(self, layer: int) -> str:
        """The weights hash of the layer's SAE (``SAEWeights.fingerprint``), computed once."""
        p = self.pos(layer)
        fp = self._fingerprints.get(p)
        if fp is None:
            w = self.weights(layer)
            had = "fingerprint" in w._cache
            fp = w.fingerprint()
            if not had:
                self.stats["hashed"] += 1
            self._fingerprints[p] = fp
        return fp

    def note_fingerprint(self, layer: int, fp: str) -> None:
        """Record a hash learned elsewhere (e.g. from a cached LayerMatch of these SAEs)."""
        if fp:
            self._fingerprints.setdefault(self.pos(layer), fp)

    def release(self) -> None:
        """Drop every held lazy SAE and its folded copy. In-memory SAEs stay (they are the user's),
        and so do their folded copies within ``fold_budget_bytes``: the next step reuses them."""
        self._held.clear()
        for k in [k for k in self._folded if k[0] not in self._kept]:
            del self._folded[k]

    # -- checks ---------------------------------------------------------------------------------
    def check_against(self, saes: Any, what: str = "the SAEs given") -> "SAEStack":
        """``saes`` (given again by the user) must be the same SAEs, layer for layer: same layers,
        same weights hashes. Returns the stack of ``saes`` (for the caller to use if it wants)."""
        other = SAEStack.build(saes)
        if isinstance(saes, Sequence) and not isinstance(saes, Mapping) and len(other) == len(self) \
                and other.layers != self.layers and other.layers == tuple(range(len(other))):
            other.layers = self.layers  # a plain list in the chain's layer order
        missing = [L for L in other.layers if L not in self.layers]
        if missing:
            raise ValueError(f"{what} include layers {missing} that this analysis does not have "
                             f"(its layers: {self.layers})")
        for L in other.layers:
            mine, theirs = self.fingerprint(L), other.fingerprint(L)
            if mine != theirs:
                raise ValueError(
                    f"{what} for layer {L} (weights hash {theirs}) is not the SAE this analysis was built "
                    f"from (hash {mine}): pass the same SAEs, or leave them out (the chain has them)")
        return other

    def __repr__(self) -> str:
        kinds = sorted({type(s).__name__ for s in self.sources})
        return (f"SAEStack(layers={list(self.layers)}, {len(self)} SAEs ({', '.join(kinds)}), "
                f"held {len(self._held)}/{self.max_held} lazy, stats={self.stats})")


def check_one_per_layer(layers: Sequence[int | None], when: str = "") -> None:
    """Two SAEs of a list that say the same layer (None = unknown) are an error: renumbering them
    would run one of them on another layer's activations downstream."""
    seen: dict[int, int] = {}
    for p, L in enumerate(layers):
        if L is None:
            continue
        if L in seen:
            raise ValueError(
                f"SAEs {seen[L]} and {p} of the list both read layer {L}{when} (layers {list(layers)}): a chain "
                "has one SAE per layer. Leave one out, or pass a {layer: sae} mapping to say which layer "
                "each SAE stands for")
        seen[L] = p


def _looks_like_arrays(obj: Any) -> bool:
    """A mapping of weight arrays (one SAE), not a {layer: sae} mapping."""
    return isinstance(obj, Mapping) and "W_enc" in obj and "W_dec" in obj


def stack_of(obj: Any, saes: Any = None, *, what: str = "saes") -> SAEStack:
    """The SAE stack of an analysis step's input: a MatchChain (its stack; ``saes`` given too are
    checked against it), an SAEStack, or SAEs (a list or mapping). Clear error when a chain has
    no SAEs attached (loaded from disk) and none are given."""
    if isinstance(obj, SAEStack):
        if saes is not None:
            obj.check_against(saes, what)
        return obj
    st = getattr(obj, "stack", None)
    if hasattr(obj, "pairs"):  # a MatchChain
        if st is None:
            if saes is None:
                raise ValueError(
                    "this chain has no SAEs attached (it was loaded from disk, or built without them): "
                    f"pass {what}=[...] (the SAEs it was built from), or MatchChain.load(path, saes=...)")
            return obj.attach(saes).stack
        if saes is not None:
            st.check_against(saes, what)
        return st
    if obj is None:
        if saes is None:
            raise ValueError(f"no SAEs: pass a MatchChain or {what}=[...]")
        return SAEStack.build(saes)
    return SAEStack.build(obj)
