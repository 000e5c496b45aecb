"""The dense solver: scipy's ``linear_sum_assignment`` on a given float64 cost matrix."""

from __future__ import annotations

import time

import numpy as np

from ..criterion import nearest_two
from .result import AssignmentResult


def solve_dense(C: np.ndarray, *, unmatched_cost: np.ndarray | None = None) -> AssignmentResult:
    """Minimum-cost assignment on the full matrix ``C`` [n_a, n_b] (see :func:`saematch_nb.core.lap.solve`
    for shapes and the partial mode). Each row's two smallest costs are read off the same matrix
    once and returned (``nearest``, ``nearest_cost``, ``second_cost``)."""
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
               "unassigned_rows": int((col < 0).sum())},
    )
