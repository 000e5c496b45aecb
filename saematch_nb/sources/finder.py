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

SORTS = ("persistence", "lifetime", "mse", "margin", "density", "max_activation")
# how each sort orders (True: largest first); ties fall to the lowest MSE, then the index
_DESCENDING = {"persistence": True, "lifetime": True, "mse": False, "margin": True, "density": True,
               "max_activation": True}

__all__ = ["find_features", "SORTS"]


def find_features(chain: Any, examples: Any = None, *, layer: int | None = None, sort: str = "persistence",
                  min_persistence: int = 0, accepted_only: bool = False, token: str | None = None,
                  explanation: str | None = None, explanations: Mapping[tuple[int, int], str] | None = None,
                  min_density: float = 0.0, n: int | None = 50, cache_dir: str | os.PathLike | None = None):
    """Rank and filter the features of ``chain`` (a MatchChain); returns a DataFrame, best first.

    Columns: ``layer``, ``feature``; ``persistence`` (layers of the accepted run through the
    feature, backward and forward: 1 + age + lifetime), ``lifetime`` and ``age`` (accepted steps
    forward / backward); ``partner``, ``mse``, ``margin`` and ``accepted`` of its step to the next
    layer (NaN / -1 at the last layer); with ``examples`` (``collect_examples``): ``density``
    (share of tokens it fires on), ``max_activation`` and ``top_tokens`` (distinct tokens of its
    top activations); ``explanation`` when Neuronpedia explanations are known (``explanations=``
    {(layer, feature): text}, else those cached by ``fetch_feature`` for the chain's SAEs).

    Filters: ``layer``; ``min_persistence``; ``accepted_only`` (the next step accepted);
    ``token`` (a top token contains it, case-insensitive); ``explanation`` (the explanation
    contains it); ``min_density``. ``sort``: one of :data:`SORTS`. ``n``: rows kept (None: all).
    """
    import pandas as pd

    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; choose one of {SORTS}")
    if (token or sort in ("density", "max_activation") or min_density) and examples is None:
        raise ValueError(f"sorting or filtering by tokens or activations needs the examples: "
                         f"find_features(chain, examples, ...) with examples = collect_examples(acts, chain)")
    layers = list(chain.layers) if layer is None else [int(layer)]
    for L in layers:
        if L not in chain.layers:
            raise KeyError(f"layer {L} is not in the chain (layers {tuple(chain.layers)})")
    pers = chain.persistence()
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
            df["top_tokens"] = [" ".join(repr(t) for t in toks) for toks in le.top_tokens()]
        expl = _explanations(chain, L, explanations, cache_dir)
        if expl:
            df["explanation"] = [expl.get(i, "") for i in range(nf)]
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    keep = df["persistence"] >= int(min_persistence)
    if accepted_only:
        keep &= df["accepted"]
    if min_density:
        keep &= df["density"] >= float(min_density)
    if token:
        keep &= df["top_tokens"].str.lower().str.contains(str(token).lower(), regex=False)
    if explanation:
        if "explanation" not in df:
            raise ValueError("no Neuronpedia explanations are known for these SAEs: fetch some with "
                             "smn.fetch_feature(info, index) (they are cached), or pass explanations={...}")
        keep &= df["explanation"].str.lower().str.contains(str(explanation).lower(), regex=False)
    df = df[keep]
    desc = _DESCENDING[sort]
    key = df[sort].fillna(-np.inf if desc else np.inf)
    order = np.lexsort((df["feature"].to_numpy(), df["mse"].fillna(np.inf).to_numpy(),
                        -key.to_numpy() if desc else key.to_numpy()))
    df = df.iloc[order].reset_index(drop=True)
    return df if n is None else df.head(int(n))


def _explanations(chain: Any, layer: int, given: Mapping | None, cache_dir: Any) -> dict[int, str]:
    if given is not None:
        return {int(f): str(t) for (L, f), t in given.items() if int(L) == layer}
    info = chain.infos[chain.layers.index(layer)]
    if not getattr(info, "neuronpedia_id", None):
        return {}
    from .neuronpedia import cached_explanations

    return cached_explanations(info, cache_dir=cache_dir)
