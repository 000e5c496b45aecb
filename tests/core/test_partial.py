"""Partial mode vs the bijective optimum on planted benchmarks with fresh (dying) features.

Run with ``-s`` to see the side-by-side table. The hard benchmark (the issue's situation):
``planted_pair(512, 64, fresh_fraction=0.3, gain_spread=1.5, fresh_scale=0.05, noise=0.3)``:
per-feature norms vary a lot (gain_spread) and newborn B-features are weak (fresh_scale), so in
the bijective optimum the dying A-features, which must take some column, take the partners of
low-norm persisting features; about a fifth of the persisting features are displaced.
"""

from __future__ import annotations

import numpy as np
import pytest

from saematch_nb import match
from saematch_nb.core.synthetic import planted_pair

HARD = dict(fresh_fraction=0.3, gain_spread=1.5, fresh_scale=0.05, noise=0.3)
BENCHMARKS = [
    ("hard, seed 0", 512, 64, 1, HARD, 0),
    ("hard, seed 1", 512, 64, 1, HARD, 1),
    ("hard, seed 2, d_in 128", 512, 128, 1, HARD, 2),
    ("hard, 256 -> 512", 256, 64, 2, HARD, 3),  # extra fresh columns: fewer displaced
    ("easy (fixture-like)", 256, 64, 1, dict(fresh_fraction=0.3, noise=0.1), 4),
    ("50% fresh, noise 0.5", 512, 64, 1, dict(fresh_fraction=0.5, noise=0.5, gain_spread=1.0,
                                              fresh_scale=0.1), 5),
]


def partial_numbers(lm, truth) -> tuple[float, float]:
    """(persisting kept with their true partner, dying features given a partner)."""
    alive = truth >= 0
    kept = float(np.mean(lm.partner[alive] == truth[alive]))
    wrong = float(np.mean(lm.partner[~alive] >= 0))
    return kept, wrong


def _run(n, d_in, nb, kw, seed):
    a, b, truth = planted_pair(n, d_in, n_b=n * nb, seed=seed, **kw)
    return match(a, b), match(a, b, allow_unmatched=True), truth


@pytest.fixture(scope="module")
def table():
    rows = []
    for name, n, d_in, nb, kw, seed in BENCHMARKS:
        bij, par, truth = _run(n, d_in, nb, kw, seed)
        rows.append((name, partial_numbers(bij, truth), partial_numbers(par, truth), bij, par, truth))
    print("\n%-24s | %-28s | %-28s" % ("benchmark", "bijective kept / fresh partnered",
                                      "partial kept / fresh partnered"))
    for name, (bk, bw), (pk, pw), *_ in rows:
        print("%-24s | %12.1f%% / %10.1f%% | %12.1f%% / %10.1f%%" % (name, 100 * bk, 100 * bw, 100 * pk, 100 * pw))
    return rows


def test_hard_benchmark_bijective_displaces_about_a_fifth(table):
    for name, (bk, bw), *_ in table:
        if name.startswith("hard") and "->" not in name:
            assert 0.70 <= bk <= 0.90, (name, bk)  # measured 0.78-0.80: about a fifth displaced
            assert bw == 1.0  # square or wider: every dying row gets some column


def test_partial_keeps_persisting_and_rejects_dying(table):
    for name, (bk, bw), (pk, pw), bij, par, truth in table:
        assert pk >= 0.98, (name, pk)
        assert pw <= 0.03, (name, pw)
        # partner == -1 rows are never "matched"; bijective partner == permutation
        assert not par.matched[par.partner < 0].any()
        assert np.array_equal(bij.partner, bij.permutation)
        assert (par.partner < 0).sum() == par.stats["n_unmatched"]
        assert par.options["allow_unmatched"] is True


def test_partial_rows_point_at_nearest_feature(table):
    _, _, _, _, par, _ = table[0]
    none = par.partner < 0
    assert none.any()
    # permutation keeps a B-feature for display: the row's nearest one; mse is to that one
    assert (par.permutation[none] >= 0).all()
    assert np.all(par.mse[none] <= par.alt_mse[none] + 1e-12)


def test_partial_needs_lap():
    a, b, _ = planted_pair(32, 16, seed=0)
    with pytest.raises(ValueError, match="allow_unmatched"):
        match(a, b, method="cosine", allow_unmatched=True)
