"""The calibrated criterion: ``matched`` tells correct matches from wrong/absent ones (≥ 95%)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saematch_nb import match
from saematch_nb.core import criterion as crit
from saematch_nb.core.cost import dense_cost, feature_matrix
from saematch_nb.core.synthetic import planted_pair


def criterion_accuracy(lm, truth) -> float:
    """matched must be True exactly where the accepted partner is the planted one."""
    correct = (lm.partner == truth) & (truth >= 0)
    return float(np.mean(lm.matched == correct))


# (n, d_in, n_b factor, noise, fresh_fraction, seed): sizes, noise levels, fresh fractions, seeds
SETTINGS = [
    (256, 64, 1, 0.1, 0.0, 0),
    (256, 64, 1, 0.3, 0.3, 1),
    (256, 64, 4, 0.5, 0.3, 2),
    (512, 64, 1, 0.5, 0.5, 3),
    (1024, 64, 1, 0.3, 0.3, 4),
    (256, 128, 1, 0.5, 0.5, 5),
    (512, 128, 2, 0.3, 0.3, 6),
]


@pytest.mark.parametrize("n,d_in,nb,noise,fresh,seed", SETTINGS)
def test_criterion_accuracy_at_least_95(n, d_in, nb, noise, fresh, seed):
    a, b, truth = planted_pair(n, d_in, n_b=n * nb, noise=noise, fresh_fraction=fresh, seed=seed)
    lm = match(a, b)
    acc = criterion_accuracy(lm, truth)
    assert acc >= 0.95, acc
    # the statistic really separates: dying features' forced partners are rejected
    if fresh:
        assert not lm.matched[truth < 0].any()
    assert lm.threshold == crit.DEFAULT_THRESHOLD


def test_criterion_on_hard_norm_spread_pair():
    # wildly varying feature norms: the scale-free direction statistic is unaffected
    a, b, truth = planted_pair(512, 64, fresh_fraction=0.3, gain_spread=1.5, fresh_scale=0.05,
                               noise=0.3, seed=0)
    lm = match(a, b)
    assert criterion_accuracy(lm, truth) >= 0.95


def test_scores_of_partners_and_null_are_apart(planted_fresh):
    a, b, truth = planted_fresh
    lm = match(a, b)
    alive = truth >= 0
    assert lm.score[alive].max() < crit.DEFAULT_THRESHOLD < lm.score[~alive].min()
    # the best unrelated column sits near -1 by construction
    assert -1.5 < np.median(lm.score[~alive]) < -0.5


def test_row_statistics_streaming_equals_dense():
    a, b, _ = planted_pair(200, 32, n_b=300, fresh_fraction=0.3, seed=9)
    X, Y = feature_matrix(a), feature_matrix(b)
    parts = crit.part_slices("encoder+decoder", 32)
    s_small = crit.row_statistics(X, Y, parts=parts, block_rows=17)
    s_big = crit.row_statistics(X, Y, parts=parts)
    for name in ("null_loc", "null_scale", "nearest", "best_cost", "second_cost"):
        assert np.allclose(getattr(s_small, name), getattr(s_big, name), rtol=1e-5, atol=1e-6), name
    C = dense_cost(X, Y)
    assert np.array_equal(s_big.nearest, C.argmin(1))
    assert np.allclose(s_big.best_cost, C.min(1), rtol=1e-4)
    assert np.allclose(s_big.second_cost, np.sort(C, 1)[:, 1], rtol=1e-4)


def test_direction_distance_is_mean_cosine():
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(10, 16, generator=g), torch.randn(10, 16, generator=g)
    parts = crit.part_slices("encoder+decoder", 8)
    s = crit.direction_distance(X, Y, np.arange(10), parts)
    cos = lambda u, v: torch.nn.functional.cosine_similarity(u, v, dim=1)  # noqa: E731
    want = 1 - (cos(X[:, :8], Y[:, :8]) + cos(X[:, 8:], Y[:, 8:])) / 2
    assert np.allclose(s, want.numpy(), atol=1e-5)
    # scale-free: rescaling a feature does not change it
    assert np.allclose(crit.direction_distance(X * 7.0, Y, np.arange(10), parts), s, atol=1e-5)
    assert np.isnan(crit.direction_distance(X, Y, np.array([-1] * 10), parts)).all()


def test_calibration_threshold_is_a_knob(planted_fresh):
    a, b, truth = planted_fresh
    strict = match(a, b, calibration=-5.0)
    loose = match(a, b, calibration=0.0)
    assert strict.matched.sum() < match(a, b).matched.sum() <= loose.matched.sum()
    assert loose.matched.all()  # 0 is above every forced null match too
