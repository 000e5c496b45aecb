"""Find the features worth following: rank and filter every feature of a chain.

:func:`find_features` is the plain pandas call behind the explorer's finder panel: one row per
(layer, feature) with how long it persists (core's lifetimes), how good its next step is (the
assignment's MSE and margin, the criterion's verdict) and, with activation examples, how often it
fires and on which tokens; Neuronpedia explanations join in when they were fetched (read from
the cache, never fetched here).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from ..core._checks import as_index, finite_number, positive_int
from ..errors import ArgumentTypeError, InvalidArgumentError

SORTS = ("persistence", "lifetime", "mse", "margin", "density", "max_activation")
# how each sort orders (True: largest first); ties fall to the lowest MSE, then the index
_DESCENDING = {"persistence": True, "lifetime": True, "mse": False, "margin": True, "density": True,
               "max_activation": True}

__all__ = ["find_features", "SORTS", "natural_descending"]


def natural_descending(sort: str) -> bool:
    """Whether ``sort`` lists the largest values first by default (all but ``mse``: the best
    match, the lowest error, comes first)."""
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; choose one of {SORTS}")
    return _DESCENDING[sort]


def _flag(value: Any, name: str) -> bool:
    # a bool, not anything truthy: newborn="no" would otherwise filter
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ArgumentTypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def find_features(chain: Any, examples: Any = None, *, layer: int | None = None, sort: str = "persistence",
                  min_persistence: int = 0, accepted_only: bool = False, token: str | None = None,
                  explanation: str | None = None, explanations: Mapping[tuple[int, int], str] | None = None,
                  min_density: float = 0.0, n: int | None = 50, cache_dir: str | os.PathLike | None = None,
                  descending: bool | None = None, max_persistence: int | None = None, newborn: bool = False,
                  dying: bool = False):
    """Rank and filter the features of ``chain`` (a MatchChain); returns a DataFrame, best first.

    Columns: ``layer``, ``feature``; ``persistence`` (layers of the accepted run through the
    feature, backward and forward: 1 + age + lifetime), ``lifetime`` and ``age`` (accepted steps
    forward / backward); ``partner``, ``mse``, ``margin`` and ``accepted`` of its step to the next
    layer (NaN / -1 at the last layer); with ``examples`` (``collect_examples``): ``density``
    (share of tokens it fires on), ``max_activation`` and ``top_tokens`` (distinct tokens of its
    top activations, shown as Python literals: ``'\\n'`` is a newline); ``explanation`` when
    Neuronpedia explanations are known (``explanations=`` {(layer, feature): text}, else those
    cached by ``fetch_feature`` for the chain's SAEs).

    Filters: ``layer``; ``min_persistence``; ``accepted_only`` (the next step accepted);
    ``token`` (one of the feature's top tokens contains it, case-insensitive: the tokens
    themselves, so ``"\\n"`` finds newline tokens and ``"'"`` tokens with a quote); ``explanation``
    (the explanation contains it); ``min_density`` (a share in [0, 1]); ``max_persistence``
    (short-lived features: persisting on at most that many layers); ``newborn`` (no accepted
    step leads into the feature: its run starts at its layer; the chain's first layer has no
    step in, so it is left out) and ``dying`` (its next step is not accepted: its run ends at its
    layer; the last layer is left out). ``layer=k, newborn=True`` lists the features born at
    layer k. ``sort``: one of :data:`SORTS`; ``descending``: largest first (None: the sort's
    natural direction, :func:`natural_descending`: largest first except ``mse``); ties go to the
    lowest MSE, then the lowest index, and missing values (the last layer's MSE and margin) come
    last either way. ``n``: rows kept, a positive integer (None: all); ``df.attrs["n_matching"]``
    is the number of features that pass the filters before ``n`` cuts the list.

    ``examples`` must be of the chain's SAEs (checked by weights hash where the chain recorded one).
    """
    import pandas as pd

    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; choose one of {SORTS}")
    # checked up front: n=-1 kept all but the last row, n=2.7 two rows, min_density=NaN none
    n = None if n is None else positive_int(n, "n (the number of rows; None for all)")
    min_density = finite_number(min_density, "min_density", minimum=0.0)
    if min_density > 1:
        raise InvalidArgumentError(f"min_density is a share of tokens in [0, 1], got {min_density}")
    min_persistence = as_index(min_persistence, "min_persistence")
    if max_persistence is not None:
        max_persistence = positive_int(max_persistence, "max_persistence (the most layers a feature persists on; "
                                                        "None for no limit)")
        if max_persistence < min_persistence:
            raise InvalidArgumentError(
                f"max_persistence={max_persistence} is below min_persistence={min_persistence}: no feature "
                f"persists on at least {min_persistence} and at most {max_persistence} layers")
    if descending is not None:
        descending = _flag(descending, "descending (None for the sort's natural direction)")
    newborn, dying, accepted_only = _flag(newborn, "newborn"), _flag(dying, "dying"), _flag(accepted_only,
                                                                                              "accepted_only")
    if dying and accepted_only:
        raise InvalidArgumentError("dying=True lists features whose next step is not accepted, accepted_only=True "
                                   "those whose next step is: together they list nothing; pass one of them")
    for name, v in (("token", token), ("explanation", explanation)):
        if v is not None and not isinstance(v, str):
            raise ArgumentTypeError(f"{name} must be a string (or None), got {v!r} ({type(v).__name__})")
    given = None if explanations is None else _given_explanations(explanations)
    if (token or sort in ("density", "max_activation") or min_density) and examples is None:
        raise ValueError("sorting or filtering by tokens or activations needs the examples: "
                         "find_features(chain, examples, ...) with examples = collect_examples(chain, acts)")
    layers = list(chain.layers) if layer is None else [as_index(layer, "layer")]
    for L in layers:
        if L not in chain.layers:
            raise KeyError(f"layer {L} is not in the chain (layers {tuple(chain.layers)})")
    first, last = chain.layers[0], chain.layers[-1]
    if newborn and layers == [first]:
        raise InvalidArgumentError(
            f"newborn=True at layer {first}, the chain's first: no step leads into it, so nothing is born there; "
            f"ask for a later layer (layers {tuple(chain.layers)})")
    if dying and layers == [last]:
        raise InvalidArgumentError(
            f"dying=True at layer {last}, the chain's last: it has no next step, so nothing dies there; "
            f"ask for an earlier layer (layers {tuple(chain.layers)})")
    if examples is not None:
        for L in layers:
            _check_examples(chain, L, examples[L])
    pers = chain.persistence()
    tokens: list[tuple[str, ...]] = []
    frames = []
    for L in layers:
        p = chain.layers.index(L)
        nf = chain.n_features(L)
        df = pd.DataFrame({"layer": L, "feature": np.arange(nf)})
        sub = pers.loc[L]
        df["lifetime"] = sub["lifetime"].to_numpy()
        df["age"] = sub["age"].to_numpy()
        df["persistence"] = 1 + df["age"] + df["lifetime"]
        if p < len(chain.pairs):
            lm = chain.pairs[p]
            df["partner"] = lm.partner
            df["mse"] = lm.mse.astype(np.float64)
            df["margin"] = lm.margin.astype(np.float64)
            df["accepted"] = lm.matched & (lm.partner >= 0)
        else:  # the last layer has no next step
            df["partner"], df["mse"], df["margin"], df["accepted"] = -1, np.nan, np.nan, False
        if examples is not None:
            le = examples[L]
            df["density"] = np.asarray(le.n_active, dtype=np.float64) / max(le.acts.n_tokens, 1)
            df["max_activation"] = np.asarray(le.max_value, dtype=np.float64)
            toks_l = le.top_tokens()
            tokens += toks_l
            df["top_tokens"] = [" ".join(repr(t) for t in toks) for toks in toks_l]
        expl = _explanations(chain, L, given, cache_dir)
        if expl:
            df["explanation"] = [expl.get(i, "") for i in range(nf)]
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    keep = df["persistence"] >= int(min_persistence)
    if max_persistence is not None:
        keep &= df["persistence"] <= max_persistence
    if newborn:  # the first layer has no step in: every feature there would count
        keep &= (df["age"] == 0) & (df["layer"] != first)
    if dying:  # the last layer has no step out
        keep &= (df["lifetime"] == 0) & (df["layer"] != last)
    if accepted_only:
        keep &= df["accepted"]
    if min_density:
        keep &= df["density"] >= float(min_density)
    if token:  # the tokens themselves, not the column's text of their reprs
        want = token.lower()
        keep &= np.array([any(want in t.lower() for t in toks) for toks in tokens], dtype=bool)
    if explanation:
        if "explanation" not in df:
            raise ValueError("no Neuronpedia explanations are known for these SAEs: fetch some with "
                             "smn.fetch_feature(info, index) (they are cached), or pass explanations={...}")
        keep &= df["explanation"].str.lower().str.contains(str(explanation).lower(), regex=False)
    df = df[keep]
    desc = _DESCENDING[sort] if descending is None else descending
    key = df[sort].fillna(-np.inf if desc else np.inf)
    order = np.lexsort((df["feature"].to_numpy(), df["mse"].fillna(np.inf).to_numpy(),
                        -key.to_numpy() if desc else key.to_numpy()))
    df = df.iloc[order].reset_index(drop=True)
    total = len(df)
    if n is not None:
        df = df.head(n).copy()
    df.attrs["n_matching"] = total  # the count behind "showing n of N"
    return df


def _check_examples(chain: Any, layer: int, le: Any) -> None:
    """The examples of ``layer`` must come from the chain's SAE there: same width, and the same
    weights hash where the chain recorded one (examples of other SAEs would describe other features)."""
    width = getattr(le, "n_features", None)
    if width is not None and width != chain.n_features(layer):
        raise InvalidArgumentError(
            f"the examples of layer {layer} are of an SAE with {width} features, the chain's has "
            f"{chain.n_features(layer)}: collect them from the chain, collect_examples(chain, acts)")
    want = chain.fingerprint(layer) if hasattr(chain, "fingerprint") else ""
    stack = getattr(le, "stack", None)
    if not want or stack is None or stack is getattr(chain, "stack", None):
        return  # nothing recorded to compare, or the chain's own SAEs
    got = stack.fingerprint(layer)
    if got != want:
        raise InvalidArgumentError(
            f"the examples of layer {layer} were collected with another SAE (weights hash {got}) than the "
            f"chain's (hash {want}): collect them from the chain, collect_examples(chain, acts)")


def _given_explanations(given: Any) -> dict[tuple[int, int], str]:
    """``{(layer, feature): text}`` checked: the keys are pairs of integers, the texts strings."""
    if not isinstance(given, Mapping):
        raise ArgumentTypeError("explanations must be a mapping {(layer, feature): text}, got "
                                f"{type(given).__name__}")
    out = {}
    for key, text in given.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ArgumentTypeError(f"explanations keys must be (layer, feature) pairs of integers, got {key!r}")
        L = as_index(key[0], f"the layer of explanations key {key!r}")
        f = as_index(key[1], f"the feature of explanations key {key!r}")
        if not isinstance(text, str):
            raise ArgumentTypeError(f"explanations[{key!r}] must be a string, got {type(text).__name__}")
        out[(L, f)] = text
    return out


def _explanations(chain: Any, layer: int, given: Mapping | None, cache_dir: Any) -> dict[int, str]:
    if given is not None:
        return {f: t for (L, f), t in given.items() if L == layer}
    info = chain.infos[chain.layers.index(layer)]
    if not getattr(info, "neuronpedia_id", None):
        return {}
    from ..sources.neuronpedia import cached_explanations

    return cached_explanations(info, cache_dir=cache_dir)
