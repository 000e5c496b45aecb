"""This tree against a baseline commit, on what a user calls: ``saematch_nb.match(a, b)``.

    nice .venv/bin/python benchmarks/bench_solver_versions.py --baseline 1111bf7 --n 16384 --repeats 3
    nice .venv/bin/python benchmarks/bench_solver_versions.py --baseline 1111bf7 --n 65536 --partial --repeats 1

The baseline is checked out once with ``git worktree add --detach /tmp/base_REF REF`` (kept for
the next run; ``git worktree remove`` it when done). One planted pair
(``core/synthetic_hard.py:gemma_like_pair``, the ``--family`` of bench_matching.py, d_in 2304)
is generated here and saved; every run is a fresh subprocess that imports one tree
(``PYTHONPATH``), loads the pair, makes one tiny match (numba kernels loaded from the cache, as
after a first call) and times ``match(a, b, allow_unmatched=--partial)``. Each tree has its own
``NUMBA_CACHE_DIR`` (the two trees' kernels must not overwrite each other's cache entries),
filled by ``python -m saematch_nb warmup`` before any timing. Runs alternate base, new, base,
new, ... so that both see the same load; per-run seconds, the median ratio new / base, and
whether the results agree (same ``partner`` array, same total cost) are printed. At 16384 the
"auto" solver is the dense JV solver, at 65536 the sparse one (partial mode: ~150-350 s per run
on 2 cores, ~6 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {  # as bench_matching.py
    "clustered": dict(dups=0.6, group_size=(2, 8)),
    "unclustered": dict(dups=0.0),
    "gemma": dict(dups=0.3, group_size=(2, 4)),
}
_FIELDS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def baseline_tree(ref: str) -> tuple[Path, str]:
    sha = _git("rev-parse", "--short", f"{ref}^{{commit}}")
    path = Path(tempfile.gettempdir()) / f"base_{sha}"
    if not (path / "saematch_nb").is_dir():
        _git("worktree", "add", "--detach", str(path), sha)
    elif _git("rev-parse", "--short", "HEAD", cwd=path) != sha:
        raise SystemExit(f"{path} exists but is not at {sha}; remove it (git worktree remove {path})")
    return path, sha


def _env(tree: Path, cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), NUMBA_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    return env


def warm(tree: Path, cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "saematch_nb", "warmup"], env=_env(tree, cache),
                       cwd=tempfile.gettempdir(),
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"warmup of {tree} failed:\n{p.stderr[-3000:]}")
    print(f"warm-up {tree}: {p.stdout.strip()} ({time.perf_counter() - t0:.0f} s)", flush=True)


def make_pair(family: str, n: int, seed: int, folder: Path) -> None:
    """The pair as plain tensors (torch.save of a dict: readable by either tree's SAEWeights)."""
    import torch
    from saematch_nb.core.synthetic_hard import gemma_like_pair

    t0 = time.perf_counter()
    sa, sb, truth = gemma_like_pair(n, 2304, seed=seed, **FAMILIES[family])
    for name, s in (("a", sa), ("b", sb)):
        torch.save({f: getattr(s, f) for f in _FIELDS} | {"architecture": s.architecture}, folder / f"{name}.pt")
    np.save(folder / "truth.npy", truth)
    print(f"pair {family}, n = {n}: generated in {time.perf_counter() - t0:.0f} s", flush=True)


def child(folder: str, partial: bool, out: str) -> None:
    """One timed match in this process (the tree on PYTHONPATH)."""
    import torch
    import saematch_nb
    from saematch_nb.core.synthetic import planted_pair
    from saematch_nb.core.weights import SAEWeights

    a, b, _ = planted_pair(96, 16, seed=1)
    saematch_nb.match(a, b, allow_unmatched=partial)  # kernels loaded from the cache, as after a first call
    sa, sb = (SAEWeights(**torch.load(Path(folder) / f"{s}.pt")) for s in ("a", "b"))
    t0 = time.perf_counter()
    lm = saematch_nb.match(sa, sb, allow_unmatched=partial)
    sec = time.perf_counter() - t0
    np.save(Path(out).with_suffix(".partner.npy"), np.asarray(lm.partner, np.int64))
    st = lm.stats
    json.dump({"seconds": sec, "total_cost": float(st.get("total_cost", float("nan"))), "gap": st.get("gap"),
               "solver": st.get("solver"), "phases": st.get("phase_seconds"), "package": saematch_nb.__file__},
              open(out, "w"), default=float)


def run_one(tree: Path, cache: Path, folder: Path, partial: bool, tag: str) -> dict:
    out = folder / f"{tag}.json"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--child", str(folder), str(out)]
                       + (["--partial"] if partial else []),
                       env=_env(tree, cache), cwd=tempfile.gettempdir(), capture_output=True, text=True)
    if p.returncode != 0:  # -9: killed, usually by the kernel's OOM killer
        raise SystemExit(f"run {tag} failed (exit status {p.returncode}):\n{p.stderr[-3000:]}")
    r = json.load(open(out))
    if not r["package"].startswith(str(tree)):
        raise SystemExit(f"run {tag} imported {r['package']}, not the tree {tree}")
    r["partner"] = np.load(out.with_suffix(".partner.npy"))
    r["wall"] = time.perf_counter() - t0
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default=None, help="git ref of the baseline (e.g. 1111bf7)")
    ap.add_argument("--n", type=int, default=16384, help="features per SAE")
    ap.add_argument("--partial", action="store_true", help="match(allow_unmatched=True)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per tree")
    ap.add_argument("--family", default="clustered", choices=list(FAMILIES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-root", default=str(Path(tempfile.gettempdir()) / "bench_solver_versions_numba"),
                    help="per-tree NUMBA_CACHE_DIR go below this")
    ap.add_argument("--child", nargs=2, metavar=("FOLDER", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.partial, a.child[1])
        return
    if a.baseline is None:
        ap.error("--baseline REF is required")
    if a.repeats < 1:
        ap.error("--repeats must be >= 1")
    base, sha = baseline_tree(a.baseline)
    head = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    trees = {"base": (base, Path(a.cache_root) / f"base_{sha}"),
             "new": (ROOT, Path(a.cache_root) / f"new_{ROOT.name}")}
    print(f"base = {sha} ({base}), new = {ROOT} at {head}{' + uncommitted changes' if dirty else ''}", flush=True)
    for tree, cache in trees.values():
        warm(tree, cache)
    folder = Path(tempfile.mkdtemp(prefix=f"bench_versions_{a.n}_"))
    sys.path.insert(0, str(ROOT))
    make_pair(a.family, a.n, a.seed, folder)
    runs: dict[str, list[dict]] = {"base": [], "new": []}
    for k in range(a.repeats):
        for name in ("base", "new"):
            r = run_one(*trees[name], folder, a.partial, f"{name}{k}")
            runs[name].append(r)
            print(f"run {k + 1}/{a.repeats} {name}: {r['seconds']:.1f} s (process {r['wall']:.0f} s), solver "
                  f"{r['solver']}, total {r['total_cost']!r}, gap {r['gap']}", flush=True)
            if r.get("phases"):
                print("    solver phases (s): " + ", ".join(f"{k} {float(v):.1f}" for k, v in r["phases"].items()),
                      flush=True)
    shutil.rmtree(folder, ignore_errors=True)  # the pair: 2.4 GB at 65536
    ref = runs["base"][0]
    same_partner = all(np.array_equal(r["partner"], ref["partner"]) for rs in runs.values() for r in rs)
    same_total = all(r["total_cost"] == ref["total_cost"] for rs in runs.values() for r in rs)
    mb = statistics.median(r["seconds"] for r in runs["base"])
    mn = statistics.median(r["seconds"] for r in runs["new"])
    mode = "partial" if a.partial else "bijective"
    print("\n| tree | n | mode | runs (s) | median (s) |\n|---|---|---|---|---|")
    for name, label in (("base", sha), ("new", head + ("+" if dirty else ""))):
        secs = ", ".join(f"{r['seconds']:.1f}" for r in runs[name])
        med = statistics.median(r['seconds'] for r in runs[name])
        print(f"| {name} ({label}) | {a.n} | {mode} | {secs} | {med:.1f} |")
    print(f"\nmedian ratio new / base: {mn / mb:.3f}; same partner array in every run: {same_partner}; "
          f"same total cost: {same_total} ({ref['total_cost']!r})")
    if not (same_partner and same_total):
        sys.exit(1)


if __name__ == "__main__":
    main()
