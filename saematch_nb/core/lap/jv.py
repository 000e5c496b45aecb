"""The dense solver: one float32 cost matrix, a Jonker-Volgenant solve with duals, and a
certificate against the exact float64 costs.

Where the n_a x n_b float32 matrix fits the memory budget this is the fastest exact route:
scanning whole rows beats growing a candidate graph once the optimal partners of many rows
(the fresh features a bijection forces onto leftovers) sit far down their rows' rankings
(issue #14: at 16k such rows pushed the sparse solver's graph to 15% of all pairs). Steps:

1. ``C32 = |x|^2 + |y|^2 - 2 X Y^T`` by a blocked float32 GEMM straight into one
   preallocated matrix (no float64 copy, no second matrix), exactly as the sparse solver's
   pass forms its blocks, so the same worst-case error bound holds for every entry:
   ``|C_ij - C32_ij| <= eta_i + eta_j`` (``eta = (2 gamma_D + 4u)|x|^2`` plus an underflow
   slack; see sparse.py). TF32 is switched off.
2. LAPJV on C32 (_jv.py: column reduction, reduction transfer, augmenting row reduction,
   shortest augmenting paths), keeping the dual potentials (u, v).
3. Candidates: every pair whose float32 reduced cost is within 2 error bands of tight (about
   1.5 per row on a Gemma-shaped pair) and the matched pairs; their exact costs (float64 sums
   of exact squared float32 differences); a warm re-solve on them (the sparse solver's
   shortest-path kernels, the same duals).
4. Certificate over all n_a x n_b pairs from the matrix itself: a non-candidate pair has
   ``C_ij - u_i - v_j >= C32_ij - eta_i - eta_j - u_i - v_j``; pairs below ``-eps`` become
   candidates and the re-solve repeats. The loop ends with a proof (``gap = 0.0``) or, after
   ``max_rounds``, the certified gap ``total - dual bound``.

Partial mode (``unmatched_cost``): row i also has a private dummy column of cost w_i; shapes and
results as in :func:`saematch_nb.core.lap.solve`. ``n_a > n_b`` without partial mode is solved
transposed (the rows of costliest assignment get -1, as scipy's dense solver leaves them).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..cost import default_device
from ._shared import U32, check_inputs, peak_bytes, sqnorm, tiny_input_shift, underflow_slack, unscale_result
from ._shared import jv_kernels as _kernels
from .result import AssignmentResult

_KAPPA = 2.0  # candidate band, in error bands (eta_i + eta_j) of tightness
_ARR_TOL = 1e-5  # augmenting row reduction: price steps below this share of the cost scale wait
_ARR_STEPS = 40  # ... and at most this many moves per row before shortest paths take over
_VIOLATIONS_PER_ROW = 64  # non-candidate violations taken per row and certificate round
CORE = 64  # columns per row core (the Jonker-Volgenant phases read these first)


def matrix_bytes(n_a: int, n_b: int) -> int:
    """Memory of the dense solver's float32 cost matrix (what the memory budget is about)."""
    return 4 * int(n_a) * int(n_b)


def jv_bytes(n_a: int, n_b: int) -> int:
    """Peak extra memory of :func:`solve_jv`, estimated: the float32 matrix, the row cores
    (CORE int64 + float32 entries per row), per-row and per-column work arrays, and a constant
    for the numba runtime, GEMM workspace and candidate arrays (benchmarks/bench_matching.py
    measured about 0.1 GB beyond the rest at 8k and 16k). What ``solver="auto"`` compares with
    its memory budget."""
    n_a, n_b = int(n_a), int(n_b)
    core = min(CORE, n_b)
    return matrix_bytes(n_a, n_b) + 12 * core * n_a + 64 * (n_a + n_b) + (160 << 20)


def solve_jv(X: torch.Tensor, Y: torch.Tensor, *, unmatched_cost=None, device=None, progress: bool = False,
             max_rounds: int = 20, eps_rel: float = 1e-10, block_rows: int | None = None,
             return_duals: bool = False, cosine_parts=None) -> AssignmentResult:
    """Exact assignment of rows of X to rows of Y for ``C = ||X_i - Y_j||^2``, certified, on one
    float32 cost matrix (4 n_a n_b bytes; see the module docstring).

    Returns an :class:`AssignmentResult` like :func:`saematch_nb.core.lap.solve_sparse`:
    ``col`` (-1 = no partner), exact ``cost`` / ``alt_cost`` / ``total``, ``gap`` (0.0 = proven
    optimal over all pairs), ``nearest`` with ``nearest_cost`` / ``second_cost`` (the exact
    costs of each row's cheapest float32 columns) and ``stats``. ``return_duals`` puts the
    potentials in ``stats["u"]`` / ``stats["v"]`` (v: n_b columns, then the n_a dummy columns in
    partial mode) for :func:`saematch_nb.core.lap.verify_certificate`. ``cosine_parts`` (column
    slices of X and Y): also the largest mean part cosine per row and column, read off the same
    product (``AssignmentResult.cosine_pass``; the match criterion's direction pass).
    """
    w = check_inputs(X, Y, unmatched_cost, who="solve_jv")
    if max_rounds < 1:
        raise ValueError(f"solve_jv: max_rounds must be >= 1, got {max_rounds}")
    shift = tiny_input_shift(X, Y)
    if shift:  # exact power-of-two rescale: same assignment, costs times 4^shift (undone below)
        f = 2.0 ** (shift // 2), 2.0 ** (shift - shift // 2)  # each factor fits float32
        res = solve_jv(X * f[0] * f[1], Y * f[0] * f[1], unmatched_cost=None if w is None else w * 4.0 ** shift,
                       device=device, progress=progress, max_rounds=max_rounds, eps_rel=eps_rel,
                       block_rows=block_rows, return_duals=return_duals, cosine_parts=cosine_parts)
        out = unscale_result(res, shift)
        if res.cosine_pass is not None and out.cosine_pass is None:  # cosines are scale-free
            from dataclasses import replace
            out = replace(out, cosine_pass=res.cosine_pass)
        return out
    transposed = w is None and X.shape[0] > Y.shape[0]
    t0 = time.perf_counter()
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32: the error bound assumes float32
    try:
        with torch.no_grad():
            A, B = (Y, X) if transposed else (X, Y)
            parts = [p if isinstance(p, slice) else slice(*p) for p in cosine_parts] if cosine_parts else None
            out = _solve(A, B, w, device, progress, max_rounds, eps_rel, block_rows, transposed, parts)
    finally:
        torch.set_float32_matmul_precision(prev)
    res = out.pop("result")
    stats = res.stats
    stats["seconds"] = time.perf_counter() - t0
    if return_duals and not transposed:
        stats["u"], stats["v"] = out["u"], out["v"]
    return res


def _norms(Xd: torch.Tensor, what: str):
    if Xd.device.type == "cpu":
        n64 = torch.from_numpy(_kernels()[0].sq_norms(Xd.numpy()))
    else:
        n64 = sqnorm(Xd)
    # float64 squares of float32 values cannot overflow: a non-finite norm means a NaN/inf entry
    if not bool(torch.isfinite(n64).all()):
        raise ValueError(f"solve_jv: {what} contains NaN/inf; check the SAE weights")
    n32 = n64.to(torch.float32)
    if not bool(torch.isfinite(n32).all()):
        raise ValueError(f"solve_jv: a squared row norm of {what} overflows float32 (> 3.4e38); rescale "
                         "both by the same factor (the optimal assignment does not change)")
    return n32, n32.double().cpu().numpy()


def _cost_matrix(Xd, Yd, nx32, ny32, block_rows, progress, parts=None):
    """C32 = (ny - 2 X Y^T) + nx in float32, the sparse pass's operation order (its error bound).

    With ``parts`` (column slices), each part's product is taken on its own and C gets their sum
    (another summation order of the same terms: the error bound holds for any order), and each
    part's product, divided by the two rows' part norms, gives that part's cosine: the largest
    mean part cosine per row and per column is returned too (float32), else None."""
    n_a, n_b = Xd.shape[0], Yd.shape[0]
    try:
        C = np.empty((n_a, n_b), np.float32)
    except MemoryError:
        raise MemoryError(f"solve_jv: the {n_a} x {n_b} float32 cost matrix needs "
                          f"{matrix_bytes(n_a, n_b) / 2**30:.2f} GiB, more than this machine can allocate; "
                          "use solver='sparse' (it never holds the matrix)") from None
    Ct = torch.from_numpy(C)
    # two more block buffers with parts: keep each block at 64 MiB then
    budget = (1 << 24) if parts else (1 << 26)
    br = block_rows or max(64, min(n_a, budget // max(n_b, 1)))
    starts = range(0, n_a, br)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="cost matrix", unit="block")
    cpu = Xd.device.type == "cpu"
    nyr = ny32.unsqueeze(0)
    if parts:
        if len(parts) > 2:
            raise ValueError(f"solve_jv: cosine_parts takes one or two column slices, got {len(parts)}")
        inv = lambda T, p: (1.0 / T[:, p].norm(dim=1).clamp_min(1e-12)).contiguous()  # noqa: E731  (as criterion.directions)
        ix = [inv(Xd, p) for p in parts]
        iy = [inv(Yd, p) for p in parts]
        Yp = [Yd[:, p].T for p in parts]
        dev = Xd.device
        row_cos = torch.empty(n_a, dtype=torch.float32, device=dev)
        row_arg = torch.empty(n_a, dtype=torch.long, device=dev)
        col_cos = torch.full((n_b,), -float("inf"), dtype=torch.float32, device=dev)
        col_arg = torch.zeros(n_b, dtype=torch.long, device=dev)
        if cpu:  # one fused pass over each block (numba) instead of a dozen torch passes
            K = _kernels()[0]
            two = len(parts) == 2
            ixn = [t.numpy() for t in ix] + ([] if two else [ix[0].numpy()])
            iyn = [t.numpy() for t in iy] + ([] if two else [iy[0].numpy()])
            nxn, nyn = nx32.numpy(), ny32.numpy()
            rc, ra, cc, ca = row_cos.numpy(), row_arg.numpy(), col_cos.numpy(), col_arg.numpy()
            tmp_buf = np.empty((br, n_b), np.float32) if two else np.empty((0, 0), np.float32)
            nch = 2 * max(1, torch.get_num_threads())
    for a in starts:
        b = min(a + br, n_a)
        if not parts:
            if cpu:
                blk = Ct[a:b]
                torch.matmul(Xd[a:b], Yd.T, out=blk)
            else:
                blk = Xd[a:b] @ Yd.T
        elif cpu:
            torch.matmul(Xd[a:b, parts[0]], Yp[0], out=Ct[a:b])
            P1 = tmp_buf[: b - a]
            if two:
                torch.matmul(Xd[a:b, parts[1]], Yp[1], out=torch.from_numpy(P1))
            K.cost_and_cosines(C[a:b], P1, two, ixn[0], iyn[0], ixn[1], iyn[1], nxn, nyn, a, rc, ra, cc, ca, nch)
            continue
        else:
            blk = Xd[a:b, parts[0]] @ Yp[0]
            g = blk * ix[0][a:b].unsqueeze(1)
            g.mul_(iy[0].unsqueeze(0))
            for k in range(1, len(parts)):
                tmp = Xd[a:b, parts[k]] @ Yp[k]
                blk.add_(tmp)
                g.add_(tmp.mul_(ix[k][a:b].unsqueeze(1)).mul_(iy[k].unsqueeze(0)))
                del tmp
            v, j = g.max(dim=1)
            row_cos[a:b], row_arg[a:b] = v, j
            cv, ci = g.max(dim=0)
            better = cv > col_cos
            col_cos = torch.where(better, cv, col_cos)
            col_arg = torch.where(better, ci + a, col_arg)
            del g
        blk.mul_(-2.0).add_(nyr).add_(nx32[a:b].unsqueeze(1))
        if not cpu:
            Ct[a:b].copy_(blk)
    if not parts:
        return C, None
    P = float(len(parts))
    return C, {"row_arg": row_arg.cpu().numpy().astype(np.int64), "row_cos": (row_cos / P).cpu().numpy(),
               "col_arg": col_arg.cpu().numpy().astype(np.int64), "col_cos": (col_cos / P).cpu().numpy()}


def _solve(X, Y, w, device, progress, max_rounds, eps_rel, block_rows, transposed, parts=None):
    K, S = _kernels()
    dev = default_device(device)
    timing = {"product": 0.0, "reduction": 0.0, "paths": 0.0, "exact": 0.0, "certify": 0.0}
    t = time.perf_counter()
    Xd = X.detach().to(dev, torch.float32).contiguous()
    Yd = Y.detach().to(dev, torch.float32).contiguous()
    nx32, nx64 = _norms(Xd, "X")
    ny32, ny64 = _norms(Yd, "Y")
    n_a, D = Xd.shape
    n_b = Yd.shape[0]
    gamma = D * U32 / (1 - D * U32)
    c_err = 2 * gamma + 4 * U32
    eta_x = c_err * nx64 + underflow_slack(D, nx64)
    eta_y = c_err * ny64 + underflow_slack(D, ny64)
    C, cos_pass = _cost_matrix(Xd, Yd, nx32, ny32, block_rows, progress, parts)
    timing["product"] = time.perf_counter() - t

    # -- LAPJV on the float32 matrix ----------------------------------------------------------
    t = time.perf_counter()
    partial = w is not None
    w64 = w if partial else np.zeros(0)
    col4row = np.full(n_a, -1, np.int64)
    row4col = np.full(n_b, -1, np.int64)
    scale = float(nx64.mean() + ny64.mean())
    if n_a == n_b and not partial:
        v, im = K.column_min(C, 2 * max(1, torch.get_num_threads()))
        cnt = K.column_reduction_start(im, col4row, row4col)
        K.reduction_transfer(C, v, col4row, cnt == 1)
        free = np.flatnonzero(cnt == 0)
    else:  # rectangular: v starts (and free columns stay) at 0
        v = np.zeros(n_b)
        free = np.arange(n_a, dtype=np.int64)
    u = K.row_duals(C, v, w64 if partial else np.zeros(n_a), col4row)
    n_free_start = int(free.size)
    core = int(min(CORE, n_b))
    refresh = 0
    if core < n_b:
        lidx = np.empty((n_a, core), np.int64)
        lval = np.empty((n_a, core), np.float32)
        bound = np.empty(n_a)
        K.take_cores(C, v, core, lidx, lval, bound)
    else:  # the core is the whole row: no bound to reach
        lidx = np.tile(np.arange(n_b, dtype=np.int64), (n_a, 1))
        lval = C
        bound = np.full(n_a, np.inf)
    free, r1 = K.core_row_reduction(C, v, u, w64, col4row, row4col, free, lidx, lval, bound, 2,
                                    _ARR_TOL * scale, _ARR_STEPS * n_a + 1000)
    timing["reduction"] = time.perf_counter() - t
    t = time.perf_counter()
    scans, r2 = K.core_shortest_paths(C, v, u, w64, col4row, row4col, free, lidx, lval, bound)
    refresh = r1 + r2
    del lidx, lval, bound
    timing["paths"] = time.perf_counter() - t
    if (col4row < 0).any():  # only with infinite costs, which finite inputs cannot produce
        raise RuntimeError("solve_jv: Jonker-Volgenant left rows unassigned")

    # -- candidates with exact costs, warm exact re-solve, certificate over all pairs ----------
    t = time.perf_counter()
    Xn = np.ascontiguousarray(Xd.cpu().numpy())
    Yn = np.ascontiguousarray(Yd.cpu().numpy())
    n_cols = n_b + (n_a if partial else 0)
    v = np.concatenate([v, np.zeros(n_cols - n_b)])
    u = K.row_duals(C, v, w64 if partial else np.zeros(n_a), col4row)
    indptr, indices = K.band_edges(C, u, v, eta_x, eta_y, _KAPPA, col4row, n_b)
    rows = np.repeat(np.arange(n_a, dtype=np.int64), np.diff(indptr))
    cost = S.exact_costs(Xn, Yn, rows, indices)
    exact = np.ones(cost.size, np.bool_)
    del rows
    if partial:  # each row's dummy column: an edge of exact cost w_i
        ar = np.arange(n_a, dtype=np.int64)
        indptr, indices, cost, exact, _ = S.csr_merge(indptr, indices, cost, exact, ar, n_b + ar, w, True)
    row4col_all = np.full(n_cols, -1, np.int64)
    real = (col4row >= 0) & (col4row < n_b)
    row4col_all[col4row[real]] = np.flatnonzero(real)
    if partial:
        dm = col4row >= n_b
        row4col_all[col4row[dm]] = np.flatnonzero(dm)
    n_band = int(indices.size)
    timing["exact"] += time.perf_counter() - t
    eps = eps_rel * max(scale, 1e-300)
    rounds = 0
    added = 0
    repairs = 0
    hall = 0
    proven = False
    low = None
    while True:
        rounds += 1
        t = time.perf_counter()
        S.reconcile(indptr, indices, cost, u, v, col4row, row4col_all, eps)
        failed = np.zeros(n_a, np.bool_)
        nf, ns = S.augment_all(indptr, indices, cost, u, v, col4row, row4col_all,
                               np.flatnonzero(col4row < 0), failed)
        scans += ns
        timing["paths"] += time.perf_counter() - t
        if nf:  # the candidates hold no matching for these rows: give them their whole row
            hall += 1
            if hall > max_rounds:
                raise RuntimeError("solve_jv: could not find a matching in the candidate graph")
            t = time.perf_counter()
            indptr, indices, cost, exact = _add_pairs(S, Xn, Yn, indptr, indices, cost, exact,
                                                      np.repeat(np.flatnonzero(failed), n_b),
                                                      np.tile(np.arange(n_b), int(failed.sum())))
            timing["exact"] += time.perf_counter() - t
            rounds -= 1
            continue
        if n_cols > n_a:
            # a column freed by the re-solve may keep v < 0, which the rectangular dual bound does
            # not allow: lift it to 0 (edges into it may now violate: the next reconcile frees
            # their rows and the search re-matches them, often to that column)
            lift = (row4col_all < 0) & (v < -eps)
            if lift.any() and repairs < 10 * max_rounds:
                v[lift] = 0.0
                repairs += 1
                rounds -= 1
                continue
        t = time.perf_counter()
        need, _ = S.candidate_check(indptr, indices, cost, exact, eta_x, eta_y, u, v, col4row, n_b, eps)
        low, rr, cc = K.dense_violations(C, u, v[:n_b], eta_x, eta_y, indptr, indices, n_b, eps,
                                         _VIOLATIONS_PER_ROW)
        timing["certify"] += time.perf_counter() - t
        free_ok = n_cols == n_a or not np.any((row4col_all < 0) & (v < -eps))
        if need.size == 0 and rr.size == 0 and free_ok:
            proven = True
            break
        if rounds >= max_rounds:
            break
        if rr.size:
            t = time.perf_counter()
            indptr, indices, cost, exact = _add_pairs(S, Xn, Yn, indptr, indices, cost, exact, rr, cc)
            added += int(rr.size)
            timing["exact"] += time.perf_counter() - t

    # -- the result -------------------------------------------------------------------------
    t = time.perf_counter()
    m_pos = S.matched_pos(indptr, indices, col4row)
    assigned = cost[m_pos]
    unmatched = col4row >= n_b
    total = float(np.sum(np.where(unmatched, w64 if partial else 0.0, assigned)))
    cand_min = S.row_lower_min(indptr, indices, cost, exact, eta_x, eta_y, v, n_b)
    row_lb = np.minimum(cand_min, low)
    vmax = max(0.0, float(v.max())) if n_cols > n_a else 0.0
    # rectangular: the square completion's dummy rows pay -max(v) each (v <= 0 then needs no check)
    lb = float(np.sum(np.minimum(u, row_lb)) + np.sum(v) - (n_cols - n_a) * vmax)
    gap = 0.0 if proven else (max(0.0, total - lb) if math.isfinite(lb) else float("inf"))
    if transposed:
        near_idx = K.column_smallest(C, 4, 2 * max(1, torch.get_num_threads()))  # per row of the original X
    else:
        near_idx = K.row_smallest(C, 4)
    res = _assemble(S, Xn, Yn, C, col4row, assigned, unmatched, near_idx, total, gap, lb, partial, transposed, w64)
    timing["exact"] += time.perf_counter() - t
    stats = {
        "solver": "jv",
        "device": str(dev),
        "phase_seconds": timing,
        "matrix_bytes": matrix_bytes(n_a, n_b),
        "free_after_column_reduction": n_free_start,
        "free_after_row_reduction": int(free.size),
        "dijkstra_scans": int(scans),
        "core_size": core,
        "core_refreshes": int(refresh),
        "candidate_edges_band": n_band,
        "candidate_edges": int(indices.size - (n_a if partial else 0)),
        "certificate_pairs_added": added,
        "rounds": rounds,
        "column_lifts": repairs,
        "hall_rounds": hall,
        "eps": eps,
        "precision": "float32",
        "product_error_factor": c_err,
        "proven_optimal": proven,
        "dual_bound": lb,
        "transposed": transposed,
        "peak_memory_bytes": peak_bytes(dev),
    }
    res.stats.update(stats)
    if cos_pass is not None:
        if transposed:  # the solved rows are the caller's columns
            cos_pass = {"row_arg": cos_pass["col_arg"], "row_cos": cos_pass["col_cos"],
                        "col_arg": cos_pass["row_arg"], "col_cos": cos_pass["row_cos"]}
        from dataclasses import replace
        res = replace(res, cosine_pass=cos_pass)
    return {"result": res, "u": u.copy(), "v": v.copy()}


def _add_pairs(S, Xn, Yn, indptr, indices, cost, exact, rr, cc):
    """Merge pairs (row-sorted or not) into the CSR graph with their exact costs."""
    key = rr * (Yn.shape[0] + 1) + cc
    o = np.argsort(key, kind="stable")
    rr, cc = rr[o], cc[o]
    keep = np.ones(rr.size, np.bool_)
    keep[1:] = (rr[1:] != rr[:-1]) | (cc[1:] != cc[:-1])
    rr, cc = rr[keep], cc[keep]
    vals = S.exact_costs(Xn, Yn, rr, cc)
    indptr, indices, cost, exact, _ = S.csr_merge(indptr, indices, cost, exact, rr, cc, vals, True)
    return indptr, indices, cost, exact


def _assemble(S, Xn, Yn, C, col4row, assigned, unmatched, near_idx, total, gap, lb, partial, transposed, w):
    """AssignmentResult in the caller's orientation; nearest costs from the float32 neighbours,
    recomputed exactly."""
    n_r, n_c = C.shape  # rows/columns of the solved (possibly transposed) problem
    if not transposed:
        k = near_idx.shape[1]
        rows = np.repeat(np.arange(n_r, dtype=np.int64), k)
        ex = S.exact_costs(Xn, Yn, rows, near_idx.ravel()).reshape(n_r, k)
        order = np.argsort(ex, axis=1, kind="stable")
        near_sorted = np.take_along_axis(near_idx, order, 1)
        ex = np.take_along_axis(ex, order, 1)
        nearest = near_sorted[:, 0].astype(np.int64)
        near_c = ex[:, 0]
        sec_c = ex[:, 1] if k > 1 else np.full(n_r, np.inf)
        col = np.where(unmatched, -1, col4row).astype(np.int64)
        ref = np.where(unmatched, nearest, col)
        cost = np.where(unmatched, near_c, assigned)
        alt = np.where(ref == nearest, sec_c, near_c)
        return AssignmentResult(col=col, cost=cost, alt_cost=alt, total=total, gap=float(gap), nearest=nearest,
                                nearest_cost=near_c, second_cost=sec_c, stats={"n_a": n_r, "n_b": n_c})
    # transposed: the solved rows are the caller's columns (Xn = caller's Y)
    n_orig = n_c
    col = np.full(n_orig, -1, np.int64)
    col[col4row] = np.arange(n_r)
    k = near_idx.shape[1]
    orig_rows = np.repeat(np.arange(n_orig, dtype=np.int64), k)
    ex = S.exact_costs(Yn, Xn, orig_rows, near_idx.ravel()).reshape(n_orig, k)
    order = np.argsort(ex, axis=1, kind="stable")
    near_sorted = np.take_along_axis(near_idx, order, 1)
    ex = np.take_along_axis(ex, order, 1)
    nearest = near_sorted[:, 0].astype(np.int64)
    near_c = ex[:, 0]
    sec_c = ex[:, 1] if k > 1 else np.full(n_orig, np.inf)
    has = col >= 0
    cost = np.empty(n_orig)
    cost[has] = S.exact_costs(Yn, Xn, np.flatnonzero(has), col[has])
    cost[~has] = near_c[~has]
    ref = np.where(has, col, nearest)
    alt = np.where(ref == nearest, sec_c, near_c)
    return AssignmentResult(col=col, cost=cost, alt_cost=alt, total=total, gap=float(gap), nearest=nearest,
                            nearest_cost=near_c, second_cost=sec_c, stats={"n_a": n_orig, "n_b": n_r})
