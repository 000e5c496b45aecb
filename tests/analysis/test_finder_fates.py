"""find_features (issue #23 item 5) on the demo chain: short-lived, newborn and dying features,
both directions of every sort, and the count of matches behind "showing n of N"; bad values are
clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from saematch_nb.errors import ArgumentTypeError, InvalidArgumentError
from saematch_nb.analysis.finder import SORTS, find_features, natural_descending
from tests._finder import rows_of


def _by_hand(chain, pred):
    """(layer, feature) pairs whose age / lifetime (core's persistence) satisfy ``pred``."""
    pers = chain.persistence()
    T = len(chain.layers)
    return {(int(L), int(f)) for (L, f), r in pers.iterrows()
            if pred(chain.layers.index(L), int(r["age"]), int(r["lifetime"]), T)}


def test_newborn_dying_and_short_lived_features_are_the_chain_s(demo_examples):
    chain, _ = demo_examples
    first, last = chain.layers[0], chain.layers[-1]
    newborn = find_features(chain, newborn=True, n=None)
    assert rows_of(newborn) == _by_hand(chain, lambda s, age, life, T: s > 0 and age == 0)
    assert len(newborn) and (newborn["age"] == 0).all() and first not in set(newborn["layer"])
    dying = find_features(chain, dying=True, n=None)
    assert rows_of(dying) == _by_hand(chain, lambda s, age, life, T: s < T - 1 and life == 0)
    assert len(dying) and not dying["accepted"].any() and last not in set(dying["layer"])
    # born at layer k: layer=k with newborn=True, the same features as the all-layers list's at k
    k = chain.layers[2]
    born_k = find_features(chain, layer=k, newborn=True, n=None)
    assert rows_of(born_k) == {x for x in rows_of(newborn) if x[0] == k} and len(born_k)
    # short-lived: persisting on at most 2 layers; with a floor, between the two
    short = find_features(chain, max_persistence=2, n=None)
    assert rows_of(short) == _by_hand(chain, lambda s, age, life, T: 1 + age + life <= 2)
    assert short["persistence"].max() <= 2 and len(short) < sum(chain.n_features(L) for L in chain.layers)
    band = find_features(chain, min_persistence=2, max_persistence=3, n=None)
    assert set(band["persistence"]) <= {2, 3} and len(band)
    both = find_features(chain, newborn=True, dying=True, n=None)  # born and gone at the same layer
    assert rows_of(both) == rows_of(newborn) & rows_of(dying)
    assert (both["persistence"] == 1).all()


@pytest.mark.parametrize("sort", SORTS)
def test_every_sort_runs_both_ways_with_missing_values_last(demo_examples, sort):
    chain, exs = demo_examples
    natural = find_features(chain, exs, sort=sort, n=None)
    assert natural.equals(find_features(chain, exs, sort=sort, n=None, descending=natural_descending(sort)))
    for desc in (True, False):
        df = find_features(chain, exs, sort=sort, n=None, descending=desc)
        vals = df[sort].to_numpy(dtype=float)
        known = vals[~np.isnan(vals)]
        assert len(known) and list(known) == sorted(known, reverse=desc)
        # NaN (the last layer's MSE and margin) at the end in both directions
        assert not np.isnan(vals[:len(known)]).any()
    up, down = (find_features(chain, exs, sort=sort, n=5, descending=d) for d in (False, True))
    assert up[sort].iloc[0] != down[sort].iloc[0]


def test_the_count_of_matches_is_kept_when_n_cuts_the_list(demo_examples):
    chain, _ = demo_examples
    total = sum(chain.n_features(L) for L in chain.layers)
    df = find_features(chain, n=20)
    assert len(df) == 20 and df.attrs["n_matching"] == total
    dying = find_features(chain, dying=True, n=None)
    cut = find_features(chain, dying=True, n=3)
    assert len(cut) == 3 and cut.attrs["n_matching"] == len(dying) > 3
    assert find_features(chain, layer=1, n=None).attrs["n_matching"] == chain.n_features(1)


def test_bad_fate_and_direction_values_are_explained(demo_examples):
    chain, _ = demo_examples
    first, last = chain.layers[0], chain.layers[-1]
    with pytest.raises(InvalidArgumentError, match=f"newborn=True at layer {first}, the chain's first"):
        find_features(chain, layer=first, newborn=True)
    with pytest.raises(InvalidArgumentError, match=f"dying=True at layer {last}, the chain's last"):
        find_features(chain, layer=last, dying=True)
    with pytest.raises(InvalidArgumentError, match="together they list nothing"):
        find_features(chain, dying=True, accepted_only=True)
    with pytest.raises(InvalidArgumentError, match="max_persistence=2 is below min_persistence=3"):
        find_features(chain, min_persistence=3, max_persistence=2)
    for bad in (0, -1):
        with pytest.raises(InvalidArgumentError, match="max_persistence .*integer >= 1"):
            find_features(chain, max_persistence=bad)
    for bad in (2.5, "3", True):
        with pytest.raises(ArgumentTypeError, match="max_persistence .*must be an integer"):
            find_features(chain, max_persistence=bad)
    for name in ("newborn", "dying", "accepted_only", "descending"):
        for bad in ("yes", 1, None if name != "descending" else 0):
            with pytest.raises(ArgumentTypeError, match=f"{name} .*must be True or False"):
                find_features(chain, **{name: bad})
    with pytest.raises(ValueError, match="unknown sort"):
        natural_descending("colour")
    # numpy booleans (a DataFrame's cells) are booleans
    assert len(find_features(chain, newborn=np.bool_(True), n=None)) == len(find_features(chain, newborn=True, n=None))
