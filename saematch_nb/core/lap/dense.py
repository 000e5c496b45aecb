"""The dense solver: scipy's ``linear_sum_assignment`` on a float64 cost matrix.

:func:`solve_dense` takes a given matrix (its optimum is exact for that matrix). :func:`solve_dense_xy`
(the front door's "dense" solver, ``solve(X, Y, solver="dense")`` and "auto" up to 1024²) builds the
squared-distance matrix of X and Y in float64 and states what that matrix's rounding can cost:

- by default as ``|x|² + |y|² - 2 x·y`` (one float64 GEMM), each entry within
  ``B_ij = 2 γ_{D+2} (|x_i| + |y_j|)²`` of the exact cost (γ_n = n u / (1 - n u), u = 2⁻⁵³);
  the assignment found then costs at most ``2 Σ_i max_j B_ij`` more than the optimum;
- when that bound exceeds the tolerance below (norms that differ by orders of magnitude: the
  products cancel), as sums of squared differences (``torch.cdist`` without the GEMM shortcut):
  sums of non-negative terms, so each entry is within ``γ_{D+4}`` of itself *relatively*, and the
  gap is at most ``2 γ / (1 - γ)² · total``.

``gap`` is 0.0 ("proven optimal", ``stats["proven_optimal"]``) when that bound is within
``n_a · eps``, ``eps = eps_rel · (mean |x|² + mean |y|²)``: the tolerance of the "jv" and "sparse"
solvers' certificates; otherwise ``gap`` is the bound itself (certified, never an assumption).
Inputs are checked as those solvers check them: NaN/inf entries, and squared row norms beyond
float32 (the rest of a match works in float32), are clear errors.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..cost import nearest_two
from ._shared import sqnorm
from .result import AssignmentResult


def solve_dense(C: np.ndarray, *, unmatched_cost: np.ndarray | None = None) -> AssignmentResult:
    """Minimum-cost assignment on the full matrix ``C`` [n_a, n_b] (see :func:`saematch_nb.core.lap.solve`
    for shapes and the partial mode). Each row's two smallest costs are read off the same matrix
    once and returned (``nearest``, ``nearest_cost``, ``second_cost``). The optimum is exact for
    ``C`` as given (``gap`` 0.0 for this matrix); :func:`solve_dense_xy` builds C from feature
    vectors and bounds what its rounding can cost."""
    from scipy.optimize import linear_sum_assignment

    t0 = time.perf_counter()
    C = np.asarray(C, np.float64)
    if C.ndim != 2 or 0 in C.shape:
        raise ValueError(f"solve_dense: C must be a non-empty 2-D cost matrix [n_a, n_b], got shape {C.shape}")
    n_a, n_b = C.shape
    col = np.full(n_a, -1, np.int64)
    if unmatched_cost is None:
        r, c = linear_sum_assignment(C)
        col[r] = c
        total = float(C[r, c].sum())
    else:
        unmatched_cost = np.asarray(unmatched_cost, np.float64)
        if unmatched_cost.shape != (n_a,):
            raise ValueError(f"unmatched_cost must have shape ({n_a},), got {unmatched_cost.shape}")
        # [C | D]: D holds row i's no-partner cost on its diagonal, forbidden (inf) elsewhere
        D = np.full((n_a, n_a), np.inf)
        np.fill_diagonal(D, unmatched_cost)
        r, c = linear_sum_assignment(np.concatenate([C, D], axis=1))
        real = c < n_b
        col[r[real]] = c[real]
        total = float(C[r[real], c[real]].sum() + unmatched_cost[r[~real]].sum())
    rows = np.arange(n_a)
    nearest, best, second = nearest_two(C)
    ref = np.where(col >= 0, col, nearest)
    cost = C[rows, ref]
    alt = np.where(ref == nearest, second, best)
    return AssignmentResult(
        col=col, cost=cost, alt_cost=alt, total=total, gap=0.0, nearest=nearest,
        nearest_cost=best, second_cost=second,
        stats={"solver": "dense", "seconds": time.perf_counter() - t0, "n_a": n_a, "n_b": n_b,
               "unassigned_rows": int((col < 0).sum()), "proven_optimal": True},
    )


_U64 = 2.0 ** -53


def _gamma(n: int) -> float:
    return n * _U64 / (1 - n * _U64)


def _checked_norms(X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared row norms in float64, with the "jv" and "sparse" solvers' checks and messages."""
    nx, ny = sqnorm(X), sqnorm(Y)
    if not (bool(torch.isfinite(X).all()) and bool(torch.isfinite(Y).all())):
        raise ValueError("solve_dense: X or Y contains NaN/inf; check the SAE weights")
    if not (bool(torch.isfinite(nx.float()).all()) and bool(torch.isfinite(ny.float()).all())):
        raise ValueError("solve_dense: a squared row norm of X or Y overflows float32 (> 3.4e38); "
                         "rescale both by the same factor (the optimal assignment does not change)")
    return nx, ny


def solve_dense_xy(X: torch.Tensor, Y: torch.Tensor, *, unmatched_cost: np.ndarray | None = None,
                   device: Any = None, eps_rel: float = 1e-10) -> AssignmentResult:
    """Exact assignment of the rows of X to the rows of Y for ``C = ||X_i - Y_j||²`` with scipy, on a
    float64 matrix whose rounding is bounded (module docstring); ``gap`` 0.0 only with that proof."""
    from ..cost import default_device

    t0 = time.perf_counter()
    dev = default_device(device)
    X64 = X.detach().to(dev, torch.float64)
    Y64 = Y.detach().to(dev, torch.float64)
    nx, ny = _checked_norms(X64, Y64)
    n_a, D = X64.shape
    eps = eps_rel * max(float(nx.mean() + ny.mean()), 1e-300)
    tol = n_a * eps
    # what the GEMM's rounding can cost, known before it is computed (norms only)
    g = _gamma(D + 2)
    gemm_bound = float(4 * g * ((nx.sqrt() + float(ny.sqrt().max())) ** 2).sum())
    if gemm_bound <= tol:
        method = "float64 GEMM"
        C = torch.addmm(nx[:, None] + ny[None, :], X64, Y64.T, alpha=-2.0).clamp_(min=0.0)
    else:  # the products cancel (norms orders of magnitude apart): sums of squares, no cancellation
        method = "float64 differences"
        C = torch.cdist(X64, Y64, compute_mode="donot_use_mm_for_euclid_dist").pow_(2)
    res = solve_dense(C.cpu().numpy(), unmatched_cost=unmatched_cost)
    del C
    if method == "float64 GEMM":
        bound = gemm_bound
    else:
        g = _gamma(D + 4)
        bound = 2 * g / (1 - g) ** 2 * abs(res.total)
    proven = bound <= tol
    gap = 0.0 if proven else bound
    res.stats.update({"seconds": time.perf_counter() - t0, "device": str(dev), "cost_precision": method,
                      "cost_error_bound": bound, "eps": eps, "proven_optimal": proven})
    from dataclasses import replace

    return replace(res, gap=float(gap))
