"""solve_sparse against scipy's dense optimum, on random, planted and adversarial cases, and the
certificate rejecting what it must reject."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from saematch_nb.core.lap.sparse import solve_sparse, verify_certificate
from saematch_nb.core.synthetic_hard import gemma_like_pair
from tests._fpmode import denormal_mode
from tests.conftest import device_under_test

DEV = device_under_test()  # SAEMATCH_TEST_DEVICE: "cuda" runs the GPU pass (torch top-k lists, GPU pricing)
# both product precisions of the pass run on any CPU ("auto" picks bfloat16 only with AMX or AVX-512 BF16)
PRECS = ["float32", "bfloat16"]


def _dev(prec: str) -> str:
    """The device of a pass in ``prec``: bfloat16 is a CPU pass (solve_sparse refuses it elsewhere)."""
    return "cpu" if prec == "bfloat16" else DEV


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


@pytest.mark.parametrize("prec", PRECS)
@pytest.mark.parametrize("n,D,seed", [(60, 8, 0), (400, 24, 1), (1500, 48, 2)])
def test_random_square_equals_dense(n, D, seed, prec):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, D, generator=g)
    Y = torch.randn(n, D, generator=g)
    res = solve_sparse(X, Y, k=4, k_dot=8, device=_dev(prec), precision=prec)
    assert res.stats["precision"] == prec
    check_equal(X, Y, res)


@pytest.mark.parametrize("prec", PRECS)
def test_planted_gemma_like_small(prec):
    a, b, truth = gemma_like_pair(600, 48, dups=0.3, seed=3)
    X = torch.cat([a.W_dec * a.threshold[:, None], (a.W_enc / a.threshold).T], 1)
    Y = torch.cat([b.W_dec * b.threshold[:, None], (b.W_enc / b.threshold).T], 1)
    res = solve_sparse(X, Y, device=_dev(prec), precision=prec)
    check_equal(X, Y, res)
    alive = truth >= 0
    assert (res.col[alive] == truth[alive]).mean() > 0.9


@pytest.mark.parametrize("prec", PRECS)
def test_rectangular_and_transposed(prec):
    g = torch.Generator().manual_seed(4)
    X = torch.randn(300, 16, generator=g)
    Y = torch.randn(520, 16, generator=g)
    res = solve_sparse(X, Y, k=3, k_dot=6, device=_dev(prec), precision=prec)
    check_equal(X, Y, res)
    assert (res.col >= 0).all()
    rt = solve_sparse(Y, X, k=3, k_dot=6, device=_dev(prec), precision=prec)  # n_a > n_b: 220 rows stay without partner
    assert (rt.col >= 0).sum() == 300 and (rt.col < 0).sum() == 220
    assert rt.total == pytest.approx(res.total, rel=1e-9)
    np.testing.assert_array_equal(rt.col[res.col], np.arange(300))


@pytest.mark.parametrize("prec", PRECS)
def test_partial_mode_covers_dummy_columns(prec):
    g = torch.Generator().manual_seed(5)
    X = torch.randn(500, 12, generator=g)
    Y = torch.randn(450, 12, generator=g)
    C = dense(X, Y)
    w = np.quantile(C.min(1), 0.6) * (0.5 + np.random.default_rng(0).random(500))
    res = solve_sparse(X, Y, unmatched_cost=w, k=4, k_dot=8, device=_dev(prec), precision=prec)
    check_equal(X, Y, res, w)
    assert 0 < (res.col < 0).sum() < 500
    # -1 rows report the cost to their nearest column
    un = res.col < 0
    np.testing.assert_allclose(res.cost[un], C[un].min(1), rtol=1e-9)


@pytest.mark.parametrize("prec", PRECS)
def test_hubness_rows_share_one_nearest_column(prec):
    g = torch.Generator().manual_seed(6)
    D = 20
    Y = torch.randn(800, D, generator=g) * 3
    Y[0] = 0.0  # the origin: nearest column of (almost) every row
    Y[1:40] *= 0.05  # more small-norm hubs
    X = torch.randn(800, D, generator=g)
    assert (np.argmin(dense(X, Y), 1) <= 40).mean() > 0.9
    res = solve_sparse(X, Y, k=2, k_dot=4, device=_dev(prec), precision=prec)
    check_equal(X, Y, res)


@pytest.mark.parametrize("prec", PRECS)
def test_exact_ties_total_equals_dense(prec):
    g = torch.Generator().manual_seed(7)
    base = torch.randint(-2, 3, (50, 6), generator=g).float()
    X = base.repeat(4, 1)  # every row four times, integer costs: many optimal assignments
    Y = torch.randint(-2, 3, (200, 6), generator=g).float()
    res = solve_sparse(X, Y, k=2, k_dot=2, device=_dev(prec), precision=prec)
    check_equal(X, Y, res, unique=False)


@pytest.mark.parametrize("prec", PRECS)
def test_tiny_k_needs_the_violating_pairs_loop(prec):
    g = torch.Generator().manual_seed(8)
    X = torch.randn(700, 10, generator=g)
    Y = torch.randn(700, 10, generator=g)
    res = solve_sparse(X, Y, k=1, k_dot=1, device=_dev(prec), precision=prec)
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
    for bad in (float("nan"), float("inf"), -float("inf")):
        Xn = X.clone()
        Xn[3, 2] = bad
        with pytest.raises(ValueError, match="NaN/inf"):
            solve_sparse(Xn, X)
        with pytest.raises(ValueError, match="NaN/inf"):
            solve_sparse(X, Xn)
        with pytest.raises(ValueError, match="NaN/inf"):
            solve_sparse(torch.cat([Xn, Xn]), X)  # n_a > n_b: the transposed solve checks too
    big = X.clone()
    big[0, 0] = 3e38  # finite, but its square overflows the float32 costs: a clear error
    with pytest.raises(ValueError, match="overflows float32.*rescale"):
        solve_sparse(big, X)


def _problem(X, Y, k, k_dot, torch_pass=False, precision="float32"):
    from saematch_nb.core.lap.sparse import _Problem

    P = _Problem(X, Y, None, k, k_dot, 64, torch.device("cpu"), False, precision)
    P.torch_pass = torch_pass
    with torch.no_grad():
        P.first_pass()
    return P


def _noncandidate_mask(P):
    cand = np.zeros((P.n_a, P.n_b), bool)
    real = P.indices < P.n_b
    cand[P.rows[real], P.indices[real]] = True
    return ~cand


def test_first_pass_keeps_row_and_column_lists_and_its_bounds_hold():
    g = torch.Generator().manual_seed(11)
    X = torch.randn(300, 16, generator=g) * torch.rand(300, 1, generator=g).add(0.5)
    Y = torch.randn(260, 16, generator=g)
    P = _problem(X, Y, 3, 5)
    C = dense(X, Y)
    Gd = (X.double() @ Y.double().T).numpy()
    nc = _noncandidate_mask(P)
    # every column has its own candidates (row-only lists can leave a column without an edge)
    assert np.bincount(P.indices, minlength=260).min() >= 5
    # each column's 3 cheapest rows are candidates
    top = np.argsort(C, 0)[:3]
    assert (~nc[top, np.arange(260)[None, :]]).all()
    # the bounds of the pass hold for every non-candidate pair, up to the stated float32 error
    err = P.eta_x[:, None] + P.eta_y[None, :]
    assert np.all(C[nc] >= np.maximum(P.r[:, None], P.s[None, :])[nc] - err[nc])
    assert np.all(Gd[nc] <= np.minimum(P.rho[:, None], P.rho_c[None, :])[nc] + err[nc])
    # the torch pass (what runs on a GPU) keeps the same lists and bounds
    Pt = _problem(X, Y, 3, 5, torch_pass=True)
    np.testing.assert_array_equal(np.sort(P.keys), np.sort(Pt.keys))
    for a in ("r", "s", "rho", "rho_c"):
        np.testing.assert_allclose(getattr(P, a), getattr(Pt, a), rtol=1e-5, atol=1e-5)


def test_torch_pass_solves_to_the_dense_optimum():
    import saematch_nb.core.lap.sparse as L

    g = torch.Generator().manual_seed(12)
    X = torch.randn(400, 12, generator=g)
    Y = torch.randn(400, 12, generator=g)
    orig = L._Problem.__init__

    def init(self, *a, **kw):
        orig(self, *a, **kw)
        self.torch_pass = True

    L._Problem.__init__ = init
    try:
        res = solve_sparse(X, Y, k=2, k_dot=3, device=DEV)
    finally:
        L._Problem.__init__ = orig
    check_equal(X, Y, res)


def test_noncandidate_bounds_and_pricing_are_lower_bounds():
    from saematch_nb.core.lap._numba import noncandidate_bounds

    a, b, _ = gemma_like_pair(500, 40, dups=0.3, seed=13)
    X = torch.cat([a.W_dec * a.threshold[:, None], (a.W_enc / a.threshold).T], 1)
    Y = torch.cat([b.W_dec * b.threshold[:, None], (b.W_enc / b.threshold).T], 1)
    P = _problem(X, Y, 2, 6)
    C = dense(X, Y)
    rng = np.random.default_rng(0)
    v = -rng.random(500) * C.mean() * 0.1
    nc = _noncandidate_mask(P)
    true = np.where(nc, C - v[None, :], np.inf).min(1)
    lb = noncandidate_bounds(P.r, P.s, P.rho, P.rho_c, P.nx64, P.ny64, P.eta_x, P.eta_y, v, P.indptr,
                             P.indices, 500)
    assert np.all(lb <= true + 1e-9)
    assert np.mean(lb > -np.inf) == 1.0
    # pricing recomputes rows: tau, r, rho bound what stays non-candidate
    rows = np.arange(0, 500, 7)
    u = np.full(500, np.inf)
    P.expand_rows(rows, u, v, 0.0)
    nc = _noncandidate_mask(P)
    true = np.where(nc, C - v[None, :], np.inf).min(1)
    assert np.all(P.tau[rows] <= true[rows] + 1e-9)
    assert np.all(P.r[rows] <= np.where(nc, C, np.inf).min(1)[rows] + P.eta_x[rows] + P.eta_y.max())
    Gd = (X.double() @ Y.double().T).numpy()
    assert np.all(P.rho[rows] >= np.where(nc, Gd, -np.inf).max(1)[rows] - P.eta_x[rows] - P.eta_y.max())
    # the pricing bound is a fact about C (C_ij >= tau_i + v_ref_j): it holds for ANY later
    # duals, including ones that moved up, and it tightens the pass bound of the priced rows
    for v2 in (v - rng.random(500) * C.mean() * 0.05, v + rng.random(500) * C.mean() * 0.05):
        true2 = np.where(nc, C - v2[None, :], np.inf).min(1)
        b2 = P.bounds(v2)
        assert np.all(b2 <= true2 + 1e-9)
    P0 = _problem(X, Y, 2, 6)
    assert np.all(P.bounds(v)[rows] >= P0.bounds(v)[rows] - 1e-9)


def test_pricing_on_suspect_columns_only_keeps_bounds_valid(monkeypatch):
    """A failing row is recomputed only on the columns its pass bound cannot clear; tau must
    still bound every pair left out, and every truly violating pair must become a candidate or
    be covered by tau."""
    import saematch_nb.core.lap.sparse as L

    monkeypatch.setattr(L, "_SUSPECT_FULL", 1.0)  # small problems: loose bounds, most columns suspect
    a, b, _ = gemma_like_pair(600, 40, dups=0.3, seed=21)
    X = torch.cat([a.W_dec * a.threshold[:, None], (a.W_enc / a.threshold).T], 1)
    Y = torch.cat([b.W_dec * b.threshold[:, None], (b.W_enc / b.threshold).T], 1)
    P = _problem(X, Y, 2, 6)
    C = dense(X, Y)
    v = P.ny64 - P.ny64.max()
    nc = _noncandidate_mask(P)
    row_min = np.where(nc, C - v[None, :], np.inf).min(1)
    # u a bit above what the non-candidates allow: the rows fail on a few columns only
    u = row_min + 1e-3 * np.abs(row_min).mean()
    rows = np.arange(0, 600, 40)
    before = P.n_priced_pairs
    P.expand_rows(rows, u, v, 0.0)
    priced = P.n_priced_pairs - before
    assert 0 < priced < rows.size * 600  # a strict subset of the full row products
    nc = _noncandidate_mask(P)
    true = np.where(nc, C - v[None, :], np.inf).min(1)
    assert np.all(P.tau[rows] <= true[rows] + 1e-9)


def test_row_reduction_keeps_complementary_slackness():
    from saematch_nb.core.lap._numba import reconcile, row_reduction

    rng = np.random.default_rng(14)
    n, deg = 300, 12
    perm = rng.permutation(n)  # a perfect matching exists
    rows_cols = [np.unique(np.append(rng.choice(n, deg, replace=False), perm[i])) for i in range(n)]
    indptr = np.concatenate([[0], np.cumsum([c.size for c in rows_cols])]).astype(np.int64)
    indices = np.concatenate(rows_cols).astype(np.int64)
    cost = rng.random(indices.size)
    v = np.zeros(n)
    u = np.zeros(n)
    c4r = np.full(n, -1, np.int64)
    r4c = np.full(n, -1, np.int64)
    row_reduction(indptr, indices, cost, v, c4r, r4c, np.arange(n, dtype=np.int64), 100 * n)
    assert (c4r >= 0).sum() > n // 2
    has = c4r >= 0
    np.testing.assert_array_equal(r4c[c4r[has]], np.flatnonzero(has))  # a matching
    assert reconcile(indptr, indices, cost, u, v, c4r, r4c, 1e-12) == 0  # every matched row at its min
    red = cost - np.repeat(u, np.diff(indptr)) - v[indices]
    assert red.min() >= -1e-12


@pytest.mark.parametrize("prec", PRECS)
def test_hall_violation_in_the_candidate_graph_is_repaired(prec):
    # hubs: with one candidate per list, many rows share the same few columns, so the first
    # candidate graph has no perfect matching; the solver must add edges and still be exact
    g = torch.Generator().manual_seed(6)
    Y = torch.randn(800, 20, generator=g) * 3
    Y[0] = 0.0
    Y[1:40] *= 0.05
    X = torch.randn(800, 20, generator=g)
    res = solve_sparse(X, Y, k=1, k_dot=1, device=_dev(prec), precision=prec)
    assert res.stats["hall_rounds"] >= 1
    check_equal(X, Y, res)


def test_dot_list_length_grows_with_layer_width():
    """A fixed 128-long dot list covers ever less of a wider layer (at 65k the certificate
    cascaded for 7+ rounds); the default scales with the column count, capped for memory."""
    from saematch_nb.core.lap.sparse import auto_k_dot

    assert auto_k_dot(300) == 128 and auto_k_dot(16384) == 128
    assert auto_k_dot(65536) == 512
    assert auto_k_dot(1 << 20) == 1024
    X = torch.randn(40, 8)
    assert solve_sparse(X, X + 0.01, device=DEV).stats["k_dot"] == 128


@pytest.mark.parametrize("flush", [False, True], ids=["denormals", "flush"])
@pytest.mark.parametrize("scale", [1.0, 1e3, 1e-20])
def test_bfloat16_pass_error_is_within_its_bound(scale, flush):
    """The bfloat16 pass (bfloat16 inputs and output, float32 accumulation): every approximate
    candidate cost, tie-break shift included, stays a proven lower bound once eta is taken off,
    and every pair's product is within the stated error; 1e-20 puts products in the denormal
    range, which AMX and ``set_flush_denormal(True)`` flush and AVX2 otherwise keeps."""
    g = torch.Generator().manual_seed(21)
    X = torch.randn(300, 40, generator=g) * torch.rand(300, 1, generator=g).add(0.2)
    Y = torch.randn(280, 40, generator=g) * torch.rand(280, 1, generator=g).add(0.2)
    X[:5, 0] *= 30  # outlier components: bfloat16 rounding is per element
    X, Y = X * scale, Y * scale
    with denormal_mode(flush):
        P = _problem(X, Y, 3, 5, precision="bfloat16")
        assert P.precision == "bfloat16" and P.tie_break > 0
        C = dense(X, Y)
        G = torch.empty(300, 280)
        P._dot(P.Xd, P.Yp, G)  # Yp: the bfloat16 copy (the pass dropped it; made again)
    Ca = P.nx64[:, None] + P.ny64[None, :] - 2.0 * G.double().numpy()
    err = P.eta_x[:, None] + P.eta_y[None, :]
    assert np.all(np.abs(C - Ca) <= err)
    # Not vacuous: the error is within 1000x of the part of the bound the arithmetic needed:
    # the relative part when denormal products survive, the whole bound (its underflow slack)
    # when this CPU flushed them to zero (decided from the product, not from the CPU model).
    # a bfloat16 denormal output is a multiple of 2^-133, so with gradual underflow a product
    # above 2^-130 never comes out as zero; a flushed one does
    exact = P.Xd.bfloat16().double() @ P.Yp.double().T
    flushed = bool(((G == 0) & (exact.abs() > 2.0 ** -130)).any())
    if scale == 1e-20 and flush:
        assert flushed  # set_flush_denormal(True) flushes on every x86-64 CPU
    relative = P.c_err * (P.nx64[:, None] + P.ny64[None, :])
    assert np.abs(C - Ca).max() > 1e-3 * (err if flushed else relative).max()
    rows = P.rows
    lo = P.cost - P.eta_x[rows] - P.eta_y[P.indices]
    assert np.all(lo <= C[rows, P.indices])
    assert np.all(P.cost <= Ca[rows, P.indices] + 1e-12 * np.abs(Ca).max())  # shifts go down only


def _tiny_planted(n, D, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, D, generator=g) * torch.rand(n, 1, generator=g).add(0.5)
    Y = X[torch.randperm(n, generator=g)] + 0.05 * torch.randn(n, D, generator=g)
    return X * 3e-20, Y * 3e-20  # products ~1e-39: float32 denormals; norms still normal


@pytest.mark.parametrize("rescale", [True, False], ids=["rescaled", "slack_only"])
@pytest.mark.parametrize("prec", PRECS)
@pytest.mark.parametrize("flush", [False, True], ids=["denormals", "flush"])
def test_certificate_is_sound_when_products_underflow(flush, prec, rescale, monkeypatch):
    """Tiny-norm inputs, with denormals flushed or kept: the certificate never proves a wrong
    assignment and a reported gap really bounds the distance to the optimum (issue #11: the
    float32 bound had no absolute term, and proved an assignment costing 99.7x the optimum).
    Without the power-of-two rescale the absolute slack alone keeps it sound; with it (the
    default) the tiny problem is solved as well as the same problem at unit scale."""
    import saematch_nb.core.lap._shared as shared

    if not rescale:
        monkeypatch.setattr(shared, "RESCALE_BELOW", 0.0)
    X, Y = _tiny_planted(1000, 64, 5)
    with denormal_mode(flush):
        res = solve_sparse(X, Y, device=_dev(prec), precision=prec)
        C = dense(X, Y)
    col, opt = scipy_opt(C)
    got = exact_total(X, Y, res.col)
    assert got == pytest.approx(res.total, rel=1e-9)
    assert res.total - res.gap <= opt * (1 + 1e-9)  # the gap (0 when proven) is a true bound
    if res.stats["proven_optimal"]:
        assert got == pytest.approx(opt, rel=1e-9)
    if rescale:
        assert res.stats.get("input_scale_log2", 0) > 60
        check_equal(X, Y, res)
        assert res.stats["eps"] < 1e-45  # stats in the units of the inputs
        _, r_opt = scipy_opt(dense(X, Y))
        assert res.cost.sum() == pytest.approx(r_opt, rel=1e-9)


def test_rescaled_partial_and_transposed_results_are_in_input_units():
    g = torch.Generator().manual_seed(6)
    X = torch.randn(120, 16, generator=g) * 1e-18
    Y = torch.randn(90, 16, generator=g) * 1e-18
    ref = solve_sparse(X * 1e18, Y * 1e18, device=DEV, return_duals=True)  # same problem, unit scale
    got = solve_sparse(X, Y, device=DEV, return_duals=True)
    assert got.stats["input_scale_log2"] > 0 and got.stats.get("transposed")
    check_equal(X, Y, got, unique=False)
    w = np.full(120, float(np.median(dense(X, Y).min(1))))
    part = solve_sparse(X, Y, unmatched_cost=w, device=DEV, return_duals=True)
    check_equal(X, Y, part, w=w, unique=False)
    assert (part.col < 0).any() and (part.col >= 0).any()
    assert np.all(part.stats["v"] * 1e36 < 1e3) and ref.stats["proven_optimal"]


def test_precision_choice_and_errors():
    from saematch_nb.core.lap.sparse import _native_bf16, _pick_precision

    cpu = torch.device("cpu")
    assert _pick_precision("auto", cpu) == ("bfloat16" if _native_bf16() else "float32")
    assert _pick_precision("auto", torch.device("cuda")) == "float32"
    assert _pick_precision("float32", cpu) == "float32"
    with pytest.raises(ValueError, match="precision must be"):
        _pick_precision("fp16", cpu)
    with pytest.raises(ValueError, match="CPU pass"):
        _pick_precision("bfloat16", torch.device("cuda"))
    X = torch.randn(20, 4)
    with pytest.raises(ValueError, match="precision must be"):
        solve_sparse(X, X, precision="half")


def test_bfloat16_bound_holds_over_long_reductions():
    """D = 4608 (the folded Gemma width): the product is blocked over K inside the BLAS; with
    all-positive entries every partial sum grows, so any intermediate bfloat16 rounding would
    exceed the bound (which assumes float32 accumulation and one final rounding)."""
    g = torch.Generator().manual_seed(22)
    X = torch.rand(64, 4608, generator=g) + 0.5
    Y = torch.rand(200, 4608, generator=g) + 0.5
    P = _problem(X, Y, 2, 3, precision="bfloat16")
    G = torch.empty(64, 200)
    P._dot(P.Xd, P.Yp, G)  # Yp: the bfloat16 copy (the pass dropped it; made again)
    Gd = X.double() @ Y.double().T
    err2 = 2 * (Gd - G.double()).abs().numpy()  # cost error = 2 x dot error
    bound = P.eta_x[:, None] + P.eta_y[None, :]
    assert np.all(err2 <= bound)
    assert err2.max() > 0.05 * bound.max()


def test_csr_merge_skips_present_edges_and_keeps_rows_sorted():
    from saematch_nb.core.lap._numba import csr_merge

    indptr = np.array([0, 2, 2, 5])
    indices = np.array([1, 4, 0, 2, 7])
    cost = np.arange(5, dtype=float)
    exact = np.array([True, False, False, True, False])
    nr = np.array([0, 0, 1, 2, 2])
    nc = np.array([0, 4, 3, 2, 5])  # (0, 4) and (2, 2) are present: kept as they were
    nv = np.array([10.0, 11.0, 12.0, 13.0, 14.0])
    ptr, ind, c, ex, added = csr_merge(indptr, indices, cost, exact, nr, nc, nv, True)
    assert added == 3
    np.testing.assert_array_equal(ptr, [0, 3, 4, 8])
    np.testing.assert_array_equal(ind, [0, 1, 4, 3, 0, 2, 5, 7])
    np.testing.assert_array_equal(c, [10.0, 0.0, 1.0, 12.0, 2.0, 3.0, 14.0, 4.0])
    np.testing.assert_array_equal(ex, [True, True, False, True, False, True, True, False])


def test_in_place_csr_merge_equals_the_copying_merge():
    """The graph grows in place (arrays resized, rows merged from the back): on random graphs
    and batches, with present edges, empty rows and rows without new edges, it gives what the
    copying merge gives."""
    from saematch_nb.core.lap._numba import csr_merge, csr_merge_inplace, csr_merge_plan

    rng = np.random.default_rng(5)
    for trial in range(30):
        n, m = int(rng.integers(1, 40)), int(rng.integers(1, 60))
        deg = rng.integers(0, min(m, 8) + 1, n) * (rng.random(n) > 0.2)
        indptr = np.concatenate([[0], np.cumsum(deg)]).astype(np.int64)
        indices = np.concatenate([np.sort(rng.choice(m, d, replace=False)) for d in deg]).astype(np.int64)
        cost = rng.random(indices.size)
        exact = rng.random(indices.size) > 0.5
        keys = np.unique(rng.integers(0, n, 50) * m + rng.integers(0, m, 50))[: int(rng.integers(0, 50))]
        nr, nc = keys // m, keys % m
        nv = rng.random(keys.size)
        ref = csr_merge(indptr, indices, cost, exact, nr, nc, nv, True)
        keep, nptr, out_ptr = csr_merge_plan(indptr, indices, nr, nc)
        ind, c, ex = indices.copy(), cost.copy(), exact.copy()
        for a in (ind, c, ex):
            a.resize(int(out_ptr[-1]), refcheck=False)
        csr_merge_inplace(indptr, ind, c, ex, out_ptr, nptr, keep, nc, nv, True)
        assert out_ptr[-1] - indptr[-1] == ref[4]
        for got, want in zip((out_ptr, ind, c, ex), ref[:4]):
            np.testing.assert_array_equal(got, want)


def test_graph_from_the_lists_has_every_listed_pair_once_with_its_pass_cost():
    """csr_row_counts / csr_fill_rows / csr_fill_cols / csr_sort_dedupe (the graph built in its
    own arrays, each list freed when copied): every pair of the pass's row and column lists,
    once, rows sorted, at the pass's float32 cost."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(220, 12, generator=g)
    Y = torch.randn(180, 12, generator=g)
    P = _problem(X, Y, 3, 6)
    G = (X @ Y.T).numpy().astype(np.float64)
    C32 = P.nx64[:, None] + P.ny64[None, :] - 2 * G
    want = set()
    for i in range(220):
        want |= {(i, j) for j in np.argsort(C32[i], kind="stable")[:3]} | {(i, j) for j in np.argsort(-G[i])[:6]}
    for j in range(180):
        want |= {(i, j) for i in np.argsort(C32[:, j])[:3]} | {(i, j) for i in np.argsort(-G[:, j])[:6]}
    rows = P.rows
    got = set(zip(rows.tolist(), P.indices.tolist()))
    assert len(got) == P.n_edges  # no repeats
    assert all(np.all(np.diff(P.indices[P.indptr[i]:P.indptr[i + 1]]) > 0) for i in range(220))
    # ties at the k-th value may pick another partner: compare away from ties
    assert len(want - got) <= 0.01 * len(want) and len(got - want) <= 0.01 * len(got)
    np.testing.assert_allclose(P.cost, C32[rows, P.indices], rtol=1e-6, atol=1e-5)
    assert P.indices.flags.owndata and P.cost.flags.owndata  # what the in-place merge resizes


def test_dot_lists_shorten_to_the_memory_at_hand(monkeypatch):
    """_k_dot_for_memory: the default list length fits 3/4 of the memory at hand; a solve with
    little memory gets shorter lists, says so, and finds the same certified optimum."""
    from saematch_nb.core.lap import sparse

    gb = 1 << 30
    n = 262144
    assert sparse._k_dot_for_memory(n, n, 4608, 8, available=64 * gb) >= 1024
    kd = sparse._k_dot_for_memory(n, n, 4608, 8, available=13 * gb)  # a 24 GB machine after the inputs
    assert 256 <= kd < 1024 and kd % 64 == 0
    assert 24 * 2 * n * kd + 2 * n * 4608 <= 0.75 * 13 * gb
    assert sparse._k_dot_for_memory(n, n, 4608, 8, available=1 * gb) == 64  # the floor
    g = torch.Generator().manual_seed(9)
    X = torch.randn(900, 16, generator=g)
    Y = torch.randn(900, 16, generator=g)
    full = solve_sparse(X, Y, device="cpu", precision="float32")
    assert not full.stats["k_dot_memory_limited"]
    monkeypatch.setattr(sparse, "available_bytes", lambda: 1 << 20)
    short = solve_sparse(X, Y, device="cpu", precision="float32")
    assert short.stats["k_dot_memory_limited"] and short.stats["k_dot"] == 64 < full.stats["k_dot"]
    np.testing.assert_array_equal(short.col, full.col)
    check_equal(X, Y, short)
    explicit = solve_sparse(X, Y, k_dot=100, device="cpu", precision="float32")  # the user's value stands
    assert explicit.stats["k_dot"] == 100 and not explicit.stats["k_dot_memory_limited"]


def test_bfloat16_falls_back_to_float32_near_the_float32_range():
    """|x.y| up to |x||y| ~ 1e38 could round up to inf in a bfloat16 output: the solver runs the
    float32 pass instead, and says so."""
    g = torch.Generator().manual_seed(23)
    X = torch.randn(150, 8, generator=g)
    Y = torch.randn(150, 8, generator=g)
    s = 3e18  # squared norms ~ 1e38
    # bfloat16 is a CPU pass: named here, or a GPU machine's default device would refuse it
    res = solve_sparse(X * s, Y * s, k=3, k_dot=4, precision="bfloat16", device="cpu")
    assert res.stats["precision"] == "float32"
    ref = solve_sparse(X, Y, k=3, k_dot=4, precision="bfloat16", device="cpu")
    assert ref.stats["precision"] == "bfloat16"
    np.testing.assert_array_equal(res.col, ref.col)
    check_equal(X, Y, ref)


def test_column_dot_buffers_keep_the_top_values_with_ties():
    """block_lists appends column dot products to a buffer and keeps its top k when full;
    with many exact ties (bfloat16 outputs tie a lot) the kept values must still be the k
    largest and the returned threshold the k-th largest."""
    from saematch_nb.core.lap._numba import _keep_top, finish_column_dots

    rng = np.random.default_rng(0)
    for n, m in ((64, 32), (50, 7), (9, 9)):
        v = rng.integers(0, 6, n).astype(np.float32)  # values 0..5: heavy ties
        i = np.arange(n, dtype=np.int32)
        bv, bi = v.copy(), i.copy()
        kth = _keep_top(bv, bi, n, m)
        top = np.sort(v)[::-1][:m]
        assert kth == top[-1]
        np.testing.assert_array_equal(np.sort(bv[:m]), np.sort(top))
        np.testing.assert_array_equal(v[bi[:m]], bv[:m])  # payload moved with its value
        assert np.unique(bi[:m]).size == m
    cb_v = rng.integers(0, 4, (3, 10)).astype(np.float32)
    cb_i = np.tile(np.arange(10, dtype=np.int32), (3, 1))
    cb_n = np.array([10, 6, 3])
    cd_v, cd_i, cd_n = np.empty((3, 5)), np.empty((3, 5), np.int64), np.zeros(3, np.int64)
    ref = [np.sort(cb_v[j, :cb_n[j]])[::-1][:5] for j in range(3)]
    orig = cb_v.copy()
    finish_column_dots(cb_v, cb_i, cb_n, 5, cd_v, cd_i, cd_n)
    for j in range(3):
        mm = cd_n[j]
        assert mm == min(5, cb_n[j])
        np.testing.assert_array_equal(np.sort(cd_v[j, :mm]), np.sort(ref[j]))
        assert cd_v[j, 0] == cd_v[j, :mm].min()  # the bound sits where a heap root would
        np.testing.assert_array_equal(orig[j, cd_i[j, :mm]], cd_v[j, :mm])


def test_native_bf16_follows_the_cpu_and_the_onednn_limit(monkeypatch):
    from saematch_nb.core.lap import sparse

    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    for isa in ("AVX2", "avx512_core", "AVX512_CORE_VNNI"):  # below native bfloat16: never, whatever the CPU
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
        assert sparse._native_bf16() is False
    monkeypatch.setattr(torch._C._cpu, "_init_amx", lambda: False)
    monkeypatch.setattr(sparse, "_cpu_flag", lambda name: name == "avx512_bf16")  # e.g. AMD Zen 4
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert sparse._native_bf16() is True
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert sparse._native_bf16() is True
    monkeypatch.setattr(sparse, "_cpu_flag", lambda name: False)  # AVX2-only or AVX-512 without BF16
    assert sparse._native_bf16() is False
    monkeypatch.setattr(torch._C._cpu, "_init_amx", lambda: True)  # AMX
    assert sparse._native_bf16() is True
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert sparse._native_bf16() is False
