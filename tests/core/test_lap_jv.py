"""solve_jv (the dense Jonker-Volgenant solver on one float32 matrix) against scipy's float64
optimum: square, rectangular both ways, partial mode, ties, the clustered near-duplicate
family, tiny scales; its certificate and its errors."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from saematch_nb.core.cost import feature_matrix
from saematch_nb.core.fold import fold
from saematch_nb.core.lap import solve, verify_certificate
from saematch_nb.core.lap.jv import matrix_bytes, solve_jv
from saematch_nb.core.synthetic_families import family
from saematch_nb.core.synthetic_hard import gemma_like_pair


def dense(X, Y):
    X = X.double()
    Y = Y.double()
    return ((X * X).sum(1)[:, None] + (Y * Y).sum(1)[None, :] - 2 * X @ Y.T).clamp_min(0).numpy()


def scipy_opt(C, w=None):
    n_a, n_b = C.shape
    if w is None:
        r, c = linear_sum_assignment(C)
        col = np.full(n_a, -1)
        col[r] = c
        return col, C[r, c].sum()
    Dm = np.full((n_a, n_a), np.inf)
    np.fill_diagonal(Dm, w)
    r, c = linear_sum_assignment(np.hstack([C, Dm]))
    col = np.where(c >= n_b, -1, c)
    tot = np.where(c >= n_b, w[r], C[r, np.minimum(c, n_b - 1)]).sum()
    return col[np.argsort(r)], tot


def exact_total(X, Y, col, w=None):
    has = col >= 0
    t = ((X.double()[has] - Y.double()[torch.from_numpy(col[has])]) ** 2).sum().item()
    if w is not None:
        t += float(np.asarray(w)[~has].sum())
    return t


def check_equal(X, Y, res, w=None, unique=True):
    C = dense(X, Y)
    col, opt = scipy_opt(C, w)
    assert res.gap == 0.0 and res.stats["proven_optimal"]
    assert res.stats["solver"] == "jv"
    assert res.total == pytest.approx(opt, rel=1e-9, abs=1e-300)
    assert exact_total(X, Y, res.col, w) == pytest.approx(res.total, rel=1e-12, abs=1e-300)
    if unique:
        np.testing.assert_array_equal(res.col, col)
    has = res.col >= 0
    assert len(np.unique(res.col[has])) == has.sum()
    np.testing.assert_allclose(res.cost[has], C[np.flatnonzero(has), res.col[has]], rtol=1e-9, atol=1e-300)
    # nearest / second costs are each row's two smallest exact costs
    rows = np.arange(C.shape[0])
    srt = np.sort(C, axis=1)
    np.testing.assert_allclose(res.nearest_cost, srt[:, 0], rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(C[rows, res.nearest], srt[:, 0], rtol=1e-9, atol=1e-300)
    if C.shape[1] > 1:
        np.testing.assert_allclose(res.second_cost, srt[:, 1], rtol=1e-9, atol=1e-300)
    return C


def folded(a, b):
    return feature_matrix(fold(a), "encoder+decoder"), feature_matrix(fold(b), "encoder+decoder")


@pytest.mark.parametrize("n_a,n_b,D,seed", [(1, 1, 3, 0), (1, 7, 3, 1), (60, 60, 8, 2), (400, 400, 24, 3),
                                            (1200, 1200, 48, 4), (300, 520, 16, 5), (2, 3, 4, 6)])
def test_random_equals_scipy(n_a, n_b, D, seed):
    g = torch.Generator().manual_seed(seed)
    X, Y = torch.randn(n_a, D, generator=g), torch.randn(n_b, D, generator=g)
    res = solve_jv(X, Y)
    check_equal(X, Y, res)
    assert (res.col >= 0).all()


def test_more_rows_than_columns_leaves_the_costliest_rows_over():
    g = torch.Generator().manual_seed(7)
    X, Y = torch.randn(520, 16, generator=g), torch.randn(300, 16, generator=g)
    res = solve_jv(X, Y)
    assert (res.col >= 0).sum() == 300 and res.n_unmatched == 220
    C = dense(X, Y)
    col, opt = scipy_opt(C)
    assert res.gap == 0.0 and res.total == pytest.approx(opt, rel=1e-9)
    np.testing.assert_array_equal(res.col, col)
    left = res.col < 0
    np.testing.assert_allclose(res.cost[left], C[left].min(1), rtol=1e-9)
    # the same pair the other way round: the same pairs
    rt = solve_jv(Y, X)
    np.testing.assert_array_equal(res.col[rt.col], np.arange(300))


@pytest.mark.parametrize("n_b", [450, 500, 700])
def test_partial_mode_equals_scipy(n_b):
    g = torch.Generator().manual_seed(8)
    X, Y = torch.randn(500, 12, generator=g), torch.randn(n_b, 12, generator=g)
    C = dense(X, Y)
    w = np.quantile(C.min(1), 0.6) * (0.5 + np.random.default_rng(0).random(500))
    res = solve_jv(X, Y, unmatched_cost=w)
    check_equal(X, Y, res, w)
    un = res.col < 0
    assert 0 < un.sum() < 500
    np.testing.assert_allclose(res.cost[un], C[un].min(1), rtol=1e-9)


def test_partial_mode_extremes():
    g = torch.Generator().manual_seed(9)
    X, Y = torch.randn(80, 6, generator=g), torch.randn(90, 6, generator=g)
    C = dense(X, Y)
    never = solve_jv(X, Y, unmatched_cost=np.full(80, 10 * C.max()))
    assert never.n_unmatched == 0
    check_equal(X, Y, never, np.full(80, 10 * C.max()))
    always = solve_jv(X, Y, unmatched_cost=np.full(80, 0.5 * C.min()))
    assert always.n_unmatched == 80 and always.total == pytest.approx(40 * C.min())


def test_exact_ties_and_duplicate_rows():
    g = torch.Generator().manual_seed(10)
    base = torch.randint(-2, 3, (50, 6), generator=g).float()
    X = base.repeat(4, 1)  # every row four times, integer costs: many optimal assignments
    Y = torch.randint(-2, 3, (200, 6), generator=g).float()
    check_equal(X, Y, solve_jv(X, Y), unique=False)
    Y2 = torch.cat([Y[:60], Y[:60], Y[:80]])  # duplicate columns too
    check_equal(X, Y2, solve_jv(X, Y2), unique=False)
    Z = torch.zeros(30, 5)  # all costs equal
    res = solve_jv(Z, Z)
    assert res.gap == 0.0 and res.total == 0.0 and sorted(res.col.tolist()) == list(range(30))


@pytest.mark.parametrize("group", [(2, 2), (2, 8), (8, 8)])
def test_clustered_near_duplicate_family(group):
    a, b, truth = family("clusters", n=900, d_in=64, group_size=group, seed=11)
    X, Y = folded(a, b)
    res = solve_jv(X, Y)
    check_equal(X, Y, res)
    alive = truth >= 0
    assert (res.col[alive] == truth[alive]).mean() > 0.8


def test_clustered_family_partial_and_gemma_like():
    a, b, _ = family("clusters", n=700, d_in=48, seed=12)
    X, Y = folded(a, b)
    C = dense(X, Y)
    w = np.full(700, np.quantile(C.min(1), 0.7))
    check_equal(X, Y, solve_jv(X, Y, unmatched_cost=w), w)
    a, b, _ = gemma_like_pair(600, 48, dups=0.3, seed=3)
    X, Y = folded(a, b)
    check_equal(X, Y, solve_jv(X, Y))


@pytest.mark.parametrize("scale", [1e-20, 1e-30, 1e15])
def test_tiny_and_large_scales(scale):
    g = torch.Generator().manual_seed(13)
    X, Y = torch.randn(200, 10, generator=g) * scale, torch.randn(230, 10, generator=g) * scale
    res = solve_jv(X, Y)
    check_equal(X, Y, res)
    w = np.full(200, float(np.median(dense(X, Y).min(1))))
    check_equal(X, Y, solve_jv(X, Y, unmatched_cost=w), w)


def test_duals_pass_the_independent_certificate():
    g = torch.Generator().manual_seed(14)
    X, Y = torch.randn(300, 12, generator=g), torch.randn(340, 12, generator=g)
    res = solve_jv(X, Y, return_duals=True)
    rep = verify_certificate(X, Y, res.col, res.stats["u"], res.stats["v"])
    assert rep["ok"] and rep["total"] == pytest.approx(res.total, rel=1e-12)
    bad = res.col.copy()
    bad[[0, 1]] = bad[[1, 0]]
    assert not verify_certificate(X, Y, bad, res.stats["u"], res.stats["v"])["ok"]
    C = dense(X, Y)
    w = np.full(300, float(np.quantile(C.min(1), 0.5)))
    rp = solve_jv(X, Y, unmatched_cost=w, return_duals=True)
    assert rp.stats["v"].shape == (340 + 300,)
    assert verify_certificate(X, Y, rp.col, rp.stats["u"], rp.stats["v"], unmatched_cost=w)["ok"]


def test_front_door_and_solver_name():
    g = torch.Generator().manual_seed(15)
    X, Y = torch.randn(50, 8, generator=g), torch.randn(60, 8, generator=g)
    a = solve(X, Y, solver="jv")
    d = solve(X, Y, solver="dense")
    assert a.stats["solver"] == "jv" and d.stats["solver"] == "dense"
    np.testing.assert_array_equal(a.col, d.col)
    assert a.total == pytest.approx(d.total, rel=1e-12)  # both totals on float64 costs
    with pytest.raises(TypeError, match="no options"):
        solve(X, Y, solver="jv", k=4)
    assert matrix_bytes(1000, 2000) == 8_000_000


def test_bad_input_is_explained():
    X = torch.randn(10, 4)
    with pytest.raises(ValueError, match="same feature length"):
        solve_jv(X, torch.randn(10, 5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        solve_jv(X.numpy(), X)
    with pytest.raises(ValueError, match="no rows"):
        solve_jv(X[:0], X)
    with pytest.raises(ValueError, match="unmatched_cost"):
        solve_jv(X, X, unmatched_cost=np.ones(3))
    with pytest.raises(ValueError, match="finite"):
        solve_jv(X, X, unmatched_cost=np.full(10, np.nan))
    with pytest.raises(ValueError, match="max_rounds"):
        solve_jv(X, X, max_rounds=0)
    for bad in (float("nan"), float("inf")):
        Xn = X.clone()
        Xn[3, 2] = bad
        with pytest.raises(ValueError, match="NaN/inf"):
            solve_jv(Xn, X)
        with pytest.raises(ValueError, match="NaN/inf"):
            solve_jv(torch.cat([Xn, Xn]), X)  # n_a > n_b: the transposed solve checks too
    big = X.clone()
    big[0, 0] = 3e38
    with pytest.raises(ValueError, match="overflows float32.*rescale"):
        solve_jv(big, X)


@pytest.mark.parametrize("sx,sy", [(1e-24, 1e-20), (1e-4, 1.0)])
def test_rows_that_rank_columns_alike_do_not_stall_the_search(sx, sy):
    """X far smaller than Y: every row ranks the columns almost by |y_j|, so the searches go
    past the 64-column cores with cores that re-take to the same bound (an endless token loop
    before the whole-row fallback)."""
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(142, 30, generator=g) * sx, torch.randn(154, 30, generator=g) * sy
    check_equal(X, Y, solve_jv(X, Y))
