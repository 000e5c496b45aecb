"""core/metrics.py: explained variance, pair statistics (Lerner relations), blocked best-Pearson partner."""

import numpy as np
import pytest
import torch

from saematch_nb.core.metrics import (
    EVAccumulator, agreement_rate, best_pearson_partner, explained_variance, pair_statistics,
)


def test_explained_variance_extremes_and_streaming():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 8)) * np.arange(1, 9)
    assert explained_variance(x, x) == pytest.approx(1.0)
    # Predicting the per-dimension mean explains nothing.
    assert explained_variance(np.broadcast_to(x.mean(0), x.shape), x) == pytest.approx(0.0, abs=1e-12)
    x_hat = x + 0.5 * rng.standard_normal(x.shape)
    acc = EVAccumulator()
    for s in range(0, 500, 37):
        acc.update(torch.tensor(x_hat[s:s + 37]), torch.tensor(x[s:s + 37]))
    assert acc.value() == pytest.approx(explained_variance(x_hat, x), abs=1e-10)
    want = 1 - (x_hat - x).var(0).sum() / x.var(0).sum()
    assert acc.value() == pytest.approx(want, abs=1e-10)


def test_explained_variance_with_the_residual_mean_kept():
    """A constant offset is forgiven with the residual's mean removed, counted when it is kept."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 6)) * 2.0
    shifted = x + 3.0  # right shape, wrong offset
    acc = EVAccumulator()
    acc.update(torch.tensor(shifted), torch.tensor(x))
    assert acc.value() == pytest.approx(1.0)
    want = 1 - ((shifted - x) ** 2).mean(0).sum() / x.var(0).sum()
    assert acc.value(residual_mean="kept") == pytest.approx(want, abs=1e-10)
    assert acc.value(residual_mean="kept") < 0
    with pytest.raises(ValueError, match="residual_mean"):
        acc.value(residual_mean="centred")


def test_pair_statistics_identical_disjoint_and_lerner_threshold():
    n = 400
    rng = np.random.default_rng(1)
    a = np.zeros((n, 3))
    b = np.zeros((n, 3))
    on = rng.random(n) < 0.3
    a[on, 0] = rng.uniform(1, 2, on.sum())
    b[:, 0] = 2 * a[:, 0]  # same feature, rescaled
    a[:200, 1] = 1.0
    b[200:, 1] = 1.0  # never together
    # Feature 2 of B fires weakly (< 0.2 max) wherever A's fires, strongly elsewhere once.
    a[:100, 2] = 1.0
    b[:100, 2] = 0.1
    b[300, 2] = 5.0
    s = pair_statistics(a, b, [0, 1, 2], [0, 1, 2])
    assert s["pearson"][0] == pytest.approx(1.0)
    assert s["matching_score"][0] == pytest.approx(1.0)
    assert s["sufficiency"][0] == pytest.approx(1.0) and s["necessity"][0] == pytest.approx(1.0)
    assert s["matching_score"][1] == 0 and s["jaccard"][1] == 0 and s["pearson"][1] < 0
    # Both fire together on 100 tokens (> 0), but B's firing there is below 0.2 × its max.
    assert s["matching_score"][2] == pytest.approx(100 / 101)
    assert s["sufficiency"][2] == 0 and s["jaccard"][2] == 0


def test_best_pearson_partner_recovers_permutation_blocked():
    rng = np.random.default_rng(2)
    n, T = 50, 3000
    a = np.maximum(rng.standard_normal((T, n)), 0)
    perm = rng.permutation(n)
    b = np.zeros_like(a)
    b[:, perm] = a + 0.3 * np.maximum(rng.standard_normal(a.shape), 0)
    idx_small, val_small = best_pearson_partner(torch.tensor(a), torch.tensor(b), block=7)
    idx_big, val_big = best_pearson_partner(torch.tensor(a), torch.tensor(b), block=1000)
    assert (idx_small == perm).all()
    assert np.array_equal(idx_small, idx_big) and np.allclose(val_small, val_big)
    assert agreement_rate(perm, idx_small) == 1.0
    wrong = perm.copy()
    wrong[:10] = -1
    assert agreement_rate(wrong, idx_small) == 1.0  # -1 are left out, not counted as disagreement
    assert agreement_rate(np.roll(perm, 1), idx_small) == 0.0
