"""Exact linear assignment at Gemma Scope scale without the dense cost matrix, with a certificate.

Cost: ``C[i, j] = ||X_i - Y_j||^2`` (the MSE times D; same optimum). Steps:

1. ONE blocked pass over all pairs (``G = X Y^T`` in float32, or from bfloat16 inputs on CPUs
   with native bfloat16: see below; on CPU a numba kernel reads each block once, on GPU torch top-k) keeps,
   per row AND per column (row-only lists can leave a column without an edge), the k cheapest
   partners and the k_dot largest dot products, plus the k-th value of each list: ``r_i``,
   ``s_j`` (cost) and ``rho_i``, ``rho_c_j`` (dot). The dot lists matter because duals absorb
   the separable part ``|x|^2 + |y|^2`` of the cost: for features without a close partner (the
   30% fresh ones of a layer pair) the optimal partner ranks by ``-x.y``, not by raw cost. No
   n x n matrix is ever held: O(n (k + k_dot)) lists plus one ``block_rows x n_b`` float32
   block.
2. Sparse exact solve on the candidate graph (numba, _numba.py): a greedy tight start,
   Jonker-Volgenant augmenting row reduction (auction-like moves) and shortest augmenting paths
   with dual potentials (u, v) for the rows left. A Hall violation of the candidate graph
   (no perfect matching) adds the missing edges and retries.
3. Candidate edges enter with their float32 cost; those the certificate cannot clear within
   the float32 error (matched, or nearly violating) get their exact float64 cost and the
   solve is warm-started again until the candidate graph is settled.
4. Certificate for the full dense problem: every pair needs ``C_ij - u_i - v_j >= -eps``.
   Candidates are checked exactly; every other pair through the bounds of the one pass,
   ``C_ij >= max(r_i, s_j, |x_i|^2 + |y_j|^2 - 2 min(rho_i, rho_c_j)) - eta_i - eta_j`` with
   ``eta = c * |x|^2``, ``c = 2 gamma_D + 4u`` (``gamma_D = D u / (1 - D u)``, u = 2^-24): the
   worst-case float32 error of the product for ANY summation order (Higham), so the proof does
   not depend on how the BLAS sums (TF32 is switched off), plus an absolute term for underflow
   (:func:`underflow_slack`: denormals rounded or flushed to zero); inputs whose largest element
   is below 2^-40 are first multiplied by a power of two (exact; results are given back in the
   inputs' units), so that term stays negligible. O(n_a n_b) scalar work, D times
   less than the product, no second matrix pass; a row's bound stays valid across warm rounds
   (v only decreases), so later rounds only re-check the rows it does not clear.
   Rows that fail are priced: their product is recomputed on their SUSPECT columns only (those
   the bound cannot clear; for a layer pair mostly the fresh features, about a third of the
   columns), the columns of smallest proven reduced value become candidates, and the smallest
   value left out, ``tau_i``, is stored with the duals it was priced with, ``vref``:
   ``C_ij >= tau_i + vref_j`` is a fact about C, so the bound follows every column's later dual
   change (warm re-solves shift whole Dijkstra trees; a bound frozen at the old duals would
   fail again on the next round). Re-solve (warm), repeat. The loop ends with a proof
   (``gap = 0.0``) or, after ``max_rounds``, with the certified gap
   ``total - (sum_i min(u_i, proven row bound) + sum_j v_j)``.

Product precision (``precision="auto"``): on a CPU with native bfloat16 products (AMX, or
AVX-512 BF16 as on AMD Zen 4) the pass and the pricing multiply bfloat16 copies of X and Y
(float32 accumulation, bfloat16 output; 4.6x faster than float32 on an AMX machine, 2.9x on a
2-core AMD EPYC with AVX-512 BF16). Their error is bounded the same way, with a larger factor
(:func:`_bf16_error_factor`:
input rounding measured per row, accumulation, output rounding; about 0.009
instead of 0.00055 at D = 4608), so the certificate still proves optimality for the exact
float64 costs; the result is the same optimum. bfloat16 output rounding makes many approximate
costs tie exactly, which stalls Jonker-Volgenant row reduction: a fixed hash shift DOWN by at
most 10% of the error band breaks the ties (a lower bound stays a lower bound). GPUs keep float32.
``precision="float32"`` forces the float32 pass; squared norms above 2^125 (a bfloat16 output
could round up to inf) fall back to it too.

The candidate graph is CSR only (indptr, indices, cost, exact: 17 bytes per edge), built from
the lists without a global sort, each list freed once copied, and grown in place when edges are
added (numpy-owned arrays resized by realloc, then merged from the back), so the graph is never
held twice. The dot lists are float32 + int32. Where the default lists would not fit 3/4 of the
memory at hand, k_dot is shortened (:func:`_k_dot_for_memory`): a 262k x 262k pair runs on a
24 GB machine.

eps = ``eps_rel * (mean |x|^2 + mean |y|^2)`` (default 1e-10 of the cost scale) absorbs float64
rounding of the duals; "proven optimal" means optimal up to ``n_a * eps`` in total.
Exact costs: float64 sums of exactly-represented squared float32 differences (no cancellation).

Partial mode (``unmatched_cost``): row i also has a private dummy column of cost
``unmatched_cost[i]`` (always a candidate, so the certificate covers it); ``col[i] = -1`` then.
Rectangular ``n_a < n_b``: every row matched, columns at most once (duals v <= 0, v = 0 on free
columns). ``n_a > n_b`` without partial mode is solved transposed (n_a - n_b rows get -1).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from .._memory import available_bytes
from ..cost import default_device
from ._shared import U32, check_inputs, peak_bytes, sqnorm, tiny_input_shift, underflow_slack, unscale_result
from ._shared import sparse_kernels as _kernels
from .result import AssignmentResult

_DEBUG = os.environ.get("SAEMATCH_LAP_DEBUG") == "1"  # per-round progress on stdout
_SUSPECT_FULL = 0.75  # pricing recomputes whole rows once this share of columns is suspect


class _Problem:
    """Candidate graph and bounds of one (X, Y) pair; rows = X, real columns = Y.

    Edge costs start as the float32 values of the blocked pass (``exact = False``; true cost
    within ``eta_i + eta_j``) and are replaced by exact float64 costs where the certificate
    needs them (matched and near-tight edges)."""

    def __init__(self, X, Y, w, k, k_dot, block_rows, device, progress, precision="float32"):
        self.dev = device
        self.Xn = np.ascontiguousarray(X.detach().to("cpu", torch.float32).numpy())
        self.Yn = np.ascontiguousarray(Y.detach().to("cpu", torch.float32).numpy())
        self.n_a, self.D = self.Xn.shape
        self.n_b = self.Yn.shape[0]
        self.w = w
        self.n_cols = self.n_b + (self.n_a if w is not None else 0)
        self.k = int(min(k, self.n_b))
        self.k_dot = int(min(k_dot, self.n_b))
        self.progress = progress
        self.Xd = X.detach().to(device, torch.float32)
        self.Yd = Y.detach().to(device, torch.float32)
        # norms in float64, cast once: the float32 error left is the product's
        nx, ny = sqnorm(self.Xd), sqnorm(self.Yd)
        # float64 squares of float32 values cannot overflow: a non-finite norm means a NaN/inf
        # entry (one check instead of a separate pass over X and Y)
        if not (bool(torch.isfinite(nx).all()) and bool(torch.isfinite(ny).all())):
            raise ValueError("solve_sparse: X or Y contains NaN/inf; check the SAE weights")
        self.nx, self.ny = nx.to(torch.float32), ny.to(torch.float32)
        if not (bool(torch.isfinite(self.nx).all()) and bool(torch.isfinite(self.ny).all())):
            raise ValueError("solve_sparse: a squared row norm of X or Y overflows float32 (> 3.4e38); "
                             "rescale both by the same factor (the optimal assignment does not change)")
        self.nx64 = self.nx.double().cpu().numpy()
        self.ny64 = self.ny.double().cpu().numpy()
        gamma = self.D * U32 / (1 - self.D * U32)
        if precision == "bfloat16" and max(self.nx64.max(), self.ny64.max()) > 2.0 ** 125:
            # a dot product near the float32 range could round UP to inf in bfloat16 output;
            # the float32 pass is certified the same way (stats["precision"] says which ran)
            precision = "float32"
        self.precision = precision
        self.Yb = None
        if precision == "bfloat16":
            self.Yb = self.Yd.to(torch.bfloat16)
            self.c_err = _bf16_error_factor(self.Xd, self.Yd, self.Yb, gamma)
        else:
            self.c_err = 2 * gamma + 4 * U32
        # relative part (rounding) + absolute part (underflow: no relative bound covers a product
        # that is flushed to zero or rounded in the denormal range, in either precision)
        self.eta_x = self.c_err * self.nx64 + underflow_slack(self.D, self.nx64)
        self.eta_y = self.c_err * self.ny64 + underflow_slack(self.D, self.ny64)
        self.tie_break = 0.0
        if precision == "bfloat16":
            self.tie_break = 0.1  # share of the error band used to break bfloat16 ties (jitter_down)
        if block_rows is None:
            block_rows = max(64, min(8192, (1 << 24) // max(self.n_b, 1)))  # ~64 MB float32 block
        self.block_rows = int(block_rows)
        # columns added per priced row (doubling per re-pricing): n_b / 64, within [64, 256]
        self.k_row = np.full(self.n_a, int(np.clip(self.n_b // 64, 64, 256)), np.int64)
        # pricing bounds: C_ij >= tau_i + vref[snap_i, j] for every non-candidate j of a priced
        # row (vref = the duals it was priced with, one snapshot per pricing call); see _pair_val
        self.tau = np.full(self.n_a, -np.inf)
        self.snap = np.full(self.n_a, -1, np.int64)
        self.vref = np.zeros((1, self.n_b))
        self.n_snaps = 0
        self.k_col = np.full(self.n_b, max(self.k, 1), np.int64)
        self.n_expanded_rows = 0
        self.n_expanded_cols = 0
        self.n_priced_pairs = 0  # pairs recomputed by pricing (a row product = n_b)
        self.n_exact = 0
        self.lower_cache = None
        self.torch_pass = False  # True: torch top-k pass on CPU too (what a GPU runs; for tests)

    @property
    def Yp(self) -> torch.Tensor:
        """The Y of every pass / pricing product: Yd, or its bfloat16 copy. The CPU pass drops the
        copy when its products are done and pricing makes it again (the same values, a fraction
        of a second): the list merge after the pass is the memory peak (0.6 GB less at 65k)."""
        if self.precision != "bfloat16":
            return self.Yd
        if self.Yb is None:
            self.Yb = self.Yd.to(torch.bfloat16)
        return self.Yb

    def _blocks(self, xb, nxb):
        """Float32 dot-product block x.y and cost block |x|^2 + |y|^2 - 2 x.y."""
        G = xb @ self.Yd.T
        C = torch.add(self.ny.unsqueeze(0), G, alpha=-2.0)
        C.add_(nxb.unsqueeze(1))
        return C, G

    def _dot(self, xb, Ys, out):
        """out = xb . Ys^T in float32; with bfloat16 ``Ys`` the product runs on bfloat16 inputs
        (AMX / tensor cores, fp32 accumulation, bfloat16 output) and its error is covered by
        ``c_err`` (see _bf16_error_factor)."""
        if Ys.dtype == torch.bfloat16:
            out.copy_(torch.matmul(xb.to(torch.bfloat16), Ys.T))
        else:
            torch.matmul(xb, Ys.T, out=out)

    def first_pass(self):
        """One blocked pass over all pairs: per row AND per column the k cheapest partners and
        the k_dot largest dot products, with the k-th value of each list: r_i, s_j (cost) and
        rho_i, rho_c_j (dot) bound every pair outside the lists."""
        if self.dev.type != "cpu" or self.torch_pass:
            return self._first_pass_torch()
        K_ = _kernels()
        n_a, n_b = self.n_a, self.n_b
        k, kd = self.k, self.k_dot
        kc, kcd = int(min(k, n_a)), int(min(kd, n_a))
        rc_v = np.empty((n_a, k))
        rc_i = np.empty((n_a, k), np.int64)
        # dot lists hold float32 values (exact: G is float32) and int32 ids: half the bytes of
        # float64 / int64, and they are the pass's largest arrays (262k x 1024: 2 GB each way)
        rd_v = np.empty((n_a, kd), np.float32)
        rd_i = np.empty((n_a, kd), np.int32)
        cc_v = np.empty((n_b, kc))
        cc_i = np.empty((n_b, kc), np.int64)
        cc_n = np.zeros(n_b, np.int64)
        # column dot lists: append buffers of 2 kcd float32 values / int32 rows (block_lists)
        cb_v = np.empty((n_b, 2 * kcd), np.float32)
        cb_i = np.empty((n_b, 2 * kcd), np.int32)
        cb_n = np.zeros(n_b, np.int64)
        cb_t = np.full(n_b, -np.inf)
        starts = range(0, n_a, self.block_rows)
        if self.progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc="cost blocks", unit="block")
        n_chunks = max(1, min(256, n_b // 64))
        G = None
        for a in starts:
            b = min(a + self.block_rows, n_a)
            if G is None or G.shape[0] != b - a:
                G = torch.empty((b - a, n_b), dtype=torch.float32)
            self._dot(self.Xd[a:b], self.Yp, G)
            K_.block_lists(G.numpy(), a, self.nx64, self.ny64, rc_v, rc_i, rd_v, rd_i,
                           cc_v, cc_i, cc_n, cb_v, cb_i, cb_n, cb_t, n_chunks)
        del G
        self.Yb = None  # see Yp
        cd_v = np.empty((n_b, kcd), np.float32)
        cd_i = np.empty((n_b, kcd), np.int32)
        cd_n = np.zeros(n_b, np.int64)
        K_.finish_column_dots(cb_v, cb_i, cb_n, kcd, cd_v, cd_i, cd_n)
        del cb_v, cb_i, cb_n, cb_t
        # bounds: the root of each full heap; a list holding every partner bounds nothing
        self.r = -rc_v[:, 0] if k < n_b else np.full(n_a, np.inf)
        self.rho = rd_v[:, 0].astype(np.float64) if kd < n_b else np.full(n_a, -np.inf)
        self.s = -cc_v[:, 0] if kc < n_a else np.full(n_b, np.inf)
        self.rho_c = cd_v[:, 0].astype(np.float64) if kcd < n_a else np.full(n_b, -np.inf)
        if k >= n_b or kd >= n_b or kc >= n_a or kcd >= n_a:  # every pair is a candidate
            self.r[:] = np.inf
            self.rho[:] = -np.inf
        # the graph straight from the lists, without a global key sort, each list freed as soon
        # as it is copied: the peak is the lists plus one graph (no second copy of either)
        ptr = K_.csr_row_counts(n_a, k + kd, cc_i, cc_n, cd_i, cd_n)
        col = np.empty(int(ptr[-1]), np.int64)
        val = np.empty(int(ptr[-1]))
        fill = np.empty(n_a, np.int64)
        K_.csr_fill_rows(ptr, fill, col, val, rc_i, rc_v, rd_i, rd_v, self.nx64, self.ny64)
        del rc_v, rc_i, rd_v, rd_i
        K_.csr_fill_cols(fill, col, val, cc_i, cc_v, cc_n, cd_i, cd_v, cd_n, self.nx64, self.ny64)
        del cc_v, cc_i, cd_v, cd_i, fill
        indptr = K_.csr_sort_dedupe(ptr, col, val)
        del ptr
        n_e = int(indptr[-1])
        col.resize(n_e, refcheck=False)  # shrink in place (realloc): no copy of the graph
        val.resize(n_e, refcheck=False)
        self._set_edges(indptr, col, val)

    def _set_edges(self, indptr, indices, cost) -> None:
        """The candidate graph from a row-sorted CSR of approximate costs (no key sort)."""
        self.indptr, self.indices, self.cost = indptr, indices, cost
        self.exact = np.zeros(cost.size, np.bool_)
        if self.tie_break:
            _kernels().jitter_csr(indptr, indices, cost, self.eta_x, self.eta_y, self.n_b, self.tie_break)
        if self.w is not None:  # private dummy column per row: always a candidate, exact cost
            n_a = self.n_a
            self._merge(np.arange(n_a, dtype=np.int64) * self.n_cols + self.n_b + np.arange(n_a), self.w, True)

    def _init_edges(self, keys: np.ndarray, vals: np.ndarray) -> None:
        """The candidate graph from the first pass's (key, approximate cost) lists."""
        self.indptr = np.zeros(self.n_a + 1, np.int64)
        self.indices = np.empty(0, np.int64)
        self.cost = np.empty(0)
        self.exact = np.empty(0, np.bool_)
        if self.w is not None:  # private dummy column per row: always a candidate, exact cost
            n_a = self.n_a
            self._merge(np.arange(n_a, dtype=np.int64) * self.n_cols + self.n_b + np.arange(n_a), self.w, True)
        self._merge(keys, vals, False)

    # The graph is stored as CSR only (indptr, indices, cost, exact: 17 bytes per edge); row
    # ids and keys of all edges are derived on demand (tests, rare paths).
    @property
    def n_edges(self) -> int:
        return int(self.indices.size)

    @property
    def rows(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_a, dtype=np.int64), np.diff(self.indptr))

    @property
    def keys(self) -> np.ndarray:
        return self.rows * self.n_cols + self.indices

    def edge_rows(self, edges) -> np.ndarray:
        return np.searchsorted(self.indptr, edges, side="right") - 1

    def _first_pass_torch(self):
        """first_pass with torch top-k (GPU): same lists and bounds."""
        n_a, n_b, dev = self.n_a, self.n_b, self.dev
        k, kd = self.k, self.k_dot
        idx_all = torch.empty((n_a, k + kd), dtype=torch.int64, device=dev)
        val_all = torch.empty((n_a, k + kd), dtype=torch.float32, device=dev)
        r = torch.empty(n_a, dtype=torch.float32, device=dev)
        rho = torch.empty(n_a, dtype=torch.float32, device=dev)
        starts = range(0, n_a, self.block_rows)
        if self.progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc="cost blocks", unit="block")
        cs_v = cs_i = cd_v = cd_i = None
        for a in starts:
            b = min(a + self.block_rows, n_a)
            C, G = self._blocks(self.Xd[a:b], self.nx[a:b])
            vals, idx = torch.topk(C, k, dim=1, largest=False, sorted=True)
            idx_all[a:b, :k] = idx
            val_all[a:b, :k] = vals
            r[a:b] = vals[:, -1]
            gv, gi = torch.topk(G, kd, dim=1, largest=True, sorted=True)
            idx_all[a:b, k:] = gi
            val_all[a:b, k:] = torch.gather(C, 1, gi)
            rho[a:b] = gv[:, -1]
            # column lists, running over the blocks
            cv, ci = torch.topk(C, min(k, b - a), dim=0, largest=False)
            dv, di = torch.topk(G, min(kd, b - a), dim=0, largest=True)
            ci += a
            di += a
            if cs_v is None:
                cs_v, cs_i, cd_v, cd_i = cv, ci, dv, di
            else:
                cs_v, o = torch.topk(torch.cat([cs_v, cv]), min(k, b), dim=0, largest=False)
                cs_i = torch.gather(torch.cat([cs_i, ci]), 0, o)
                cd_v, o = torch.topk(torch.cat([cd_v, dv]), min(kd, b), dim=0, largest=True)
                cd_i = torch.gather(torch.cat([cd_i, di]), 0, o)
            del C, G
        self.r = r.double().cpu().numpy()
        self.rho = rho.double().cpu().numpy()
        cs_i, cd_i = cs_i.cpu().numpy(), cd_i.cpu().numpy()
        cs_v, cd_v = cs_v.double().cpu().numpy(), cd_v.double().cpu().numpy()
        self.s = cs_v[-1].copy() if cs_v.shape[0] == k and k < n_a else np.full(n_b, np.inf)
        self.rho_c = cd_v[-1].copy() if cd_v.shape[0] == kd and kd < n_a else np.full(n_b, -np.inf)
        if k >= n_b or kd >= n_b or k >= n_a or kd >= n_a:  # every pair is a candidate
            self.r[:] = np.inf
            self.rho[:] = -np.inf
        rows = np.repeat(np.arange(n_a, dtype=np.int64), k + kd)
        keys = rows * self.n_cols + idx_all.cpu().numpy().ravel()
        vals = val_all.double().cpu().numpy().ravel()
        # column lists: float32 costs of the cheapest, costs from the dot for the dot list
        ri = np.concatenate([cs_i, cd_i])
        cj = np.broadcast_to(np.arange(n_b)[None, :], ri.shape)
        cvals = np.concatenate([cs_v, self.nx64[cd_i] + self.ny64[None, :] - 2 * cd_v])
        keys = np.concatenate([keys, (ri * self.n_cols + cj).ravel()])
        vals = np.concatenate([vals, cvals.ravel()])
        self._init_edges(keys, vals)
        # columns that no row listed: compute them (a product over those columns only)
        deg = np.bincount(self.indices[self.indices < n_b], minlength=n_b)
        orphans = np.flatnonzero(deg == 0)
        if orphans.size:
            self.expand_cols(orphans)

    def _merge(self, keys, vals, exact):
        """Add edges (keys = row * n_cols + col) not yet present (CSR merge, rows stay sorted)."""
        keys = np.asarray(keys, np.int64)
        vals = np.broadcast_to(np.asarray(vals, np.float64), keys.shape)
        o = np.argsort(keys, kind="stable")
        keys = keys[o]
        vals = vals[o]
        del o
        first = np.ones(keys.size, np.bool_)
        first[1:] = keys[1:] != keys[:-1]
        keys, vals = keys[first], vals[first]
        if keys.size == 0:
            return 0
        rows, cols = keys // self.n_cols, keys % self.n_cols
        vals = np.array(vals)
        if self.tie_break and not exact:
            _kernels().jitter_down(rows, cols, vals, self.eta_x, self.eta_y, self.n_b, self.tie_break)
        del keys
        K_ = _kernels()
        keep, nptr, out_ptr = K_.csr_merge_plan(self.indptr, self.indices, rows, cols)
        added = int(out_ptr[-1] - self.indptr[-1])
        if added:
            # grown in place (realloc remaps a large block's pages: the graph is never held twice);
            # the CSR arrays are this object's own, no view of them outlives a call
            n_e = int(out_ptr[-1])
            for name in ("indices", "cost", "exact"):
                arr = getattr(self, name)
                if not arr.flags.owndata or arr.base is not None:
                    arr = arr.copy()
                arr.resize(n_e, refcheck=False)
                setattr(self, name, arr)
            K_.csr_merge_inplace(self.indptr, self.indices, self.cost, self.exact, out_ptr, nptr, keep, cols, vals,
                                 bool(exact))
            self.indptr = out_ptr
        return added

    def make_exact(self, edges):
        """Replace the float32 cost of these edge positions by the exact float64 cost."""
        edges = edges[~self.exact[edges]]
        if edges.size:
            self.cost[edges] = _kernels().exact_costs(self.Xn, self.Yn, self.edge_rows(edges), self.indices[edges])
            self.exact[edges] = True
            self.n_exact += edges.size
        return edges.size

    def expand_cols(self, cols):
        """Columns without any edge: add their k cheapest rows and k_dot largest dot products."""
        cols = np.asarray(cols, np.int64)
        ct = torch.from_numpy(cols).to(self.dev)
        yb = self.Yd.index_select(0, ct)
        G = self.Xd @ yb.T  # [n_a, m]: one product over these columns only
        C = torch.add(self.ny.index_select(0, ct).unsqueeze(0), G, alpha=-2.0).add_(self.nx.unsqueeze(1))
        # skip the rows these columns already have (ties would pick them again)
        pos = np.full(self.n_b, -1, np.int64)
        pos[cols] = np.arange(cols.size)
        has = np.flatnonzero((self.indices < self.n_b) & (pos[np.minimum(self.indices, self.n_b - 1)] >= 0)
                             & np.isin(self.indices, cols))
        er = torch.from_numpy(self.edge_rows(has)).to(self.dev)  # not self.rows: an edge-sized array
        ec = torch.from_numpy(pos[self.indices[has]]).to(self.dev)
        C[er, ec] = float("inf")
        G[er, ec] = -float("inf")
        kk = int(min(self.k_col[cols].max(), self.n_a))
        kd = int(min(self.k_dot, self.n_a))
        self.k_col[cols] *= 2  # doubling: ties or Hall violations cannot stall the loop
        _, i1 = torch.topk(C, kk, dim=0, largest=False)
        _, i2 = torch.topk(G, kd, dim=0, largest=True)
        ii = torch.cat([i1, i2], 0)
        vv = torch.gather(C, 0, ii)
        ok = torch.isfinite(vv)
        jj = np.broadcast_to(cols[None, :], ii.shape)[ok.cpu().numpy()]
        ii, vv = ii[ok], vv[ok]
        self.n_expanded_cols += cols.size
        return self._merge(ii.cpu().numpy() * self.n_cols + jj, vv.double().cpu().numpy(), False)

    def expand_rows(self, rows, u=None, v=None, eps=0.0):
        """Recompute rows in float32 and add candidates: without duals (Hall violation) the next
        best dot products and costs; with duals the k_i columns of smallest reduced value
        (k_i doubling per expansion). Then r_i / rho_i / tau_i = bounds over what stays
        non-candidate."""
        rows = np.unique(np.asarray(rows, np.int64))
        if u is not None and self.dev.type == "cpu":
            return self._price_rows_cpu(rows, u, v, eps)
        new_keys, new_vals = [], []
        bs = max(1, min(self.block_rows, 1024))  # several float32 temporaries of this size
        for a in range(0, rows.size, bs):
            rb = rows[a:a + bs]
            rt = torch.from_numpy(rb).to(self.dev)
            C, G = self._blocks(self.Xd.index_select(0, rt), self.nx.index_select(0, rt))
            # the rows' existing real candidates (CSR ranges, vectorised)
            st, en = self.indptr[rb], self.indptr[rb + 1]
            ln = en - st
            pos = np.repeat(st - np.concatenate([[0], np.cumsum(ln)[:-1]]), ln) + np.arange(ln.sum())
            lr_np = np.repeat(np.arange(rb.size), ln)
            lc_np = self.indices[pos]
            keep = lc_np < self.n_b
            lr = torch.from_numpy(lr_np[keep]).to(self.dev)
            lc = torch.from_numpy(lc_np[keep]).to(self.dev)
            Cm = C.clone()
            Cm[lr, lc] = float("inf")
            G[lr, lc] = -float("inf")
            kk = int(min(self.n_b, self.k_row[rb].max()))
            self.k_row[rb] = np.minimum(2 * self.k_row[rb], self.n_b)
            take = torch.zeros_like(C, dtype=torch.bool)
            if u is None:
                # no duals yet (Hall violation): the next best dot products and costs
                _, ti = torch.topk(G, kk, dim=1, largest=True)
                take.scatter_(1, ti, True)
                _, ti = torch.topk(Cm, min(self.k, self.n_b), dim=1, largest=False)
                take.scatter_(1, ti, True)
            else:
                # pricing: the columns of smallest proven-lower reduced value C - eta - v, all
                # that might be below u_i (doubling count each time), and tau_i = the smallest
                # value left out. v only decreases between cold starts, so tau_i stays a valid
                # lower bound of min_{j non-candidate} C_ij - v_j in later rounds.
                # float32 is enough here: its rounding (~1e-7 of |C| + |v|) is charged to tau
                ey64 = self.eta_y + v[:self.n_b]
                ey = torch.from_numpy(ey64.astype(np.float32)).to(self.dev)
                Rm = Cm - ey.unsqueeze(0)
                # at most kk new columns per row and round (column generation): with early,
                # poor duals "everything that might violate" can be thousands per row; a row
                # whose tau is still below u_i next round simply gets 2*kk more
                _, ti = torch.topk(Rm, kk, dim=1, largest=False)
                take.scatter_(1, ti, True)
                take[lr, lc] = False
                Rm[take] = float("inf")
                tau = Rm.min(1).values.double().cpu().numpy()
                fin = np.isfinite(tau)  # inf: the row has no non-candidate left
                slack = 4 * U32 * (np.abs(np.where(fin, tau, 0.0)) + np.abs(ey64).max() + self.ny64.max()
                                    + self.nx64[rb])
                self.tau[rb] = np.where(fin, tau - slack, np.inf)
                self._snapshot(rb, v)
                del Rm
            take[lr, lc] = False
            Cm[take] = float("inf")
            self.r[rb] = Cm.min(1).values.double().cpu().numpy()
            G[take] = -float("inf")
            self.rho[rb] = G.max(1).values.double().cpu().numpy()
            tr, tc = torch.nonzero(take, as_tuple=True)
            new_keys.append(rb[tr.cpu().numpy()] * self.n_cols + tc.cpu().numpy())
            new_vals.append(C[tr, tc].double().cpu().numpy())
            del C, G, Cm, take
        self.n_expanded_rows += rows.size
        return self._merge(np.concatenate(new_keys), np.concatenate(new_vals), False)


    def _snapshot(self, rows, v):
        """Record the duals ``rows`` were just priced with (one shared snapshot per call)."""
        if self.n_snaps and np.array_equal(self.vref[self.n_snaps - 1], v[:self.n_b]):  # same call, next block
            self.snap[rows] = self.n_snaps - 1
            return
        if self.n_snaps == self.vref.shape[0]:
            grown = np.zeros((2 * self.n_snaps + 1, self.n_b))
            grown[:self.n_snaps] = self.vref[:self.n_snaps]
            self.vref = grown
        self.vref[self.n_snaps] = v[:self.n_b]
        self.snap[rows] = self.n_snaps
        self.n_snaps += 1

    def pricing_bounds(self):
        return self.tau, self.snap, self.vref

    def bounds(self, v, rows=None, skip=None):
        """Proven lower bound of min_j non-candidate (C_ij - v_j) per row, columns in ``skip``
        left out (see _noncandidate_bounds)."""
        return _kernels().noncandidate_bounds(self.r, self.s, self.rho, self.rho_c, self.nx64, self.ny64,
                                              self.eta_x, self.eta_y, v[:self.n_b], self.indptr, self.indices,
                                              self.n_b, rows, skip, *self.pricing_bounds())

    def _price_rows_cpu(self, rows, u, v, eps):
        """expand_rows with duals on CPU: numba pricing of a float32 product of the rows with
        their SUSPECT columns only (those whose pass bound does not clear some failing row;
        for the fresh features of a layer pair about a third of the columns): the other
        columns stay proven by the bound, which enters tau."""
        K_ = _kernels()
        n_b = self.n_b
        vb = v[:n_b]
        S = np.zeros(n_b, np.bool_)
        K_.suspect_columns(self.r, self.s, self.rho, self.rho_c, self.nx64, self.ny64, self.eta_x, self.eta_y, vb,
                           self.indptr, self.indices, n_b, rows, u[rows] - eps, S, *self.pricing_bounds())
        cols = np.flatnonzero(S)
        full = cols.size > _SUSPECT_FULL * n_b  # nearly all: the plain row product, and exact r / rho
        if full:
            cols = np.arange(n_b, dtype=np.int64)
            rest = np.full(rows.size, np.inf)
            Ys = self.Yp
        else:
            rest = self.bounds(v, rows, S)
            Ys = self.Yp.index_select(0, torch.from_numpy(cols))
        new_keys, new_vals = [], []
        bs = max(1, min(self.block_rows * n_b // max(cols.size, 1), 2048))
        G = None
        for a in range(0, rows.size, bs):
            rb = rows[a:a + bs]
            if G is None or G.shape[0] != rb.size:
                G = torch.empty((rb.size, cols.size), dtype=torch.float32)
            self._dot(self.Xd.index_select(0, torch.from_numpy(rb)), Ys, G)
            kk = np.minimum(self.k_row[rb], cols.size)
            self.k_row[rb] = np.minimum(2 * self.k_row[rb], n_b)
            nc = np.empty((rb.size, max(int(kk.max()), 1)), np.int64)
            nv = np.empty(nc.shape)
            nn = np.zeros(rb.size, np.int64)
            r = np.empty(rb.size)
            rho = np.empty(rb.size)
            tau = np.empty(rb.size)
            K_.price_rows(G.numpy(), rb, cols, kk, self.nx64, self.ny64, self.eta_y, vb, self.indptr,
                          self.indices, n_b, nc, nv, nn, r, rho, tau)
            if full:  # bounds over everything that stays non-candidate
                self.r[rb] = r
                self.rho[rb] = rho
            # else r / rho keep their pass values: still valid, the non-candidate set only shrank
            self.tau[rb] = np.minimum(tau, rest[a:a + bs] + self.eta_x[rb])
            self._snapshot(rb, v)
            sel = np.arange(nc.shape[1])[None, :] < nn[:, None]
            new_keys.append((rb[:, None] * self.n_cols + nc)[sel])
            new_vals.append(nv[sel])
        del G, Ys
        self.n_expanded_rows += rows.size
        self.n_priced_pairs += rows.size * cols.size
        return self._merge(np.concatenate(new_keys), np.concatenate(new_vals), False)


def _bf16_error_factor(Xd, Yd, Yb, gamma) -> float:
    """c with |C_ij - C~_ij| <= c (|x_i|^2 + |y_j|^2) for C~ from a bfloat16-input product.

    With x' = bf16(x): |x.y - G| <= |x - x'||y| + |x'||y - y'| (input rounding, measured per
    row) + gamma_D |x'||y'| (fp32 accumulation, any order) + 2^-8 (1 + gamma_D) |x'||y'|
    (bfloat16 output, round to nearest). With d = max |x - x'| / |x| (likewise for y) and
    |x'| <= (1 + 2^-8)|x|: |x.y - G| <= kappa |x||y| and 2 kappa |x||y| <= kappa (|x|^2 + |y|^2).
    Underflow is bounded separately (underflow_slack)."""
    u8 = 2.0 ** -8
    d = []
    for T, Tb in ((Xd, None), (Yd, Yb)):
        worst = 0.0
        for a in range(0, T.shape[0], 512):
            t = T[a:a + 512].double()
            tb = (Tb[a:a + 512] if Tb is not None else T[a:a + 512].to(torch.bfloat16)).double()
            n = t.pow(2).sum(1).sqrt()
            e = (t - tb).pow(2).sum(1).sqrt()
            r = torch.where(n > 0, e / n.clamp_min(1e-300), torch.zeros_like(n))
            worst = max(worst, float(r.max()))
        d.append(worst)
    g = 1 + u8
    kappa = d[0] + g * d[1] + (gamma + u8 * (1 + gamma)) * g * g
    return float(kappa * (1 + 1e-6))


def _native_bf16() -> bool:
    """True when this CPU multiplies bfloat16 natively, where the bfloat16 pass is much faster
    than float32: AMX tiles (4.6x on the AMX machine of benchmarks/README.md) or AVX-512 BF16
    (``vdpbf16ps``; 2.9x on a 2-core AMD EPYC). Elsewhere oneDNN emulates bfloat16 and it is not
    faster, so it is not used. oneDNN limited below those ISAs (``ONEDNN_MAX_CPU_ISA=AVX2``,
    ``AVX512_CORE`` ...) counts as no native bfloat16."""
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if isa and isa != "ALL" and not any(t in isa for t in ("AMX", "BF16", "FP16", "AVX10")):
        return False
    try:
        if bool(torch._C._cpu._init_amx()):
            return True
    except Exception:  # older/other torch builds: no AMX query
        pass
    return _cpu_flag("avx512_bf16")


def _cpu_flag(name: str) -> bool:
    try:  # Linux; elsewhere no flag list to read (no native bfloat16 assumed: float32, still exact)
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return name in line.split(":", 1)[1].split()
    except OSError:
        pass
    return False


def _pick_precision(precision: str, dev: torch.device) -> str:
    if precision not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"solve_sparse: precision must be 'auto', 'float32' or 'bfloat16', got {precision!r}")
    if precision == "auto":
        # GPUs keep float32: a bfloat16 GPU product may reduce in reduced precision, which the
        # error bound here does not cover
        return "bfloat16" if dev.type == "cpu" and _native_bf16() else "float32"
    if precision == "bfloat16" and dev.type != "cpu":
        raise ValueError("solve_sparse: precision='bfloat16' is for the CPU pass (AMX / AVX-512 BF16); "
                         "use 'float32' on GPU")
    return precision


def _solve(P, u, v, col4row, row4col, cold, eps):
    K_ = _kernels()
    if cold:
        v[:] = 0.0
        if P.n_cols == P.n_a:
            # square: column potentials may start anywhere; |y_j|^2 (shifted <= 0) is the gauge in
            # which C - v = |x|^2 - 2 x.y, so duals stay comparable across all pairs, which is
            # what the certificate's bounds need
            v[:] = P.ny64 - P.ny64.max()
        K_.cold_start(P.indptr, P.indices, P.cost, u, v, col4row, row4col)
    else:
        K_.reconcile(P.indptr, P.indices, P.cost, u, v, col4row, row4col, eps)
    free = np.flatnonzero(col4row < 0)
    if free.size > 1:
        # cheap auction-like moves first (JV augmenting row reduction); it only lowers v of
        # columns it assigns, so free columns keep v = 0 in the rectangular case
        _t = time.perf_counter()
        # warm: a few freed rows price-war over near-ties for the whole budget otherwise (65k:
        # 8.6 and 14.6 s); shortest paths settle them faster
        steps = 100 * P.n_a + 1000 if cold else 100 * free.size + 1000
        K_.row_reduction(P.indptr, P.indices, P.cost, v, col4row, row4col, free, steps)
        if _DEBUG:
            print(f"    row reduction {time.perf_counter() - _t:.2f} s", flush=True)
        K_.reconcile(P.indptr, P.indices, P.cost, u, v, col4row, row4col, eps)
    if _DEBUG:
        print(f"    solve: cold {cold} free {free.size} after row reduction {(col4row < 0).sum()}", flush=True)
    failed = np.zeros(P.n_a, np.bool_)
    nf, ns = K_.augment_all(P.indptr, P.indices, P.cost, u, v, col4row, row4col,
                            np.flatnonzero(col4row < 0), failed)
    if cold:
        P.lower_cache = None  # v was reset: cached bounds assume v only decreased since
    if P.n_cols > P.n_a and np.any((row4col < 0) & (v < -eps)):
        P.lower_cache = None
        # a column freed by a warm start kept v < 0: only a cold start restores v = 0 there
        v[:] = 0.0
        K_.cold_start(P.indptr, P.indices, P.cost, u, v, col4row, row4col)
        failed[:] = False
        nf, ns2 = K_.augment_all(P.indptr, P.indices, P.cost, u, v, col4row, row4col,
                                 np.flatnonzero(col4row < 0), failed)
        ns += ns2
    return nf, ns, failed


def _solve_core(P: _Problem, eps: float, max_rounds: int, timing: dict):
    """Solve on the candidates, certify against all pairs, add what is missing, repeat."""
    K_ = _kernels()
    n_a, n_cols, n_b = P.n_a, P.n_cols, P.n_b
    u = np.zeros(n_a)
    v = np.zeros(n_cols)
    col4row = np.full(n_a, -1, np.int64)
    row4col = np.full(n_cols, -1, np.int64)
    cold = True
    rounds = 0
    scans = 0
    lower_nc = passed = None
    inner = 0
    hall = 0
    while True:
        rounds += 1
        t = time.perf_counter()
        nf, ns, failed = _solve(P, u, v, col4row, row4col, cold, eps)
        cold = False
        scans += ns
        timing["solve"] += time.perf_counter() - t
        if nf:  # Hall violation in the candidate graph: more candidates for the rows involved
            if rounds > max_rounds + 20:
                raise RuntimeError("solve_sparse: could not find a matching in the candidate graph")
            t = time.perf_counter()
            hall += 1
            free = np.flatnonzero(row4col[:n_b] < 0)
            free_rows = np.flatnonzero(col4row < 0)
            if 0 < free_rows.size * free.size <= 1 << 18:
                # few left: connect every free row to every free column (exact costs); each
                # free row can then take a free column directly, so the next solve matches all
                rr = np.repeat(free_rows, free.size)
                cc = np.tile(free, free_rows.size)
                P._merge(rr * P.n_cols + cc, _kernels().exact_costs(P.Xn, P.Yn, rr, cc), True)
                timing["expand"] += time.perf_counter() - t
                continue
            # the columns left free are the ones the failed rows cannot reach: give them their
            # own candidate rows (a product over those columns only); rows get more as fallback
            deg = np.bincount(P.indices[P.indices < n_b], minlength=n_b)
            free = free[deg[free] < P.k + P.k_dot] if free.size > nf else free
            added = 0
            if free.size and (free.size <= 4 * nf or rounds == 1):
                added = P.expand_cols(free[:max(4 * nf, 1)])
            if _DEBUG:
                print(f"round {rounds}: Hall nf {nf} free cols {free.size} added {added}", flush=True)
            if not added:
                P.expand_rows(np.flatnonzero(failed))
            timing["expand"] += time.perf_counter() - t
            continue
        t = time.perf_counter()
        # (a) candidate edges: exact reduced cost, or its float32 lower bound
        need, near = K_.candidate_check(P.indptr, P.indices, P.cost, P.exact, P.eta_x, P.eta_y, u, v, col4row,
                                        n_b, eps)
        if need.size and inner < 50 and rounds < max_rounds:
            # settle the candidate graph first (exact costs, warm re-solve); the all-pairs
            # check below is the expensive part and only runs on a settled solution
            inner += 1
            rounds -= 1
            if _DEBUG:
                print(f"  settle {inner}: need {need.size} near {near.size} scans {ns} "
                      f"t {dict((a, round(b, 2)) for a, b in timing.items())}", flush=True)
            timing["certify"] += time.perf_counter() - t
            t = time.perf_counter()
            P.make_exact(near)
            timing["exact"] += time.perf_counter() - t
            continue
        # (b) every other pair, through the bounds of the pass
        # a bound of an earlier round stays valid while v only decreased (no cold start since)
        # and candidates were only added: recompute only the rows it does not clear
        if P.lower_cache is None:
            lower_nc = P.bounds(v)
        else:
            lower_nc = P.lower_cache.copy()
            redo = np.flatnonzero(lower_nc < u - eps)
            if redo.size:
                lower_nc[redo] = P.bounds(v, redo)
        P.lower_cache = lower_nc.copy()
        passed = lower_nc >= u - eps
        timing["certify"] += time.perf_counter() - t
        if _DEBUG:
            print(f"round {rounds}: edges {P.n_edges} need {need.size} failed rows {(~passed).sum()} "
                  f"(of them priced before: {(P.snap[~passed] >= 0).sum()}) "
                  f"t {dict((a, round(b, 2)) for a, b in timing.items())}", flush=True)
        if need.size == 0 and passed.all():
            break
        if rounds >= max_rounds:
            if need.size:  # the gap is stated on exact costs: make the matched edges exact
                t = time.perf_counter()
                mp = K_.matched_pos(P.indptr, P.indices, col4row)
                P.make_exact(mp[mp >= 0])
                timing["exact"] += time.perf_counter() - t
            break
        t = time.perf_counter()
        # also the edges that are near-violating: the next duals would likely flag them
        P.make_exact(near)
        timing["exact"] += time.perf_counter() - t
        if not passed.all():
            t = time.perf_counter()
            P.expand_rows(np.flatnonzero(~passed), u, v, eps)
            timing["expand"] += time.perf_counter() - t
    return dict(u=u, v=v, col4row=col4row, lower_nc=lower_nc, passed=passed & (need.size == 0),
                rounds=rounds, scans=scans, hall_rounds=hall, settle_rounds=inner)


def auto_k_dot(n_b: int) -> int:
    """Dot-list length for n_b columns: 128 up to 16k columns, then n_b / 128 (at most 1024).
    A fixed 128 covers ever less of a wider layer: at 65k (0.2 % of the columns) half the rows
    failed the first certificate and re-solves cascaded for 7+ rounds; with 512 the 65k pair
    is proven in 3 rounds (benchmarks/README.md)."""
    return int(min(1024, max(128, n_b // 128)))


def _k_dot_for_memory(n_a: int, n_b: int, D: int, k: int, available: int | None = None) -> int:
    """The longest dot lists whose pass fits 3/4 of the memory at hand (a multiple of 64, at
    least 64). The pass's peak is the lists and one graph: about 24 (n_a + n_b) k_dot bytes
    (float32 + int32 lists of rows and columns, float64 + int64 graph edges from both), plus
    a bfloat16 copy of Y. Shorter lists only mean weaker bounds and more pricing: the result
    is still certified. A 262k x 262k pair at d_in 2304 on a 24 GB machine gets 512, not 1024."""
    available = available_bytes() if available is None else available
    if available is None:
        return 1 << 30
    fixed = 2 * n_b * D + 16 * (n_a + n_b) * k + (256 << 20)
    kd = (0.75 * available - fixed) / (24.0 * (n_a + n_b))
    return int(max(64, (kd // 64) * 64))


def solve_sparse(X: torch.Tensor, Y: torch.Tensor, *, unmatched_cost=None, k: int = 8, k_dot: int | None = None,
                 block_rows: int | None = None, device=None, progress: bool = False,
                 max_rounds: int = 30, eps_rel: float = 1e-10, return_duals: bool = False,
                 precision: str = "auto"):
    """Exact assignment of rows of X to rows of Y for ``C = ||X_i - Y_j||^2``, certified.

    Returns an ``AssignmentResult``: ``col`` (int64 [n_a], -1 = no partner), ``cost`` (exact
    float64 C[i, col[i]]; for -1 rows the cost to the nearest column ``nearest[i]``),
    ``alt_cost`` (cheapest other column), ``total`` (matched costs + unmatched costs paid),
    ``gap`` (0.0 = proven optimal for the full dense problem, else a certified absolute gap),
    ``nearest`` and ``stats``.

    ``k`` / ``k_dot``: per row, the k cheapest columns and the k_dot (default
    :func:`auto_k_dot` of the column count, shortened where the lists would not fit the memory
    at hand: ``stats["k_dot_memory_limited"]``) largest dot products kept
    from the blocked pass (the dot list is what the duals of a bijective problem rank by,
    since ``C = |x|^2 + |y|^2 - 2 x.y``); rows the certificate rejects get more, locally.
    ``max_rounds``: solve/certify rounds before giving up with a certified gap.
    ``return_duals``: put the dual potentials in ``stats["u"]``, ``stats["v"]`` (v: n_b real
    columns, then the n_a dummy columns in partial mode) for :func:`verify_certificate`.
    ``precision``: product precision of the blocked pass and pricing: "auto" (bfloat16 on a CPU
    with AMX or AVX-512 BF16, where it is 2.9-4.6x faster; float32 elsewhere), "float32" or
    "bfloat16" (CPU only).
    Either way the error is bounded and the result certified against exact float64 costs;
    ``stats["precision"]`` and ``stats["product_error_factor"]`` say which ran.
    """
    w = check_inputs(X, Y, unmatched_cost)
    shift = tiny_input_shift(X, Y)
    if shift:  # exact power-of-two rescale: same assignment, costs times 4^shift (undone below)
        f1, f2 = 2.0 ** (shift // 2), 2.0 ** (shift - shift // 2)  # each factor fits float32
        res = solve_sparse(X * f1 * f2, Y * f1 * f2, unmatched_cost=None if w is None else w * 4.0 ** shift,
                           k=k, k_dot=k_dot, block_rows=block_rows, device=device, progress=progress,
                           max_rounds=max_rounds, eps_rel=eps_rel, return_duals=return_duals,
                           precision=precision)
        return unscale_result(res, shift)
    k_dot_auto = None
    if k_dot is None:
        k_dot = k_dot_auto = auto_k_dot(max(X.shape[0], Y.shape[0]) if w is None else Y.shape[0])
        k_dot = min(k_dot, _k_dot_for_memory(X.shape[0], Y.shape[0], X.shape[1], k))
    if k < 1 or k_dot < 1:
        raise ValueError(f"solve_sparse: k and k_dot must be >= 1, got {k} and {k_dot}")
    if w is None and X.shape[0] > Y.shape[0]:
        res = solve_sparse(Y, X, k=k, k_dot=k_dot, block_rows=block_rows, device=device, progress=progress,
                           max_rounds=max_rounds, eps_rel=eps_rel, precision=precision)
        return _transpose_result(res, X, Y)
    dev = default_device(device)
    timing = {"pass": 0.0, "exact": 0.0, "solve": 0.0, "certify": 0.0, "expand": 0.0}
    t0 = time.perf_counter()
    prev_prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # no TF32: the error bound assumes float32
    try:
        with torch.no_grad():
            P = _Problem(X, Y, w, k, k_dot, block_rows, dev, progress, _pick_precision(precision, dev))
            t = time.perf_counter()
            P.first_pass()
            timing["pass"] = time.perf_counter() - t
            n_edges_first = P.n_edges
            scale = float(P.nx64.mean() + P.ny64.mean())
            eps = eps_rel * max(scale, 1e-300)
            out = _solve_core(P, eps, max_rounds, timing)
            t = time.perf_counter()
            res = _finish(P, out, w, eps)
            timing["exact"] += time.perf_counter() - t
    finally:
        torch.set_float32_matmul_precision(prev_prec)
    col, cost, alt, nearest, near_c, sec_c, total, gap, lb, proven = res
    stats = {
        "solver": "sparse",
        "device": str(dev),
        "k": int(k),
        "k_dot": int(k_dot),
        # the default list length, when the memory at hand made it shorter (more pricing, same optimum)
        "k_dot_memory_limited": bool(k_dot_auto is not None and k_dot < k_dot_auto),
        "block_rows": P.block_rows,
        "seconds": time.perf_counter() - t0,
        "phase_seconds": dict(timing),
        "candidate_edges_first_pass": n_edges_first,
        "candidate_edges": int(P.n_edges - (P.n_a if w is not None else 0)),
        "exact_edges": int(P.n_exact),
        "rounds": out["rounds"],
        "expanded_rows": int(P.n_expanded_rows),
        "expanded_cols": int(P.n_expanded_cols),
        "priced_pairs": int(P.n_priced_pairs),
        "dijkstra_scans": int(out["scans"]),
        "hall_rounds": int(out["hall_rounds"]),
        "settle_rounds": int(out["settle_rounds"]),
        "eps": eps,
        "precision": P.precision,
        "product_error_factor": P.c_err,
        "proven_optimal": proven,
        "dual_bound": lb,
        "peak_memory_bytes": peak_bytes(dev),
    }
    if return_duals:
        stats["u"], stats["v"] = out["u"].copy(), out["v"].copy()
    return AssignmentResult(col=col, cost=cost, alt_cost=alt, total=total, gap=float(gap),
                        nearest=nearest, stats=stats, nearest_cost=near_c, second_cost=sec_c)


def _finish(P, out, w, eps):
    u, v, col4row = out["u"], out["v"], out["col4row"]
    n_b = P.n_b
    idx = P.indices
    K_ = _kernels()
    m_pos = K_.matched_pos(P.indptr, P.indices, col4row)
    unmatched = col4row >= n_b
    col = np.where(unmatched, -1, col4row).astype(np.int64)
    # nearest column and the best other one, from the candidates (the row's cheapest k are
    # there), with exact costs
    p1, p2 = K_.row_best_two(P.indptr, P.indices, P.cost, n_b)
    P.make_exact(np.unique(np.concatenate([p1[p1 >= 0], p2[p2 >= 0]])))
    near_pos = np.maximum(p1, 0)
    sec_pos = np.maximum(p2, 0)
    # exact costs may reorder the two
    swap = (p2 >= 0) & (P.cost[sec_pos] < P.cost[near_pos])
    near_pos, sec_pos = np.where(swap, sec_pos, near_pos), np.where(swap, near_pos, sec_pos)
    nearest = np.where(p1 >= 0, idx[near_pos], -1).astype(np.int64)
    near_c = np.where(p1 >= 0, P.cost[near_pos], np.inf)
    sec_c = np.where(p2 >= 0, P.cost[sec_pos], np.inf)
    ref = np.where(unmatched, nearest, col)
    cost = np.where(unmatched, near_c, P.cost[m_pos])
    alt = np.where(ref == nearest, sec_c, near_c)
    total = float(np.sum(np.where(unmatched, w if w is not None else 0.0, P.cost[m_pos])))
    # certified lower bound: sum_i min_j (C_ij - v_j) + sum_j v_j, valid as v <= 0 (columns may
    # stay free); candidate edges enter with their proven lower cost
    cand_min = K_.row_lower_min(P.indptr, P.indices, P.cost, P.exact, P.eta_x, P.eta_y, v, n_b)
    row_lb = np.minimum(cand_min, out["lower_nc"])
    proven = bool(out["passed"].all())
    lb = float(np.sum(np.minimum(u, row_lb)) + np.sum(v))
    gap = 0.0 if proven else (max(0.0, total - lb) if np.isfinite(lb) else float("inf"))
    return col, cost, alt, nearest, near_c, sec_c, total, gap, lb, proven


def _transpose_result(res, X, Y):
    """Result of (Y, X) -> result for (X, Y): rows of X without a partner get -1."""
    n_a = X.shape[0]
    col = np.full(n_a, -1, np.int64)
    col[res.col] = np.arange(res.col.size)
    from ._numba import exact_costs
    Xc, Yc = X.detach().cpu().float(), Y.detach().cpu().float()  # inputs may live on a GPU
    Xn, Yn = np.ascontiguousarray(Xc.numpy()), np.ascontiguousarray(Yc.numpy())
    has = col >= 0
    cost = np.full(n_a, np.nan)
    cost[has] = exact_costs(Xn, Yn, np.flatnonzero(has), col[has])
    # rows of X without partner: their cheapest column, found in float32 then recomputed exactly
    alt = np.full(n_a, np.nan)
    C = torch.cdist(Xc, Yc) if n_a * Y.shape[0] <= 4_000_000 else None
    if C is not None:
        C = C.pow(2)
        C[torch.from_numpy(np.flatnonzero(has)), torch.from_numpy(col[has])] = float("inf")
        alt = C.min(1).values.double().numpy()
        nb = C.argmin(1).numpy()
        miss = ~has
        cost[miss] = exact_costs(Xn, Yn, np.flatnonzero(miss), nb[miss])
    stats = dict(res.stats)
    stats["transposed"] = True
    return AssignmentResult(col=col, cost=cost, alt_cost=alt, total=res.total, gap=res.gap, nearest=None,
                        stats=stats)


def verify_certificate(X: torch.Tensor, Y: torch.Tensor, col, u, v, *, unmatched_cost=None, k: int = 8,
                       k_dot: int = 32, device=None, eps_rel: float = 1e-10) -> dict:
    """Check an assignment ``col`` with duals ``(u, v)`` against the full dense problem, the way
    :func:`solve_sparse` certifies itself (one blocked pass, exact costs where needed).

    ``v`` has ``n_b`` entries (plus ``n_a`` dummy entries in partial mode). Returns a dict:
    ``ok`` (dual feasible on all pairs within eps, v <= 0 where columns may stay free, and the
    assignment's total equals the dual objective, so it is optimal), ``total``,
    ``dual_objective``, ``min_reduced_cost`` (a proven lower bound), ``bad_rows``."""
    w = check_inputs(X, Y, unmatched_cost)
    dev = default_device(device)
    col = np.asarray(col, np.int64)
    u = np.asarray(u, np.float64)
    v = np.asarray(v, np.float64)
    with torch.no_grad():
        P = _Problem(X, Y, w, k, k_dot, None, dev, False)
        if v.shape != (P.n_cols,) or u.shape != (P.n_a,) or col.shape != (P.n_a,):
            raise ValueError(f"verify_certificate: need col and u of shape ({P.n_a},), v of shape ({P.n_cols},)")
        P.first_pass()
        P.s = np.full(P.n_b, -np.inf)
        P.rho_c = np.full(P.n_b, np.inf)
    eps = eps_rel * max(float(P.nx64.mean() + P.ny64.mean()), 1e-300)
    n_a, n_b = P.n_a, P.n_b
    c4r = col.copy()
    if w is not None:
        c4r[col < 0] = n_b + np.flatnonzero(col < 0)
    elif (col < 0).any():
        raise ValueError("verify_certificate: col = -1 needs unmatched_cost (partial mode)")
    P.make_exact(np.arange(P.n_edges))
    assigned = np.arange(n_a) * P.n_cols + c4r
    P._merge(assigned, 0.0, False)
    P.make_exact(np.flatnonzero(~P.exact))
    red = P.cost - u[P.rows] - v[P.indices]
    cand_min = np.full(n_a, np.inf)
    np.minimum.at(cand_min, P.rows, red)
    nc = P.bounds(v) - u
    row_min = np.minimum(cand_min, nc)
    # rows the bounds cannot clear: their exact row minimum (float64 product over those rows)
    F = np.flatnonzero(row_min < -eps)
    if F.size:
        Yd = Y.detach().cpu().double()
        ny = (Yd * Yd).sum(1)
        vt = torch.from_numpy(v[:n_b])
        for a in range(0, F.size, 256):
            fb = F[a:a + 256]
            xb = X.detach().cpu().double()[torch.from_numpy(fb)]
            Cb = (xb * xb).sum(1)[:, None] + ny[None, :] - 2 * xb @ Yd.T
            exact_min = (Cb - vt[None, :]).min(1).values.numpy() - u[fb]
            row_min[fb] = np.minimum(cand_min[fb], exact_min)
    pos = np.searchsorted(P.keys, assigned)
    total = float(P.cost[pos].sum())
    used = np.zeros(P.n_cols, bool)
    used[c4r] = True
    dual = float(u.sum() + v.sum())
    free_ok = bool(np.all(v[~used] <= eps)) if P.n_cols > n_a else True
    distinct = np.unique(c4r).size == n_a
    ok = bool(distinct and free_ok and row_min.min() >= -eps and abs(total - dual) <= n_a * eps)
    return {"ok": ok, "total": total, "dual_objective": dual, "min_reduced_cost": float(row_min.min()),
            "bad_rows": np.flatnonzero(row_min < -eps), "distinct": distinct, "free_columns_ok": free_ok}
