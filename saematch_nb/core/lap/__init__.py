"""Linear assignment of SAE A's features (rows) to SAE B's (columns) on the squared-distance cost.

The front door is :func:`solve`; it picks one of three exact solvers, all returning
:class:`AssignmentResult` (``result.py``):

- ``"dense"`` (``dense.py``: scipy ``linear_sum_assignment`` on the full float64 matrix, built in
  float64 with its rounding bounded, so that ``gap`` 0.0 is a proof as the others' is; no JIT,
  best for small problems);
- ``"jv"`` (``jv.py``: one float32 cost matrix from a blocked GEMM, a Jonker-Volgenant solve with
  duals, certified against the exact float64 costs; kernels in ``_jv.py``);
- ``"sparse"`` (``sparse.py``: candidate edges from one blocked pass + a dual certificate, for
  widths whose matrix does not fit in memory; its numba kernels live in ``_numba.py``);
- ``"auto"``: "dense" when ``n_a·n_b <= AUTO_SCIPY_MAX`` (1024²), else "jv" when its float32
  matrix plus working memory (:func:`jv_bytes`) fits ``memory_budget`` (default
  :data:`DEFAULT_MEMORY_BUDGET`, 1.5 GiB), else "sparse". Scanning whole rows wins once the
  matrix fits: on clustered pairs the optimal partners of the fresh features sit far down
  their rows, which makes the sparse solver's candidate graph grow (issue #14). Without numba
  (the ``scale`` extra) "auto" uses scipy up to ``4096²`` and "sparse" above (which then asks
  for numba).

Numba kernels are compiled once per installation (``cache=True``: next to the sources, or in
numba's per-user cache directory when site-packages is read-only; where neither can be written,
``NUMBA_CACHE_DIR`` must name a folder that can: ``warmup.NumbaCacheError`` says so).

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

from ..cost import check_compatible
from .dense import solve_dense, solve_dense_xy
from .jv import jv_bytes, solve_jv
from .result import AssignmentResult
from .sparse import solve_sparse, verify_certificate

__all__ = ["solve", "solve_dense", "solve_dense_xy", "solve_jv", "solve_sparse", "verify_certificate", "pick_solver",
           "jv_bytes", "AssignmentResult", "SOLVERS", "AUTO_SCIPY_MAX", "DEFAULT_MEMORY_BUDGET"]

SOLVERS = ("auto", "dense", "jv", "sparse")
AUTO_SCIPY_MAX = 1024 ** 2
NO_NUMBA_SCIPY_MAX = 4096 ** 2  # auto's scipy limit when numba (the `scale` extra) is missing
DEFAULT_MEMORY_BUDGET = int(1.5 * 2 ** 30)


def pick_solver(n_a: int, n_b: int, solver: str = "auto", *, memory_budget: int | None = None) -> str:
    """The solver :func:`solve` uses for an ``n_a × n_b`` problem: ``solver`` itself unless "auto".

    ``memory_budget``: bytes of extra memory "auto" may give the "jv" solver's dense float32
    matrix and its working arrays (None = :data:`DEFAULT_MEMORY_BUDGET`); above it, "sparse"."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    budget = _budget(memory_budget)
    if solver != "auto":
        return solver
    if n_a * n_b <= AUTO_SCIPY_MAX:
        return "dense"
    if not _have_numba():  # base install (no `scale` extra): scipy as far as it went before
        return "dense" if n_a * n_b <= NO_NUMBA_SCIPY_MAX else "sparse"
    return "jv" if jv_bytes(n_a, n_b) <= budget else "sparse"


def _have_numba() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba") is not None


def _budget(memory_budget) -> int:
    if memory_budget is None:
        return DEFAULT_MEMORY_BUDGET
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) or not memory_budget >= 0:
        raise ValueError(f"memory_budget must be a number of bytes >= 0 (e.g. 2 * 2**30), got {memory_budget!r}")
    return int(memory_budget)


def solve(
    X: torch.Tensor, Y: torch.Tensor, *, unmatched_cost: np.ndarray | None = None,
    solver: str = "auto", device: Any = None, progress: bool = False, memory_budget: int | None = None,
    cosine_parts: Any = None, **kw: Any,
) -> AssignmentResult:
    """Minimum-cost assignment of the rows of X to the rows of Y (cost = squared distance).

    ``unmatched_cost`` (float64 [n_a]) enables the partial mode. ``memory_budget``: see
    :func:`pick_solver`. ``**kw`` go to the sparse solver (e.g. ``k``). See the module docstring
    for shapes and the partial formulation. ``cosine_parts``: the dense JV solver also returns
    each row's and column's largest mean part cosine (``AssignmentResult.cosine_pass``); the other
    solvers ignore it (``cosine_pass`` None).
    """
    check_compatible(X, Y)
    n_a, n_b = X.shape[0], Y.shape[0]
    if unmatched_cost is not None:
        unmatched_cost = np.asarray(unmatched_cost, np.float64)
        if unmatched_cost.shape != (n_a,):
            raise ValueError(f"unmatched_cost must have shape ({n_a},), got {unmatched_cost.shape}")
        if not np.all(np.isfinite(unmatched_cost)):
            raise ValueError("unmatched_cost must be finite (use None for the bijective mode)")
    which = pick_solver(n_a, n_b, solver, memory_budget=memory_budget)
    if which == "sparse":
        return solve_sparse(X, Y, unmatched_cost=unmatched_cost, device=device, progress=progress, **kw)
    if kw:
        raise TypeError(f"the {which} solver takes no options {sorted(kw)}; they are the sparse solver's "
                        "(solver='sparse')")
    if which == "jv":
        return solve_jv(X, Y, unmatched_cost=unmatched_cost, device=device, progress=progress,
                        cosine_parts=cosine_parts)
    return solve_dense_xy(X, Y, unmatched_cost=unmatched_cost, device=device)
