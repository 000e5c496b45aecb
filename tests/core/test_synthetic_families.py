"""core/synthetic_families.py: the planted pairs the criterion is validated on say what they claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saematch_nb.core import criterion as crit
from saematch_nb.core.cost import feature_matrix
from saematch_nb.core.synthetic_families import FAMILIES, FamilySpec, family, family_pair


def _dist(a, b, truth):
    X, Y = feature_matrix(a), feature_matrix(b)
    parts = crit.part_slices("encoder+decoder", a.d_in)
    return crit.direction_distance(X, Y, truth, parts)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_has_its_shape(name):
    spec = FAMILIES[name]
    a, b, truth = family(name, seed=0)
    assert (a.d_sae, b.d_sae, a.d_in) == (spec.n, spec.n_b or spec.n, spec.d_in)
    assert truth.shape == (spec.n,) and a.info.sae_id == f"family/{name}/0"
    alive = truth >= 0
    if spec.null:
        assert not alive.any()
        return
    assert abs(float(np.mean(~alive)) - spec.fresh_fraction) < 0.01
    assert len(set(truth[alive].tolist())) == alive.sum()  # a partner is used once
    s = _dist(a, b, np.where(alive, truth, -1))[alive]
    if spec.kind == "drift":
        # a partner turned by phi in both parts: s = 1 - cos(phi), within the planted angles
        lo = 1 - np.cos(np.deg2rad(min(spec.stable_deg[0], spec.drift_deg[0]))) if spec.stable_share < 1 else 0
        hi = 1 - np.cos(np.deg2rad(max(spec.drift_deg[1] if spec.stable_share < 1 else 0, spec.stable_deg[1])))
        assert (s >= lo - 1e-4).all() and (s <= hi + 1e-4).all(), (s.min(), s.max(), lo, hi)
        return
    # planted partners are close in direction: about noise^2 / 2 (per-feature levels spread it)
    assert np.median(s) < 2 * spec.noise ** 2 + 0.01


def test_drift_families_share_their_clusters():
    """shared-null: unrelated features of the two layers sit around the same centres, so they are
    closer by chance than those of an unclustered null pair."""
    shared, _, _ = family("shared-null", seed=0), None, None
    a, b, _ = shared
    plain_a, plain_b, _ = family("shared-null", seed=0, shared_centres=0)
    parts = crit.part_slices("encoder+decoder", a.d_in)
    near = lambda x, y: crit.nearest_direction(crit.directions(feature_matrix(x), parts), feature_matrix(y), parts)[1]  # noqa: E731
    assert np.median(near(a, b)) < 0.9 * np.median(near(plain_a, plain_b))


def test_seed_and_overrides():
    a1, b1, t1 = family("isotropic", seed=3)
    a2, b2, t2 = family("isotropic", seed=3)
    assert torch.equal(a1.W_dec, a2.W_dec) and np.array_equal(t1, t2)
    a3, _, _ = family("isotropic", seed=4)
    assert not torch.equal(a1.W_dec, a3.W_dec)
    a4, b4, t4 = family("isotropic", seed=0, n=100, n_b=150)
    assert (a4.d_sae, b4.d_sae, t4.shape) == (100, 150, (100,))


def test_clusters_make_near_duplicates():
    """With clusters, many features have a near-duplicate sibling in the same SAE."""
    def nearest_other(w):
        D = torch.nn.functional.normalize(w.W_dec, dim=1)
        G = D @ D.T
        G.fill_diagonal_(-1)
        return G.max(1).values.numpy()

    plain, _, _ = family_pair(FamilySpec(n=400, d_in=64), seed=0)
    clus, _, _ = family_pair(FamilySpec(n=400, d_in=64, clusters=0.8, cluster_spread=0.3), seed=0)
    assert np.median(nearest_other(clus)) > 0.8 > np.median(nearest_other(plain))


def test_splitting_puts_siblings_in_free_slots():
    spec = FamilySpec(n=300, d_in=64, fresh_fraction=0.3, split_fraction=0.5, split_spread=0.2, noise=0.05)
    a, b, truth = family_pair(spec, seed=1)
    alive = truth >= 0
    used = set(truth[alive].tolist())
    free = np.array([j for j in range(b.d_sae) if j not in used])
    # a good share of the free B slots hold a near-copy of some persisting A-feature
    Xa = torch.nn.functional.normalize(a.W_dec[torch.as_tensor(np.flatnonzero(alive))], dim=1)
    Yb = torch.nn.functional.normalize(b.W_dec[torch.as_tensor(free)], dim=1)
    best = (Yb @ Xa.T).max(1).values.numpy()
    assert np.mean(best > 0.9) > 0.4


def test_anisotropic_spectrum_in_a_random_basis():
    a, _, _ = family_pair(FamilySpec(n=2000, d_in=32, spectrum_decay=1.0, spectrum_basis="random"), seed=0)
    D = torch.nn.functional.normalize(a.W_dec, dim=1).double()
    ev = torch.linalg.eigvalsh(D.T @ D).flip(0).numpy()
    assert ev[0] / ev[-1] > 20  # strongly anisotropic
    # and not along the axes: the top eigenvector is spread over coordinates
    _, V = torch.linalg.eigh(D.T @ D)
    assert float(V[:, -1].abs().max()) < 0.9


def test_bad_family_input():
    with pytest.raises(KeyError, match="unknown family"):
        family("nope")
    with pytest.raises(ValueError, match="n_b >= n"):
        family_pair(FamilySpec(n=10, n_b=5))
    with pytest.raises(ValueError, match="spectrum_basis"):
        family_pair(FamilySpec(n=10, spectrum_basis="diagonal"))
    with pytest.raises(ValueError, match="fresh_fraction"):
        family_pair(FamilySpec(n=10, fresh_fraction=1.0))
