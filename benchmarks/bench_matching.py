"""Our exact assignment against the strongest peers, in one run, each solver in its own process.

    nice .venv/bin/python benchmarks/bench_matching.py [--sizes 8192 16384] [--families clustered
        unclustered gemma] [--scipy-max 8192] [--scipy-timeout 600] [--partial-65k] [--first-call]

Families (d_in 2304, Gemma-shaped: anisotropic spectrum, per-feature θ and norm spread, 30% fresh
features; ``core/synthetic_hard.py:gemma_like_pair``):

- ``clustered``: feature splitting, 60% of the features in groups of 2-8 near-duplicates;
- ``unclustered``: no near-duplicate groups;
- ``gemma``: the project's earlier benchmark pair (30% in groups of 2-4).

Solvers, each in a fresh subprocess that loads the folded encoder+decoder feature matrices
(float32) from disk; the peak is that process's VmHWM, "extra" the peak minus its RSS after
loading the inputs:

- ``scipy``: float64 cost matrix + ``scipy.optimize.linear_sum_assignment`` (only up to
  ``--scipy-max``: projected far past the time cap above; killed after ``--scipy-timeout``);
- ``lapjvs32``: blocked float32 GEMM into one preallocated matrix + ``lapx`` ``lapjvs`` (float32);
- ``lapjv64``: the same float32 GEMM cast to float64 + ``lapx`` ``lapjv``;
- ``match()``: what a user calls, ``saematch_nb.match(sae_a, sae_b)`` on the two SAEs (folding,
  the solve and the criterion included), its ratio to the best peer printed too (issue #18's
  target: at most 1);
- ``ours``: ``saematch_nb.core.lap.solve`` with ``solver="auto"`` (the dense JV solver where its
  matrix fits the 1.5 GiB budget, else the certified sparse solver), after a warm-up call on a
  64 x 64 problem (numba kernels loaded from their cache; the first-call cost is measured
  separately with ``--first-call``).

Each optimum is re-priced exactly (float64 sums of float32 squared differences) in the parent;
the table gives time, peak, extra peak, relative difference of the exact total to ours, the
share of rows with the same partner as ours, ours' certified gap, and ours / best peer.

``--partial-65k``: ours in the partial mode (``match(allow_unmatched=True)``'s problem: part-
normalised directions, no-partner cost 2 x the calibrated threshold) on a 65536 clustered pair.
``--first-call``: a fresh process solving a 2048 clustered pair twice, with the numba cache as
installed, with an empty cache (``NUMBA_CACHE_DIR`` set for that child only), and with an empty
cache filled by ``python -m saematch_nb warmup`` (the install step) in a process before it.

``--gpu`` (with ``--device cuda``): the GPU rows, within ``--budget`` seconds (rows that would
start past it are listed as skipped): clustered pairs at ``--gpu-n`` bijective and partial and
at ``--gpu-partial-n`` partial; per pair ours as a user calls it (``match(..., device=...)``,
the criterion included; its ``partner`` is compared) and the bare solve (``solve(X, Y,
device=...)``), and for the bijective pair the peer a GPU user would write: float32 GEMM on the
GPU into one host matrix + ``lapx.lapjvs`` (when lapx is importable). One table at the end.
benchmarks/gpu_check.sh runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILIES = {
    "clustered": dict(dups=0.6, group_size=(2, 8)),
    "unclustered": dict(dups=0.0),
    "gemma": dict(dups=0.3, group_size=(2, 4)),
}
PEERS = ("scipy", "lapjvs32", "lapjv64")
CHILDREN = ("scipy", "lapjvs32", "lapjv64", "ours", "ours_partial", "sparse", "sparse_partial",
            "match", "match_partial", "gemm_lapjvs")


def _status(key: str) -> int:
    """VmRSS of this process (Linux; 0 elsewhere). Peaks: core/_memory.py's peak_rss_bytes (VmHWM,
    not ru_maxrss: Linux folds the parent's high-water mark into a spawned child's at exec)."""
    if key == "VmHWM":
        from saematch_nb.core._memory import peak_rss_bytes
        return peak_rss_bytes() or 0
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _load(folder):
    import torch
    return (torch.from_numpy(np.load(Path(folder) / "X.npy")),
            torch.from_numpy(np.load(Path(folder) / "Y.npy")))


def _gemm32(X, Y):
    """C = |x|^2 + |y|^2 - 2 X Y^T, float32, blocked straight into one preallocated matrix."""
    import torch
    n_a, n_b = X.shape[0], Y.shape[0]
    C = np.empty((n_a, n_b), np.float32)
    Ct = torch.from_numpy(C)
    nx, ny = (X * X).sum(1), (Y * Y).sum(1)
    br = max(64, (1 << 26) // n_b)
    with torch.no_grad():
        for a in range(0, n_a, br):
            b = min(a + br, n_a)
            blk = Ct[a:b]
            torch.matmul(X[a:b], Y.T, out=blk)
            blk.mul_(-2.0).add_(ny[None, :]).add_(nx[a:b, None])
    return C


def child(kind: str, folder: str, out: str, device: str | None = None) -> None:
    import torch
    X, Y = _load(folder)
    rss0 = _status("VmRSS")
    res: dict = {}
    cuda = device is not None and torch.device(device).type == "cuda"
    if kind in ("match", "match_partial"):
        import pickle
        from saematch_nb.core.match import match
        from saematch_nb.core.synthetic import planted_pair
        a, b, _ = planted_pair(96, 16, seed=1)
        match(a, b, device=device, allow_unmatched=kind == "match_partial")  # kernels loaded, CUDA context up
        from saematch_nb.core.lap import solve
        g = torch.Generator().manual_seed(0)
        for which in ("jv", "sparse"):  # the solvers' numba kernels from their cache, as after a first call
            solve(torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g), solver=which, device=device)
        with open(Path(folder) / "saes.pkl", "rb") as fh:
            sa, sb = pickle.load(fh)
        _sync(cuda)
        t0 = time.perf_counter()
        lm = match(sa, sb, device=device, allow_unmatched=kind == "match_partial")
        _sync(cuda)
        res["total_s"] = time.perf_counter() - t0
        col = np.asarray(lm.partner, np.int64)
        st = {k: v for k, v in lm.stats.items() if isinstance(v, (int, float, str, bool, dict))}
        res.update(gap=lm.stats.get("gap"), via=lm.stats.get("solver"), stats=st, n_unmatched=int((col < 0).sum()),
                   n_matched=int(lm.matched.sum()))
    elif kind == "gemm_lapjvs":
        import lap  # lapx
        dev = torch.device(device or "cpu")
        g = torch.randn(256, 256, device=dev)
        (g @ g).sum().item()  # CUDA context and cuBLAS up before the clock starts
        t0 = time.perf_counter()
        Xd, Yd = X.to(dev), Y.to(dev)
        n_a, n_b = X.shape[0], Y.shape[0]
        C = np.empty((n_a, n_b), np.float32)
        nx, ny = (Xd * Xd).sum(1), (Yd * Yd).sum(1)
        br = max(64, (1 << 26) // n_b)
        with torch.no_grad():
            for a in range(0, n_a, br):
                b = min(a + br, n_a)
                blk = torch.addmm(nx[a:b, None] + ny[None, :], Xd[a:b], Yd.T, alpha=-2.0)
                C[a:b] = blk.cpu().numpy()
        t1 = time.perf_counter()
        _, col, _ = lap.lapjvs(C, jvx_like=False, prefer_float32=True)
        t2 = time.perf_counter()
        col = np.asarray(col, np.int64)
        res.update(gemm_s=t1 - t0, lap_s=t2 - t1, total_s=t2 - t0)
    elif kind == "scipy":
        from scipy.optimize import linear_sum_assignment
        from saematch_nb.core.cost import dense_cost
        t0 = time.perf_counter()
        C = dense_cost(X, Y)
        t1 = time.perf_counter()
        r, c = linear_sum_assignment(C)
        t2 = time.perf_counter()
        col = np.full(X.shape[0], -1, np.int64)
        col[r] = c
        res.update(gemm_s=t1 - t0, lap_s=t2 - t1, total_s=t2 - t0)
    elif kind in ("lapjvs32", "lapjv64"):
        import lap
        t0 = time.perf_counter()
        C = _gemm32(X, Y)
        if kind == "lapjv64":
            C = C.astype(np.float64)
        t1 = time.perf_counter()
        if kind == "lapjvs32":
            _, col, _ = lap.lapjvs(C, jvx_like=False, prefer_float32=True)
        else:
            _, col, _ = lap.lapjv(C, extend_cost=C.shape[0] != C.shape[1])
        t2 = time.perf_counter()
        col = np.asarray(col, np.int64)
        res.update(gemm_s=t1 - t0, lap_s=t2 - t1, total_s=t2 - t0)
    elif kind in ("ours", "ours_partial", "sparse", "sparse_partial"):
        from saematch_nb.core.lap import solve
        g = torch.Generator().manual_seed(0)
        # numba cache load (and the CUDA context on a GPU)
        solve(torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g), solver="jv", device=device)
        solve(torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g), solver="sparse", device=device)
        w = np.load(Path(folder) / "w.npy") if kind.endswith("_partial") else None
        _sync(cuda)
        t0 = time.perf_counter()
        r = solve(X, Y, unmatched_cost=w, solver="sparse" if kind.startswith("sparse") else "auto", device=device)
        _sync(cuda)
        res["total_s"] = time.perf_counter() - t0
        col = r.col
        st = {k: v for k, v in r.stats.items() if k not in ("u", "v")}
        res.update(gap=r.gap, via=st.get("solver"), stats=st, n_unmatched=int((col < 0).sum()))
    else:
        raise SystemExit(f"unknown child {kind}")
    res.update(peak=_status("VmHWM"), rss_inputs=rss0, threads=torch.get_num_threads())
    if cuda:
        res["gpu_peak"] = int(torch.cuda.max_memory_allocated(torch.device(device)))
    np.save(Path(out).with_suffix(".col.npy"), col)
    json.dump(res, open(out, "w"), default=float)


def _sync(cuda: bool) -> None:
    if cuda:
        import torch
        torch.cuda.synchronize()


def child_first_call(folder: str, out: str) -> None:
    """Fresh process: import, first solve (numba kernels loaded or compiled), second solve."""
    t0 = time.perf_counter()
    import torch  # noqa: F401
    from saematch_nb.core.lap import solve
    t_imp = time.perf_counter() - t0
    X, Y = _load(folder)
    times = {}
    for solver in ("jv", "sparse"):
        t = time.perf_counter()
        solve(X, Y, solver=solver)
        first = time.perf_counter() - t
        t = time.perf_counter()
        solve(X, Y, solver=solver)
        times[solver] = {"first_s": first, "warm_s": time.perf_counter() - t}
    json.dump({"import_s": t_imp, **times}, open(out, "w"))


def _run(args, timeout=None, env=None):
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, __file__, *args], timeout=timeout, capture_output=True, text=True,
                           env=env)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed:\n{p.stderr[-3000:]}")
    return p, time.perf_counter() - t0


def _exact_total(X, Y, col, w=None):
    from saematch_nb.core.lap._numba import exact_costs
    has = col >= 0
    t = float(exact_costs(X, Y, np.flatnonzero(has).astype(np.int64), col[has].astype(np.int64)).sum())
    return t + (float(w[~has].sum()) if w is not None else 0.0)


def make_pair(family: str, n: int, seed: int, tmp: Path, keep_saes: bool = False):
    from saematch_nb.core.cost import feature_matrix
    from saematch_nb.core.fold import fold
    from saematch_nb.core.synthetic_hard import gemma_like_pair
    t0 = time.perf_counter()
    sa, sb, truth = gemma_like_pair(n, 2304, seed=seed, **FAMILIES[family])
    if keep_saes:  # the match() child loads the SAEs themselves: it times what a user calls
        import pickle
        with open(tmp / "saes.pkl", "wb") as fh:
            pickle.dump((sa, sb), fh, protocol=pickle.HIGHEST_PROTOCOL)
    X = np.ascontiguousarray(feature_matrix(fold(sa)).numpy())
    Y = np.ascontiguousarray(feature_matrix(fold(sb)).numpy())
    del sa, sb
    np.save(tmp / "X.npy", X)
    np.save(tmp / "Y.npy", Y)
    print(f"\n## {family}, n = {n} (D = {X.shape[1]}; generated in {time.perf_counter() - t0:.0f} s)", flush=True)
    return X, Y, truth


def bench(family: str, n: int, a) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench_{family}_{n}_"))
    X, Y, truth = make_pair(family, n, a.seed, tmp, keep_saes=True)
    rows = []
    for kind in ("ours", "match", *PEERS):
        row = {"family": family, "n": n, "solver": kind}
        if kind == "scipy" and n > a.scipy_max:
            row["skipped"] = (f"n > {a.scipy_max}: projected past the {a.scipy_timeout:.0f} s cap "
                              "(its dense LSA grows about n^3: 8x the 8k time at 16k)")
            print(f"{kind}: skipped ({row['skipped']})", flush=True)
            rows.append(row)
            continue
        out = tmp / f"{kind}.json"
        p, wall = _run([kind, str(tmp), str(out)], timeout=a.scipy_timeout if kind == "scipy" else None)
        if p is None:
            row["skipped"] = f"timed out after {wall:.0f} s"
            print(f"{kind}: {row['skipped']}", flush=True)
            rows.append(row)
            continue
        r = json.load(open(out))
        col = np.load(out.with_suffix(".col.npy"))
        row.update(r)
        row["exact_total"] = _exact_total(X, Y, col)
        row["col"] = col
        alive = truth >= 0
        row["recovery"] = float((col[alive] == truth[alive]).mean())
        if kind == "match":
            row["solver"] = "match()"
        print(f"{kind}: {r['total_s']:.1f} s, peak {r['peak'] / 2**30:.2f} GB "
              f"(+{(r['peak'] - r['rss_inputs']) / 2**30:.2f} GB), total {row['exact_total']!r}"
              + (f", gap {r['gap']}, via {r['via']}" if kind == "ours" else ""), flush=True)
        if kind == "ours":
            print(f"  ours phases: {json.dumps(r['stats'].get('phase_seconds'), default=float)}", flush=True)
        rows.append(row)
    ours = rows[0]
    for row in rows[1:]:
        if "col" in row:
            row["rel_diff"] = (row["exact_total"] - ours["exact_total"]) / abs(ours["exact_total"])
            row["same_rows"] = float((row["col"] == ours["col"]).mean())
    peers = [r for r in rows if r["solver"] in PEERS and "total_s" in r]
    if peers:
        best = min(peers, key=lambda r: r["total_s"])
        for r in rows[:2]:  # the bare solve and match() (criterion included), against the best peer
            if "total_s" in r:
                r["ratio"] = r["total_s"] / best["total_s"]
                r["best_peer"] = best["solver"]
    for r in rows:
        r.pop("col", None)
    return rows


def _prepare_partial(tmp: Path, X, Y, device=None):
    """The partial mode's problem as match(allow_unmatched=True) builds it: part-normalised
    directions and a no-partner cost of 2 x the calibrated threshold; saved for a child."""
    import torch
    from saematch_nb.core import criterion as crit
    t0 = time.perf_counter()
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    parts = crit.part_slices("encoder+decoder", X.shape[1] // 2)
    cal = crit.calibrate(Xt, Yt, parts=parts, device=device)
    Xd = crit.directions(Xt, parts).numpy()
    Yd = crit.directions(Yt, parts).numpy()
    w = np.full(X.shape[0], 2.0 * cal.threshold)
    np.save(tmp / "X.npy", Xd)
    np.save(tmp / "Y.npy", Yd)
    np.save(tmp / "w.npy", w)
    print(f"partial problem prepared in {time.perf_counter() - t0:.0f} s (threshold {cal.threshold:.4f})", flush=True)
    return Xd, Yd, w


def _run_ours(kind, tmp, X, Y, w, truth):
    out = tmp / f"{kind}.json"
    _run([kind, str(tmp), str(out)])
    r = json.load(open(out))
    col = np.load(out.with_suffix(".col.npy"))
    r["exact_total"] = _exact_total(X, Y, col, w)
    alive = truth >= 0
    r["recovery"] = float((col[alive] == truth[alive]).mean())
    st = r["stats"]
    print(f"{kind}: {r['total_s']:.1f} s, peak {r['peak'] / 2**30:.2f} GB "
          f"(+{(r['peak'] - r['rss_inputs']) / 2**30:.2f} GB), gap {r['gap']}, via {r['via']}, "
          f"{r['n_unmatched']} rows without partner, total {r['exact_total']!r}", flush=True)
    print(f"  phases: {json.dumps(st.get('phase_seconds'), default=float)}; rounds {st.get('rounds')}; "
          f"edges {st.get('candidate_edges_first_pass')} -> {st.get('candidate_edges')}", flush=True)
    return r


def bench_partial(n: int, a) -> dict:
    """Ours in the partial mode on a clustered pair, prepared here so that the child times the solve only."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bench_partial_{n}_"))
    X, Y, truth = make_pair("clustered", n, a.seed, tmp)
    X, Y, w = _prepare_partial(tmp, X, Y)
    r = _run_ours("ours_partial", tmp, X, Y, w, truth)
    return {"family": "clustered (partial)", "n": n, "solver": "ours", **r}


def _fit(ns, ys):
    """Non-negative least squares of y = a n^2 + b n (relative residuals): the blocked product and
    the pricing of failed rows read every pair (n^2 D flops), lists and graph work are per row."""
    from scipy.optimize import nnls
    ns, ys = np.asarray(ns, float), np.asarray(ys, float)
    A = np.stack([ns ** 2, ns], 1) / ys[:, None]
    (a2, a1), _ = nnls(A, np.ones_like(ys))
    return lambda n: a2 * n ** 2 + a1 * n, (a2, a1)


def scaling(a) -> list[dict]:
    """The sparse solver (forced) on the clustered family at each size, bijective and partial;
    then a fit of time (a n^2 + b n) and of extra memory (c1 n + c2 n k_dot(n)) on all sizes but the largest,
    checked against the largest, and refitted on all of them to project ``--project-n``."""
    rows = []
    for n in a.scaling:
        tmp = Path(tempfile.mkdtemp(prefix=f"bench_scaling_{n}_"))
        X, Y, truth = make_pair("clustered", n, a.seed, tmp)
        r = _run_ours("sparse", tmp, X, Y, None, truth)
        rows.append({"family": "clustered", "mode": "bijective", "n": n, "solver": "sparse", **r})
        X, Y, w = _prepare_partial(tmp, X, Y)
        r = _run_ours("sparse_partial", tmp, X, Y, w, truth)
        rows.append({"family": "clustered", "mode": "partial", "n": n, "solver": "sparse", **r})
        del X, Y
        for f in tmp.glob("*.npy"):
            f.unlink()
    return rows + report_scaling(rows, a.project_n)


def _mem_fit(ns, gbs):
    """Least squares of extra GB = c1 n + c2 n k_dot(n): the lists and the candidate graph grow
    with the rows times their list length, and k_dot grows with n above 16k (auto_k_dot)."""
    from saematch_nb.core.lap.sparse import auto_k_dot
    ns = np.asarray(ns, float)
    A = np.stack([ns, ns * np.array([auto_k_dot(int(n)) for n in ns])], 1)
    (c1, c2), *_ = np.linalg.lstsq(A, np.asarray(gbs, float), rcond=None)
    return lambda n: c1 * n + c2 * n * auto_k_dot(int(n))


def report_scaling(rows: list[dict], N: int) -> list[dict]:
    """Tables, fits and the projection to n = N from scaling rows (also: --refit JSON)."""
    D = 4608
    rows = [r for r in rows if "stats" in r]
    gb = 2 ** 30
    print("\n| mode | n | seconds (pass + rest) | rounds | edges first / final | peak GB (inputs) | gap |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        st = r["stats"]
        ps = st["phase_seconds"]["pass"]
        print(f"| {r['mode']} | {r['n']} | {r['total_s']:.1f} ({ps:.1f} + {r['total_s'] - ps:.1f}) | {st['rounds']} | "
              f"{st['candidate_edges_first_pass'] / 1e6:.1f} M / {st['candidate_edges'] / 1e6:.1f} M | "
              f"{r['peak'] / gb:.2f} ({r['rss_inputs'] / gb:.2f}) | {r['gap']} |")
    out = []
    for mode in ("bijective", "partial"):
        rs = [r for r in rows if r["mode"] == mode]
        if len(rs) < 3:
            continue
        ns = np.array([r["n"] for r in rs], float)
        t = np.array([r["total_s"] for r in rs])
        extra = np.array([(r["peak"] - r["rss_inputs"]) / gb for r in rs])
        f, _ = _fit(ns[:-1], t[:-1])
        pred = f(ns[-1])
        err = pred / t[-1] - 1
        mem = _mem_fit(ns[:-1], extra[:-1])
        pred_x = mem(ns[-1])
        f2, (a2, a1) = _fit(ns, t)
        share = a2 * N ** 2 / f2(N)
        mem_all = _mem_fit(ns, extra)
        inputs = 2 * N * D * 4 / gb
        t_n = f2(N)
        x_n = mem_all(N)
        print(f"\n{mode}: time = a n^2 + b n fitted on n <= {int(ns[-2])} predicts {pred:.0f} s at n = {int(ns[-1])}, "
              f"measured {t[-1]:.0f} s ({err * 100:+.0f}%); extra memory (c1 n + c2 n k_dot(n)) predicts "
              f"{pred_x:.2f} GB, "
              f"measured {extra[-1]:.2f} GB", flush=True)
        print(f"{mode}: fitted on all sizes: projected {t_n:.0f} s ({t_n / 3600:.1f} h; the n^2 term "
              f"{share * 100:.0f}%) at n = {N} on this machine; memory: inputs {inputs:.1f} GB + extra "
              f"{x_n:.1f} GB = {inputs + x_n:.1f} GB", flush=True)
        out.append({"mode": mode, "projection_n": N, "holdout_pred_s": pred,
                    "holdout_err": err, "fit_n2_n": [a2, a1], "projected_s": t_n, "projected_inputs_gb": inputs,
                    "projected_extra_gb": x_n})
    return out


def first_call(a) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench_first_"))
    make_pair("clustered", 2048, a.seed, tmp)
    res = {}
    cases = (("cache as installed", None, False),
             ("empty cache (NUMBA_CACHE_DIR)", tmp / "nc", False),
             ("empty cache, then python -m saematch_nb warmup", tmp / "nc_warm", True))
    for label, cache, warm in cases:
        env = None if cache is None else {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
        warm_s = None
        if warm:  # the install step: its own process, before the user's first one
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "saematch_nb", "warmup"], env=env, capture_output=True,
                               text=True, cwd=ROOT)
            if p.returncode != 0:
                raise RuntimeError(f"warmup failed:\n{p.stderr[-3000:]}")
            warm_s = time.perf_counter() - t
        out = tmp / "first.json"
        _run(["_first", str(tmp), str(out)], env=env)
        res[label] = r = json.load(open(out))
        if warm_s is not None:
            r["warmup_process_s"] = warm_s
        print(f"first call, {label}: " + (f"warm-up process {warm_s:.1f} s; " if warm_s is not None else "")
              + f"import {r['import_s']:.2f} s; " + "; ".join(
            f"{s}: first {r[s]['first_s']:.2f} s, warm {r[s]['warm_s']:.2f} s, overhead "
            f"{r[s]['first_s'] - r[s]['warm_s']:.2f} s" for s in ("jv", "sparse")), flush=True)
    return res


def gpu_rows(a) -> list[dict]:
    """The GPU rows (--gpu): each pair generated here, each solver in its own child on
    ``a.device``, the whole within ``a.budget`` seconds."""
    import pickle
    import importlib.util
    import torch
    dev = torch.device(a.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {a.device}: torch {torch.__version__} sees no CUDA device")
        print(f"GPU: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, CUDA {torch.version.cuda}",
              flush=True)
    has_lapx = importlib.util.find_spec("lap") is not None
    deadline = time.perf_counter() + a.budget
    # ours first (bijective and partial at each size), the peer last: at 16k it takes minutes
    plan = [(n, "bijective", ["match", "ours"]) for n in a.gpu_n]
    plan += [(n, "partial", ["match_partial", "ours_partial"]) for n in a.gpu_n]
    plan += [(n, "partial", ["ours_partial", "match_partial"]) for n in a.gpu_partial_n]
    if has_lapx:
        plan += [(n, "bijective", ["gemm_lapjvs"]) for n in a.gpu_n]
    else:
        print("lapx not importable: no GEMM + lapjvs peer row", flush=True)
    rows: list[dict] = []
    made: dict = {}
    root = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    for n, mode, kinds in plan:
        if time.perf_counter() > deadline - 20:
            rows += [{"n": n, "mode": mode, "solver": k, "skipped": "budget spent"} for k in kinds]
            continue
        if n not in made:
            tmp = root / str(n)
            tmp.mkdir()
            from saematch_nb.core.synthetic_hard import gemma_like_pair
            sa, sb, truth = gemma_like_pair(n, 2304, seed=a.seed, **FAMILIES["clustered"])
            with open(tmp / "saes.pkl", "wb") as fh:  # match() children load the SAEs themselves
                pickle.dump((sa, sb), fh, protocol=pickle.HIGHEST_PROTOCOL)
            del sa, sb
            X, Y, _ = make_pair("clustered", n, a.seed, tmp)
            made[n] = {"bijective": (tmp, X, Y, None), "truth": truth}
        if mode not in made[n]:  # the partial problem, in its own folder (the peer reads the raw pair)
            tmp0, X, Y, _ = made[n]["bijective"]
            tmp = tmp0 / "partial"
            tmp.mkdir()
            (tmp / "saes.pkl").symlink_to(tmp0 / "saes.pkl")
            Xp, Yp, w = _prepare_partial(tmp, X, Y, device=a.device)
            made[n][mode] = (tmp, Xp, Yp, w)
        tmp, Xp, Yp, w = made[n][mode]
        truth = made[n]["truth"]
        for kind in kinds:
            left = deadline - time.perf_counter()
            row = {"n": n, "mode": mode, "solver": kind}
            rows.append(row)
            if left < 10:
                row["skipped"] = "budget spent"
                continue
            out = tmp / f"{kind}.json"
            try:
                p, wall = _run([kind, str(tmp), str(out), a.device], timeout=left)
            except RuntimeError as e:
                row["skipped"] = "failed"
                print(f"{n} {mode} {kind}: FAILED\n{e}", flush=True)
                continue
            if p is None:
                row["skipped"] = f"stopped after {wall:.0f} s (budget)"
                print(f"{n} {mode} {kind}: {row['skipped']}", flush=True)
                continue
            r = json.load(open(out))
            col = np.load(out.with_suffix(".col.npy"))
            row.update(r)
            row["exact_total"] = _exact_total(Xp, Yp, col, w)
            kept, fresh = truth >= 0, truth < 0
            row["recovery"] = float((col[kept] == truth[kept]).mean())
            row["fresh_partnered"] = float((col[fresh] >= 0).mean()) if fresh.any() else float("nan")
            print(f"{n} {mode} {kind}: {r['total_s']:.1f} s" + (f", gap {r.get('gap')}, via {r.get('via')}"
                  if "via" in r else f" (GEMM {r['gemm_s']:.1f} + LAP {r['lap_s']:.1f})")
                  + (f", GPU peak {r['gpu_peak'] / 2**30:.2f} GB" if "gpu_peak" in r else ""), flush=True)
            if "stats" in r:
                print(f"  phases: {json.dumps(r['stats'].get('phase_seconds'), default=float)}", flush=True)
        # the bare solve is the reference of each (n, mode)
        ref = next((r for r in rows if r["n"] == n and r["mode"] == mode and r["solver"].startswith("ours")
                    and "exact_total" in r), None)
        for r in rows:
            if ref is not None and r["n"] == n and r["mode"] == mode and "exact_total" in r:
                r["rel_diff"] = (r["exact_total"] - ref["exact_total"]) / abs(ref["exact_total"])
                if r is not ref and "gemm_s" in r:
                    ref["ratio"] = ref["total_s"] / r["total_s"]
    import shutil
    shutil.rmtree(root, ignore_errors=True)
    gpu_table(rows, a.device)
    return rows


def gpu_table(rows: list[dict], device: str) -> None:
    gb = 2 ** 30
    names = {"match": "ours: match()", "match_partial": "ours: match(allow_unmatched=True)",
             "ours": "ours: solve()", "ours_partial": "ours: solve(unmatched_cost=...)",
             "gemm_lapjvs": f"GEMM on {device} + lapx.lapjvs"}
    print(f"\n| n | mode | solver ({device}) | seconds | gap / via | GPU peak GB | host peak GB | "
          "exact total rel. diff to solve() | kept with true partner | fresh partnered |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = names.get(r["solver"], r["solver"])
        if "skipped" in r:
            print(f"| {r['n']} | {r['mode']} | {name} | skipped: {r['skipped']} | | | | | | |")
            continue
        sec = f"{r['total_s']:.1f}" + (f" ({r['gemm_s']:.1f} + {r['lap_s']:.1f})" if "gemm_s" in r else "")
        if "ratio" in r:
            sec += f"; {r['ratio']:.2f}x the peer"
        gv = f"{r.get('gap')} / {r.get('via')}" if "via" in r else "—"
        gpk = f"{r['gpu_peak'] / gb:.2f}" if "gpu_peak" in r else "—"
        rel = f"{r['rel_diff']:.1e}" if "rel_diff" in r else "—"
        print(f"| {r['n']} | {r['mode']} | {name} | {sec} | {gv} | {gpk} | {r['peak'] / gb:.2f} | {rel} | "
              f"{r['recovery'] * 100:.2f}% | {r['fresh_partnered'] * 100:.1f}% |")


def table(rows: list[dict]) -> None:
    gb = 2 ** 30
    print("\n| family | n | solver | seconds (GEMM + LAP) | peak GB (extra) | exact total rel. diff to ours | "
          "same partner as ours | ours/best peer |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['family']} | {r['n']} | {r['solver']} | skipped: {r['skipped']} | | | | |")
            continue
        sec = f"{r['total_s']:.1f}"
        if "gemm_s" in r:
            sec += f" ({r['gemm_s']:.1f} + {r['lap_s']:.1f})"
        elif "stats" in r:
            sec += f" [{r['via']}, gap {r['gap']}]"
        pk = f"{r['peak'] / gb:.2f} (+{(r['peak'] - r['rss_inputs']) / gb:.2f})"
        rel = f"{r['rel_diff']:.1e}" if "rel_diff" in r else "—"
        same = f"{r['same_rows'] * 100:.2f}%" if "same_rows" in r else "—"
        ratio = f"{r['ratio']:.2f} (vs {r['best_peer']})" if "ratio" in r else ""
        print(f"| {r['family']} | {r['n']} | {r['solver']} | {sec} | {pk} | {rel} | {same} | {ratio} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_first":
        return child_first_call(sys.argv[2], sys.argv[3])
    if len(sys.argv) > 1 and sys.argv[1] in CHILDREN:
        return child(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scipy-max", type=int, default=8192, help="largest n scipy runs at")
    ap.add_argument("--scipy-timeout", type=float, default=600.0)
    ap.add_argument("--partial-65k", action="store_true", help="also ours, partial mode, 65536 clustered")
    ap.add_argument("--partial-n", type=int, default=65536)
    ap.add_argument("--first-call", action="store_true", help="also first call vs warm in a fresh process")
    ap.add_argument("--scaling", type=int, nargs="+", default=None, metavar="N",
                    help="only the sparse solver (forced), clustered, bijective and partial, at these sizes, "
                         "with a time/memory fit checked on the largest and a projection to --project-n")
    ap.add_argument("--project-n", type=int, default=262144)
    ap.add_argument("--refit", default=None, metavar="JSON", help="the --scaling report again from its --json file")
    ap.add_argument("--json", default=None, help="write all rows here")
    ap.add_argument("--gpu", action="store_true", help="only the GPU rows (see above), on --device")
    ap.add_argument("--device", default="cuda", help="device of the --gpu rows (default cuda)")
    ap.add_argument("--gpu-n", type=int, nargs="*", default=[16384], help="--gpu: bijective and partial pairs")
    ap.add_argument("--gpu-partial-n", type=int, nargs="*", default=[65536], help="--gpu: partial-only pairs")
    ap.add_argument("--budget", type=float, default=420.0, help="--gpu: seconds for all rows")
    a = ap.parse_args()
    import torch
    flags = ""
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split(":")[1].split()
        flags = " ".join(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
    except (OSError, StopIteration):
        pass
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"CPU flags: {flags}; date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", flush=True)
    rows: list[dict] = []
    extra = {}
    if a.refit:
        report_scaling(json.load(open(a.refit))["rows"], a.project_n)
        return
    if a.scaling:
        rows = scaling(a)
        if a.json:
            json.dump({"rows": rows}, open(a.json, "w"), default=float, indent=1)
        return
    if a.gpu:
        rows = gpu_rows(a)
        if a.json:
            json.dump({"rows": rows}, open(a.json, "w"), default=float, indent=1)
        return
    if a.first_call:
        extra["first_call"] = first_call(a)
    for n in a.sizes:
        for fam in a.families:
            rows += bench(fam, n, a)
            table(rows)
    if a.partial_65k:
        rows.append(bench_partial(a.partial_n, a))
    table(rows)
    if a.json:
        json.dump({"rows": rows, **extra}, open(a.json, "w"), default=float, indent=1)


if __name__ == "__main__":
    main()
