"""A Gemma Scope 2-wide pair (262,144 x 262,144 features) matched and certified on one machine.

    nice .venv/bin/python benchmarks/bench_262k.py [--n 262144] [--d-in 2304] [--mode partial|bijective]
        [--seed 0] [--json out.json] [--keep DIR]

Gemma Scope 2's every-layer releases come at 16k and 262k features; matching a Gemma 3 at the
wide setting means 262k x 262k pairs, whose dense float32 cost alone would be 256 GiB (no peer
fits: scipy's LSA and lapx need the dense matrix; there is nothing to run beside ours). Steps,
each in its own process, so that the solve's peak (VmHWM) is its own:

1. **generate** a clustered Gemma-shaped pair streamed in row chunks, in float32, straight as the
   folded feature matrices ``[W_dec | W_enc^T]`` that ``match`` solves on (the recipe of
   ``core/synthetic_hard.gemma_like_pair``'s clustered family, whose all-at-once generator would
   need ~40 GB here: anisotropic directions (component k scaled by (k+1)^-0.5), lognormal
   decoder norms (encoder 1/g), 60% of the features in groups of 2-8 near-duplicates (relative
   spread 0.1), layer B = 70% of A's features permuted and perturbed (relative noise 0.1) + 30%
   fresh ones, also clustered). Partial mode: the problem ``match(allow_unmatched=True)`` builds,
   part-normalised directions and a no-partner cost of 2 x the calibrated threshold
   (``criterion.calibrate``).
2. **solve**: ``saematch_nb.core.lap.solve(X, Y[, unmatched_cost=w])`` with the defaults
   (``solver="auto"``: the certified sparse solver at this size; ``k_dot`` shortened to the memory
   at hand, ``stats["k_dot_memory_limited"]``), after a warm-up call on a tiny problem.
3. **check**: the exact total re-priced in float64 from the files (memory-mapped), the certified
   gap, the share of persisting features given their planted partner and of fresh ones given any.

The inputs alone are 2 x n x 2 d_in x 4 bytes (9.0 GiB at 262k, d_in 2304): the peak printed is
the solve process's whole high-water mark, inputs included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHUNK = 8192  # rows generated at a time (8192 x 4608 float32 = 151 MB per temporary)
DUPS, GROUP, SPREAD, FRESH, NOISE, DECAY, NORM_SPREAD = 0.6, (2, 8), 0.1, 0.3, 0.1, 0.5, 0.4


def _status(key: str) -> int:
    if key == "VmHWM":  # the package's one reading of the peak
        from saematch_nb.core._memory import peak_rss_bytes
        return peak_rss_bytes() or 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _groups(n: int, rng) -> np.ndarray:
    """centre[s] for slots 0..n-1: consecutive slots form groups of GROUP sizes over a DUPS share."""
    centre = np.arange(n)
    n_dup, s = int(round(DUPS * n)), 0
    while n_dup - s >= 2:
        g = int(min(n_dup - s, rng.integers(GROUP[0], GROUP[1] + 1)))
        centre[s:s + g] = s
        s += g
    return centre


def _base(slots: np.ndarray, d: int, seed: int, tag: int) -> np.ndarray:
    """Folded feature rows [dec | enc] of base features, one RNG per slot (any chunking gives the
    same rows): direction u (anisotropic), dec = g u, enc = (u + 0.3 noise / sqrt d) / g."""
    out = np.empty((slots.size, 2 * d), np.float32)
    scale = (np.arange(1, d + 1) ** -DECAY).astype(np.float32)
    for r, s in enumerate(slots):
        rng = np.random.default_rng([seed, tag, int(s)])
        u = rng.standard_normal(d, np.float32) * scale
        u /= np.linalg.norm(u)
        g = np.float32(rng.lognormal(0.0, NORM_SPREAD))
        out[r, :d] = u * g
        out[r, d:] = (u + 0.3 * rng.standard_normal(d, np.float32) / np.sqrt(d)) / g
    return out


def _perturb(rows: np.ndarray, rel: float, rng) -> np.ndarray:
    """Relative Gaussian noise on each half (decoder, encoder), as synthetic.perturb."""
    d = rows.shape[1] // 2
    out = rows.copy()
    for h in (slice(0, d), slice(d, 2 * d)):
        nrm = np.linalg.norm(rows[:, h], axis=1, keepdims=True)
        out[:, h] += rel * nrm * rng.standard_normal((rows.shape[0], d), np.float32) / np.sqrt(d)
    return out


def _layer(n: int, d: int, seed: int, tag: int, out: np.ndarray, where: np.ndarray, count: int) -> None:
    """Write ``count`` clustered features (slots 0..count-1 of a layer of n) to out[where[s]]."""
    rng = np.random.default_rng([seed, tag, 1])
    centre = _groups(n, rng)[:count]
    size = np.bincount(centre, minlength=n)
    for a in range(0, count, CHUNK):
        sl = np.arange(a, min(a + CHUNK, count))
        c = centre[sl]
        rows = _base(c, d, seed, tag)
        # every member of a group (its first too) is the group's base feature plus noise, as
        # synthetic_hard._split_groups makes them: members sit 2 x SPREAD^2 apart
        dup = size[c] > 1
        if dup.any():
            rows[dup] = _perturb(rows[dup], SPREAD, np.random.default_rng([seed, tag, 2, a]))
        out[where[sl]] = rows


def generate(n: int, d: int, seed: int, folder: Path, mode: str) -> None:
    t0 = time.perf_counter()
    rng = np.random.default_rng([seed, 0])
    # written straight into the .npy files (page cache, not this process's memory): with the
    # calibration's own copies, X and Y in memory would need ~20 GB at 262k
    X = np.lib.format.open_memmap(folder / "X.npy", mode="w+", dtype=np.float32, shape=(n, 2 * d))
    _layer(n, d, seed, 1, X, rng.permutation(n), n)
    n_fresh = int(round(FRESH * n))
    dying = np.zeros(n, bool)
    dying[rng.choice(n, n_fresh, replace=False)] = True
    perm = rng.permutation(n)
    truth = np.where(dying, -1, perm)
    Y = np.lib.format.open_memmap(folder / "Y.npy", mode="w+", dtype=np.float32, shape=(n, 2 * d))
    alive = np.flatnonzero(~dying)
    for a in range(0, alive.size, CHUNK):
        i = alive[a:a + CHUNK]
        Y[perm[i]] = _perturb(X[i], NOISE, np.random.default_rng([seed, 3, a]))
    _layer(n, d, seed, 4, Y, perm[dying], n_fresh)  # fresh features where the dying ones' partners would be
    print(f"generated n = {n}, D = {2 * d} in {time.perf_counter() - t0:.0f} s", flush=True)
    np.save(folder / "truth.npy", truth)
    if mode == "partial":
        import torch
        from saematch_nb.core import criterion as crit
        parts = crit.part_slices("encoder+decoder", d)
        for Z in (X, Y):  # part-normalised directions, in place (what match(allow_unmatched=True) solves on)
            for a in range(0, n, CHUNK):
                Z[a:a + CHUNK] = crit.directions(torch.from_numpy(Z[a:a + CHUNK]), parts).numpy()
    X.flush()
    Y.flush()
    if mode == "partial":
        # calibrate on read-only maps: it makes its own direction copies of X and Y (9 GiB at 262k)
        del X, Y
        X, Y = (np.load(folder / f, mmap_mode="r") for f in ("X.npy", "Y.npy"))
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch: the mapped arrays are read-only (never written)
            cal = crit.calibrate(torch.from_numpy(X), torch.from_numpy(Y), parts=parts)
        np.save(folder / "w.npy", np.full(n, 2.0 * cal.threshold))
        print(f"calibrated in {time.perf_counter() - t:.0f} s: threshold {cal.threshold:.4f}", flush=True)
    print(f"generate: peak {_status('VmHWM') / 2**30:.2f} GiB, {time.perf_counter() - t0:.0f} s", flush=True)


def solve_child(folder: Path, out: Path) -> None:
    import torch
    from saematch_nb.core.lap import solve
    g = torch.Generator().manual_seed(0)
    solve(torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g), solver="sparse", device="cpu")
    X = torch.from_numpy(np.load(folder / "X.npy"))
    Y = torch.from_numpy(np.load(folder / "Y.npy"))
    w = np.load(folder / "w.npy") if (folder / "w.npy").exists() else None
    rss0 = _status("VmRSS")
    t0 = time.perf_counter()
    r = solve(X, Y, unmatched_cost=w, device="cpu", progress=True)
    sec = time.perf_counter() - t0
    np.save(folder / "col.npy", r.col)
    st = {k: v for k, v in r.stats.items() if k not in ("u", "v")}
    json.dump({"total_s": sec, "gap": r.gap, "total": r.total, "stats": st, "peak": _status("VmHWM"),
               "rss_inputs": rss0, "threads": torch.get_num_threads()}, open(out, "w"), default=float)


def check(folder: Path) -> dict:
    from saematch_nb.core.lap._numba import exact_costs
    X = np.load(folder / "X.npy", mmap_mode="r")
    Y = np.load(folder / "Y.npy", mmap_mode="r")
    col, truth = np.load(folder / "col.npy"), np.load(folder / "truth.npy")
    w = np.load(folder / "w.npy") if (folder / "w.npy").exists() else None
    has = col >= 0
    rows = np.flatnonzero(has)
    tot = 0.0
    for a in range(0, rows.size, CHUNK):  # memory-mapped rows, a chunk at a time
        r = rows[a:a + CHUNK]
        idx = np.arange(r.size, dtype=np.int64)
        tot += float(exact_costs(np.ascontiguousarray(X[r]), np.ascontiguousarray(Y[col[r]]), idx, idx).sum())
    if w is not None:
        tot += float(w[~has].sum())
    alive = truth >= 0
    return {"exact_total": tot, "kept_with_true_partner": float((col[alive] == truth[alive]).mean()),
            "fresh_partnered": float((col[~alive] >= 0).mean()), "n_unmatched": int((~has).sum())}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_solve":
        return solve_child(Path(sys.argv[2]), Path(sys.argv[3]))
    if len(sys.argv) > 1 and sys.argv[1] == "_generate":
        return generate(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]), sys.argv[6])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=262144)
    ap.add_argument("--d-in", type=int, default=2304, help="Gemma 3 270m 640, 1b 1152, Gemma 2 2B 2304")
    ap.add_argument("--mode", choices=("partial", "bijective"), default="partial")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", default=None, help="folder for the pair (default: a temporary one, deleted)")
    a = ap.parse_args()
    folder = Path(a.keep or tempfile.mkdtemp(prefix=f"bench_262k_{a.n}_"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"n = {a.n}, d_in = {a.d_in}, {a.mode}", flush=True)
    py = [sys.executable, __file__]
    if not (folder / "X.npy").exists():
        subprocess.run(py + ["_generate", str(a.n), str(a.d_in), str(a.seed), str(folder), a.mode], check=True)
    out = folder / "solve.json"
    t0 = time.perf_counter()
    p = subprocess.run(py + ["_solve", str(folder), str(out)])
    if p.returncode != 0:
        raise SystemExit(f"the solve failed (rc {p.returncode}; -9 = killed, e.g. out of memory)")
    r = json.load(open(out))
    r.update(check(folder))
    st = r["stats"]
    gb = 2 ** 30
    print("\n| n | d_in | mode | seconds | phases (s) | rounds | k_dot (memory-limited) | edges first / final | "
          "peak GiB (inputs) | gap | exact total | kept with true partner | fresh partnered |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ph = ", ".join(f"{k} {v:.0f}" for k, v in st["phase_seconds"].items())
    print(f"| {a.n} | {a.d_in} | {a.mode} | {r['total_s']:.0f} | {ph} | {st.get('rounds')} | {st.get('k_dot')} "
          f"({st.get('k_dot_memory_limited')}) | {st.get('candidate_edges_first_pass', 0) / 1e6:.0f} M / "
          f"{st.get('candidate_edges', 0) / 1e6:.0f} M | {r['peak'] / gb:.2f} ({r['rss_inputs'] / gb:.2f}) | "
          f"{r['gap']} | "
          f"{r['exact_total']!r} (solver {r['total']!r}) | {100 * r['kept_with_true_partner']:.2f}% | "
          f"{100 * r['fresh_partnered']:.1f}% |", flush=True)
    print(f"solver {st.get('solver')}, precision {st.get('precision')}, "
          f"wall {time.perf_counter() - t0:.0f} s with loading", flush=True)
    if a.json:
        json.dump({"n": a.n, "d_in": a.d_in, "mode": a.mode, **r}, open(a.json, "w"), default=float, indent=1)
    if not a.keep:
        for f in folder.glob("*"):
            f.unlink()
        folder.rmdir()


if __name__ == "__main__":
    main()
