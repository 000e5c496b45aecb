"""Numba kernels of the sparse assignment solver (private; see sparse.py).

Shortest augmenting paths (Dijkstra with dual potentials, as in Jonker-Volgenant / scipy's
LSA) on a CSR graph of candidate edges. Convention: reduced cost c_ij - u_i - v_j >= 0 on
every edge, tight (= 0) on matched edges, v_j <= 0 and v_j = 0 on free columns (so the same
duals bound rectangular problems). Work per augmentation is proportional to what it touches:
state is reset through a touched-list, never by an O(n) sweep.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _push(hk, hv, size, key, val):
    i = size
    hk[i] = key
    hv[i] = val
    while i > 0:
        p = (i - 1) >> 1
        if hk[p] <= hk[i]:
            break
        hk[p], hk[i] = hk[i], hk[p]
        hv[p], hv[i] = hv[i], hv[p]
        i = p
    return size + 1


@njit(cache=True, inline="always")
def _pop(hk, hv, size):
    key = hk[0]
    val = hv[0]
    size -= 1
    if size > 0:
        hk[0] = hk[size]
        hv[0] = hv[size]
        _sift_down(hk, hv, size)
    return key, val, size


@njit(cache=True, inline="always")
def _sift_down(hk, hv, size):
    """Restore the min-heap order of keys hk (payload hv) after the root was replaced."""
    i = 0
    while True:
        l = 2 * i + 1
        if l >= size:
            break
        m = l
        r = l + 1
        if r < size and hk[r] < hk[l]:
            m = r
        if hk[i] <= hk[m]:
            break
        hk[m], hk[i] = hk[i], hk[m]
        hv[m], hv[i] = hv[i], hv[m]
        i = m


# -- the shortest-path searches' building blocks (augment_all here, _jv.core_shortest_paths) ------
# Search state: labels d (inf = unreached), pred (the row a column was reached from), scanned,
# the touched columns (the only ones reset afterwards), sr = the scanned rows, a min-heap of
# (label, column) entries, and best_free = the smallest label of a free column seen so far: the
# search stops there, so a column at that distance or beyond is never scanned and is not pushed
# (most edges of a scanned row are far above it; pushing them all dominated the search).
# The helpers that take arrays allocate nothing and are compiled without numba's reference
# counting (``_nrt=False``), as calls that LLVM inlines: inlined at numba's IR level instead,
# every array argument gets an atomic incref / decref per call that numba cannot prune, which
# made the searches 2-4x slower (8k core search: 1.8 s instead of 0.47 s). A row's edges are
# given as flat arrays and offsets, not per-row views: a view would be counted the same way.


@njit(cache=True, _nrt=False)
def _relax_row(cols, c0, vals, v0, n, base, i, v, d, pred, scanned, touched, nt, hk, hv, hs, row4col, best_free):
    """Label every unscanned column ``l = cols[c0 + t]`` (t < n; ``l = t`` when c0 < 0: a whole
    row) of row i with ``nd = base + vals[v0 + t] - v[l]`` (base: the row's label minus u_i; -u_i
    for the search's free row) where that improves d[l] and stays below best_free (pred[l] = i, a
    heap entry, best_free lowered on a free column). Returns (nt, hs, best_free)."""
    for t in range(n):
        l = cols[c0 + t] if c0 >= 0 else t
        if scanned[l]:
            continue
        nd = base + vals[v0 + t] - v[l]
        if nd < d[l] and nd < best_free:
            if d[l] == np.inf:
                touched[nt] = l
                nt += 1
            d[l] = nd
            pred[l] = i
            hs = _push(hk, hv, hs, nd, l)
            if row4col[l] < 0:
                best_free = nd
    return nt, hs, best_free


@njit(cache=True, _nrt=False)
def _settle(j, key, d, scanned, row4col, sr, nsr, n_scans):
    """Column j popped at label ``key``. Returns (i, nsr, n_scans): i = -2 for a stale entry (j
    scanned already, or labelled lower since), else j is scanned and i is its row, queued in sr
    (-1: j is free, the path's end)."""
    if scanned[j] or key > d[j]:
        return -2, nsr, n_scans
    scanned[j] = True
    i = row4col[j]
    if i >= 0:
        sr[nsr] = i
        nsr += 1
    return i, nsr, n_scans + 1


@njit(cache=True, _nrt=False)
def _update_duals(s, minval, u, v, d, sr, nsr, touched, nt, scanned, col4row):
    """Dual update after a search from free row s reached a path end at ``minval`` (before
    col4row changes): every reduced cost stays >= 0, the path's edges become tight."""
    u[s] += minval
    for t in range(nsr):
        i = sr[t]
        u[i] += minval - d[col4row[i]]
    for t in range(nt):
        j = touched[t]
        if scanned[j]:
            v[j] -= minval - d[j]


@njit(cache=True, _nrt=False)
def _augment(j, s, pred, row4col, col4row):
    """Flip the alternating path that ends on column j back to the search's free row s."""
    while True:
        i = pred[j]
        row4col[j] = i
        nxt = col4row[i]
        col4row[i] = j
        j = nxt
        if i == s:
            break


@njit(cache=True, _nrt=False)
def _clear_labels(touched, nt, d, pred, scanned):
    """Reset the search state of the touched columns only (never an O(n) sweep)."""
    for t in range(nt):
        j = touched[t]
        d[j] = np.inf
        pred[j] = -1
        scanned[j] = False


@njit(cache=True, inline="always")
def _two_best(h, j, u1, j1, u2, j2):
    """(u1, j1, u2, j2): the two smallest values seen and their columns, after offering (h, j);
    a tie with u1 or u2 keeps the earlier one."""
    if h < u2:
        if h < u1:
            return h, j, u1, j1
        return u1, j1, h, j
    return u1, j1, u2, j2


@njit(cache=True)
def augment_all(indptr, indices, cost, u, v, col4row, row4col, order, failed):
    """Augment every free row of ``order``. Rows whose alternating tree reaches no free column
    (the candidate graph has no matching for them) are left free; they and every row of their
    tree get ``failed[i] = True`` (the caller adds candidates there). Returns (#failed, #scans)."""
    n_rows = u.size
    n_cols = v.size
    inf = np.inf
    d = np.full(n_cols, inf)
    pred = np.full(n_cols, -1, np.int64)
    scanned = np.zeros(n_cols, np.bool_)
    touched = np.empty(n_cols, np.int64)
    sr = np.empty(n_rows, np.int64)
    cap = cost.size + 1
    hk = np.empty(cap, np.float64)
    hv = np.empty(cap, np.int64)
    n_failed = 0
    n_scans = 0
    for s in order:
        if col4row[s] >= 0:
            continue
        nt = 0
        nsr = 0
        hs = 0
        best_free = inf
        a, n = indptr[s], indptr[s + 1] - indptr[s]
        nt, hs, best_free = _relax_row(indices, a, cost, a, n, -u[s], s, v, d, pred, scanned, touched, nt, hk, hv,
                                       hs, row4col, best_free)
        sink = -1
        minval = 0.0
        while hs > 0:
            key, j, hs = _pop(hk, hv, hs)
            i, nsr, n_scans = _settle(j, key, d, scanned, row4col, sr, nsr, n_scans)
            if i == -1:  # a free column: the shortest path's end
                sink, minval = j, key
                break
            if i >= 0:
                a, n = indptr[i], indptr[i + 1] - indptr[i]
                nt, hs, best_free = _relax_row(indices, a, cost, a, n, key - u[i], i, v, d, pred, scanned, touched,
                                               nt, hk, hv, hs, row4col, best_free)
        if sink < 0:
            n_failed += 1
            failed[s] = True
            for t in range(nsr):
                failed[sr[t]] = True
        else:
            _update_duals(s, minval, u, v, d, sr, nsr, touched, nt, scanned, col4row)
            _augment(sink, s, pred, row4col, col4row)
        _clear_labels(touched, nt, d, pred, scanned)
    return n_failed, n_scans


@njit(cache=True, parallel=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def exact_costs(X, Y, rows, cols):
    """C[e] = sum_d (X[rows[e], d] - Y[cols[e], d])^2 accumulated in float64: the difference of
    two float32 and its square are exact in float64, so the only rounding is the float64 sum
    (any order, hence SIMD reassociation is allowed: error <= D * 2^-53 * C, about 5e-13 C)."""
    m = rows.size
    out = np.empty(m, np.float64)
    D = X.shape[1]
    for e in prange(m):
        x = X[rows[e]]
        y = Y[cols[e]]
        acc = 0.0
        for t in range(D):
            df = np.float64(x[t]) - np.float64(y[t])
            acc += df * df
        out[e] = acc
    return out


@njit(cache=True)
def cold_start(indptr, indices, cost, u, v, col4row, row4col):
    """Given starting v: u_i = min_j c_ij - v_j, greedy tight matching (each row takes its best
    free column)."""
    col4row[:] = -1
    row4col[:] = -1
    for i in range(u.size):
        m = np.inf
        jm = -1
        for p in range(indptr[i], indptr[i + 1]):
            val = cost[p] - v[indices[p]]
            if val < m:
                m = val
                jm = indices[p]
        u[i] = m
        if jm >= 0 and row4col[jm] < 0:
            row4col[jm] = i
            col4row[i] = jm


@njit(cache=True)
def reconcile(indptr, indices, cost, u, v, col4row, row4col, tol):
    """Warm start after edges were added: keep v, make u feasible (u_i = min_j c_ij - v_j) and
    free the rows whose matched edge is no longer tight. Returns the number of freed rows."""
    freed = 0
    for i in range(u.size):
        m = np.inf
        cm = np.inf
        c = col4row[i]
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            val = cost[p] - v[j]
            if val < m:
                m = val
            if j == c:
                cm = val
        if c >= 0 and cm > m + tol:
            row4col[c] = -1
            col4row[i] = -1
            freed += 1
        u[i] = cm if col4row[i] >= 0 else m
    return freed


def noncandidate_bounds(r, s, kap_r, kap_c, nx2, ny2, eta_x, eta_y, v, indptr, indices, n_b, rows=None,
                        skip=None, tau=None, snap=None, vref=None):
    """See _noncandidate_bounds; ``rows``: only these rows (default all); ``skip``: boolean mask
    of columns left out of the minimum (default none); ``tau`` / ``snap`` / ``vref``: pricing
    bounds (default none)."""
    n_a = r.size
    if rows is None:
        rows = np.arange(n_a, dtype=np.int64)
    if skip is None:
        skip = np.zeros(n_b, np.bool_)
    if tau is None:
        tau, snap, vref = np.full(n_a, -np.inf), np.full(n_a, -1, np.int64), np.zeros((1, n_b))
    return _noncandidate_bounds(r, s, kap_r, kap_c, nx2, ny2, eta_x, eta_y, v, indptr, indices, n_b,
                                np.asarray(rows, np.int64), skip, tau, snap, vref)


@njit(cache=True, inline="always")
def _pair_val(ri, ki, a2, s_j, kc_j, ny2_j, eta_yj, v_j, tau_i, vref_j):
    """Proven lower bound of C_ij - v_j (before -eta_x_i) for a non-candidate pair: the pass
    bound (in none of the four candidate lists: C >= r_i, C >= s_j, x.y <= min(kap)), or, for a
    priced row, its pricing bound ``C_ij >= tau_i + vref_j`` (vref: the duals it was priced
    with; a fact about C, so it holds for any later v and follows each column's own change)."""
    kp = ki if ki < kc_j else kc_j
    lb = a2 + ny2_j - 2.0 * kp
    t = ri if ri > s_j else s_j
    if t > lb:
        lb = t
    val = lb - eta_yj - v_j
    pv = tau_i + vref_j - v_j
    return pv if pv > val else val


@njit(cache=True, inline="always")
def _mark_candidates(indptr, indices, i, n_b):
    mark = np.zeros(n_b, np.bool_)
    for p in range(indptr[i], indptr[i + 1]):
        j = indices[p]
        if j < n_b:
            mark[j] = True
    return mark


@njit(cache=True, parallel=True)
def _noncandidate_bounds(r, s, kap_r, kap_c, nx2, ny2, eta_x, eta_y, v, indptr, indices, n_b, rows, skip, tau,
                         snap, vref):
    """Proven lower bound of min over non-candidate real columns j of (C_ij - v_j), per row.

    A pair that is in none of the four candidate lists (row/column cheapest, row/column largest
    dot product) has, in float32, C >= r_i, C >= s_j and x.y <= min(kap_r_i, kap_c_j), so
    exactly C_ij >= max(r_i, s_j, |x|^2 + |y|^2 - 2 min(kap)) - eta_i - eta_j; a priced row
    also has C_ij >= tau_i + vref[snap_i, j] (see _pair_val).
    O(n_a * n_b) scalar work (D times less than the product), no second matrix pass."""
    m = rows.size
    out = np.empty(m)
    for q in prange(m):
        i = rows[q]
        mark = _mark_candidates(indptr, indices, i, n_b)
        sn = snap[i]
        ti = tau[i] if sn >= 0 else -np.inf
        vr = vref[max(sn, 0)]
        best = np.inf
        for j in range(n_b):
            if mark[j] or skip[j]:
                continue
            val = _pair_val(r[i], kap_r[i], nx2[i], s[j], kap_c[j], ny2[j], eta_y[j], v[j], ti, vr[j])
            if val < best:
                best = val
        out[q] = best - eta_x[i]
    return out


@njit(cache=True, parallel=True)
def suspect_columns(r, s, kap_r, kap_c, nx2, ny2, eta_x, eta_y, v, indptr, indices, n_b, rows, thr, S, tau, snap,
                    vref):
    """S[j] = True for every non-candidate column j whose bound (as in _noncandidate_bounds)
    does not clear row ``rows[q]``: bound - v_j < thr[q]. Only these columns of the failing
    rows need their real cost; the rest stay proven by the bound."""
    for q in prange(rows.size):
        i = rows[q]
        mark = _mark_candidates(indptr, indices, i, n_b)
        lim = thr[q] + eta_x[i]
        sn = snap[i]
        ti = tau[i] if sn >= 0 else -np.inf
        vr = vref[max(sn, 0)]
        for j in range(n_b):
            if mark[j] or S[j]:
                continue
            if _pair_val(r[i], kap_r[i], nx2[i], s[j], kap_c[j], ny2[j], eta_y[j], v[j], ti, vr[j]) < lim:
                S[j] = True  # every writer stores True: the race is benign


@njit(cache=True, inline="always")
def _has(a, lo, hi, x):
    """x in the sorted slice a[lo:hi]."""
    end = hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo < end and a[lo] == x


@njit(cache=True, inline="always")
def _offer(hv, hi, size, cap, val, idx):
    """Min-heap hv/hi (1-D views) of at most cap entries keeping the LARGEST values offered.
    Returns the new size."""
    if size < cap:
        return _push(hv, hi, size, val, idx)
    if val <= hv[0]:
        return size
    hv[0] = val
    hi[0] = idx
    _sift_down(hv, hi, size)
    return size


@njit(cache=True, inline="always")
def _keep_top(bv, bi, n, m):
    """Keep the m largest of bv[:n] (payload bi) in bv[:m], in place; returns the m-th largest
    value. Linear time: numpy partition on a copy finds it; one pass then keeps, in order, every
    entry above it and ties with it until m are kept."""
    kth = np.partition(bv[:n].copy(), n - m)[n - m]
    above = 0
    for q in range(n):
        if bv[q] > kth:
            above += 1
    ties = m - above
    w = 0
    for q in range(n):  # in place: w <= q, so nothing unread is overwritten
        x = bv[q]
        keep = x > kth
        if not keep and x == kth and ties > 0:
            keep = True
            ties -= 1
        if keep:
            bv[w] = x
            bi[w] = bi[q]
            w += 1
    return kth


@njit(cache=True, parallel=True)
def block_lists(G, row0, nx, ny, rc_v, rc_i, rd_v, rd_i, cc_v, cc_i, cc_n, cb_v, cb_i, cb_n, cb_t, n_chunks):
    """One float32 dot block ``G = X[row0:row0+m] @ Y.T`` -> candidate lists, no cost block.

    Rows (complete after this block): ``rc`` = k cheapest columns (heap of -C), ``rd`` = k_dot
    largest dot products. Columns (running over blocks): ``cc`` = k cheapest rows (heap of -C,
    size cc_n); the k_dot largest dot products go to a BUFFER ``cb`` of 2 k_dot entries per
    column (size cb_n, entry threshold cb_t): appending costs one store where a heap insert
    touched log2(k_dot) scattered cache lines (the column heaps of a 65k layer span 0.5 GB);
    a full buffer keeps its top k_dot (linear selection) and raises cb_t to the k_dot-th value.
    finish_column_dots turns the buffers into lists. C = |x|^2 + |y|^2 - 2 G in float64 from the
    float32 G (its only error is the product's). Every pair left out of a list has a value <=
    the list's final k-th value."""
    m, n_b = G.shape
    k = rc_v.shape[1]
    kd = rd_v.shape[1]
    kc = cc_v.shape[1]
    B = cb_v.shape[1]
    kcd = B // 2
    for t in prange(m):
        i = row0 + t
        sc = 0
        sd = 0
        a2 = nx[i]
        hdv = rd_v[i]
        hdi = rd_i[i]
        hcv = rc_v[i]
        hci = rc_i[i]
        Gt = G[t]
        td = -np.inf
        tc = -np.inf
        for j in range(n_b):
            g = np.float64(Gt[j])
            if g > td:
                sd = _offer(hdv, hdi, sd, kd, g, j)
                if sd == kd:
                    td = hdv[0]
            cv = -(a2 + ny[j] - 2.0 * g)
            if cv > tc:
                sc = _offer(hcv, hci, sc, k, cv, j)
                if sc == k:
                    tc = hcv[0]
    step = (n_b + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        j0 = c * step
        j1 = min(n_b, j0 + step)
        tc = np.empty(j1 - j0)
        for j in range(j0, j1):
            tc[j - j0] = cc_v[j, 0] if cc_n[j] == kc else -np.inf
        for t in range(m):
            i = row0 + t
            a2 = nx[i]
            Gt = G[t]
            for j in range(j0, j1):
                g = np.float64(Gt[j])
                if g > cb_t[j]:
                    q = cb_n[j]
                    cb_v[j, q] = g
                    cb_i[j, q] = i
                    q += 1
                    if q == B:
                        cb_t[j] = _keep_top(cb_v[j], cb_i[j], B, kcd)
                        q = kcd
                    cb_n[j] = q
                cv = -(a2 + ny[j] - 2.0 * g)
                if cv > tc[j - j0]:
                    cc_n[j] = _offer(cc_v[j], cc_i[j], cc_n[j], kc, cv, i)
                    if cc_n[j] == kc:
                        tc[j - j0] = cc_v[j, 0]


@njit(cache=True, parallel=True)
def finish_column_dots(cb_v, cb_i, cb_n, kcd, cd_v, cd_i, cd_n):
    """Column dot buffers -> lists of the kcd largest (cd_v / cd_i, size cd_n), the smallest
    kept value at position 0 (the bound, as a heap root would be)."""
    for j in prange(cb_v.shape[0]):
        n = cb_n[j]
        mm = min(kcd, n)
        if n > mm:
            _keep_top(cb_v[j], cb_i[j], n, mm)
        lo = 0
        for q in range(1, mm):
            if cb_v[j, q] < cb_v[j, lo]:
                lo = q
        for q in range(mm):
            src = q
            if q == 0:
                src = lo
            elif q == lo:
                src = 0
            cd_v[j, q] = cb_v[j, src]
            cd_i[j, q] = cb_i[j, src]
        cd_n[j] = mm


@njit(cache=True, parallel=True)
def csr_merge(indptr, indices, cost, exact, nrows, ncols, nvals, nexact):
    """Add edges to a row-sorted CSR graph. New edges come sorted by (row, col) without
    duplicates; those already present are skipped. Returns (indptr, indices, cost, exact,
    added): new arrays, rows merged in parallel; only the old and the new graph are held."""
    n = indptr.size - 1
    keep, nptr, out_ptr = csr_merge_plan(indptr, indices, nrows, ncols)
    tot = out_ptr[n]
    o_ind = np.empty(tot, np.int64)
    o_cost = np.empty(tot)
    o_ex = np.empty(tot, np.bool_)
    for i in prange(n):
        a = indptr[i]
        a_end = indptr[i + 1]
        e = nptr[i]
        e_end = nptr[i + 1]
        o = out_ptr[i]
        while a < a_end or e < e_end:
            if e < e_end and not keep[e]:
                e += 1
                continue
            if e >= e_end or (a < a_end and indices[a] < ncols[e]):
                o_ind[o] = indices[a]
                o_cost[o] = cost[a]
                o_ex[o] = exact[a]
                a += 1
            else:
                o_ind[o] = ncols[e]
                o_cost[o] = nvals[e]
                o_ex[o] = nexact
                e += 1
            o += 1
    return out_ptr, o_ind, o_cost, o_ex, tot - indptr[n]


# --- the candidate graph built and grown in place (no second copy of a multi-GB graph) -------
# The arrays are allocated by the caller (numpy owns them, so ndarray.resize can shrink or grow
# them: realloc of a large block remaps pages instead of copying them).

@njit(cache=True)
def csr_row_counts(n_a, per_row, cc_i, cc_n, cd_i, cd_n):
    """Row pointers of the pass's lists before duplicates are dropped: ``per_row`` entries of
    each row's own lists plus every column-list entry that names the row."""
    ptr = np.zeros(n_a + 1, np.int64)
    for i in range(n_a):
        ptr[i + 1] = per_row
    for j in range(cc_i.shape[0]):
        for q in range(cc_n[j]):
            ptr[cc_i[j, q] + 1] += 1
        for q in range(cd_n[j]):
            ptr[cd_i[j, q] + 1] += 1
    for i in range(n_a):
        ptr[i + 1] += ptr[i]
    return ptr


@njit(cache=True, parallel=True)
def csr_fill_rows(ptr, fill, col, val, rc_i, rc_v, rd_i, rd_v, nx, ny):
    """Each row's own lists into its range (block_lists layout: the cost heap holds -C, the dot
    list x.y); ``fill`` = next free slot per row."""
    k = rc_i.shape[1]
    kd = rd_i.shape[1]
    for i in prange(ptr.size - 1):
        f = ptr[i]
        for q in range(k):
            col[f] = rc_i[i, q]
            val[f] = -rc_v[i, q]
            f += 1
        for q in range(kd):
            j = rd_i[i, q]
            col[f] = j
            val[f] = nx[i] + ny[j] - 2.0 * np.float64(rd_v[i, q])
            f += 1
        fill[i] = f


@njit(cache=True)
def csr_fill_cols(fill, col, val, cc_i, cc_v, cc_n, cd_i, cd_v, cd_n, nx, ny):
    """Every column list's entries into the rows they name (serial: rows collide)."""
    for j in range(cc_i.shape[0]):
        for q in range(cc_n[j]):
            i = cc_i[j, q]
            col[fill[i]] = j
            val[fill[i]] = -cc_v[j, q]
            fill[i] += 1
        for q in range(cd_n[j]):
            i = cd_i[j, q]
            col[fill[i]] = j
            val[fill[i]] = nx[i] + ny[j] - 2.0 * np.float64(cd_v[j, q])
            fill[i] += 1


@njit(cache=True, parallel=True)
def csr_sort_dedupe(ptr, col, val):
    """Sort each row by column and drop repeats (equal values: every list prices a pair by the
    same expression), then close the gaps in place. Returns the new row pointers; the caller
    shrinks col / val to ``indptr[-1]``."""
    n_a = ptr.size - 1
    cnt = np.empty(n_a, np.int64)
    for i in prange(n_a):
        a = ptr[i]
        b = ptr[i + 1]
        o = np.argsort(col[a:b])
        cs = col[a:b][o]
        vs = val[a:b][o]
        m = 0
        for t in range(b - a):
            if t == 0 or cs[t] != cs[t - 1]:
                col[a + m] = cs[t]
                val[a + m] = vs[t]
                m += 1
        cnt[i] = m
    indptr = np.zeros(n_a + 1, np.int64)
    for i in range(n_a):
        indptr[i + 1] = indptr[i] + cnt[i]
    for i in range(n_a):  # moves left only (indptr[i] <= ptr[i]): in place, in row order
        a = ptr[i]
        o = indptr[i]
        if o != a:
            for t in range(cnt[i]):
                col[o + t] = col[a + t]
                val[o + t] = val[a + t]
    return indptr


@njit(cache=True, parallel=True)
def csr_merge_plan(indptr, indices, nrows, ncols):
    """For csr_merge_inplace: which new edges (sorted by (row, col), no repeats) are not yet in
    the graph, their row pointers, and the merged graph's row pointers."""
    n = indptr.size - 1
    m = nrows.size
    keep = np.zeros(m, np.bool_)
    cnt = np.zeros(n, np.int64)
    nptr = np.zeros(n + 1, np.int64)
    for e in range(m):
        nptr[nrows[e] + 1] += 1
    for i in range(n):
        nptr[i + 1] += nptr[i]
    for i in prange(n):
        c = 0
        for e in range(nptr[i], nptr[i + 1]):
            if not _has(indices, indptr[i], indptr[i + 1], ncols[e]):
                keep[e] = True
                c += 1
        cnt[i] = c
    out_ptr = np.zeros(n + 1, np.int64)
    for i in range(n):
        out_ptr[i + 1] = out_ptr[i] + (indptr[i + 1] - indptr[i]) + cnt[i]
    return keep, nptr, out_ptr


@njit(cache=True)
def csr_merge_inplace(indptr, indices, cost, exact, out_ptr, nptr, keep, ncols, nvals, nexact):
    """Merge the kept new edges into a graph whose arrays were already grown to ``out_ptr[-1]``.
    Rows from the last, each from its end: out_ptr[i] >= indptr[i] and the write position
    never passes the next unread old entry, so nothing unread is overwritten."""
    n = indptr.size - 1
    for i in range(n - 1, -1, -1):
        a = indptr[i + 1] - 1
        a0 = indptr[i]
        e = nptr[i + 1] - 1
        e0 = nptr[i]
        o = out_ptr[i + 1] - 1
        if o == a:  # nothing new in this row and no shift
            continue
        while a >= a0 or e >= e0:
            if e >= e0 and not keep[e]:
                e -= 1
                continue
            if e < e0 or (a >= a0 and indices[a] > ncols[e]):
                indices[o] = indices[a]
                cost[o] = cost[a]
                exact[o] = exact[a]
                a -= 1
            else:
                indices[o] = ncols[e]
                cost[o] = nvals[e]
                exact[o] = nexact
                e -= 1
            o -= 1


@njit(cache=True, parallel=True)
def jitter_csr(indptr, indices, cost, eta_x, eta_y, n_b, frac):
    """jitter_down over a whole CSR graph (no edge-sized row array)."""
    for i in prange(indptr.size - 1):
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            if j >= n_b:
                continue
            cost[e] -= frac * (eta_x[i] + eta_y[j]) * _hash01(i, j)


@njit(cache=True, parallel=True)
def jitter_down(rows, cols, vals, eta_x, eta_y, n_b, frac):
    """vals[e] -= frac * (eta_x_i + eta_y_j) * h(i, j), h a fixed hash in [0, 1), for real
    columns. A bfloat16 product rounds dot products to 8 bits, so many approximate costs tie
    exactly and Jonker-Volgenant row reduction stalls on the ties; a deterministic shift
    inside the error band breaks them. Shifting DOWN keeps every ``cost - eta`` a proven lower
    bound (approximate costs are never used as upper bounds)."""
    for e in prange(rows.size):
        j = cols[e]
        if j >= n_b:
            continue
        i = rows[e]
        vals[e] -= frac * (eta_x[i] + eta_y[j]) * _hash01(i, j)


@njit(cache=True, inline="always")
def _hash01(i, j):
    """A fixed hash of the pair (i, j) in [0, 1)."""
    h = (np.uint64(i) * np.uint64(0x9E3779B97F4A7C15)) ^ (np.uint64(j) * np.uint64(0xC2B2AE3D27D4EB4F))
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return np.float64(h >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def row_reduction(indptr, indices, cost, v, col4row, row4col, free, max_steps, n_passes=2):
    """Jonker-Volgenant augmenting row reduction (an auction with zero increment, Gauss-Seidel)
    on the free rows ``free``: a free row takes its best column j1 and lowers v[j1] until its
    second best is as good; the displaced row is served next. Lowering v only makes a column
    less attractive, so every assigned row keeps its cheapest column (complementary slackness
    holds with u_i = c_ij - v_j). Stops after ``max_steps`` moves (price wars on near-ties).
    Returns the rows left free (the caller runs shortest augmenting paths for them)."""
    buf = free.copy()
    n_free = buf.size
    steps = 0
    for _ in range(n_passes):
        k = 0
        new_free = 0
        while k < n_free:
            i = buf[k]
            k += 1
            steps += 1
            if steps > max_steps:
                buf[new_free] = i
                new_free += 1
                continue
            u1 = np.inf
            u2 = np.inf
            j1 = -1
            j2 = -1
            for p in range(indptr[i], indptr[i + 1]):
                j = indices[p]
                u1, j1, u2, j2 = _two_best(cost[p] - v[j], j, u1, j1, u2, j2)
            if j1 < 0:
                buf[new_free] = i
                new_free += 1
                continue
            i0 = row4col[j1]
            lowers = False
            if j2 >= 0 and u1 < u2:
                v[j1] -= u2 - u1
                lowers = True
            elif i0 >= 0:
                if j2 < 0:
                    buf[new_free] = i
                    new_free += 1
                    continue
                j1 = j2
                i0 = row4col[j2]
            if i0 >= 0:
                col4row[i0] = -1
            col4row[i] = j1
            row4col[j1] = i
            if i0 >= 0:
                if lowers:
                    k -= 1
                    buf[k] = i0
                else:
                    buf[new_free] = i0
                    new_free += 1
        n_free = new_free
    return buf[:n_free].copy()


@njit(cache=True, parallel=True)
def price_rows(G, rows, cols, kk, nx, ny, eta_y, v, indptr, indices, n_b, new_cols, new_vals, n_new, r_out,
               rho_out, tau_out):
    """Pricing of recomputed rows (``G[t, q] = X[rows[t]] . Y[cols[q]]`` in float32; ``cols`` all
    columns or the suspects): among the row's non-candidate columns of ``cols``, the ``kk[t]``
    of smallest proven-lower reduced value ``C - eta_y - v`` become new candidates
    (``new_cols/new_vals[t, :n_new[t]]``, float64 cost from the float32 product); ``tau_out`` =
    the smallest such value left out, ``r_out`` / ``rho_out`` = min cost / max dot over what
    stays non-candidate among ``cols`` (inf / -inf if nothing)."""
    m = rows.size
    nc = cols.size
    for t in prange(m):
        i = rows[t]
        mark = _mark_candidates(indptr, indices, i, n_b)
        cap = kk[t] + 1
        hv = np.empty(cap)
        hi = np.empty(cap, np.int64)
        size = 0
        a2 = nx[i]
        Gt = G[t]
        th = -np.inf
        for q in range(nc):
            j = cols[q]
            if mark[j]:
                continue
            key = -(a2 + ny[j] - 2.0 * np.float64(Gt[q]) - eta_y[j] - v[j])
            if key > th:
                size = _offer(hv, hi, size, cap, key, q)
                if size == cap:
                    th = hv[0]
        if size == cap:  # the root is the smallest value left out
            tau_out[t] = -hv[0]
            first = 1
        else:  # every non-candidate becomes a candidate
            tau_out[t] = np.inf
            first = 0
        for q in range(first, size):
            c = hi[q]
            j = cols[c]
            new_cols[t, q - first] = j
            new_vals[t, q - first] = a2 + ny[j] - 2.0 * np.float64(Gt[c])
            mark[j] = True
        n_new[t] = size - first
        rmin = np.inf
        gmax = -np.inf
        for q in range(nc):
            j = cols[q]
            if mark[j]:
                continue
            g = np.float64(Gt[q])
            c2 = a2 + ny[j] - 2.0 * g
            if c2 < rmin:
                rmin = c2
            if g > gmax:
                gmax = g
        r_out[t] = rmin
        rho_out[t] = gmax


@njit(cache=True, parallel=True)
def row_best_two(indptr, indices, cost, n_b):
    """Per CSR row: positions of the cheapest and second cheapest real (< n_b) edge, -1 if none."""
    n = indptr.size - 1
    p1 = np.full(n, -1, np.int64)
    p2 = np.full(n, -1, np.int64)
    for i in prange(n):
        b1 = np.inf
        b2 = np.inf
        for p in range(indptr[i], indptr[i + 1]):
            if indices[p] >= n_b:
                continue
            c = cost[p]
            if p1[i] < 0 or c < b1:
                p2[i] = p1[i]
                b2 = b1
                p1[i] = p
                b1 = c
            elif p2[i] < 0 or c < b2:
                p2[i] = p
                b2 = c
    return p1, p2


@njit(cache=True, parallel=True)
def row_lower_min(indptr, indices, cost, exact, eta_x, eta_y, v, n_b):
    """Per CSR row: min over the row's edges of the proven lower reduced value
    ``cost - v_j`` (minus ``eta_x_i + eta_y_j`` where the cost is approximate); inf for an
    empty row. No edge-sized temporaries (the candidate graph is the largest thing held)."""
    n = indptr.size - 1
    out = np.full(n, np.inf)
    for i in prange(n):
        m = np.inf
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            val = cost[p] - v[j]
            if not exact[p] and j < n_b:
                val -= eta_x[i] + eta_y[j]
            if val < m:
                m = val
        out[i] = m
    return out


@njit(cache=True, parallel=True)
def matched_pos(indptr, indices, col4row):
    """Per row: the edge position of its matched column (-1 if none)."""
    n = indptr.size - 1
    out = np.full(n, -1, np.int64)
    for i in prange(n):
        c = col4row[i]
        for p in range(indptr[i], indptr[i + 1]):
            if indices[p] == c:
                out[i] = p
                break
    return out


@njit(cache=True)
def candidate_check(indptr, indices, cost, exact, eta_x, eta_y, u, v, col4row, n_b, eps):
    """Candidate edges the certificate cannot clear yet: a matched edge with a float32 cost, or
    a reduced cost whose proven lower value (float32 cost minus its error bound eta) is below
    -eps. Returns (need, near): their positions, and those plus the non-exact edges within 4x
    the error bound (made exact together, so the next duals rarely flag new ones)."""
    n = indptr.size - 1
    need = np.empty(cost.size, np.int64)
    near = np.empty(cost.size, np.int64)
    nn = 0
    nr = 0
    for i in range(n):
        ci = col4row[i]
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            red = cost[p] - u[i] - v[j]
            sl = 0.0
            if not exact[p] and j < n_b:
                sl = eta_x[i] + eta_y[j]
            bad = (not exact[p] and j == ci) or red - sl < -eps
            if bad:
                need[nn] = p
                nn += 1
            if bad or (not exact[p] and red - 4.0 * sl < -eps):
                near[nr] = p
                nr += 1
    return need[:nn].copy(), near[:nr].copy()
