"""Compile the solvers' numba kernels once, at install time, instead of in a user's first call.

``python -m saematch_nb warmup`` (run by ``make install``; after ``pip install
'saematch_nb[scale]'`` run it once yourself) solves a set of tiny problems that walk every code
path of the "jv" and "sparse" solvers: square, rectangular both ways, partial mode, float32 and
bfloat16 products, the tiny-input rescale and the certificate check; on a machine with a CUDA
GPU the float32 paths again with ``device="cuda"`` (the GPU path reaches the same host kernels
through other code: torch top-k lists, GPU pricing; bfloat16 is a CPU pass only). Every call
names its device: a bare call would default to CUDA there. Each kernel signature they reach is
compiled and written to numba's cache (next to the sources, or numba's per-user cache
folder where site-packages is read-only), so a user's first ``match`` in a fresh process only
loads them (about 1 s) instead of compiling them (22-34 s on a 2-core machine).

The cache is per CPU model and numba version: a new machine or a numba upgrade compiles again,
on first use or by running the warm-up again.

Where neither folder can be written (a read-only installation and an unwritable home, as on shared
clusters and in containers) numba refuses the kernels themselves ("cannot cache function ...: no
locator available"): :func:`load_kernels` (``_kernels.py``) turns that into :class:`NumbaCacheError`, which says to
set ``NUMBA_CACHE_DIR`` to a writable folder. The package never sets the variable itself.
"""

from __future__ import annotations

import time

import numpy as np
import torch

# the kernels' one import, below both the solvers and this warm-up (which runs the solvers)
from ._kernels import NumbaCacheError, load_kernels

__all__ = ["warm_up", "warm_devices", "precisions", "kernel_stats", "load_kernels", "NumbaCacheError"]


def _dispatchers() -> dict:
    from numba.core.registry import CPUDispatcher

    _jv, _numba = load_kernels("_jv", "_numba")
    out = {}
    for mod in (_numba, _jv):
        for name, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher) and obj.__module__ == mod.__name__:
                out[f"{mod.__name__.rsplit('.', 1)[-1]}.{name}"] = obj
    return out


def kernel_stats() -> dict:
    """Per kernel of ``_numba.py`` / ``_jv.py``: signatures in memory, cache hits and misses of
    this process (a miss = compiled here because numba's cache did not have it)."""
    return {name: {"signatures": len(d.signatures),
                   "cache_hits": int(sum(d.stats.cache_hits.values())),
                   "cache_misses": int(sum(d.stats.cache_misses.values()))}
            for name, d in _dispatchers().items()}


def _problems():
    """Small inputs whose solves reach every kernel: a planted pair with near-duplicates (ties,
    the augmenting row reduction), independent noise (long shortest paths), and tiny values."""
    g = torch.Generator().manual_seed(0)
    n, D = 160, 12  # n > 64: the dense solver then works on row cores
    Y = torch.randn(n, D, generator=g)
    perm = torch.randperm(n, generator=g)
    X = Y[perm] + 0.05 * torch.randn(n, D, generator=g)
    X[: n // 4] = torch.randn(n // 4, D, generator=g)  # fresh features: partners far down the row
    Y[1::7] = Y[0::7][: Y[1::7].shape[0]] + 1e-3 * torch.randn(Y[1::7].shape[0], D, generator=g)
    return X, Y


def warm_devices() -> list[str]:
    """The devices whose solve paths the warm-up walks: always "cpu"; "cuda" too when torch sees
    a GPU. The kernels are host code either way, but the GPU path reaches them through other code
    (torch top-k lists instead of the numba pass, GPU pricing), hence other signatures."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def precisions(device: str) -> tuple[str, ...]:
    """Product precisions of the sparse pass on ``device``: bfloat16 is a CPU pass only (its
    error bound assumes float32 accumulation, which a GPU bfloat16 product does not promise)."""
    return ("float32", "bfloat16") if torch.device(device).type == "cpu" else ("float32",)


def _steps(X, Y, w, devices) -> list:
    """(name, thunk) per warm-up solve; every call names its device and, for the sparse pass,
    its precision, so a GPU machine (where the default device is CUDA) never asks for a CPU-only
    mode."""
    from . import solve_jv, solve_sparse, verify_certificate

    n = X.shape[0]
    steps = []
    for dev in devices:
        tag = "" if dev == "cpu" else f" [{dev}]"
        steps += [
            (f"jv square{tag}", lambda d=dev: solve_jv(X, Y, device=d)),
            (f"jv rectangular{tag}", lambda d=dev: solve_jv(X[: n // 2], Y, device=d)),
            (f"jv tall{tag}", lambda d=dev: solve_jv(X, Y[: n // 2], device=d)),
            (f"jv partial{tag}", lambda d=dev: solve_jv(X, Y, unmatched_cost=w, device=d)),
            (f"jv partial tall{tag}", lambda d=dev: solve_jv(X, Y[: n // 2], unmatched_cost=w, device=d)),
            (f"jv float64 input{tag}", lambda d=dev: solve_jv(X.double(), Y.double(), device=d)),
            # match()'s call: the criterion's direction pass read off the product (one and two parts)
            (f"jv with cosines{tag}", lambda d=dev: solve_jv(X, Y, device=d, cosine_parts=[slice(0, 6), slice(6, 12)])),
            (f"jv with cosines, one part{tag}", lambda d=dev: solve_jv(X, Y[: n // 2], device=d,
                                                                       cosine_parts=[slice(0, 12)])),
        ]
        for prec in precisions(dev):
            kw = {"k": 2, "precision": prec}
            steps += [
                (f"sparse {prec} square{tag}",
                 lambda d=dev, kw=kw: solve_sparse(X, Y, k_dot=2, device=d, **kw)),
                (f"sparse {prec} rectangular{tag}", lambda d=dev, kw=kw: solve_sparse(X[: n // 2], Y, device=d, **kw)),
                (f"sparse {prec} tall{tag}", lambda d=dev, kw=kw: solve_sparse(X, Y[: n // 2], device=d, **kw)),
                (f"sparse {prec} partial{tag}",
                 lambda d=dev, kw=kw: solve_sparse(X, Y, unmatched_cost=w, device=d, **kw)),
            ]
        # "auto" precision: whatever this machine picks for the device (bfloat16 only on a CPU
        # that multiplies it natively)
        steps += [
            (f"sparse tiny inputs{tag}", lambda d=dev: solve_sparse(X * 1e-20, Y * 1e-20, k=2, device=d)),
            (f"sparse float64 input{tag}", lambda d=dev: solve_sparse(X.double(), Y.double(), k=2, device=d)),
            (f"certificate{tag}", lambda d=dev: _certify(X, Y, verify_certificate, solve_sparse, None, d)),
            (f"certificate partial{tag}", lambda d=dev: _certify(X, Y, verify_certificate, solve_sparse, w, d)),
        ]
    return steps


def warm_up(*, progress: bool = False) -> dict:
    """Run the tiny problems through both numba solvers, on every device of :func:`warm_devices`;
    return seconds and kernel counts.

    Raises ImportError (with the install hint) when numba is missing, :class:`NumbaCacheError`
    when numba has no writable cache folder."""
    from ._shared import jv_kernels

    jv_kernels()  # the install hint when numba is missing
    t0 = time.perf_counter()
    X, Y = _problems()
    w = np.full(X.shape[0], float(torch.cdist(X, Y).pow(2).median()) * 0.5)
    devices = warm_devices()
    steps = _steps(X, Y, w, devices)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="compiling solver kernels", unit="problem")
    for _, fn in steps:
        fn()
    stats = kernel_stats()
    return {"seconds": time.perf_counter() - t0,
            "devices": devices,
            "kernels": len(stats),
            "signatures": sum(s["signatures"] for s in stats.values()),
            "compiled": sum(s["cache_misses"] for s in stats.values()),
            "loaded": sum(s["cache_hits"] for s in stats.values()),
            # helpers called only from other kernels (names with "_") are compiled into them
            "not_reached": sorted(k for k, s in stats.items()
                                  if s["signatures"] == 0 and not k.split(".")[1].startswith("_"))}


def _certify(X, Y, verify_certificate, solve_sparse, w, device):
    r = solve_sparse(X, Y, unmatched_cost=w, k=2, return_duals=True, device=device)
    return verify_certificate(X, Y, r.col, r.stats["u"], r.stats["v"], unmatched_cost=w, device=device)
