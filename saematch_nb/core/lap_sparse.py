"""Exact linear assignment at Gemma Scope scale without the dense cost matrix, with a certificate.

Cost: ``C[i, j] = ||X_i - Y_j||^2``. Steps:

1. One blocked pass over all pairs (float32 matmul ``|x|^2 + |y|^2 - 2 x.y``, on GPU when there is
   one) keeps each row's k cheapest columns AND each column's k cheapest rows (row-only top-k can
   leave a column without an edge), plus ``r_i`` / ``s_j``, the k-th smallest value of row i /
   column j: every pair that is not a candidate has ``C32_ij >= max(r_i, s_j)``.
2. Candidate edges get their exact cost (float64, from the vectors, no cancellation).
3. Sparse exact solve: shortest augmenting paths with dual potentials (numba, _lap_numba.py).
   A row the candidate graph cannot match (Hall violation) gets more candidates and is retried.
4. Certificate for the full dense problem: every pair needs reduced cost ``C_ij - u_i - v_j >=
   -eps``. Candidates are checked exactly; all other pairs through the bound
   ``max(r_i, s_j) - eta_i - eta_j``, where ``eta = c * |x|^2`` is the worst-case float32 error
   of the blocked product (c = 2*gamma_D + 4u, Higham's bound for any summation order), in
   O(n log n) with columns sorted by s (no second matrix pass). Rows that fail get their row
   recomputed, every possibly violating pair added, and the problem is re-solved (warm start).
   The loop ends with a proof (``gap = 0.0``) or, after ``max_rounds``, with the certified gap
   ``total - (sum_i min(u_i, proven row bound) + sum_j v_j)``.

eps = ``eps_rel * (mean |x|^2 + mean |y|^2)`` (default 1e-10 of the cost scale) absorbs float64
rounding of the duals; "proven optimal" means optimal up to ``n_a * eps`` in total.
Memory: O(n * k) plus one block of ``block_rows x n_b`` float32.

Partial mode (``unmatched_cost``): row i also has a private dummy column of cost
``unmatched_cost[i]`` (always a candidate, so the certificate covers it); ``col[i] = -1`` then.
Rectangular ``n_a < n_b``: every row matched, columns at most once (duals v <= 0, v = 0 on free
columns). ``n_a > n_b`` without partial mode is solved transposed (n_a - n_b rows get -1).
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field

import numpy as np
import torch

_U32 = 2.0 ** -24


def _result_cls():
    try:
        from .assign import AssignmentResult
        return AssignmentResult
    except ImportError:  # core/assign.py not written yet: same fields, see ARCHITECTURE.md
        return _AssignmentResult


@dataclass(frozen=True)
class _AssignmentResult:
    col: np.ndarray
    cost: np.ndarray
    alt_cost: np.ndarray
    total: float
    gap: float
    stats: dict = field(default_factory=dict)


def _kernels():
    from . import _lap_numba  # numba import + cached compile only when the solver runs
    return _lap_numba


def _pick_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _check_inputs(X, Y, unmatched_cost):
    for name, t in (("X", X), ("Y", Y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"solve_sparse: {name} must be a torch.Tensor [n, D], got {type(t).__name__}; "
                            "build it with core.cost.feature_matrix(...) or torch.as_tensor(...)")
        if t.ndim != 2:
            raise ValueError(f"solve_sparse: {name} must be 2-D [n, D], got shape {tuple(t.shape)}")
        if t.shape[0] == 0:
            raise ValueError(f"solve_sparse: {name} has no rows")
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"solve_sparse: X and Y need the same feature length D, got {X.shape[1]} and "
                         f"{Y.shape[1]}; build both with the same feature_matrix(params=..., fold=...)")
    if not (torch.isfinite(X).all() and torch.isfinite(Y).all()):
        raise ValueError("solve_sparse: X or Y contains NaN/inf; check the SAE weights")
    if unmatched_cost is not None:
        w = np.asarray(unmatched_cost, dtype=np.float64)
        if w.ndim == 0:
            w = np.full(X.shape[0], float(w))
        if w.shape != (X.shape[0],):
            raise ValueError(f"solve_sparse: unmatched_cost must be a scalar or have shape ({X.shape[0]},), "
                             f"got {w.shape}")
        if not np.isfinite(w).all():
            raise ValueError("solve_sparse: unmatched_cost must be finite")
        return w
    return None


class _Problem:
    """Candidate graph and bounds of one (X, Y) pair; rows = X, real columns = Y."""

    def __init__(self, X, Y, w, k, block_rows, device, progress):
        self.dev = device
        self.Xn = np.ascontiguousarray(X.detach().to("cpu", torch.float32).numpy())
        self.Yn = np.ascontiguousarray(Y.detach().to("cpu", torch.float32).numpy())
        self.n_a, self.D = self.Xn.shape
        self.n_b = self.Yn.shape[0]
        self.w = w
        self.n_cols = self.n_b + (self.n_a if w is not None else 0)
        self.k = int(k)
        self.progress = progress
        self.Xd = X.detach().to(device, torch.float32)
        self.Yd = Y.detach().to(device, torch.float32)
        # norms in float64 (exact enough), cast once: the only float32 error left is the product
        self.nx = _sqnorm(self.Xd)
        self.ny = _sqnorm(self.Yd)
        self.nx64 = self.nx.double().cpu().numpy()
        self.ny64 = self.ny.double().cpu().numpy()
        self.rnx = 1.0 / self.nx.sqrt().clamp_min(1e-30)
        self.rny = 1.0 / self.ny.sqrt().clamp_min(1e-30)
        D = self.D
        gamma = D * _U32 / (1 - D * _U32)
        self.c_err = 2 * gamma + 4 * _U32
        self.eta_x = self.c_err * self.nx64
        self.eta_y = self.c_err * self.ny64
        if block_rows is None:
            block_rows = max(64, min(8192, (1 << 26) // max(self.n_b, 1)))  # ~256 MB float32 block
        self.block_rows = int(block_rows)
        self.k_row = np.full(self.n_a, min(self.k, self.n_b), np.int64)
        self.rounds_expanded = 0

    def _blocks(self, xb, nxb, rnx_b):
        """Float32 cost block C = |x|^2 + |y|^2 - 2 x.y and the dot-product block x.y."""
        G = xb @ self.Yd.T
        C = torch.add(self.ny.unsqueeze(0), G, alpha=-2.0)
        C.add_(nxb.unsqueeze(1))
        return C, G

    def first_pass(self):
        """One blocked pass: per row and per column the k cheapest partners AND the k most
        cosine-similar ones, with the k-th value of each list (bounds for all other pairs)."""
        n_a, n_b, dev = self.n_a, self.n_b, self.dev
        kr = min(self.k, n_b)
        kc = min(self.k, n_a)
        row_idx = torch.empty((n_a, 2 * kr), dtype=torch.int64, device=dev)
        r = torch.empty(n_a, dtype=torch.float32, device=dev)
        kap = torch.empty(n_a, dtype=torch.float32, device=dev)
        cols = {False: None, True: None}  # largest? -> (values, row indices) [<=kc, n_b]
        starts = range(0, n_a, self.block_rows)
        if self.progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc="cost blocks", unit="block")
        for a in starts:
            b = min(a + self.block_rows, n_a)
            C, G = self._blocks(self.Xd[a:b], self.nx[a:b], self.rnx[a:b])
            for M, largest in ((C, False), (G, True)):
                vals, idx = torch.topk(M, kr, dim=1, largest=largest, sorted=True)
                if largest:
                    row_idx[a:b, kr:] = idx
                    kap[a:b] = vals[:, -1]
                else:
                    row_idx[a:b, :kr] = idx
                    r[a:b] = vals[:, -1]
                cv, ci = torch.topk(M, min(kc, b - a), dim=0, largest=largest, sorted=False)
                ci += a
                if cols[largest] is not None:
                    cv = torch.cat([cols[largest][0], cv], 0)
                    ci = torch.cat([cols[largest][1], ci], 0)
                    if cv.shape[0] > kc:
                        cv, sel = torch.topk(cv, kc, dim=0, largest=largest, sorted=False)
                        ci = torch.gather(ci, 0, sel)
                cols[largest] = (cv, ci)
            del C, G
        self.r = r.double().cpu().numpy()
        self.kap_r = kap.double().cpu().numpy()
        self.s = cols[False][0].max(0).values.double().cpu().numpy()
        self.kap_c = cols[True][0].min(0).values.double().cpu().numpy()
        ri = np.repeat(np.arange(n_a, dtype=np.int64), 2 * kr)
        rj = row_idx.cpu().numpy().ravel()
        keys = [ri * self.n_cols + rj]
        for _, ci in cols.values():
            ci_np = ci.cpu().numpy()
            cj = np.broadcast_to(np.arange(n_b, dtype=np.int64)[None, :], ci_np.shape).ravel()
            keys.append(ci_np.ravel() * self.n_cols + cj)
        keys = np.unique(np.concatenate(keys))
        self.keys = keys
        self.cost = _kernels().exact_costs(self.Xn, self.Yn, keys // self.n_cols, keys % self.n_cols)
        if self.w is not None:  # private dummy column per row, always a candidate
            dk = np.arange(self.n_a, dtype=np.int64) * self.n_cols + self.n_b + np.arange(self.n_a)
            self.keys = np.concatenate([self.keys, dk])
            self.cost = np.concatenate([self.cost, self.w])
            o = np.argsort(self.keys, kind="stable")
            self.keys, self.cost = self.keys[o], self.cost[o]
        self._csr()

    def _csr(self):
        rows = self.keys // self.n_cols
        self.indices = self.keys % self.n_cols
        self.indptr = np.zeros(self.n_a + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=self.n_a), out=self.indptr[1:])

    def add_edges(self, keys):
        keys = np.setdiff1d(np.unique(keys), self.keys, assume_unique=True)
        if keys.size == 0:
            return 0
        c = _kernels().exact_costs(self.Xn, self.Yn, keys // self.n_cols, keys % self.n_cols)
        allk = np.concatenate([self.keys, keys])
        allc = np.concatenate([self.cost, c])
        o = np.argsort(allk, kind="stable")
        self.keys, self.cost = allk[o], allc[o]
        self._csr()
        return keys.size

    def expand_rows(self, rows, u=None, v=None, eps=0.0):
        """Recompute rows in float32; add their 2*k_i cheapest columns and (with duals) every
        column whose reduced cost might be below eps; r_i = min over what stays non-candidate."""
        rows = np.unique(np.asarray(rows, np.int64))
        new_keys = []
        bs = max(1, min(self.block_rows, 4096))
        for a in range(0, rows.size, bs):
            rb = rows[a:a + bs]
            rt = torch.from_numpy(rb).to(self.dev)
            C, G = self._blocks(self.Xd.index_select(0, rt), self.nx.index_select(0, rt),
                                self.rnx.index_select(0, rt))
            # existing real candidates of these rows -> +inf
            lr, lc = [], []
            for t, i in enumerate(rb):
                cols = self.indices[self.indptr[i]:self.indptr[i + 1]]
                cols = cols[cols < self.n_b]
                lr.append(np.full(cols.size, t, np.int64))
                lc.append(cols)
            lr = torch.from_numpy(np.concatenate(lr)).to(self.dev)
            lc = torch.from_numpy(np.concatenate(lc)).to(self.dev)
            Cm = C.clone()
            Cm[lr, lc] = float("inf")
            kk = int(min(self.n_b, 2 * self.k_row[rb].max()))
            self.k_row[rb] = np.minimum(2 * self.k_row[rb], self.n_b)
            _, ti = torch.topk(Cm, kk, dim=1, largest=False)
            take = torch.zeros_like(C, dtype=torch.bool)
            take.scatter_(1, ti, True)
            if u is not None:
                ex = torch.from_numpy(self.eta_x[rb] + u[rb] + eps).to(self.dev)
                ey = torch.from_numpy(self.eta_y + v[:self.n_b]).to(self.dev)
                take |= (C.double() - ey.unsqueeze(0)) < ex.unsqueeze(1)
            take[lr, lc] = False
            # bounds over what stays non-candidate
            Cm[take] = float("inf")
            self.r[rb] = Cm.min(1).values.double().cpu().numpy()
            G[lr, lc] = -float("inf")
            G[take] = -float("inf")
            self.kap_r[rb] = G.max(1).values.double().cpu().numpy()
            tr, tc = torch.nonzero(take, as_tuple=True)
            new_keys.append(rb[tr.cpu().numpy()] * self.n_cols + tc.cpu().numpy())
            del C, G, Cm, take
        self.rounds_expanded += 1
        return self.add_edges(np.concatenate(new_keys)) if new_keys else 0


def _sqnorm(T: torch.Tensor) -> torch.Tensor:
    out = torch.empty(T.shape[0], dtype=torch.float64, device=T.device)
    for a in range(0, T.shape[0], 4096):
        out[a:a + 4096] = T[a:a + 4096].double().pow(2).sum(1)
    return out.to(torch.float32)


def _peak_bytes(dev) -> int:
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _solve_core(P: _Problem, eps: float, max_rounds: int, timing: dict):
    K_ = _kernels()
    n_a, n_cols, n_b = P.n_a, P.n_cols, P.n_b
    u = np.zeros(n_a)
    v = np.zeros(n_cols)
    col4row = np.full(n_a, -1, np.int64)
    row4col = np.full(n_cols, -1, np.int64)
    rectangular = n_cols > n_a
    cold = True
    rounds = 0
    scans = 0
    m = None
    passed = None
    while True:
        rounds += 1
        t = time.perf_counter()
        if cold:
            K_.cold_start(P.indptr, P.indices, P.cost, u, v, col4row, row4col)
            cold = False
        else:
            K_.reconcile(P.indptr, P.indices, P.cost, u, v, col4row, row4col, eps)
        failed = np.zeros(n_a, np.bool_)
        order = np.flatnonzero(col4row < 0)
        nf, ns = K_.augment_all(P.indptr, P.indices, P.cost, u, v, col4row, row4col, order, failed)
        scans += ns
        if rectangular and np.any((row4col < 0) & (v < -eps)):
            # a column freed by a warm start kept v < 0: only a cold start restores v = 0 there
            K_.cold_start(P.indptr, P.indices, P.cost, u, v, col4row, row4col)
            failed[:] = False
            nf, ns = K_.augment_all(P.indptr, P.indices, P.cost, u, v, col4row, row4col,
                                    np.flatnonzero(col4row < 0), failed)
            scans += ns
        timing["solve"] += time.perf_counter() - t
        if nf:
            if rounds > max_rounds + 20:
                raise RuntimeError("solve_sparse: could not find a matching in the candidate graph")
            t = time.perf_counter()
            P.expand_rows(np.flatnonzero(failed))
            timing["expand"] += time.perf_counter() - t
            continue
        t = time.perf_counter()
        lower_nc = K_.noncandidate_bounds(P.r, P.s, P.kap_r, P.kap_c, P.nx64, P.ny64, P.eta_x,
                                          P.eta_y, v, P.indptr, P.indices, n_b)
        # lower_nc[i] <= min over non-candidate j of C_ij - v_j (proven)
        passed = lower_nc >= u - eps
        timing["certify"] += time.perf_counter() - t
        if passed.all() or rounds >= max_rounds:
            break
        t = time.perf_counter()
        P.expand_rows(np.flatnonzero(~passed), u, v, eps)
        timing["expand"] += time.perf_counter() - t
    return dict(u=u, v=v, col4row=col4row, lower_nc=lower_nc, passed=passed, rounds=rounds, scans=scans)


def solve_sparse(X: torch.Tensor, Y: torch.Tensor, *, unmatched_cost=None, k: int = 8,
                 block_rows: int | None = None, device=None, progress: bool = False,
                 max_rounds: int = 30, eps_rel: float = 1e-10):
    """Exact assignment of rows of X to rows of Y for ``C = ||X_i - Y_j||^2``, certified.

    Returns an ``AssignmentResult``: ``col`` (int64 [n_a], -1 = no partner), ``cost`` (exact
    float64 C[i, col[i]]; for -1 rows the cheapest real column's cost), ``alt_cost`` (cheapest
    other column), ``total`` (sum of matched costs + unmatched costs), ``gap`` (0.0 = proven
    optimal for the full dense problem, else a certified absolute gap) and ``stats``.
    ``k``: candidates per row and per column from the blocked pass (raised locally as needed).
    """
    w = _check_inputs(X, Y, unmatched_cost)
    if k < 1:
        raise ValueError(f"solve_sparse: k must be >= 1, got {k}")
    if w is None and X.shape[0] > Y.shape[0]:
        res = solve_sparse(Y, X, k=k, block_rows=block_rows, device=device, progress=progress,
                           max_rounds=max_rounds, eps_rel=eps_rel)
        return _transpose_result(res, X, Y)
    dev = _pick_device(device)
    timing = {"pass": 0.0, "exact": 0.0, "solve": 0.0, "certify": 0.0, "expand": 0.0}
    t0 = time.perf_counter()
    prev_prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32: the error bound assumes float32
    try:
        with torch.no_grad():
            P = _Problem(X, Y, w, k, block_rows, dev, progress)
            t = time.perf_counter()
            P.first_pass()
            timing["pass"] = time.perf_counter() - t
            n_edges_first = int(P.keys.size)
            scale = float(P.nx.double().mean() + P.ny.double().mean())
            eps = eps_rel * max(scale, 1e-300)
            out = _solve_core(P, eps, max_rounds, timing)
    finally:
        torch.set_float32_matmul_precision(prev_prec)
    u, v, col4row = out["u"], out["v"], out["col4row"]
    n_a, n_b = P.n_a, P.n_b
    rows = np.repeat(np.arange(n_a), np.diff(P.indptr))
    # exact matched costs, from the edge list
    cost = np.full(n_a, np.inf)
    alt = np.full(n_a, np.inf)
    real = P.indices < n_b
    matched_edge = P.indices == col4row[rows]
    c_real = np.where(real, P.cost, np.inf)
    best = np.full(n_a, np.inf)
    np.minimum.at(best, rows, c_real)
    cost_m = np.full(n_a, np.inf)
    np.minimum.at(cost_m, rows[matched_edge], P.cost[matched_edge])
    col = col4row.copy()
    unmatched = col >= n_b
    col[unmatched] = -1
    other = np.where(matched_edge, np.inf, c_real)
    np.minimum.at(alt, rows, other)
    cost = np.where(unmatched, best, cost_m)
    # for -1 rows, alt = second cheapest real column
    if unmatched.any():
        sec = np.where(real & (P.cost > best[rows]), P.cost, np.inf)
        alt2 = np.full(n_a, np.inf)
        np.minimum.at(alt2, rows, sec)
        alt = np.where(unmatched, alt2, alt)
    total = float(np.sum(np.where(unmatched, w if w is not None else 0.0, cost_m)))
    # nearest real column per row (row top-k holds the float32 argmin; exact costs decide)
    is_best = real & (P.cost == best[rows])
    nearest = np.full(n_a, -1, np.int64)
    nearest[rows[is_best][::-1]] = P.indices[is_best][::-1]
    # certified lower bound: sum_i min_j (C_ij - v_j) + sum_j v_j with v <= 0 (valid as v <= 0
    # when columns may stay free; any v when square)
    cand_min = np.full(n_a, np.inf)
    np.minimum.at(cand_min, rows, P.cost - v[P.indices])
    row_lb = np.minimum(cand_min, out["lower_nc"])
    proven = bool(out["passed"].all())
    lb = float(np.sum(np.minimum(u, row_lb)) + np.sum(v))
    gap = 0.0 if proven else max(0.0, total - lb)
    stats = {
        "solver": "sparse",
        "device": str(dev),
        "k": int(k),
        "block_rows": P.block_rows,
        "seconds": time.perf_counter() - t0,
        "phase_seconds": dict(timing),
        "candidate_edges_first_pass": n_edges_first,
        "candidate_edges": int(P.keys.size - (n_a if w is not None else 0)),
        "rounds": out["rounds"],
        "expansions": P.rounds_expanded,
        "rows_max_k": int(P.k_row.max()),
        "dijkstra_scans": int(out["scans"]),
        "eps": eps,
        "float32_error_factor": P.c_err,
        "proven_optimal": proven,
        "dual_bound": lb,
        "peak_memory_bytes": _peak_bytes(dev),
    }
    return _make_result(col=col.astype(np.int64), cost=cost, alt_cost=alt, total=total, gap=float(gap),
                        nearest=nearest, stats=stats)


def _make_result(**kw):
    cls = _result_cls()
    if cls is _AssignmentResult:
        kw.pop("nearest", None)
    return cls(**kw)


def _transpose_result(res, X, Y):
    """Result of (Y, X) -> result for (X, Y): rows of X without a partner get -1."""
    n_a = X.shape[0]
    col = np.full(n_a, -1, np.int64)
    col[res.col] = np.arange(res.col.size)
    from ._lap_numba import exact_costs
    Xn = np.ascontiguousarray(X.detach().cpu().float().numpy())
    Yn = np.ascontiguousarray(Y.detach().cpu().float().numpy())
    has = col >= 0
    cost = np.full(n_a, np.nan)
    cost[has] = exact_costs(Xn, Yn, np.flatnonzero(has), col[has])
    # rows of X without partner: their cheapest column, found in float32 then recomputed exactly
    alt = np.full(n_a, np.nan)
    C = torch.cdist(X.float(), Y.float()) if n_a * Y.shape[0] <= 4_000_000 else None
    if C is not None:
        C = C.pow(2)
        C[torch.from_numpy(np.flatnonzero(has)), torch.from_numpy(col[has])] = float("inf")
        alt = C.min(1).values.double().numpy()
        nb = C.argmin(1).numpy()
        miss = ~has
        cost[miss] = exact_costs(Xn, Yn, np.flatnonzero(miss), nb[miss])
    stats = dict(res.stats)
    stats["transposed"] = True
    return _make_result(col=col, cost=cost, alt_cost=alt, total=res.total, gap=res.gap, nearest=None,
                        stats=stats)
