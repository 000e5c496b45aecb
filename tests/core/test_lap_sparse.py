"""solve_sparse against scipy's dense optimum, on random, planted and adversarial cases, and the
certificate rejecting what it must reject."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from saematch_nb.core.lap_sparse import solve_sparse, verify_certificate
from saematch_nb.core.synthetic_hard import gemma_like_pair

DEV = "cpu"


def dense(X, Y):
    X = X.double()
    Y = Y.double()
    return ((X * X).sum(1)[:, None] + (Y * Y).sum(1)[None, :] - 2 * X @ Y.T).clamp_min(0).numpy()


def exact_total(X, Y, col, w=None):
    X = X.double()
    Y = Y.double()
    has = col >= 0
    t = ((X[has] - Y[torch.from_numpy(col[has])]) ** 2).sum().item()
    if w is not None:
        t += float(np.asarray(w)[~has].sum())
    return t


def scipy_opt(C, w=None):
    n_a, n_b = C.shape
    if w is None:
        r, c = linear_sum_assignment(C)
        col = np.full(n_a, -1)
        col[r] = c
        return col, C[r, c].sum()
    Dm = np.full((n_a, n_a), 1e30)
    np.fill_diagonal(Dm, w)
    r, c = linear_sum_assignment(np.hstack([C, Dm]))
    col = np.where(c >= n_b, -1, c)
    tot = np.where(c >= n_b, w[r], C[r, np.minimum(c, n_b - 1)]).sum()
    return col[np.argsort(r)], tot


def check_equal(X, Y, res, w=None, unique=True):
    C = dense(X, Y)
    col, opt = scipy_opt(C, w)
    assert res.gap == 0.0 and res.stats["proven_optimal"]
    assert res.total == pytest.approx(opt, rel=1e-9, abs=1e-9)
    assert exact_total(X, Y, res.col, w) == pytest.approx(res.total, rel=1e-12)
    if unique:
        np.testing.assert_array_equal(res.col, col)
    # reported costs are the exact matched costs
    has = res.col >= 0
    np.testing.assert_allclose(res.cost[has], C[np.flatnonzero(has), res.col[has]], rtol=1e-9, atol=1e-9)
    assert len(np.unique(res.col[has])) == has.sum()


@pytest.mark.parametrize("n,D,seed", [(60, 8, 0), (400, 24, 1), (1500, 48, 2)])
def test_random_square_equals_dense(n, D, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, D, generator=g)
    Y = torch.randn(n, D, generator=g)
    res = solve_sparse(X, Y, k=4, k_dot=8, device=DEV)
    check_equal(X, Y, res)


def test_planted_gemma_like_small():
    a, b, truth = gemma_like_pair(600, 48, dups=0.3, seed=3)
    X = torch.cat([a.W_dec * a.threshold[:, None], (a.W_enc / a.threshold).T], 1)
    Y = torch.cat([b.W_dec * b.threshold[:, None], (b.W_enc / b.threshold).T], 1)
    res = solve_sparse(X, Y, device=DEV)
    check_equal(X, Y, res)
    alive = truth >= 0
    assert (res.col[alive] == truth[alive]).mean() > 0.9


def test_rectangular_and_transposed():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(300, 16, generator=g)
    Y = torch.randn(520, 16, generator=g)
    res = solve_sparse(X, Y, k=3, k_dot=6, device=DEV)
    check_equal(X, Y, res)
    assert (res.col >= 0).all()
    rt = solve_sparse(Y, X, k=3, k_dot=6, device=DEV)  # n_a > n_b: 220 rows stay without partner
    assert (rt.col >= 0).sum() == 300 and (rt.col < 0).sum() == 220
    assert rt.total == pytest.approx(res.total, rel=1e-9)
    np.testing.assert_array_equal(rt.col[res.col], np.arange(300))


def test_partial_mode_covers_dummy_columns():
    g = torch.Generator().manual_seed(5)
    X = torch.randn(500, 12, generator=g)
    Y = torch.randn(450, 12, generator=g)
    C = dense(X, Y)
    w = np.quantile(C.min(1), 0.6) * (0.5 + np.random.default_rng(0).random(500))
    res = solve_sparse(X, Y, unmatched_cost=w, k=4, k_dot=8, device=DEV)
    check_equal(X, Y, res, w)
    assert 0 < (res.col < 0).sum() < 500
    # -1 rows report the cost to their nearest column
    un = res.col < 0
    np.testing.assert_allclose(res.cost[un], C[un].min(1), rtol=1e-9)


def test_hubness_rows_share_one_nearest_column():
    g = torch.Generator().manual_seed(6)
    D = 20
    Y = torch.randn(800, D, generator=g) * 3
    Y[0] = 0.0  # the origin: nearest column of (almost) every row
    Y[1:40] *= 0.05  # more small-norm hubs
    X = torch.randn(800, D, generator=g)
    assert (np.argmin(dense(X, Y), 1) <= 40).mean() > 0.9
    res = solve_sparse(X, Y, k=2, k_dot=4, device=DEV)
    check_equal(X, Y, res)


def test_exact_ties_total_equals_dense():
    g = torch.Generator().manual_seed(7)
    base = torch.randint(-2, 3, (50, 6), generator=g).float()
    X = base.repeat(4, 1)  # every row four times, integer costs: many optimal assignments
    Y = torch.randint(-2, 3, (200, 6), generator=g).float()
    res = solve_sparse(X, Y, k=2, k_dot=2, device=DEV)
    check_equal(X, Y, res, unique=False)


def test_tiny_k_needs_the_violating_pairs_loop():
    g = torch.Generator().manual_seed(8)
    X = torch.randn(700, 10, generator=g)
    Y = torch.randn(700, 10, generator=g)
    res = solve_sparse(X, Y, k=1, k_dot=1, device=DEV)
    assert res.stats["rounds"] > 1 and res.stats["expanded_rows"] > 0
    check_equal(X, Y, res)
    assert res.stats["candidate_edges"] < 700 * 700 / 2  # never went dense


def test_certificate_accepts_optimum_and_rejects_wrong_duals_or_assignment():
    g = torch.Generator().manual_seed(9)
    X = torch.randn(300, 12, generator=g)
    Y = torch.randn(300, 12, generator=g)
    res = solve_sparse(X, Y, k=3, k_dot=6, device=DEV, return_duals=True)
    u, v = res.stats["u"], res.stats["v"]
    good = verify_certificate(X, Y, res.col, u, v, device=DEV)
    assert good["ok"] and good["total"] == pytest.approx(good["dual_objective"], rel=1e-10)
    # a wrong assignment: swap two partners; the duals no longer prove it (total > dual objective)
    bad_col = res.col.copy()
    bad_col[[0, 1]] = bad_col[[1, 0]]
    assert not verify_certificate(X, Y, bad_col, u, v, device=DEV)["ok"]
    # wrong duals: raise one row's potential so that some non-candidate pair violates
    u2 = u.copy()
    u2[5] += 50.0
    rep = verify_certificate(X, Y, res.col, u2, v, device=DEV)
    assert not rep["ok"] and 5 in rep["bad_rows"]
    # duals that are feasible but not tight do not prove optimality either
    assert not verify_certificate(X, Y, res.col, u - 1.0, v, device=DEV)["ok"]
    # a non-permutation is rejected
    dup = res.col.copy()
    dup[1] = dup[0]
    assert not verify_certificate(X, Y, dup, u, v, device=DEV)["distinct"]


def test_max_rounds_reports_a_certified_gap():
    g = torch.Generator().manual_seed(10)
    X = torch.randn(500, 10, generator=g)
    Y = torch.randn(500, 10, generator=g)
    res = solve_sparse(X, Y, k=1, k_dot=1, max_rounds=1, device=DEV)
    opt = scipy_opt(dense(X, Y))[1]
    assert res.total >= opt - 1e-9
    if res.stats["proven_optimal"]:
        assert res.gap == 0.0 and res.total == pytest.approx(opt, rel=1e-9)
    else:  # the stated gap really bounds the distance to the optimum
        assert res.gap > 0 and res.total - res.gap <= opt + 1e-9


def test_bad_input_is_explained():
    X = torch.randn(10, 4)
    with pytest.raises(ValueError, match="same feature length"):
        solve_sparse(X, torch.randn(10, 5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        solve_sparse(X.numpy(), X)
    with pytest.raises(ValueError, match="unmatched_cost"):
        solve_sparse(X, X, unmatched_cost=np.ones(3))
    Xn = X.clone()
    Xn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        solve_sparse(Xn, X)
