"""Linear assignment of SAE A's features (rows) to SAE B's (columns) on the squared-distance cost.

The front door is :func:`solve`; it picks one of two exact solvers, both returning
:class:`AssignmentResult` (``result.py``):

- ``"dense"`` (``dense.py``: scipy ``linear_sum_assignment`` on the full float64 matrix);
- ``"sparse"`` (``sparse.py``: candidate edges from one blocked pass + a dual certificate, for
  Gemma Scope widths; its numba kernels live in ``_numba.py``, compiled on first use);
- ``"auto"``: dense when ``n_a·n_b <= 4096²``, else sparse.

Shapes: ``n_a <= n_b`` is the usual rectangular case (every row gets a distinct column). For
``n_a > n_b`` the dense solver assigns the ``n_b`` rows whose assignment is cheapest overall and
leaves the others with ``col = -1`` (each B-feature is used at most once; a result is never
"transposed" behind the user's back). Match the pair the other way round to get a partner for
every B-feature instead.

Partial mode (``unmatched_cost`` per row): the rectangular problem ``[C | D]`` with ``D`` an
``n_a × n_a`` block holding ``unmatched_cost[i]`` on the diagonal and forbidden (inf) entries
elsewhere; rows that land in ``D`` get ``col = -1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..cost import check_compatible, dense_cost
from .dense import solve_dense
from .result import AssignmentResult
from .sparse import solve_sparse, verify_certificate

__all__ = ["solve", "solve_dense", "solve_sparse", "verify_certificate", "pick_solver",
           "AssignmentResult", "SOLVERS", "AUTO_DENSE_MAX"]

SOLVERS = ("auto", "dense", "sparse")
AUTO_DENSE_MAX = 4096 ** 2


def pick_solver(n_a: int, n_b: int, solver: str = "auto") -> str:
    """The solver :func:`solve` uses for an ``n_a × n_b`` problem: ``solver`` itself unless "auto"."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver != "auto":
        return solver
    return "dense" if n_a * n_b <= AUTO_DENSE_MAX else "sparse"


def solve(
    X: torch.Tensor, Y: torch.Tensor, *, unmatched_cost: np.ndarray | None = None,
    solver: str = "auto", device: Any = None, progress: bool = False, **kw: Any,
) -> AssignmentResult:
    """Minimum-cost assignment of the rows of X to the rows of Y (cost = squared distance).

    ``unmatched_cost`` (float64 [n_a]) enables the partial mode. ``**kw`` go to the sparse
    solver (e.g. ``k``). See the module docstring for shapes and the partial formulation.
    """
    check_compatible(X, Y)
    n_a, n_b = X.shape[0], Y.shape[0]
    if unmatched_cost is not None:
        unmatched_cost = np.asarray(unmatched_cost, np.float64)
        if unmatched_cost.shape != (n_a,):
            raise ValueError(f"unmatched_cost must have shape ({n_a},), got {unmatched_cost.shape}")
        if not np.all(np.isfinite(unmatched_cost)):
            raise ValueError("unmatched_cost must be finite (use None for the bijective mode)")
    if pick_solver(n_a, n_b, solver) == "sparse":
        return solve_sparse(X, Y, unmatched_cost=unmatched_cost, device=device, progress=progress, **kw)
    if kw:
        raise TypeError(f"the dense solver takes no options {sorted(kw)}; they are the sparse solver's "
                        "(solver='sparse')")
    return solve_dense(dense_cost(X, Y, device=device, progress=progress), unmatched_cost=unmatched_cost)
