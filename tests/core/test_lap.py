"""The solver's front door (saematch_nb.core.lap): solver choice, shapes, partial mode, errors,
and each row's two nearest costs read off the dense matrix once."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from saematch_nb.core import lap
from saematch_nb.core.cost import dense_cost
from saematch_nb.core.lap import (AUTO_SCIPY_MAX, DEFAULT_MEMORY_BUDGET, AssignmentResult, jv_bytes, pick_solver,
                                  solve, solve_dense)


def _xy(n_a, n_b, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_a, d, generator=g), torch.randn(n_b, d, generator=g)


def _brute_two(C):
    order = np.argsort(C, axis=1, kind="stable")
    rows = np.arange(C.shape[0])
    return order[:, 0], C[rows, order[:, 0]], C[rows, order[:, 1]]


# -- moved from tests/core/test_match.py (they test the front door, not match) ------------------
def test_solve_alt_cost_and_result_fields():
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(30, 8, generator=g), torch.randn(40, 8, generator=g)
    res = solve(X, Y, solver="dense")
    C = dense_cost(X, Y)
    rows = np.arange(30)
    assert len(set(res.col.tolist())) == 30
    assert np.allclose(res.cost, C[rows, res.col])
    Cm = C.copy()
    Cm[rows, res.col] = np.inf
    assert np.allclose(res.alt_cost, Cm.min(1))
    assert res.gap == 0.0 and res.stats["solver"] == "dense"


def test_partial_dense_formulation_matches_brute_force():
    rng = np.random.default_rng(0)
    C = rng.random((5, 6))
    u = rng.random(5) * 0.5
    res = solve_dense(C, unmatched_cost=u)
    # brute force: augmented matrix [C | diag(u)]
    best = np.inf
    for cols in itertools.permutations(range(11), 5):
        tot = 0.0
        for i, c in enumerate(cols):
            if c < 6:
                tot += C[i, c]
            elif c - 6 == i:
                tot += u[i]
            else:
                tot = np.inf
                break
        best = min(best, tot)
    assert np.isclose(res.total, best)
    on = res.col >= 0
    assert np.isclose(res.total, C[np.flatnonzero(on), res.col[on]].sum() + u[~on].sum())
    assert len(set(res.col[on].tolist())) == on.sum()


def test_solver_choice():
    assert pick_solver(100, 100) == "dense"
    assert pick_solver(16, 16, "dense") == "dense"
    with pytest.raises(ValueError, match="solver must be one of"):
        pick_solver(4, 4, "fast")
    # the dense float32 matrix of a 5000 x 5000 problem fits the default budget: the JV solver
    assert pick_solver(5000, 5000) == "jv"
    # a 65k x 65k matrix (16 GiB) does not: the sparse solver
    assert pick_solver(65536, 65536) == "sparse"


# -- the front door's own tests ----------------------------------------------------------------
def test_auto_switches_at_the_documented_sizes():
    # (changed in issue #14: auto used to hand everything above 4096² to the sparse solver)
    assert AUTO_SCIPY_MAX == 1024 ** 2 and DEFAULT_MEMORY_BUDGET == int(1.5 * 2 ** 30)
    assert pick_solver(1024, 1024) == "dense"
    assert pick_solver(1024, 1025) == "jv"
    assert pick_solver(16384, 16384) == "jv"  # 1 GiB matrix + working memory < 1.5 GiB
    assert jv_bytes(16384, 16384) <= DEFAULT_MEMORY_BUDGET < jv_bytes(20000, 20000)
    assert pick_solver(20000, 20000) == "sparse"
    assert pick_solver(20000, 20000, memory_budget=2 * 2 ** 30) == "jv"
    assert pick_solver(16384, 16384, memory_budget=2 ** 30) == "sparse"
    assert pick_solver(4096, 4097, "dense") == "dense" and pick_solver(2, 2, "sparse") == "sparse"
    for bad in (-1, "1GB", True, float("nan")):
        with pytest.raises(ValueError, match="memory_budget must be a number of bytes"):
            pick_solver(4, 4, memory_budget=bad)


def test_auto_without_numba_keeps_scipy_up_to_4096(monkeypatch):
    monkeypatch.setattr(lap, "_have_numba", lambda: False)
    assert pick_solver(4096, 4096) == "dense" and pick_solver(4096, 4097) == "sparse"
    assert pick_solver(2000, 2000, "jv") == "jv"  # an explicit choice stays


def test_auto_hands_large_problems_to_the_jv_and_sparse_solvers(monkeypatch):
    X, Y = _xy(48, 48, seed=1)
    dense = solve(X, Y, solver="auto")
    assert dense.stats["solver"] == "dense"
    monkeypatch.setattr(lap, "AUTO_SCIPY_MAX", 48 * 48 - 1)  # the same problem is now "large"
    jv = solve(X, Y, solver="auto")
    assert jv.stats["solver"] == "jv" and jv.gap == 0.0
    np.testing.assert_array_equal(jv.col, dense.col)
    sparse = solve(X, Y, solver="auto", memory_budget=0, k=8)  # a sparse option passes through
    assert sparse.stats["solver"] == "sparse" and sparse.gap == 0.0
    assert isinstance(sparse, AssignmentResult) and type(sparse) is type(dense)
    np.testing.assert_array_equal(sparse.col, dense.col)
    assert np.isclose(sparse.total, dense.total, rtol=1e-6)


def test_dense_result_carries_each_rows_two_nearest_costs():
    X, Y = _xy(40, 50, seed=2)
    C = dense_cost(X, Y)
    res = solve_dense(C)
    near, best, second = _brute_two(C)
    np.testing.assert_array_equal(res.nearest, near)
    np.testing.assert_array_equal(res.nearest_cost, best)
    np.testing.assert_array_equal(res.second_cost, second)
    assert res.nearest.dtype == np.int64 and res.nearest_cost.dtype == np.float64
    assert res.n_unmatched == 0


def test_more_rows_than_columns_dense_and_sparse_agree():
    X, Y = _xy(30, 20, seed=3)
    C = dense_cost(X, Y)
    d = solve(X, Y, solver="dense")
    s = solve(X, Y, solver="sparse")
    for res in (d, s):
        assert res.col.shape == (30,) and res.col.dtype == np.int64
        assert res.n_unmatched == 10  # each of the 20 columns is used once
        used = res.col[res.col >= 0]
        assert len(set(used.tolist())) == 20
    np.testing.assert_array_equal(d.col, s.col)
    assert np.isclose(d.total, s.total, rtol=1e-6)
    # a row left over reports what its best option would have cost
    left = np.flatnonzero(d.col < 0)
    np.testing.assert_allclose(d.cost[left], C[left].min(1), rtol=1e-6)  # C: dense_cost's float32 blocks


def test_square_and_rectangular_shapes():
    for n_a, n_b in ((1, 1), (1, 5), (16, 16), (16, 64)):
        X, Y = _xy(n_a, n_b, seed=n_a + n_b)
        res = solve(X, Y)
        assert res.col.shape == res.cost.shape == res.alt_cost.shape == (n_a,)
        assert (res.col >= 0).all() and len(set(res.col.tolist())) == n_a
        if n_b == 1:  # no other column: the best alternative is none
            assert np.isinf(res.alt_cost).all() and np.isinf(res.second_cost).all()


def test_partial_mode_through_the_front_door():
    X, Y = _xy(24, 24, seed=4)
    C = dense_cost(X, Y)
    never = solve(X, Y, unmatched_cost=np.full(24, 10 * C.max()))
    assert never.n_unmatched == 0
    always = solve(X, Y, unmatched_cost=np.full(24, 0.5 * C.min()))
    assert always.n_unmatched == 24 and np.isclose(always.total, 24 * 0.5 * C.min())
    np.testing.assert_array_equal(always.nearest, C.argmin(1))
    u = np.full(24, np.median(C.min(1)))  # about half the rows are better off without a partner
    d = solve(X, Y, unmatched_cost=u, solver="dense")
    s = solve(X, Y, unmatched_cost=u, solver="sparse")
    assert 0 < d.n_unmatched < 24
    np.testing.assert_array_equal(d.col, s.col)
    assert np.isclose(d.total, s.total, rtol=1e-6)


def test_errors_say_what_was_wrong():
    X, Y = _xy(6, 6)
    with pytest.raises(ValueError, match=r"unmatched_cost must have shape \(6,\)"):
        solve(X, Y, unmatched_cost=np.ones(5))
    with pytest.raises(ValueError, match="must be finite"):
        solve(X, Y, unmatched_cost=np.array([1.0, np.inf, 1, 1, 1, 1]))
    with pytest.raises(TypeError, match=r"no options \['k'\].*solver='sparse'"):
        solve(X, Y, solver="dense", k=4)
    with pytest.raises(ValueError, match="incompatible shapes"):
        solve(X, torch.randn(6, 7))
    with pytest.raises(ValueError, match="solver must be one of"):
        solve(X, Y, solver="hungarian")
    with pytest.raises(ValueError, match="non-empty 2-D"):
        solve_dense(np.ones(4))
    with pytest.raises(ValueError, match=r"unmatched_cost must have shape \(2,\)"):
        solve_dense(np.ones((2, 3)), unmatched_cost=np.ones(3))


def test_match_reads_nearest_costs_from_the_dense_solve(monkeypatch, planted):
    """The dense path of match() computes each row's two nearest costs once, in the solver."""
    import saematch_nb.core.cost as cost_mod
    import saematch_nb.core.lap.dense as dense_mod
    import saematch_nb.core.match as match_mod
    from saematch_nb import match

    calls = {"solver": 0, "criterion": 0}
    real = cost_mod.nearest_two

    def counted(C):
        calls["solver"] += 1
        return real(C)

    def forbidden(*a, **kw):
        calls["criterion"] += 1
        raise AssertionError("match() computed the nearest costs a second time")

    monkeypatch.setattr(dense_mod, "nearest_two", counted)
    monkeypatch.setattr(cost_mod, "nearest_two", forbidden)
    monkeypatch.setattr(cost_mod, "nearest_two_costs", forbidden)
    monkeypatch.setattr(match_mod, "nearest_two_costs", forbidden)  # match()'s own binding
    a, b, truth = planted
    lm = match(a, b, solver="dense")
    assert calls == {"solver": 1, "criterion": 0}
    assert lm.stats["solver"] == "dense" and np.array_equal(lm.permutation, truth)


# -- issue 22 item 8: the scipy path's gap is a proof, on float64 costs -------------------------------
def _exact_reference(X, Y):
    """The optimum on costs computed as sums of squared differences in float64 (no cancellation)."""
    from scipy.optimize import linear_sum_assignment

    C = torch.cdist(X.double(), Y.double(), compute_mode="donot_use_mm_for_euclid_dist").pow(2).numpy()
    r, c = linear_sum_assignment(C)
    col = np.full(X.shape[0], -1)
    col[r] = c
    return col, float(C[r, c].sum())


@pytest.mark.parametrize("ratio", [1e6, 1e8])
def test_dense_path_is_exact_when_norms_are_orders_of_magnitude_apart(ratio):
    g = torch.Generator().manual_seed(0)
    n, d = 256, 64
    Y = torch.randn(n, d, generator=g)
    perm = torch.randperm(n, generator=g)
    X = (Y[perm] + 0.05 * torch.randn(n, d, generator=g)) * ratio  # float32, as feature matrices are
    res = solve(X, Y, solver="dense", device="cpu")
    want, total = _exact_reference(X, Y)
    assert np.array_equal(res.col, want) and np.array_equal(res.col, perm.numpy())
    assert res.total == pytest.approx(total, rel=1e-12)
    # 0.0 is claimed with its proof: the float64 matrix's rounding bound within the tolerance
    assert res.gap == 0.0 and res.stats["proven_optimal"] is True
    assert res.stats["cost_error_bound"] <= n * res.stats["eps"]


def test_dense_path_sums_squared_differences_where_products_would_cancel():
    g = torch.Generator().manual_seed(1)
    n, d = 128, 4096
    Y = torch.randn(n, d, generator=g)
    perm = torch.randperm(n, generator=g)
    X = Y[perm] + 0.01 * torch.randn(n, d, generator=g)
    Y[7] *= 1e7  # one column far out: the GEMM's rounding bound exceeds the tolerance
    res = solve(X, Y, solver="dense", device="cpu")
    assert res.stats["cost_precision"] == "float64 differences"
    want, total = _exact_reference(X, Y)
    assert np.array_equal(res.col, want) and res.total == pytest.approx(total, rel=1e-12)
    assert res.gap == 0.0 and res.stats["proven_optimal"] is True


def test_dense_gap_is_the_bound_when_it_cannot_be_proven():
    from saematch_nb.core.lap.dense import solve_dense_xy

    X, Y = _xy(40, 40, d=16, seed=3)
    res = solve_dense_xy(X, Y, device="cpu", eps_rel=1e-30)  # a tolerance no rounding bound meets
    assert res.stats["proven_optimal"] is False
    assert res.gap == res.stats["cost_error_bound"] > 0.0
    assert np.array_equal(res.col, solve(X, Y, solver="dense", device="cpu").col)


@pytest.mark.parametrize("solver", ["dense", "jv", "sparse"])
def test_huge_norms_give_every_solver_the_same_overflow_message(solver):
    X, Y = _xy(16, 16, d=8, seed=4)
    with pytest.raises(ValueError, match=r"overflows float32 \(> 3.4e38\); rescale both by the same factor"):
        solve(X * 1e20, Y, solver=solver, device="cpu")
    with pytest.raises(ValueError, match="NaN/inf"):
        solve(torch.where(X > 1, float("nan"), X), Y, solver=solver, device="cpu")
