#!/usr/bin/env python
"""False-positive rate of Feature Flow's calibrated thresholds (saematch_nb.core.flow), and what a
uniform random rotation null would have given, on synthetic decoder sets with a known null.

For each stream shape (``decay``: principal-axis decay of the directions, ``k^-decay``; ``mean``:
a shared mean component along one axis) and each seed: layer L's features Q (``--n``), a module
P (``--m`` features) and ``--test`` fresh features T, all drawn independently from the same
distribution (so no feature of Q or T has a counterpart in P). The threshold is calibrated from Q
against P (``calibrate_module``, ``alpha``); the false-positive rate is the share of T whose
s(P) = max cos with P reaches it. Columns: the mean and range over seeds of that rate for our
null (``reflect``), and for a uniform (Haar) rotation of Q as the null (``haar``).

    python benchmarks/bench_flow_null.py --seeds 5 --alpha 0.01 --d 64
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from saematch_nb.core import flow as F


def draw(rng, n, d, decay, mean):
    u = rng.standard_normal((n, d)) * (np.arange(1, d + 1) ** -decay)[None, :]
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    u[:, 5] += mean
    return torch.tensor(u, dtype=torch.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--m", type=int, default=1024)
    ap.add_argument("--test", type=int, default=50000)
    a = ap.parse_args()
    print(f"alpha={a.alpha} d={a.d} n={a.n} m={a.m} test={a.test} seeds={a.seeds}")
    print(f"{'decay':>6} {'mean':>5}  {'reflect: mean [min, max]':>28}  {'haar: mean':>10}")
    for decay, mean in ((0.0, 0.0), (0.5, 0.0), (0.8, 0.0), (0.0, 0.3), (0.8, 0.3), (1.0, 0.5)):
        ours, haar = [], []
        for seed in range(a.seeds):
            rng = np.random.default_rng(1000 + seed)
            Q, K, T = (draw(rng, k, a.d, decay, mean) for k in (a.n, a.m, a.test))
            s, _ = F.top1_cosine(T, K)
            t = F.calibrate_module(Q, K, alpha=a.alpha, n_null=a.n, seed=seed)["threshold"]
            ours.append(float(np.mean(s >= t)))
            q, r = np.linalg.qr(rng.standard_normal((a.d, a.d)))
            O = torch.tensor(q * np.sign(np.diag(r)), dtype=torch.float32)
            th = F.null_threshold(F.top1_cosine(Q @ O, K)[0], a.alpha)
            haar.append(float(np.mean(s >= th)))
        print(f"{decay:6.2f} {mean:5.2f}  {np.mean(ours):10.4f} [{min(ours):.4f}, {max(ours):.4f}]      "
              f"{np.mean(haar):10.4f}")


if __name__ == "__main__":
    main()
