"""The calibrated binary criterion: does feature i of SAE A have a partner in SAE B?

Statistic per pair (i, j): the *direction distance* ``s_ij = 1 - mean_k cos(X_i[k], Y_j[k])``,
the mean over the parameter parts ``k`` of the cost (folded decoder row, folded encoder column;
the 1-number b_enc part is left out) of their cosine, in [0, 2]. It is scale-free, and unlike
the normalised cost ``C_ij / (|X_i|² + |Y_j|²)`` its null distribution is the same for every
column whatever the features' norms (with per-feature norms varying over orders of magnitude the
normalised cost has heavy, column-dependent tails that fake matches). True partners sit near
``noise²/2``, unrelated features near 1. Equivalently ``s_ij = ||X̃_i - Ỹ_j||² / 2`` on
part-normalised vectors, so the blocked matmul of :func:`saematch_nb.core.cost.cost_blocks`
computes it.

Null: a feature with no partner ends up with (at best) the best of ``n_b`` unrelated columns, so
its statistic is the minimum of ``n_b`` draws from the row's null distribution. That distribution
is estimated per row from a fixed random sample of columns (robust location ``median`` and scale
``1.4826·MAD``; a single true partner in the sample does not move them). The extreme-value
location of the minimum of ``n_b`` Gaussian-like draws is ``loc - scale·sqrt(2 ln n_b)``. The
score is

    score_i = (s_i - loc_i) / (scale_i · sqrt(2 ln n_b))

so the best *unrelated* column sits near ``score ≈ -1`` (measured on planted pairs: -0.9 … -1.3)
and true partners below (-1.6 … -3 for noise ≤ 0.5, d_in ≥ 64). ``matched = score <= threshold``,
default :data:`DEFAULT_THRESHOLD` = -1.4, between the two. A perfect partner scores about
``-sqrt(d_eff) / sqrt(2 ln n_b)``, so the criterion needs enough dimensions: at d_in = 32 with
noise 0.5 true partners and the null extreme overlap (accuracy 0.4-0.98 measured); real SAEs
(d_in ≥ 768) are far from that. Strongly anisotropic feature sets (planted ``spectrum_decay`` ≥
0.5 with isotropic noise) also put true partners and the null extreme on top of each other.

Partial mode: the row's no-partner cost (absolute cost units) is the cost at which a column as
large as the row's nearest one would reach the threshold, ``s*_i · (|X_i|² + |Y_nearest(i)|²)``
with ``s*_i = loc_i + threshold·scale_i·sqrt(2 ln n_b)`` (for nearly equal norms
``C ≈ (|X|² + |Y|²)·s``).

Everything is per row and collected in one blocked streaming pass (a fixed column sample, a
running top-2 of the cost), so the sparse solver, which never holds the dense matrix, uses the
same functions: :func:`row_statistics`, :func:`calibrate` (no-partner costs), :func:`score`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .cost import check_compatible, cost_blocks, default_device

#: matched when score <= this (the best unrelated column sits near -1).
DEFAULT_THRESHOLD = -1.4
#: columns sampled per SAE pair to estimate each row's null distribution.
DEFAULT_SAMPLE = 512


def part_slices(params: str, d_in: int) -> list[slice]:
    """Column slices of the direction parts in ``feature_matrix(weights, params)`` (bias left out)."""
    if params == "decoder" or params == "encoder":
        return [slice(0, d_in)]
    return [slice(0, d_in), slice(d_in, 2 * d_in)]


def directions(X: torch.Tensor, parts: Sequence[slice] | None = None) -> torch.Tensor:
    """Part-normalised vectors: each part scaled to unit norm, the whole divided by sqrt(#parts),
    so that ``X̃_i·Ỹ_j`` is the mean cosine over the parts."""
    parts = list(parts) if parts else [slice(0, X.shape[1])]
    out = [X[:, p].to(torch.float32) for p in parts]
    out = [t / t.norm(dim=1, keepdim=True).clamp_min(1e-12) for t in out]
    return torch.cat(out, dim=1) / math.sqrt(len(out))


@dataclass(frozen=True)
class RowStatistics:
    """Per-row statistics of SAE A's features (rows) against SAE B's (columns).

    ``x2`` [n_a], ``y2`` [n_b]: squared norms of the cost vectors. ``null_loc``/``null_scale``
    [n_a]: robust location / scale of the direction distance to the sampled columns.
    ``nearest`` [n_a]: argmin_j C_ij (-1 when not collected); ``best_cost``/``second_cost``: the
    row's two smallest C_ij. ``parts``: the direction parts used.
    """

    x2: np.ndarray
    y2: np.ndarray
    null_loc: np.ndarray
    null_scale: np.ndarray
    n_b: int
    nearest: np.ndarray
    best_cost: np.ndarray
    second_cost: np.ndarray
    parts: tuple = ()

    @property
    def extreme_factor(self) -> float:
        """sqrt(2 ln n_b): how many scales below the location the minimum of n_b draws falls."""
        return math.sqrt(2.0 * math.log(max(self.n_b, 2)))

    def alt_cost(self, col: np.ndarray) -> np.ndarray:
        """min over j != col[i] of C_ij (needs the nearest / second costs)."""
        col = np.asarray(col)
        return np.where(col == self.nearest, self.second_cost, self.best_cost)


def row_statistics(
    X: torch.Tensor, Y: torch.Tensor, *, parts: Sequence[slice] | None = None,
    n_sample: int = DEFAULT_SAMPLE, seed: int = 0, nearest: bool = True,
    block_rows: int | None = None, device: Any = None,
) -> RowStatistics:
    """Blocked pass over the rows: the null of the direction distance from ``n_sample`` random
    columns and (``nearest=True``) each row's two smallest costs. Holds one block at a time."""
    check_compatible(X, Y)
    n_a, n_b = X.shape[0], Y.shape[0]
    dev = default_device(device)
    x2 = (X.to(torch.float64) ** 2).sum(1).cpu().numpy()
    y2 = (Y.to(torch.float64) ** 2).sum(1).cpu().numpy()
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n_b, size=min(n_sample, n_b), replace=False))
    Xd = directions(X, parts)
    Yd = directions(Y[torch.as_tensor(sample, device=Y.device)], parts)
    loc = np.empty(n_a); scale = np.empty(n_a)
    for r0, blk in cost_blocks(Xd, Yd, block_rows=block_rows, device=dev):
        s = blk * 0.5
        med = s.median(dim=1).values
        mad = (s - med[:, None]).abs().median(dim=1).values
        rows = slice(r0, r0 + blk.shape[0])
        loc[rows] = med.double().cpu().numpy()
        scale[rows] = (1.4826 * mad).clamp_min(1e-6).double().cpu().numpy()
    near = np.full(n_a, -1, np.int64)
    best = np.full(n_a, np.nan); second = np.full(n_a, np.nan)
    if nearest:
        k = min(2, n_b)
        for r0, blk in cost_blocks(X, Y, block_rows=block_rows, device=dev):
            v, j = torch.topk(blk, k, dim=1, largest=False)
            rows = slice(r0, r0 + blk.shape[0])
            near[rows] = j[:, 0].cpu().numpy()
            best[rows] = v[:, 0].double().cpu().numpy()
            second[rows] = v[:, -1].double().cpu().numpy() if k > 1 else np.inf
    return RowStatistics(x2, y2, loc, scale, n_b, near, best, second, tuple(parts or ()))


def nearest_two(C: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(argmin, smallest, second smallest) per row of a dense cost matrix."""
    n_a, n_b = C.shape
    if n_b < 2:
        return np.zeros(n_a, np.int64), C[:, 0].astype(np.float64), np.full(n_a, np.inf)
    two = np.argpartition(C, 1, axis=1)[:, :2]
    v = np.take_along_axis(C, two, axis=1)
    order = np.argsort(v, axis=1, kind="stable")
    two = np.take_along_axis(two, order, axis=1)
    v = np.take_along_axis(v, order, axis=1)
    return two[:, 0].astype(np.int64), v[:, 0].astype(np.float64), v[:, 1].astype(np.float64)


def with_nearest(stats: RowStatistics, C: np.ndarray) -> RowStatistics:
    """``stats`` with nearest / best / second costs taken from a dense cost matrix."""
    from dataclasses import replace

    near, best, second = nearest_two(C)
    return replace(stats, nearest=near, best_cost=best, second_cost=second)


def direction_distance(X: torch.Tensor, Y: torch.Tensor, col: np.ndarray,
                       parts: Sequence[slice] | None = None) -> np.ndarray:
    """``s_i = 1 - mean_k cos`` of row i and column ``col[i]`` (NaN where col = -1)."""
    col = np.asarray(col)
    ok = col >= 0
    out = np.full(col.shape[0], np.nan)
    if ok.any():
        Xd = directions(X.cpu()[torch.as_tensor(np.flatnonzero(ok))], parts).double()
        Yd = directions(Y.cpu()[torch.as_tensor(col[ok])], parts).double()
        out[ok] = (1.0 - (Xd * Yd).sum(1)).numpy()
    return out


def score(stats: RowStatistics, X: torch.Tensor, Y: torch.Tensor, col: np.ndarray) -> np.ndarray:
    """The criterion's statistic for row i against column ``col[i]`` (see module docstring):
    ≈ -1 for the best unrelated column, lower for true partners. ``matched = score <= threshold``.
    +inf where ``col = -1``."""
    s = direction_distance(X, Y, col, stats.parts or None)
    z = (s - stats.null_loc) / (stats.null_scale * stats.extreme_factor)
    return np.where(np.isnan(z), np.inf, z)


def distance_threshold(stats: RowStatistics, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-row direction distance at which score == threshold."""
    return stats.null_loc + threshold * stats.null_scale * stats.extreme_factor


def calibrate(stats: RowStatistics, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per-row no-partner cost (absolute cost units) for the partial mode (see module docstring)."""
    s = np.clip(distance_threshold(stats, threshold), 0.0, None)
    y2 = np.where(stats.nearest >= 0, stats.y2[np.clip(stats.nearest, 0, None)], stats.x2)
    return s * (stats.x2 + y2)
