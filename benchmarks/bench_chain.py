"""Peak memory and cache re-run time of match_chain, lazy (paths, pairwise loading) against the
baseline (every SAE loaded up front, then matched), each in a fresh process, in one run.

    .venv/bin/python benchmarks/bench_chain.py [--layers 10] [--n 2048] [--d-in 2304]

Prints the peak RSS of each mode (process high-water mark, ru_maxrss), the SAE bytes held at
once, and the time of a re-run answered from the disk cache against the first run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, without installing


def _rss(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (this benchmark needs Linux)")


def _child(mode: str, folder: str, matcher: str, cache_dir: str | None) -> None:
    import saematch_nb
    from saematch_nb.core import pair as pair_mod
    from saematch_nb.core.weights import as_weights

    pair_mod.MATCHER = matcher
    import tqdm.auto  # noqa: F401  imports before the first reading: measure the chain only

    pair_mod.matcher()
    paths = sorted(Path(folder).glob("layer_*.npz"), key=lambda p: int(p.stem.split("_")[1]))
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM (peak RSS) to the current RSS
        fh.write("5")
    rss0 = _rss("VmRSS")
    t0 = time.perf_counter()
    if mode == "single":  # reference: one pair alone, the least any chain can need
        pair_mod.matcher()(paths[0], paths[1])
        print(json.dumps({"mode": mode, "seconds": time.perf_counter() - t0, "rss_before": rss0,
                          "rss_peak": _rss("VmHWM")}))
        return
    if mode == "eager":  # baseline: the whole chain of weights in memory, then matched
        saes = [as_weights(p) for p in paths]
        ch = saematch_nb.match_chain(saes, cache=False, progress=False)
    else:
        ch = saematch_nb.match_chain(paths, cache=cache_dir is not None, cache_dir=cache_dir,
                                     progress=False)
    secs = time.perf_counter() - t0
    print(json.dumps({"mode": mode, "seconds": secs, "rss_before": rss0, "rss_peak": _rss("VmHWM"),
                      "held": ch.stats["peak_held_weights_bytes"],
                      "max_saes_held": ch.stats["max_saes_held"],
                      "cache_hits": ch.stats["cache_hits"], "computed": ch.stats["computed"]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--d-in", type=int, default=2304)
    ap.add_argument("--matcher", default="saematch_nb.core.match:match",
                    help="module:function used to match one pair")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        mode, folder, matcher, cache = a.child
        _child(mode, folder, matcher, None if cache == "-" else cache)
        return

    import numpy as np

    from saematch_nb.core.synthetic import planted_chain

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "saes"
        folder.mkdir()
        pc = planted_chain(n_layers=a.layers, n=a.n, d_in=a.d_in, seed=0)
        for t, w in enumerate(pc.saes):
            np.savez(folder / f"layer_{t}.npz", **{k: v.numpy() for k, v in w.state_dict().items()})
        one = sum(int(v.numel()) * 4 for v in pc.saes[0].state_dict().values())
        del pc

        def child(mode: str, cache: str = "-") -> dict:
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(folder), a.matcher, cache],
                                 capture_output=True, text=True, cwd=ROOT)
            if out.returncode:
                sys.exit(out.stderr)
            return json.loads(out.stdout.strip().splitlines()[-1])

        cache = str(Path(tmp) / "cache")
        single, eager, lazy = child("single"), child("eager"), child("lazy")
        first, rerun = child("lazy", cache), child("lazy", cache)
    mb = 2 ** 20
    print(f"chain: {a.layers} layers x {a.n} features x d_in {a.d_in}; one SAE = {one / mb:.1f} MiB, "
          f"all = {a.layers * one / mb:.1f} MiB")
    for r in (eager, lazy):
        print(f"{r['mode']:>5}: peak RSS {r['rss_peak'] / mb:8.1f} MiB "
              f"(rise {(r['rss_peak'] - r['rss_before']) / mb:7.1f} MiB), "
              f"SAEs held by match_chain at once: {r['max_saes_held']} ({r['held'] / mb:.1f} MiB), "
              f"{r['seconds']:.1f} s")
    rise = {r["mode"]: r["rss_peak"] - r["rss_before"] for r in (single, eager, lazy)}
    print(f"one pair alone (match of layers 0, 1): memory added {rise['single'] / mb:.1f} MiB")
    print(f"memory added by the chain, eager/lazy: {rise['eager'] / mb:.1f} / {rise['lazy'] / mb:.1f} MiB "
          f"= {rise['eager'] / rise['lazy']:.2f}x; lazy chain minus one pair alone: "
          f"{(rise['lazy'] - rise['single']) / mb:.1f} MiB")
    print(f"cache: first run {first['seconds']:.2f} s ({first['computed']} computed), re-run "
          f"{rerun['seconds']:.3f} s ({rerun['cache_hits']} hits): {first['seconds'] / rerun['seconds']:.0f}x faster")


if __name__ == "__main__":
    main()
