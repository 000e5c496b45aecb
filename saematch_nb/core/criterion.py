"""The calibrated binary criterion: is feature i of SAE A the same feature as its partner in SAE B?

**Statistic.** The *direction distance* of a pair, ``s_ij = 1 - mean_k cos(X_i[k], Y_j[k])``: the
mean over the parameter parts ``k`` of the cost (folded decoder row, folded encoder column; the
one-number b_enc part is left out) of their cosine, in [0, 2]. It is scale-free (folding and any
per-feature rescaling leave it unchanged) and equals ``|X̃_i - Ỹ_j|² / 2`` on part-normalised
vectors (:func:`directions`), so blocked matmuls compute it. True partners sit near
``noise² / 2``; unrelated features near 1.

**Rule.** ``matched = partner >= 0 & s <= threshold & mutual best``: the partner is the row's
nearest column and the row is the partner's nearest row (:func:`mutual_best`). A dying feature
whose nearest candidate is a surviving sibling's partner (feature splitting) fails the mutual test
(the partner prefers the sibling), whatever its distance; so does a forced match. A feature with an
all-zero decoder row or encoder column has no direction (:func:`zero_rows`): it is never matched
and stays out of the null; an SAE with no other feature is an error (``match`` says so).

**The null: each SAE against itself** (:func:`calibrate`). A feature of A with no partner in B
reaches its nearest B feature only by chance, and how close chance comes depends on the pair's
geometry: its spectrum, and above all the *families* of features (clusters) that adjacent layers
share. A model of unrelated features built from A alone (a rotation, a moment-preserving sign
flip: the previous criterion) moves A's clusters off B's and under-states chance closeness where
clusters are shared. The pair itself has the right null in it: inside one SAE no two features are
the same feature, so a feature's nearest *other* feature of its own SAE (leave one out) is how
close an unrelated feature drawn from the same distribution comes, clusters included. The null
distances are the leave-one-out nearest distances of ``n_null`` sampled rows of A (within A) and
of ``n_null`` of B (within B), pooled. Assumptions: the features of A that have no partner are
distributed like the rest of A's and B's features (dying features are not a special region), and
``n_a`` and ``n_b`` are within a few times of each other (the nearest of ~n candidates).

*Duplicates.* A few within-SAE pairs are far closer than chance (trained SAEs have some
near-duplicate features; a tight split leaves two copies of one feature). They are the same
feature twice, not a chance neighbour, and counted in the null they would drag its lower tail
toward 0 and reject real persistence. So the null's bulk is modelled first: a log-normal matched
to its 10% and 50% quantiles (the lower tail is left out, where duplicates sit); distances below
that model's ``1e-4`` quantile (:data:`DUPLICATE_TAIL`) are flagged as duplicates and dropped.
Where a large share of the features comes in tight groups (a multi-modal null) the model's
quantile falls low and nothing is dropped: the null then keeps the groups and is conservative.

``threshold`` is the ``alpha``-quantile of the remaining null distances: a feature with no partner
has a nearest candidate that close with probability about ``alpha``, and is then also accepted
only if the match is mutual, so ``alpha`` bounds the rule's false-match rate. No persistence
bound: a pair's persisting features may be a tight majority with a broad drifting minority (real
layer pairs drift unevenly), and any bound fitted to the tight part cuts the drifting part off;
the mutual test is what rejects siblings.

**Error rate.** :class:`Calibration` reports ``alpha``; ``accept_rate``, the estimated
probability that a feature with no partner is *accepted*: the share of (non-duplicate) null rows
whose leave-one-out neighbour lies within the threshold AND is mutual (the neighbour's own nearest
is that row), the same two tests the rule applies; ``pi0``, the estimated share of A's features
with no partner (Storey's estimator: rows whose nearest B distance lies above the null's median,
over one half); and so the expected number of false matches ``accept_rate · pi0 · n_a``.
Measured on planted families, shared-cluster nulls and pure null pairs in
tests/core/test_criterion.py and benchmarks/bench_criterion.py.

The partial mode (``match(..., allow_unmatched=True)``) solves its assignment on the same
statistic with the same threshold as the per-feature "no partner" cost, so every feature is
judged on the same scale whatever its norm (an absolute-cost no-partner option lets a large-norm
feature displace a small-norm one).

Cost: one pass over all pairs for each row's and each column's nearest (the mutual test and
``pi0``): read off the dense JV solver's own product when it runs (``solve(..., cosine_parts=)``,
the parts multiplied apart), else :func:`direction_pass`; plus two passes of ``n_null`` sampled
rows within A and within B (default 1024 each; every row for smaller SAEs), and a small pass for
the mutual check of the null rows that pass the threshold. No eigendecomposition.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .cost import check_compatible, default_device

#: default false-match rate of the null test
DEFAULT_ALPHA = 0.01
#: rows sampled on each side for the leave-one-out null (every row for smaller SAEs): 2 x 1024
#: null distances put the threshold at about 0.6 alpha (the lower bound below) for a pass of
#: 2048 rows, a quarter of the cost pass at 8k features
DEFAULT_NULL_ROWS = 1024
#: null distances below this quantile of the log-normal fitted to the null's bulk are duplicates
DUPLICATE_TAIL = 1e-4
#: quantiles of the null's log distances the bulk model is matched to
BULK_QUANTILES = (0.10, 0.50)
#: the threshold is the lower LOWER_BOUND confidence bound of the null's alpha-quantile
LOWER_BOUND = 0.10
#: bumped whenever the rule changes: results of another version are recomputed by the cache
CRITERION_VERSION = 3
_COL_BLOCK_BYTES = 128 * 2**20


def part_slices(params: str, d_in: int) -> list[slice]:
    """Column slices of the direction parts in ``feature_matrix(weights, params)`` (bias left out)."""
    if params == "decoder" or params == "encoder":
        return [slice(0, d_in)]
    return [slice(0, d_in), slice(d_in, 2 * d_in)]


def directions(X: torch.Tensor, parts: Sequence[slice] | None = None) -> torch.Tensor:
    """Part-normalised vectors: each part scaled to unit norm, the whole divided by sqrt(#parts),
    so that ``X̃_i·Ỹ_j`` is the mean cosine over the parts and ``|X̃_i - Ỹ_j|² = 2 s_ij``."""
    parts = list(parts) if parts else [slice(0, X.shape[1])]
    out = [X[:, p].to(torch.float32) for p in parts]
    out = [t / t.norm(dim=1, keepdim=True).clamp_min(1e-12) for t in out]
    return torch.cat(out, dim=1) / math.sqrt(len(out))


def direction_distance(X: torch.Tensor, Y: torch.Tensor, col: np.ndarray,
                       parts: Sequence[slice] | None = None) -> np.ndarray:
    """``s_i = 1 - mean_k cos`` of row i and column ``col[i]`` (NaN where col = -1), in float64."""
    col = np.asarray(col)
    ok = col >= 0
    out = np.full(col.shape[0], np.nan)
    if ok.any():
        rows, cols = torch.as_tensor(np.flatnonzero(ok)), torch.as_tensor(col[ok])
        Xc, Yc = X.cpu(), Y.cpu()
        parts = list(parts) if parts else [slice(0, X.shape[1])]
        cos = torch.zeros(rows.shape[0], dtype=torch.float64)
        for p in parts:  # per part, in row blocks: no float64 copy of the whole matrices
            for r0 in range(0, rows.shape[0], 4096):
                a = Xc[rows[r0:r0 + 4096], p].double()
                b = Yc[cols[r0:r0 + 4096], p].double()
                na, nb = a.norm(dim=1).clamp_min(1e-12), b.norm(dim=1).clamp_min(1e-12)
                cos[r0:r0 + 4096] += (a * b).sum(1) / (na * nb)
        out[ok] = np.clip((1.0 - cos / len(parts)).numpy(), 0.0, 2.0)
    return out


def zero_rows(X: torch.Tensor, parts: Sequence[slice] | None = None) -> np.ndarray:
    """``zero[i]``: a part of row i (its decoder row or encoder column) is all zero, so the feature
    has no direction. Its direction distance to anything would read 1 (cosine 0 by convention):
    such a feature is never matched, and left out of the null (that 1 is not a chance closeness)."""
    parts = list(parts) if parts else [slice(0, X.shape[1])]
    zero = torch.zeros(X.shape[0], dtype=torch.bool)
    for p in parts:
        zero |= (X[:, p] == 0).all(dim=1).cpu()
    return zero.numpy()


# -- the calibration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """The decision rule of one SAE pair: ``matched = direction distance <= threshold & mutual best``.

    ``alpha``: false-match rate of the null test; ``null_threshold``: its cut-off (the
    alpha-quantile of the leave-one-out null distances, duplicates dropped); ``null_median``:
    median of those; ``bulk_centre`` / ``bulk_spread``: the log-normal matched to the null's bulk
    (median distance and spread of the log distance); ``duplicate_cut``: null distances below it
    were dropped as within-SAE duplicates, ``n_duplicates`` of them; ``accept_rate``: estimated
    probability that a feature without partner is accepted (threshold and mutual test);
    ``pi0``: estimated share of A's features with no partner; ``n_null``: null distances kept;
    ``expert``: the threshold was given by the user (``match(..., calibration=<float>)``).
    """

    threshold: float
    alpha: float = DEFAULT_ALPHA
    null_threshold: float = float("nan")
    null_median: float = float("nan")
    bulk_centre: float = float("nan")
    bulk_spread: float = float("nan")
    duplicate_cut: float = 0.0
    n_duplicates: int = 0
    accept_rate: float = float("nan")
    pi0: float = float("nan")
    n_null: int = 0
    expert: bool = False
    method: str = "leave-one-out null + mutual best"
    version: int = CRITERION_VERSION

    def expected_false_matches(self, n_rows: int) -> float:
        """Expected number of A-features without a partner that the rule accepts:
        accept_rate · pi0 · n (alpha · pi0 · n for calibrations without an accept_rate)."""
        if self.expert or not math.isfinite(self.pi0):
            return float("nan")
        rate = self.accept_rate if math.isfinite(self.accept_rate) else self.alpha
        return float(rate * self.pi0 * n_rows)

    @property
    def binding(self) -> str:
        """What sets the threshold: "null" or "expert"."""
        return "expert" if self.expert else "null"

    def to_dict(self) -> dict[str, Any]:
        return {k: (float(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Calibration":
        d = dict(d or {})
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "threshold" not in known:
            raise ValueError("a Calibration needs a threshold")
        known.setdefault("version", 0 if not d.get("expert") else CRITERION_VERSION)
        return cls(**known)


def check_n_null(n_null: Any) -> int:
    n = int(n_null)
    if n < 64:
        raise ValueError(f"n_null must be at least 64 (null distances drawn per side), got {n_null}")
    return n


def _check_alpha(alpha: float) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"alpha must be a number in (0, 0.5), got {alpha!r}") from None
    if not 0.0 < a < 0.5:
        raise ValueError(f"alpha is the false-match rate of the null test: a number in (0, 0.5), got {alpha!r}")
    return a


def nearest_direction(Q: torch.Tensor, Y: torch.Tensor, parts: Sequence[slice] | None,
                      device: Any = None, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For part-normalised query rows Q, the nearest row of Y (raw feature vectors, normalised
    here block by block so that no direction copy of Y is held) and its direction distance.
    ``exclude[q]``: a row of Y that query q may not take (leave one out: Q's own row); -1 none."""
    dev = default_device(device)
    Qd = Q.to(dev, torch.float32)
    n_q, n_y = Q.shape[0], Y.shape[0]
    best = torch.full((n_q,), -float("inf"), dtype=torch.float32, device=dev)
    arg = torch.zeros(n_q, dtype=torch.long, device=dev)
    ex = None if exclude is None else torch.as_tensor(np.asarray(exclude, np.int64), device=dev)
    cb = int(max(1, min(n_y, _COL_BLOCK_BYTES // max(1, 4 * max(n_q, Y.shape[1])))))
    for c0 in range(0, n_y, cb):
        Yd = directions(Y[c0:c0 + cb].to(dev), parts)
        G = Qd @ Yd.T
        if ex is not None:
            hit = torch.nonzero((ex >= c0) & (ex < c0 + Yd.shape[0])).flatten()
            G[hit, ex[hit] - c0] = -float("inf")
        v, j = G.max(dim=1)
        better = v > best
        best = torch.where(better, v, best)
        arg = torch.where(better, j + c0, arg)
    s = (1.0 - best.double()).clamp(0.0, 2.0).cpu().numpy()
    return arg.cpu().numpy().astype(np.int64), s


@dataclass(frozen=True)
class DirectionPass:
    """Each row's nearest column and each column's nearest row in direction distance (float32
    products): ``row_arg``/``row_s`` [n_a], ``col_arg``/``col_s`` [n_b]."""

    row_arg: np.ndarray
    row_s: np.ndarray
    col_arg: np.ndarray
    col_s: np.ndarray


def pass_from_cosines(cp: Mapping[str, np.ndarray]) -> DirectionPass:
    """The :class:`DirectionPass` a solver read off its own product (``AssignmentResult.cosine_pass``:
    largest mean part cosine per row and column)."""
    dist = lambda c: np.clip(1.0 - np.asarray(c, np.float64), 0.0, 2.0)  # noqa: E731
    return DirectionPass(np.asarray(cp["row_arg"], np.int64), dist(cp["row_cos"]),
                         np.asarray(cp["col_arg"], np.int64), dist(cp["col_cos"]))


def direction_pass(X: torch.Tensor, Y: torch.Tensor, parts: Sequence[slice] | None, *, device: Any = None,
                   block_rows: int | None = None) -> DirectionPass:
    """One blocked pass over all pairs (see :class:`DirectionPass`)."""
    from .cost import default_block_rows

    check_compatible(X, Y)
    dev = default_device(device)
    n_a, n_b = X.shape[0], Y.shape[0]
    Yd = directions(Y.to(dev), parts)
    br = block_rows or default_block_rows(n_b)
    row_best = torch.empty(n_a, dtype=torch.float32, device=dev)
    row_arg = torch.empty(n_a, dtype=torch.long, device=dev)
    col_best = torch.full((n_b,), -float("inf"), dtype=torch.float32, device=dev)
    col_arg = torch.zeros(n_b, dtype=torch.long, device=dev)
    for r0 in range(0, n_a, br):
        G = directions(X[r0:r0 + br].to(dev), parts) @ Yd.T
        v, j = G.max(dim=1)
        row_best[r0:r0 + G.shape[0]], row_arg[r0:r0 + G.shape[0]] = v, j
        cv, ci = G.max(dim=0)
        better = cv > col_best
        col_best = torch.where(better, cv, col_best)
        col_arg = torch.where(better, ci + r0, col_arg)
    dist = lambda t: (1.0 - t.double()).clamp(0.0, 2.0).cpu().numpy()  # noqa: E731
    return DirectionPass(row_arg.cpu().numpy().astype(np.int64), dist(row_best),
                         col_arg.cpu().numpy().astype(np.int64), dist(col_best))


def _sample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= k else np.sort(rng.choice(n, size=k, replace=False))


def _nearest_unit(Q: torch.Tensor, Zd: torch.Tensor, exclude: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    """``nearest_direction`` for rows already part-normalised on both sides (one direction copy of
    the SAE, made once per side), leaving out ``exclude[q]``."""
    dev = default_device(device)
    Qd = Q.to(dev, torch.float32)
    ex = torch.as_tensor(np.asarray(exclude, np.int64), device=dev)
    best = torch.empty(Qd.shape[0], dtype=torch.float32, device=dev)
    arg = torch.empty(Qd.shape[0], dtype=torch.long, device=dev)
    rb = int(max(1, min(Qd.shape[0], _COL_BLOCK_BYTES // max(1, 4 * Zd.shape[0]))))
    for r0 in range(0, Qd.shape[0], rb):
        G = Qd[r0:r0 + rb] @ Zd.T
        G[torch.arange(G.shape[0], device=dev), ex[r0:r0 + rb]] = -float("inf")
        best[r0:r0 + rb], arg[r0:r0 + rb] = G.max(dim=1)
    return arg.cpu().numpy().astype(np.int64), (1.0 - best.double()).clamp(0.0, 2.0).cpu().numpy()


def _loo(Z: torch.Tensor, rows: np.ndarray, parts, device) -> tuple[np.ndarray, np.ndarray, Any]:
    """Leave-one-out nearest neighbour of the sampled ``rows`` of Z within Z: (neighbour, distance,
    Z's directions on the device, for :func:`_mutual_within`)."""
    if Z.shape[0] < 2:
        return np.zeros(0, np.int64), np.zeros(0), None
    Zd = directions(Z.to(default_device(device)), parts)
    nbr, d = _nearest_unit(Zd[torch.as_tensor(rows, device=Zd.device)], Zd, rows, device)
    return nbr, d, Zd


def _mutual_within(Zd, rows: np.ndarray, nbr: np.ndarray, device) -> np.ndarray:
    """``ok[k]``: row ``rows[k]`` is its neighbour ``nbr[k]``'s own leave-one-out nearest row."""
    if rows.size == 0:
        return np.zeros(0, bool)
    back, _ = _nearest_unit(Zd[torch.as_tensor(nbr, device=Zd.device)], Zd, nbr, device)
    return back == rows


def _storey(s1: np.ndarray, null_median: float) -> float:
    """Storey's pi0: rows whose nearest distance lies past the null's median are (about half of)
    the rows with no partner."""
    return float(min(1.0, np.mean(np.asarray(s1) > null_median) / 0.5))


def with_pi0(cal: Calibration, nearest: DirectionPass) -> Calibration:
    """``cal`` with pi0 from every row's nearest distance (a calibration made with ``pi0_later``)."""
    from dataclasses import replace

    if cal.expert or math.isfinite(cal.pi0) or not math.isfinite(cal.null_median):
        return cal
    return replace(cal, pi0=_storey(nearest.row_s, cal.null_median))


def _lower_quantile(v: np.ndarray, alpha: float) -> float:
    """The alpha-quantile of the null, taken at the lower 90% confidence bound of its order
    statistic: the tail below it holds only ~alpha·N values, and in a leave-one-out null they come
    in pairs (two features that are each other's nearest both count), so half as many independent
    ones. At N = 1024 the plain quantile's false-match rate ranged 0.4-3.3% over seeds; the bound
    keeps it below alpha on most draws (about 0.4·alpha at N = 1024, 0.7·alpha at N = 4096)."""
    from scipy.stats import binom

    v = np.sort(v)
    pairs = max(1, v.size // 2)
    k = int(binom.ppf(LOWER_BOUND, pairs, alpha))  # independent pairs below the quantile, at least
    return float(v[min(v.size - 1, max(0, 2 * k - 1))])


def calibrate(X: torch.Tensor, Y: torch.Tensor, *, parts: Sequence[slice] | None = None,
              alpha: float = DEFAULT_ALPHA, n_null: int = DEFAULT_NULL_ROWS, seed: int = 0,
              device: Any = None, nearest: DirectionPass | None = None, pi0_later: bool = False) -> Calibration:
    """The :class:`Calibration` of the pair (X: A's feature vectors, Y: B's), see the module
    docstring. ``nearest``: the pair's :func:`direction_pass` when the caller has it (it gives
    ``pi0`` on every row; else a sample of rows is searched, or, with ``pi0_later``, pi0 is left NaN
    for :func:`with_pi0` once the caller has the pass). Deterministic for a given ``seed``."""
    check_compatible(X, Y)
    alpha = _check_alpha(alpha)
    n_null = check_n_null(n_null)
    n_a, n_b = X.shape[0], Y.shape[0]
    if n_a == 0 or n_b == 0:
        raise ValueError("calibrate needs SAEs with at least one feature each")
    parts = list(parts) if parts else [slice(0, X.shape[1])]
    rng = np.random.default_rng(seed)
    # features without a direction are no sample of chance closeness (their distance 1 is a convention)
    live_a, live_b = np.flatnonzero(~zero_rows(X, parts)), np.flatnonzero(~zero_rows(Y, parts))
    for side, live in (("A", live_a), ("B", live_b)):
        if live.size == 0:
            raise ValueError(f"calibrate: every feature of SAE {side} is zero (no direction to compare): "
                             "check the weights that were loaded")
    rows_a, rows_b = live_a[_sample(live_a.size, n_null, rng)], live_b[_sample(live_b.size, n_null, rng)]
    nbr_a, d_a, Xd = _loo(X, rows_a, parts, device)
    nbr_b, d_b, Yd = _loo(Y, rows_b, parts, device)
    null = np.concatenate([d_a, d_b])
    if null.size == 0:  # one feature on each side: no null to learn from; 1 = unrelated directions
        return Calibration(threshold=1.0, alpha=alpha, null_threshold=1.0, method="no null (one feature per SAE)")
    # the bulk model: a log-normal through the 10% and 50% quantiles of the log distances
    L = np.log(np.maximum(null, 1e-12))
    lo, hi = np.quantile(L, BULK_QUANTILES)
    z = NormalDist().inv_cdf
    spread = float((hi - lo) / (z(BULK_QUANTILES[1]) - z(BULK_QUANTILES[0])))
    cut = float(math.exp(hi + z(DUPLICATE_TAIL) * spread)) if spread > 0 else 0.0
    keep = null >= cut
    clean = null[keep]
    thr = _lower_quantile(clean, alpha)
    med = float(np.median(clean))
    # accepted by chance: within the threshold AND mutual (the neighbour's own nearest is the row)
    hits = 0
    for Zd, rows, nbr, d, k in ((Xd, rows_a, nbr_a, d_a, keep[:d_a.size]), (Yd, rows_b, nbr_b, d_b, keep[d_a.size:])):
        near = np.flatnonzero(k & (d <= thr))
        hits += int(_mutual_within(Zd, rows[near], nbr[near], device).sum())
    del Xd, Yd
    accept_rate = hits / clean.size
    if nearest is not None:
        pi0 = _storey(nearest.row_s, med)
    elif pi0_later:
        pi0 = float("nan")
    else:
        pi0 = _storey(nearest_direction(directions(X[torch.as_tensor(rows_a)], parts), Y, parts, device)[1], med)
    return Calibration(
        threshold=thr, alpha=alpha, null_threshold=thr, null_median=med, bulk_centre=float(math.exp(hi)),
        bulk_spread=spread, duplicate_cut=cut, n_duplicates=int((~keep).sum()), accept_rate=float(accept_rate),
        pi0=pi0, n_null=int(clean.size),
    )


def expert_calibration(threshold: float) -> Calibration:
    """A user-given threshold on the direction distance (``match(..., calibration=0.2)``)."""
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"calibration must be a direction-distance threshold (a float in [0, 2]), "
                        f"a Calibration, or None; got {threshold!r}") from None
    if not (0.0 <= t <= 2.0) or math.isnan(t):
        raise ValueError(f"calibration={threshold!r}: a direction-distance threshold lies in [0, 2] "
                         "(0 = identical directions, 1 = unrelated); leave it None for the calibrated rule")
    return Calibration(threshold=t, expert=True, alpha=float("nan"), method="expert threshold")


def resolve(calibration: Any, X: torch.Tensor, Y: torch.Tensor, **kw: Any) -> Calibration:
    """None -> :func:`calibrate`; a Calibration is reused; a number is an expert threshold."""
    if calibration is None:
        return calibrate(X, Y, **kw)
    if isinstance(calibration, Calibration):
        return calibration
    if isinstance(calibration, Mapping):
        return Calibration.from_dict(calibration)
    if isinstance(calibration, bool):
        raise TypeError("calibration must be None, a Calibration or a float threshold, not a bool")
    return expert_calibration(calibration)


def mutual_best(X: torch.Tensor, Y: torch.Tensor, partner: np.ndarray, parts: Sequence[slice] | None,
                *, device: Any = None, block_rows: int | None = None, rtol: float = 1e-5,
                nearest: DirectionPass | None = None, distance: np.ndarray | None = None) -> np.ndarray:
    """``ok[i]``: the partner of row i is its nearest column AND row i is the partner's nearest row
    in direction distance (ties within ``rtol`` count as nearest). One blocked pass over all pairs
    (none when the pair's ``nearest`` :func:`direction_pass` is given; ``distance``: the pairs'
    direction distances when the caller has them). False where ``partner = -1``."""
    partner = np.asarray(partner)
    if nearest is None:
        nearest = direction_pass(X, Y, parts, device=device, block_rows=block_rows)
    has = partner >= 0
    s = direction_distance(X, Y, partner, parts) if distance is None else np.asarray(distance)
    ok = np.zeros(partner.shape[0], bool)
    j = partner[has]
    tol = rtol + 1e-6  # float32 products against float64 pair distances
    ok[has] = (s[has] <= nearest.row_s[has] + tol) & (s[has] <= nearest.col_s[j] + tol)
    return ok
