"""core/synthetic.py and core/synthetic_hard.py: planted pairs and chains say what they claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saematch_nb.core import criterion as crit
from saematch_nb.core.cost import feature_matrix
from saematch_nb.core.fold import fold
from saematch_nb.core.synthetic import perturb, planted_chain, planted_pair, random_features
from saematch_nb.core.synthetic_hard import gemma_like_chain, gemma_like_pair


def _dist(a, b, col):
    X, Y = feature_matrix(a), feature_matrix(b)
    return crit.direction_distance(X, Y, col, crit.part_slices("encoder+decoder", a.d_in))


def test_planted_pair_truth_and_rescaling():
    a, b, truth = planted_pair(200, 32, fresh_fraction=0.25, noise=0.05, seed=1)
    alive = truth >= 0
    assert abs(np.mean(~alive) - 0.25) < 0.01 and len(set(truth[alive])) == alive.sum()
    # the planted partner is close in direction; the rest is not
    s_true = _dist(a, b, np.where(alive, truth, -1))[alive]
    s_rand = _dist(a, b, np.roll(np.where(alive, truth, 0), 7))[alive]
    assert np.median(s_true) < 0.01 < 0.5 < np.median(s_rand)
    # partners differ by a per-feature rescaling that folding removes: folded norms agree
    fa, fb = fold(a), fold(b)
    ra = fa.W_dec.norm(dim=1)[torch.as_tensor(np.flatnonzero(alive))]
    rb = fb.W_dec.norm(dim=1)[torch.as_tensor(truth[alive])]
    assert torch.allclose(ra, rb, rtol=0.2)
    ua = a.W_dec.norm(dim=1)[torch.as_tensor(np.flatnonzero(alive))]
    ub = b.W_dec.norm(dim=1)[torch.as_tensor(truth[alive])]
    assert not torch.allclose(ua, ub, rtol=0.2)  # unfolded they do not


def test_planted_pair_rectangular_and_errors():
    a, b, truth = planted_pair(50, 16, n_b=80, seed=0)
    assert (a.d_sae, b.d_sae) == (50, 80) and truth.max() < 80
    with pytest.raises(ValueError, match="n_b >= n"):
        planted_pair(50, 16, n_b=40)


def test_perturb_per_feature_levels():
    rng = np.random.default_rng(0)
    f = random_features(100, 32, rng)
    levels = np.r_[np.full(50, 0.01), np.full(50, 0.5)]
    g = perturb(f, levels, np.random.default_rng(1))
    move = np.linalg.norm(g.dec - f.dec, axis=1) / np.linalg.norm(f.dec, axis=1)
    assert move[:50].max() < 0.05 < 0.3 < move[50:].min()


def test_planted_chain_truths_link_the_layers():
    pc = planted_chain(n_layers=4, n=64, d_in=32, fresh_fraction=0.2, noise=0.05, seed=2)
    assert len(pc.saes) == 4 and len(pc.truths) == 3
    for t, truth in enumerate(pc.truths):
        alive = truth >= 0
        s = _dist(pc.saes[t], pc.saes[t + 1], np.where(alive, truth, -1))[alive]
        assert np.median(s) < 0.01
        assert pc.saes[t].info.layer == t


def test_gemma_like_pair_and_chain_small():
    a, b, truth = gemma_like_pair(n=128, d_in=48, seed=0)
    assert (a.d_sae, a.d_in) == (128, 48) and abs(np.mean(truth < 0) - 0.3) < 0.02
    alive = truth >= 0
    assert np.median(_dist(a, b, np.where(alive, truth, -1))[alive]) < 0.02
    layers = list(gemma_like_chain(n_layers=3, n=64, d_in=32, seed=1))
    assert len(layers) == 3 and layers[-1][1] is None
    assert all(w.d_sae == 64 and t is not None for w, t in layers[:-1])
    with pytest.raises(ValueError, match="fresh_fraction"):
        gemma_like_pair(n=16, d_in=8, fresh_fraction=1.0)
