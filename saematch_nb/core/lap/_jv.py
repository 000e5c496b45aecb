"""Numba kernels of the dense solver (private; see jv.py): a Jonker-Volgenant solver on one
float32 cost matrix that returns its dual potentials, and the passes that certify its
assignment against the exact costs.

The solver follows LAPJV (Jonker & Volgenant 1987): column reduction, reduction transfer,
augmenting row reduction, then shortest augmenting paths. What differs from the C/Rust
implementations of lapx: the column reduction reads the matrix row by row (a column-wise scan
of a 1 GB row-major matrix is one cache miss per entry); augmenting row reduction and the
shortest augmenting paths read each row's "core" first, its 64 cheapest columns at the current
duals plus a bound on the rest, and scan a whole row again only when the search reaches that
bound (most rows of a layer pair never do); augmenting row reduction stops pushing a displaced
row to the front once the price step is below a tolerance (zero-increment auctions on near-ties
otherwise run millions of moves); and the duals come back, which is what the
certificate needs (lapx returns assignments only).

Columns: 0..n_b-1 real; in partial mode row i also has a private dummy column of cost w[i]
(index n_b + i in the returned assignment), never stored: it is reachable from row i only, so
it is always a free end of a path when reached, its potential stays 0 and a row that takes it
keeps it. Rectangular problems (n_b > n_a, or any partial mode) start from v = 0 and only ever
lower v of columns that get matched, so free columns keep v = 0 (the dual bound needs it);
square ones start from the column reduction.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._numba import _augment, _clear_labels, _pop, _push, _relax_row, _settle, _two_best, _update_duals

# reassociation lets LLVM vectorise the loops; no 'nnan'/'ninf': labels use +-inf on purpose
_FM = {"nsz", "arcp", "contract", "reassoc"}


@njit(cache=True, parallel=True)
def column_min(C, n_chunks):
    """Per column of C: smallest entry (float64) and its first row, reading C row by row."""
    n_a, n_b = C.shape
    n_chunks = max(1, min(n_chunks, n_a))
    vs = np.full((n_chunks, n_b), np.inf)
    ims = np.full((n_chunks, n_b), -1, np.int64)
    step = (n_a + n_chunks - 1) // n_chunks
    for t in prange(n_chunks):
        a = t * step
        b = min(n_a, a + step)
        vv = vs[t]
        ii = ims[t]
        for i in range(a, b):
            row = C[i]
            for j in range(n_b):
                c = np.float64(row[j])
                if c < vv[j]:
                    vv[j] = c
                    ii[j] = i
    v = vs[0].copy()
    im = ims[0].copy()
    for t in range(1, n_chunks):
        for j in range(n_b):
            if vs[t, j] < v[j]:
                v[j] = vs[t, j]
                im[j] = ims[t, j]
    return v, im


@njit(cache=True, parallel=True)
def cost_and_cosines(P0, P1, two, ix0, iy0, ix1, iy1, nx, ny, r0, row_cos, row_arg, col_cos, col_arg, n_chunks):
    """One block of the cost matrix from its parts' products, in place, with the criterion's
    direction maxima in the same read (jv.py:_cost_matrix). ``P0`` [rows, n_b]: part 0's
    product, overwritten with ``C = (-2 (P0 + P1) + ny) + nx`` in float32 (the operation order the
    error bound is stated for; P0 + P1 is one more summation order of the same terms); ``P1``
    part 1's product when ``two``. Mean-cosine numerator ``g = P0 ix0 iy0 (+ P1 ix1 iy1)``: each
    row's largest into ``row_cos[r0 + i]`` / ``row_arg``, each column's merged into ``col_cos`` /
    ``col_arg`` (row indices offset by r0)."""
    rows, n_b = P0.shape
    n_chunks = max(1, min(n_chunks, rows))
    cb = np.full((n_chunks, n_b), -np.inf, np.float32)
    ca = np.zeros((n_chunks, n_b), np.int64)
    step = (rows + n_chunks - 1) // n_chunks
    m2 = np.float32(-2.0)
    for t in prange(n_chunks):
        a = t * step
        b = min(rows, a + step)
        cbt = cb[t]
        cat = ca[t]
        for i in range(a, b):
            gi = r0 + i
            x0 = ix0[gi]
            x1 = ix1[gi] if two else np.float32(0.0)
            nxi = nx[gi]
            best = np.float32(-np.inf)
            barg = 0
            row = P0[i]
            for j in range(n_b):
                p0 = row[j]
                g = (p0 * x0) * iy0[j]
                sm = p0
                if two:
                    p1 = P1[i, j]
                    g = g + (p1 * x1) * iy1[j]
                    sm = p0 + p1
                row[j] = (m2 * sm + ny[j]) + nxi
                if g > best:
                    best = g
                    barg = j
                if g > cbt[j]:
                    cbt[j] = g
                    cat[j] = gi
            row_cos[gi] = best
            row_arg[gi] = barg
    for t in range(n_chunks):
        for j in range(n_b):
            if cb[t, j] > col_cos[j]:
                col_cos[j] = cb[t, j]
                col_arg[j] = ca[t, j]


@njit(cache=True)
def column_reduction_start(im, col4row, row4col):
    """LAPJV's column reduction assignment (columns in reverse order): a column goes to its
    cheapest row if that row has none yet. Returns how often each row was a column minimum."""
    n_b = im.size
    cnt = np.zeros(col4row.size, np.int64)
    for j in range(n_b - 1, -1, -1):
        i = im[j]
        cnt[i] += 1
        if cnt[i] == 1:
            col4row[i] = j
            row4col[j] = i
    return cnt


@njit(cache=True, parallel=True)
def reduction_transfer(C, v, col4row, once):
    """Rows that were the minimum of exactly one column hand the reduction to it: v[j1] -=
    min_{j != j1} (C_ij - v_j). Rows in parallel, reading the v of before the pass: each
    decrement is then a little smaller than LAPJV's sequential one, still feasible (v only
    decreases, so every row's cheapest reduced cost only grows)."""
    n_a, n_b = C.shape
    dec = np.zeros(n_a)
    for i in prange(n_a):
        if once[i]:
            j1 = col4row[i]
            row = C[i]
            m = np.inf
            for j in range(n_b):
                if j != j1:
                    h = row[j] - v[j]
                    if h < m:
                        m = h
            dec[i] = m
    for i in range(n_a):
        if once[i] and np.isfinite(dec[i]):
            v[col4row[i]] -= dec[i]


@njit(cache=True, parallel=True, fastmath=_FM)
def sq_norms(X):
    """Squared row norms in float64: a float32 square is exact in float64, so only the sum
    rounds (any order); one read of X, no float64 copy (torch's took 0.4-1.3 s at 8k x 4608)."""
    n, d = X.shape
    out = np.empty(n)
    for i in prange(n):
        row = X[i]
        acc = 0.0
        for k in range(d):
            x = np.float64(row[k])
            acc += x * x
        out[i] = acc
    return out


@njit(cache=True, parallel=True)
def row_duals(C, v, w, col4row):
    """u_i = C_ij - v_j on the matched column (w_i on the dummy), float64."""
    n_a, n_b = C.shape
    u = np.empty(n_a)
    for i in prange(n_a):
        c = col4row[i]
        if c >= n_b:
            u[i] = w[i]
        elif c >= 0:
            u[i] = np.float64(C[i, c]) - v[c]
        else:
            u[i] = np.inf
    return u


@njit(cache=True, parallel=True)
def band_edges(C, u, v, eta_x, eta_y, kappa, col4row, n_b):
    """Candidate edges: per row, the columns whose float32 reduced cost is within ``kappa``
    error bands of tight (C_ij - u_i - v_j <= kappa (eta_i + eta_j)), and the matched column.
    Returns a row-sorted CSR (indptr, indices) of real columns."""
    n_a = C.shape[0]
    cnt = np.zeros(n_a + 1, np.int64)
    for i in prange(n_a):
        row = C[i]
        t = u[i] + kappa * eta_x[i]
        c = 0
        ci = col4row[i]
        for j in range(n_b):
            if row[j] - v[j] - kappa * eta_y[j] <= t or j == ci:
                c += 1
        cnt[i + 1] = c
    indptr = np.cumsum(cnt)
    indices = np.empty(indptr[-1], np.int64)
    for i in prange(n_a):
        row = C[i]
        t = u[i] + kappa * eta_x[i]
        p = indptr[i]
        ci = col4row[i]
        for j in range(n_b):
            if row[j] - v[j] - kappa * eta_y[j] <= t or j == ci:
                indices[p] = j
                p += 1
    return indptr, indices


@njit(cache=True, parallel=True)
def dense_violations(C, u, v, eta_x, eta_y, indptr, indices, n_b, eps, cap):
    """The certificate over every non-candidate pair: its proven lower reduced cost
    ``C32_ij - eta_i - eta_j - u_i - v_j`` (the exact cost is within eta_i + eta_j of the
    float32 one). Returns the per-row minimum of it (the row's bound over non-candidates, plus
    u_i), and up to ``cap`` violating pairs (below -eps) per row, as (rows, cols, count)."""
    n_a = C.shape[0]
    low = np.empty(n_a)
    nbad = np.zeros(n_a, np.int64)
    bad = np.empty((n_a, cap), np.int64)
    for i in prange(n_a):
        row = C[i]
        mark = np.zeros(n_b, np.bool_)
        for p in range(indptr[i], indptr[i + 1]):
            if indices[p] < n_b:
                mark[indices[p]] = True
        base = u[i] + eta_x[i]
        m = np.inf
        nb = 0
        for j in range(n_b):
            if mark[j]:
                continue
            val = row[j] - eta_y[j] - v[j] - base
            if val < m:
                m = val
            if val < -eps:
                if nb < cap:
                    bad[i, nb] = j
                nb += 1
        low[i] = m + u[i]
        nbad[i] = min(nb, cap)
    tot = nbad.sum()
    rr = np.empty(tot, np.int64)
    cc = np.empty(tot, np.int64)
    q = 0
    for i in range(n_a):
        for t in range(nbad[i]):
            rr[q] = i
            cc[q] = bad[i, t]
            q += 1
    return low, rr, cc


@njit(cache=True, parallel=True)
def row_smallest(C, k):
    """Per row: the k smallest entries' columns, in increasing order of the float32 value."""
    n_a, n_b = C.shape
    k = min(k, n_b)
    out = np.empty((n_a, k), np.int64)
    for i in prange(n_a):
        row = C[i]
        bv = np.full(k, np.inf, np.float32)
        bi = np.full(k, -1, np.int64)
        for j in range(n_b):
            c = row[j]
            if c < bv[k - 1] or bi[k - 1] < 0:
                t = k - 1
                while t > 0 and (c < bv[t - 1] or bi[t - 1] < 0):
                    bv[t] = bv[t - 1]
                    bi[t] = bi[t - 1]
                    t -= 1
                bv[t] = c
                bi[t] = j
        out[i] = bi
    return out


@njit(cache=True, parallel=True)
def column_smallest(C, k, n_chunks):
    """Per column: the k smallest entries' rows (increasing float32 value), reading row by row."""
    n_a, n_b = C.shape
    k = min(k, n_a)
    n_chunks = max(1, min(n_chunks, n_b))
    out = np.empty((n_b, k), np.int64)
    step = (n_b + n_chunks - 1) // n_chunks
    for t in prange(n_chunks):
        a = t * step
        b = min(n_b, a + step)
        m = max(b - a, 0)
        bv = np.full((m, k), np.inf, np.float32)
        bi = np.full((m, k), -1, np.int64)
        for i in range(n_a):
            row = C[i]
            for j in range(a, b):
                c = row[j]
                q = j - a
                if c < bv[q, k - 1] or bi[q, k - 1] < 0:
                    s = k - 1
                    while s > 0 and (c < bv[q, s - 1] or bi[q, s - 1] < 0):
                        bv[q, s] = bv[q, s - 1]
                        bi[q, s] = bi[q, s - 1]
                        s -= 1
                    bv[q, s] = c
                    bi[q, s] = i
        for j in range(a, b):
            out[j] = bi[j - a]
    return out


# -- the solve on per-row cores: the K cheapest reduced columns of each row plus a bound -------
# (Volgenant's "core" idea, as LAPMOD: most of a search only touches each row's few cheapest
# columns; a row's bound b_i = its K-th smallest C_ij - v_j when the core was taken stays a lower
# bound of every other column's C_ij - v_j while v only decreases, which is all these phases do.
# A search that reaches a row's bound re-takes the row's core at the current v.)


@njit(cache=True, inline="always")
def _heap_sift(hv, hi, size, t):
    """Max-heap on hv (payload hi) of ``size``: restore order downwards from t."""
    while True:
        l = 2 * t + 1
        if l >= size:
            break
        m = l
        if l + 1 < size and hv[l + 1] > hv[l]:
            m = l + 1
        if hv[t] >= hv[m]:
            break
        hv[t], hv[m] = hv[m], hv[t]
        hi[t], hi[m] = hi[m], hi[t]
        t = m


@njit(cache=True)
def _take_core(row, v, K, lidx, lval):
    """Row's K smallest ``row[j] - v[j]`` (columns into lidx, float32 costs into lval; order
    arbitrary); returns the largest kept reduced value (the row's bound)."""
    n_b = row.size
    hv = np.empty(K)
    hi = np.empty(K, np.int64)
    for j in range(K):
        hv[j] = row[j] - v[j]
        hi[j] = j
    for t in range(K // 2 - 1, -1, -1):
        _heap_sift(hv, hi, K, t)
    top = hv[0]
    for j in range(K, n_b):
        h = row[j] - v[j]
        if h < top:
            hv[0] = h
            hi[0] = j
            _heap_sift(hv, hi, K, 0)
            top = hv[0]
    for t in range(K):
        lidx[t] = hi[t]
        lval[t] = row[hi[t]]
    return top


@njit(cache=True, parallel=True)
def take_cores(C, v, K, lidx, lval, bound):
    """:func:`_take_core` for every row (K < n_b)."""
    for i in prange(C.shape[0]):
        bound[i] = _take_core(C[i], v, K, lidx[i], lval[i])


@njit(cache=True)
def _core_two(lidx, lval, v, w_i):
    """(u1, j1, u2, j2) over a core and the row's dummy (w_i; inf: none, index -2)."""
    u1 = np.inf
    u2 = np.inf
    j1 = -1
    j2 = -1
    for t in range(lidx.size):
        j = lidx[t]
        u1, j1, u2, j2 = _two_best(lval[t] - v[j], j, u1, j1, u2, j2)
    return _two_best(w_i, -2, u1, j1, u2, j2)


@njit(cache=True)
def core_row_reduction(C, v, u, w, col4row, row4col, free, lidx, lval, bound, n_passes, tol, max_steps):
    """Augmenting row reduction (an auction with zero increment, as in LAPJV: a free row takes its
    cheapest column j1 and lowers v[j1] to its second cheapest; the row it displaces is served
    next while the step exceeds ``tol`` and fewer than ``max_steps`` moves were made) reading
    each row's core; a row whose
    two best are not proven by its bound (second best above it) re-takes its core first.
    Sets u_i (the row's reduced price) of every row it assigns. Returns (rows left free,
    number of core refreshes)."""
    n_a, n_b = C.shape
    K = lidx.shape[1]
    has_w = w.size > 0
    buf = free.copy()
    n_free = buf.size
    steps = 0
    refresh = 0
    for _ in range(n_passes):
        k = 0
        nf = 0
        while k < n_free:
            i = buf[k]
            k += 1
            steps += 1
            wi = w[i] if has_w else np.inf
            u1, j1, u2, j2 = _core_two(lidx[i], lval[i], v, wi)
            if u2 > bound[i]:
                bound[i] = _take_core(C[i], v, K, lidx[i], lval[i])
                refresh += 1
                u1, j1, u2, j2 = _core_two(lidx[i], lval[i], v, wi)
            if j1 == -2:  # the dummy is the best: no competition for it
                col4row[i] = n_b + i
                u[i] = wi
                continue
            if j1 < 0:
                buf[nf] = i
                nf += 1
                continue
            gap = u2 - u1
            i0 = row4col[j1]
            if gap > 0 and u2 < np.inf:
                v[j1] -= gap
                u[i] = u2
            elif i0 >= 0:
                if j2 == -1:
                    buf[nf] = i
                    nf += 1
                    continue
                gap = 0.0
                if j2 == -2:
                    col4row[i] = n_b + i
                    u[i] = wi
                    continue
                j1 = j2
                i0 = row4col[j1]
                u[i] = u2
            else:
                u[i] = u1
            if i0 >= 0:
                col4row[i0] = -1
            col4row[i] = j1
            row4col[j1] = i
            if i0 >= 0:
                if gap > tol and steps <= max_steps:
                    k -= 1
                    buf[k] = i0
                else:
                    buf[nf] = i0
                    nf += 1
        n_free = nf
    return buf[:n_free].copy(), refresh


@njit(cache=True)
def _rebuild_heap(hk, hv, d, scanned, touched, nt, sr, nsr, col4row, u, bound, best_free, s):
    """The search's heap from its labels and the scanned rows' tokens (drops stale entries)."""
    hs = 0
    for q in range(nt):
        l = touched[q]
        if not scanned[l] and d[l] < np.inf:
            hs = _push(hk, hv, hs, d[l], l)
    for q in range(nsr):
        i2 = sr[q]
        tb2 = d[col4row[i2]] - u[i2] + bound[i2]
        if tb2 < best_free:
            hs = _push(hk, hv, hs, tb2, -1 - i2)
    if bound[s] - u[s] < best_free:
        hs = _push(hk, hv, hs, bound[s] - u[s], -1 - s)
    return hs


@njit(cache=True)
def core_shortest_paths(C, v, u, w, col4row, row4col, free, lidx, lval, bound):
    """Shortest augmenting paths (Dijkstra with a binary heap, as sparse augment_all) on the
    cores. A scanned row also pushes a token at its bound: the search reaches the token only
    if no free column was found below it, and then re-takes the row's core at the current v
    and relaxes the new core (every other column is now above the new bound). Duals: u_i =
    row i's reduced price, v <= previous v; reduced costs stay >= 0 on all pairs.
    Returns (scans, core refreshes)."""
    n_a, n_b = C.shape
    K = lidx.shape[1]
    has_w = w.size > 0
    inf = np.inf
    d = np.full(n_b, inf)
    pred = np.full(n_b, -1, np.int64)
    scanned = np.zeros(n_b, np.bool_)
    touched = np.empty(n_b, np.int64)
    sr = np.empty(n_a, np.int64)
    # a rebuilt heap holds <= n_b labels + n_a + 1 tokens; a whole-row relaxation adds <= n_b
    cap = 4 * n_b + 2 * n_a + 16
    hk = np.empty(cap, np.float64)
    hv = np.empty(cap, np.int64)  # >= 0: column; < 0: token of row -1 - value
    # flat views, made once (no array per relaxed row): row i's core is [i K, (i + 1) K) of
    # lidx_f / lval_f, its whole row [i n_b, (i + 1) n_b) of C_f
    lidx_f = lidx.reshape(-1)
    lval_f = lval.reshape(-1)
    C_f = C.reshape(-1)
    n_scans = 0
    refresh = 0
    for s in free:
        if col4row[s] >= 0:
            continue
        wi = w[s] if has_w else inf
        u1, j1, u2, j2 = _core_two(lidx[s], lval[s], v, wi)
        if u1 > bound[s]:
            bound[s] = _take_core(C[s], v, K, lidx[s], lval[s])
            refresh += 1
            u1, j1, u2, j2 = _core_two(lidx[s], lval[s], v, wi)
        u[s] = u1  # the free row's price: its cheapest option, so every reduced cost is >= 0
        nt = 0
        nsr = 0
        hs = 0
        best_free = inf
        bd = wi - u1 if has_w else inf  # best dummy end (distance) and whose
        bd_row = s
        if bd < best_free:
            best_free = bd
        nt, hs, best_free = _relax_row(lidx_f, s * K, lval_f, s * K, K, -u1, s, v, d, pred, scanned, touched, nt, hk,
                                       hv, hs, row4col, best_free)
        if bound[s] - u1 < best_free:
            hs = _push(hk, hv, hs, bound[s] - u1, -1 - s)
        sink = -1
        minval = 0.0
        while hs > 0:
            key, j, hs = _pop(hk, hv, hs)
            if key >= bd:  # the best dummy end is not above anything left: take it
                break
            if j < 0:  # a row's token: re-take its core at the current v, relax it
                i = -1 - j
                if i == s:
                    base = -u[s]
                else:
                    base = d[col4row[i]] - u[i]
                bound[i] = _take_core(C[i], v, K, lidx[i], lval[i])
                refresh += 1
                if base + bound[i] <= key:
                    # no progress (the core did not move, or ties at the bound): a new token at
                    # the same key would be popped forever; relax the whole row instead, once
                    if hs + n_b + 2 >= cap:
                        hs = _rebuild_heap(hk, hv, d, scanned, touched, nt, sr, nsr, col4row, u, bound,
                                           best_free, s)
                    nt, hs, best_free = _relax_row(lidx_f, -1, C_f, i * n_b, n_b, base, i, v, d, pred, scanned,
                                                   touched, nt, hk, hv, hs, row4col, best_free)
                    continue
                nt, hs, best_free = _relax_row(lidx_f, i * K, lval_f, i * K, K, base, i, v, d, pred, scanned, touched,
                                               nt, hk, hv, hs, row4col, best_free)
                tb = base + bound[i]
                if tb < best_free and tb < bd:
                    hs = _push(hk, hv, hs, tb, -1 - i)
                continue
            i, nsr, n_scans = _settle(j, key, d, scanned, row4col, sr, nsr, n_scans)
            if i == -1:  # a free column: the shortest path's end
                sink, minval = j, key
                break
            if i < 0:  # a stale entry
                continue
            base = key - u[i]
            nt, hs, best_free = _relax_row(lidx_f, i * K, lval_f, i * K, K, base, i, v, d, pred, scanned, touched, nt,
                                           hk, hv, hs, row4col, best_free)
            if has_w:
                c = base + w[i]
                if c < bd:
                    bd = c
                    bd_row = i
                    if c < best_free:
                        best_free = c
            tb = base + bound[i]
            if tb < best_free and tb < bd:
                hs = _push(hk, hv, hs, tb, -1 - i)
            if hs + K + 2 >= cap:  # heap full of stale entries: rebuild from the labels
                hs = _rebuild_heap(hk, hv, d, scanned, touched, nt, sr, nsr, col4row, u, bound, best_free, s)
        if sink < 0:
            if bd == inf:  # nothing reachable (cannot happen with finite costs)
                _clear_labels(touched, nt, d, pred, scanned)
                continue
            minval = bd
        _update_duals(s, minval, u, v, d, sr, nsr, touched, nt, scanned, col4row)
        if sink < 0:  # the path ends on row bd_row's dummy column
            nxt = col4row[bd_row]
            col4row[bd_row] = n_b + bd_row
            if bd_row != s:
                _augment(nxt, s, pred, row4col, col4row)
        else:
            _augment(sink, s, pred, row4col, col4row)
        _clear_labels(touched, nt, d, pred, scanned)
    return n_scans, refresh
