"""Linear assignment of SAE A's features (rows) to SAE B's (columns) on the squared-distance cost.

Solvers: ``"dense"`` (scipy ``linear_sum_assignment`` on the full float64 matrix), ``"sparse"``
(``core/lap_sparse.py:solve_sparse``, candidate edges + dual certificate, for large widths) and
``"auto"`` (dense when ``n_a·n_b <= 4096²``, else sparse; dense when lap_sparse is absent).

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

import importlib.util
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .cost import check_compatible, dense_cost

SOLVERS = ("auto", "dense", "sparse")
AUTO_DENSE_MAX = 4096 ** 2


@dataclass(frozen=True, eq=False)
class AssignmentResult:
    """Outcome of :func:`solve`.

    - ``col`` int64 [n_a]: assigned B-feature, -1 = no partner (partial mode, or a row left over
      when n_a > n_b).
    - ``cost`` float64 [n_a]: ``C[i, col[i]]``; for ``col[i] = -1``, the cost to the row's nearest
      column ``nearest[i]`` (what the row would have paid for its best option).
    - ``alt_cost`` float64 [n_a]: min over ``j != col[i]`` of ``C[i, j]`` (for ``col = -1``: over
      ``j != nearest[i]``).
    - ``total``: the objective (assigned costs plus the no-partner costs paid).
    - ``gap``: certified absolute optimality gap, 0.0 = proven optimal.
    - ``nearest`` int64 [n_a] or None: argmin_j C[i, j].
    - ``stats``: solver name, seconds, ...
    - ``nearest_cost`` / ``second_cost`` float64 [n_a] or None: the row's two smallest C_ij, when
      the solver has them (the sparse solver does, from its candidate lists; ``match`` then skips
      a second pass over all pairs).
    """

    col: np.ndarray
    cost: np.ndarray
    alt_cost: np.ndarray
    total: float
    gap: float = 0.0
    nearest: np.ndarray | None = None
    stats: dict = field(default_factory=dict)
    nearest_cost: np.ndarray | None = None
    second_cost: np.ndarray | None = None

    @property
    def n_unmatched(self) -> int:
        return int((self.col < 0).sum())


def _sparse_available() -> bool:
    return importlib.util.find_spec(__package__ + ".lap_sparse") is not None


def pick_solver(n_a: int, n_b: int, solver: str = "auto") -> str:
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver != "auto":
        return solver
    if n_a * n_b <= AUTO_DENSE_MAX or not _sparse_available():
        return "dense"
    return "sparse"


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
    which = pick_solver(n_a, n_b, solver)
    if which == "sparse":
        if not _sparse_available():
            raise ValueError("solver='sparse' needs saematch_nb.core.lap_sparse, which is not installed; "
                             "use solver='dense'")
        from .lap_sparse import solve_sparse

        return solve_sparse(X, Y, unmatched_cost=unmatched_cost, device=device, progress=progress, **kw)
    if kw:
        raise TypeError(f"the dense solver takes no options {sorted(kw)}")
    C = dense_cost(X, Y, device=device, progress=progress)
    return solve_dense(C, unmatched_cost=unmatched_cost)


def solve_dense(C: np.ndarray, *, unmatched_cost: np.ndarray | None = None) -> AssignmentResult:
    """scipy ``linear_sum_assignment`` on a given float64 cost matrix (see :func:`solve`)."""
    from scipy.optimize import linear_sum_assignment

    t0 = time.perf_counter()
    C = np.asarray(C, np.float64)
    n_a, n_b = C.shape
    col = np.full(n_a, -1, np.int64)
    if unmatched_cost is None:
        r, c = linear_sum_assignment(C)
        col[r] = c
        total = float(C[r, c].sum())
    else:
        D = np.full((n_a, n_a), np.inf)
        np.fill_diagonal(D, unmatched_cost)
        r, c = linear_sum_assignment(np.concatenate([C, D], axis=1))
        real = c < n_b
        col[r[real]] = c[real]
        total = float(C[r[real], c[real]].sum() + unmatched_cost[r[~real]].sum())
    rows = np.arange(n_a)
    from .criterion import nearest_two

    nearest, best, second = nearest_two(C)
    ref = np.where(col >= 0, col, nearest)
    cost = C[rows, ref]
    alt = np.where(ref == nearest, second, best)
    return AssignmentResult(
        col=col, cost=cost, alt_cost=alt, total=total, gap=0.0, nearest=nearest.astype(np.int64),
        stats={"solver": "dense", "seconds": time.perf_counter() - t0, "n_a": n_a, "n_b": n_b,
               "unassigned_rows": int((col < 0).sum())},
    )
