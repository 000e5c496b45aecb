"""What the exact solvers share (private): input checks, the float32 error terms, the tiny-input
rescale, squared norms, peak memory and the numba kernel loaders. ``jv.py``, ``sparse.py`` and
``dense.py`` import from here, never each other's private names."""

from __future__ import annotations

import math

import numpy as np
import torch

from .._memory import peak_rss_bytes

U32 = 2.0 ** -24  # float32 unit roundoff


def jv_kernels():
    """The kernel modules (_jv, _numba) of solver="jv", numba's cache loaded on first use."""
    from ._kernels import load_kernels

    try:  # numba import + cached compile only when the solver runs
        _jv, _numba = load_kernels("_jv", "_numba")
    except ImportError as e:
        if "numba" not in str(e):
            raise
        raise ImportError("solver='jv' needs numba: pip install 'saematch_nb[scale]', then run "
                          "python -m saematch_nb warmup once (or use solver='dense', scipy)") from e
    return _jv, _numba


def sparse_kernels():
    """The kernel module _numba of solver="sparse", numba's cache loaded on first use."""
    from ._kernels import load_kernels

    try:  # numba import + cached compile only when the solver runs
        (_numba,) = load_kernels("_numba")
    except ImportError as e:
        if "numba" not in str(e):
            raise
        raise ImportError("the sparse solver (solver='sparse', and solver='auto' above 4096 x 4096 without "
                          "numba) needs numba: pip install 'saematch_nb[scale]', then run "
                          "python -m saematch_nb warmup once") from e
    return _numba


def check_inputs(X, Y, unmatched_cost, who="solve_sparse"):
    """X, Y: 2-D tensors with rows and one D; returns unmatched_cost as float64 [n_a] (or None)."""
    for name, t in (("X", X), ("Y", Y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{who}: {name} must be a torch.Tensor [n, D], got {type(t).__name__}; "
                            "build it with core.cost.feature_matrix(...) or torch.as_tensor(...)")
        if t.ndim != 2:
            raise ValueError(f"{who}: {name} must be 2-D [n, D], got shape {tuple(t.shape)}")
        if t.shape[0] == 0:
            raise ValueError(f"{who}: {name} has no rows")
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"{who}: X and Y need the same feature length D, got {X.shape[1]} and "
                         f"{Y.shape[1]}; build both with the same feature_matrix(params=..., fold=...)")
    if unmatched_cost is not None:
        w = np.asarray(unmatched_cost, dtype=np.float64)
        if w.ndim == 0:
            w = np.full(X.shape[0], float(w))
        if w.shape != (X.shape[0],):
            raise ValueError(f"{who}: unmatched_cost must be a scalar or have shape ({X.shape[0]},), "
                             f"got {w.shape}")
        if not np.isfinite(w).all():
            raise ValueError(f"{who}: unmatched_cost must be finite")
        return w
    return None


def underflow_slack(D: int, n2: np.ndarray) -> np.ndarray:
    """Absolute part of the product's error, per side (``n2``: squared norms of that side).

    Below 2^-126 the relative bounds fail: a denormal is rounded with an absolute error
    (gradual underflow) or flushed to zero (DAZ/FTZ: AMX always, any CPU after
    ``torch.set_flush_denormal(True)``). A zeroed input element moves a product by
    < 2^-126 |y_k|, a flushed product or partial sum by < 2^-126, so the dot moves by
    < 2^-126 (sqrt(D) (|x| + |y|) + 2 D); with |x| <= 1 + |x|^2 and the cost moving twice the
    dot, 2^-125 (sqrt(D) (1 + |x|^2) + D) per side covers it; + 2^-124 covers the flushed
    float32 norms and the two additions that form a float32 cost. Inputs with tiny norms are
    rescaled before the pass (see solve_sparse), so this term stays far below the costs."""
    return 2.0 ** -125 * (np.sqrt(D) * (1.0 + n2) + D) + 2.0 ** -124


def sqnorm(T: torch.Tensor) -> torch.Tensor:
    """Squared row norms in float64, on T's device."""
    out = torch.empty(T.shape[0], dtype=torch.float64, device=T.device)
    for a in range(0, T.shape[0], 512):  # float64 copies of 512 rows at a time
        out[a:a + 512] = T[a:a + 512].double().pow(2).sum(1)
    return out


def peak_bytes(dev) -> int | None:
    """Peak memory of the solve's device: CUDA's allocator peak, else the process's peak RSS."""
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev))
    return peak_rss_bytes()  # None where the process's peak cannot be read (Windows)


# Largest |element| below which the inputs are rescaled before the pass: products of such
# elements head for the float32 denormal range, where only the absolute slack bounds the error
# (underflow_slack) and it soon exceeds the costs (no proof) or, without it, the bound is wrong.
RESCALE_BELOW = 2.0 ** -40


def tiny_input_shift(X: torch.Tensor, Y: torch.Tensor) -> int:
    """s > 0 with max |element| * 2^s in [0.5, 1) when the inputs are tiny, else 0."""
    # aminmax reads the inputs once and allocates nothing (abs() would copy a 65k x 4608 input)
    m = max(max(-float(lo), float(hi)) for lo, hi in (torch.aminmax(T.detach()) for T in (X, Y)))
    if not (0.0 < m < RESCALE_BELOW):  # also 0 (all zero) and NaN (reported by _Problem)
        return 0
    return -math.frexp(m)[1]


def unscale_result(res, shift: int):
    """A result of the inputs times 2^shift, in the units of the inputs (costs / 4^shift)."""
    from dataclasses import fields, replace

    r = 4.0 ** -shift  # exact in float64: costs are far above its underflow range
    kw = {}
    for f in fields(res):
        v = getattr(res, f.name)
        if f.name in ("cost", "alt_cost", "nearest_cost", "second_cost") and v is not None:
            kw[f.name] = np.asarray(v) * r
        elif f.name in ("total", "gap"):
            kw[f.name] = float(v) * r
    stats = dict(res.stats)
    for name in ("eps", "dual_bound", "u", "v"):
        if name in stats:
            stats[name] = stats[name] * r
    stats["input_scale_log2"] = shift
    return replace(res, stats=stats, **kw)
