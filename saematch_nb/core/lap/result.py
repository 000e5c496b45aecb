"""The result type every solver of :mod:`saematch_nb.core.lap` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class AssignmentResult:
    """Outcome of :func:`saematch_nb.core.lap.solve`.

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
      the solver has them (the dense solver reads them off its matrix, the sparse one off its
      candidate lists; ``match`` then skips a second pass over all pairs). None after a transposed
      sparse solve (n_a > n_b), whose lists are per column of the original problem.
    - ``cosine_pass`` dict or None: with ``cosine_parts=`` (the dense JV solver), each row's and
      each column's largest *mean part cosine* (``row_arg``/``row_cos`` [n_a], ``col_arg``/``col_cos``
      [n_b], float32 products), read off the solver's own product (the criterion's mutual test
      and nearest distances, without a second pass over all pairs).
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
    cosine_pass: dict | None = None

    @property
    def n_unmatched(self) -> int:
        return int((self.col < 0).sum())
