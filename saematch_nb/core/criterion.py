"""The calibrated binary criterion: is feature i of SAE A the same feature as its partner in SAE B?

**Statistic.** The *direction distance* of a pair, ``s_ij = 1 - mean_k cos(X_i[k], Y_j[k])``: the
mean over the parameter parts ``k`` of the cost (folded decoder row, folded encoder column; the
one-number b_enc part is left out) of their cosine, in [0, 2]. It is scale-free (folding and any
per-feature rescaling leave it unchanged) and equals ``|X̃_i - Ỹ_j|² / 2`` on part-normalised
vectors (:func:`directions`), so blocked matmuls compute it. True partners sit near
``noise² / 2``; unrelated features near 1.

**Calibration against a null pair** (:func:`calibrate`). A pair is accepted when its distance
could not have come from a feature with no partner. To know what that looks like *for this pair*
(its widths, its spectrum, its clusters), a null copy of A is built in which nothing persists but
the first two moments of A's feature directions are kept: one map of d_in space,
``T = V S Vᵀ`` (``V`` the eigenvectors of the covariance of A's unit directions, ``S`` random
signs), is applied to the decoder row and the encoder column alike, ``u -> μ + T (u - μ)``
(``μ`` the part's mean direction), renormalised. Mean, covariance and so the spectrum stay, and a
feature's encoder stays consistent with its decoder (with a separate map per part the two would
agree less than real unrelated features do, and chance similarity would be under-stated); the
specific direction of every feature is scrambled. A random rotation of d_in would instead make an
anisotropic SAE look isotropic and under-state chance similarity too. For
every null row the nearest B feature is found; its distance is what a feature without a partner
reaches by chance when it takes its best candidate (in the bijective optimum it usually gets
worse). ``null_threshold`` is the ``alpha``-quantile of these distances: a feature that has no
partner is accepted with probability at most about ``alpha`` (default 1%), on any pair.

**Persistence bound.** A null of unrelated features cannot tell a persisting feature from a
near-duplicate *sibling* (feature splitting: a dying feature's best candidate is often the
partner of a surviving sibling, cosine ~0.8 where true partners reach ~0.99). So the accepted
distance is also placed against the pair's own persisting matches: the sampled rows that are
*mutual* nearest neighbours below ``null_threshold`` (a sibling's candidate prefers the sibling,
so it is not mutual) give the noise level of persistence, a robust centre and spread of
``log s``; ``persist_threshold = exp(centre + z · spread)`` with ``z`` the one-sided normal quantile
of ``persist_tail`` (default 0.1%: about 1 in 1000 persisting features is rejected if their log
distances are normal). Where persistence is a broad continuum (real SAEs) the spread is wide and
the bound hardly binds; where it is a tight component it cuts off the siblings.

**Mutual best.** Last, a match is accepted only when each side is the other's nearest feature in
direction distance (:func:`mutual_best`): a forced or sibling match is dominated by a closer
feature on one side. On the demo's real SAEs the accepted pairs that fail this test agree with the
data's best-Pearson partner about a third as often as mutual ones (docs/DEMO.md), and on planted
families with heterogeneous noise, where no distance bound separates siblings from partners, it is
what keeps the criterion's accuracy (benchmarks/bench_criterion.py).

``threshold = min(null_threshold, persist_threshold)``;
``matched = partner >= 0 & s <= threshold & mutual_best``. The two later tests only remove
matches, so the null test's false-match rate bounds the whole rule's.
The partial mode (``match(..., allow_unmatched=True)``) solves its assignment on the same
statistic with the same threshold as the per-feature "no partner" cost, so every feature is
judged on the same scale whatever its norm (an absolute-cost no-partner option lets a large-norm
feature displace a small-norm one).

**Error rate.** :class:`Calibration` reports ``alpha``, the estimated share of rows that behave
like the null (``pi0``, Storey's estimator: rows whose nearest distance lies above the null's
median, over one half) and so the expected number of false matches ``alpha · pi0 · n_a``.
Measured on planted families and pure null pairs in tests/core/test_criterion.py and
benchmarks/bench_criterion.py.

Cost: three blocked passes of ``n_null`` sampled rows (default 2048) against all columns (null,
real, and the mutual check), streamed over column blocks; for widths up to 2048 every row is used
and the null is drawn several times so that at least ``n_null`` null distances are collected.
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
#: rows sampled for the null (and null distances collected at least)
DEFAULT_NULL_ROWS = 2048
#: share of persisting features the persistence bound may reject (if log distances are normal)
DEFAULT_PERSIST_TAIL = 1e-3
#: mutual nearest neighbours below the null threshold needed to estimate the persistence bound
MIN_PERSIST = 20
#: null draws at most (small SAEs: every row, several sign draws)
MAX_DRAWS = 16
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
    """``s_i = 1 - mean_k cos`` of row i and column ``col[i]`` (NaN where col = -1)."""
    col = np.asarray(col)
    ok = col >= 0
    out = np.full(col.shape[0], np.nan)
    if ok.any():
        Xd = directions(X.cpu()[torch.as_tensor(np.flatnonzero(ok))], parts).double()
        Yd = directions(Y.cpu()[torch.as_tensor(col[ok])], parts).double()
        out[ok] = np.clip((1.0 - (Xd * Yd).sum(1)).numpy(), 0.0, 2.0)
    return out


# -- the calibration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """The decision rule of one SAE pair: ``matched = direction distance <= threshold``.

    ``alpha``: false-match rate of the null test; ``null_threshold``: its cut-off (the
    alpha-quantile of the null's nearest-partner distances); ``persist_threshold``: the upper
    bound of the pair's persisting component (inf when too few clear persisting matches were
    found to estimate it); ``persist_centre`` / ``persist_spread``: its median distance and the
    robust spread of its log distance; ``null_median``: median of the null distances; ``pi0``:
    estimated share of A's features with no partner; ``n_null``: null distances drawn;
    ``n_persist``: mutual nearest neighbours the bound was estimated from; ``expert``: the
    threshold was given by the user (``match(..., calibration=<float>)``).
    """

    threshold: float
    alpha: float = DEFAULT_ALPHA
    null_threshold: float = float("nan")
    persist_threshold: float = float("inf")
    persist_centre: float = float("nan")
    persist_spread: float = float("nan")
    persist_tail: float = DEFAULT_PERSIST_TAIL
    null_median: float = float("nan")
    pi0: float = float("nan")
    n_null: int = 0
    n_persist: int = 0
    expert: bool = False
    method: str = "moment-preserving null + persistence bound"

    def expected_false_matches(self, n_rows: int) -> float:
        """Expected number of A-features without a partner that the rule accepts: alpha · pi0 · n."""
        if self.expert or not math.isfinite(self.pi0):
            return float("nan")
        return float(self.alpha * self.pi0 * n_rows)

    @property
    def binding(self) -> str:
        """Which bound sets the threshold: "null", "persistence" or "expert"."""
        if self.expert:
            return "expert"
        return "persistence" if self.persist_threshold < self.null_threshold else "null"

    def to_dict(self) -> dict[str, Any]:
        return {k: (float(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Calibration":
        d = dict(d or {})
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "threshold" not in known:
            raise ValueError("a Calibration needs a threshold")
        return cls(**known)


def _check_alpha(alpha: float) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"alpha must be a number in (0, 0.5), got {alpha!r}") from None
    if not 0.0 < a < 0.5:
        raise ValueError(f"alpha is the false-match rate of the null test: a number in (0, 0.5), got {alpha!r}")
    return a


def _moments(Xd: torch.Tensor, parts: Sequence[slice]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-part mean unit direction and the eigenvectors of the pooled covariance of the
    centred unit directions of all parts (float64): one map of d_in space for all parts."""
    P = len(parts)
    mus, cov, n = [], None, 0
    for p in _unit_slices(parts):
        U = Xd[:, p].to(torch.float64) * math.sqrt(P)
        mu = U.mean(0)
        C = U - mu
        cov = C.T @ C if cov is None else cov + C.T @ C
        n += U.shape[0]
        mus.append(mu)
    _, V = torch.linalg.eigh(cov / max(n - 1, 1))
    return mus, V


def null_directions(Xd_rows: torch.Tensor, moments: tuple[list[torch.Tensor], torch.Tensor],
                    parts: Sequence[slice], gen: torch.Generator) -> torch.Tensor:
    """The moment-preserving null of part-normalised rows (see the module docstring): one map of
    d_in space, ``T = V S Vᵀ`` with random signs S, applied to every part alike (as a rotation of
    d_in would be: a feature's encoder and decoder stay consistent with each other), per part
    ``u -> normalise(μ + T (u - μ))``."""
    P = len(parts)
    mus, V = moments
    s = balanced_signs(V.shape[1], gen)
    out = []
    for mu, p in zip(mus, _unit_slices(parts)):
        U = Xd_rows[:, p].to(torch.float64) * math.sqrt(P)  # unit directions of this part
        Z = mu + ((U - mu) @ V * s) @ V.T
        out.append(Z / Z.norm(dim=1, keepdim=True).clamp_min(1e-12))
    return (torch.cat(out, dim=1) / math.sqrt(P)).to(torch.float32)


def balanced_signs(d: int, gen: torch.Generator) -> torch.Tensor:
    """Random signs for eigen-directions sorted by eigenvalue (ascending, as ``eigh`` returns
    them), opposite within each neighbouring pair. Independent signs would leave, for one draw,
    a systematic self-similarity ``Σ s_k λ_k / Σ λ_k`` of about ``1/sqrt(d_eff)`` between every
    feature and its null copy (0.2-0.3 for anisotropic spectra): a null in which features
    partly persist. Paired signs cancel it down to neighbouring eigenvalue gaps."""
    half = torch.randint(0, 2, ((d + 1) // 2,), generator=gen, dtype=torch.int64).to(torch.float64) * 2 - 1
    s = torch.stack([half, -half], dim=1).reshape(-1)[:d]
    return s.flip(0)  # pairs counted from the largest eigenvalue (the end of eigh's order)


def _unit_slices(parts: Sequence[slice]) -> list[slice]:
    """Slices of the parts inside a ``directions`` matrix (the parts laid side by side)."""
    out, a = [], 0
    for p in parts:
        w = p.stop - p.start
        out.append(slice(a, a + w))
        a += w
    return out


def nearest_direction(Q: torch.Tensor, Y: torch.Tensor, parts: Sequence[slice] | None,
                      device: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """For part-normalised query rows Q, the nearest row of Y (raw feature vectors, normalised
    here block by block so that no direction copy of Y is held) and its direction distance."""
    dev = default_device(device)
    Qd = Q.to(dev, torch.float32)
    n_q, n_y = Q.shape[0], Y.shape[0]
    best = torch.full((n_q,), -float("inf"), dtype=torch.float32, device=dev)
    arg = torch.zeros(n_q, dtype=torch.long, device=dev)
    cb = int(max(1, min(n_y, _COL_BLOCK_BYTES // max(1, 4 * max(n_q, Y.shape[1])))))
    for c0 in range(0, n_y, cb):
        Yd = directions(Y[c0:c0 + cb].to(dev), parts)
        v, j = (Qd @ Yd.T).max(dim=1)
        better = v > best
        best = torch.where(better, v, best)
        arg = torch.where(better, j + c0, arg)
    s = (1.0 - best.double()).clamp(0.0, 2.0).cpu().numpy()
    return arg.cpu().numpy().astype(np.int64), s


def calibrate(X: torch.Tensor, Y: torch.Tensor, *, parts: Sequence[slice] | None = None,
              alpha: float = DEFAULT_ALPHA, n_null: int = DEFAULT_NULL_ROWS,
              persist_tail: float = DEFAULT_PERSIST_TAIL, seed: int = 0, device: Any = None) -> Calibration:
    """The :class:`Calibration` of the pair (X: A's feature vectors, Y: B's), see the module
    docstring. Deterministic for a given ``seed``."""
    check_compatible(X, Y)
    alpha = _check_alpha(alpha)
    if not 0.0 < float(persist_tail) < 0.5:
        raise ValueError(f"persist_tail must be in (0, 0.5), got {persist_tail!r}")
    n_null = int(n_null)
    if n_null < 64:
        raise ValueError(f"n_null must be at least 64 (null distances drawn), got {n_null}")
    n_a = X.shape[0]
    if n_a == 0 or Y.shape[0] == 0:
        raise ValueError("calibrate needs SAEs with at least one feature each")
    parts = list(parts) if parts else [slice(0, X.shape[1])]
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(seed))
    rows = np.sort(rng.choice(n_a, size=min(n_null, n_a), replace=False))
    draws = int(min(MAX_DRAWS, max(1, math.ceil(n_null / rows.size))))
    Xs = directions(X[torch.as_tensor(rows)], parts)
    # moments from (a sample of) all of A's features: the null keeps A's spectrum, not the sample's
    mrows = rows if n_a <= 16384 else np.sort(rng.choice(n_a, size=16384, replace=False))
    Xm = Xs if mrows is rows else directions(X[torch.as_tensor(mrows)], parts)
    moments = _moments(Xm, parts)
    null = np.concatenate([nearest_direction(null_directions(Xs, moments, parts, gen), Y, parts, device)[1]
                           for _ in range(draws)])
    null_thr = float(np.quantile(null, alpha, method="lower"))
    null_med = float(np.median(null))

    near, s_real = nearest_direction(Xs, Y, parts, device)
    # Storey: rows past the null's median are (about half of) the rows with no partner
    pi0 = float(min(1.0, np.mean(s_real > null_med) / 0.5))
    # mutual nearest neighbours below the null threshold: the clear persisting matches
    cand = np.flatnonzero(s_real < null_thr)
    persist_thr, centre, spread, n_persist = float("inf"), float("nan"), float("nan"), 0
    if cand.size:
        back, _ = nearest_direction(directions(Y[torch.as_tensor(near[cand])], parts), X, parts, device)
        mutual = cand[back == rows[cand]]
        n_persist = int(mutual.size)
        if n_persist >= MIN_PERSIST:
            z = np.log(np.maximum(s_real[mutual], 1e-12))
            c = float(np.median(z))
            sd = float(1.4826 * np.median(np.abs(z - c)))
            # floor: a perfectly tight component (noise-free copies) must not reject its own members
            sd = max(sd, 0.05)
            k = NormalDist().inv_cdf(1.0 - float(persist_tail))
            persist_thr, centre, spread = float(math.exp(c + k * sd)), float(math.exp(c)), sd
    return Calibration(
        threshold=float(min(null_thr, persist_thr)), alpha=alpha, null_threshold=null_thr,
        persist_threshold=persist_thr, persist_centre=centre, persist_spread=spread,
        persist_tail=float(persist_tail), null_median=null_med, pi0=pi0, n_null=int(null.size),
        n_persist=n_persist,
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
                *, device: Any = None, block_rows: int | None = None, rtol: float = 1e-5) -> np.ndarray:
    """``ok[i]``: the partner of row i is its nearest column AND row i is the partner's nearest row
    in direction distance (ties within ``rtol`` count as nearest). One blocked pass over all pairs.
    False where ``partner = -1``."""
    from .cost import default_block_rows

    dev = default_device(device)
    partner = np.asarray(partner)
    n_a, n_b = X.shape[0], Y.shape[0]
    Yd = directions(Y.to(dev), parts)
    br = block_rows or default_block_rows(n_b)
    row_best = np.empty(n_a)
    col_best = torch.full((n_b,), -float("inf"), dtype=torch.float32, device=dev)
    for r0 in range(0, n_a, br):
        G = directions(X[r0:r0 + br].to(dev), parts) @ Yd.T
        row_best[r0:r0 + G.shape[0]] = G.max(dim=1).values.double().cpu().numpy()
        col_best = torch.maximum(col_best, G.max(dim=0).values)
    col_best = col_best.double().cpu().numpy()
    has = partner >= 0
    s = direction_distance(X, Y, partner, parts)
    ok = np.zeros(n_a, bool)
    j = partner[has]
    tol = rtol + 1e-6  # float32 products against float64 pair distances
    ok[has] = (s[has] <= 1.0 - row_best[has] + tol) & (s[has] <= 1.0 - col_best[j] + tol)
    return ok


# -- nearest costs (for alt_mse) ------------------------------------------------------------------
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


def nearest_two_costs(X: torch.Tensor, Y: torch.Tensor, *, device: Any = None,
                      block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(argmin, smallest, second smallest) of ``C = |X_i - Y_j|²`` per row, by a blocked pass."""
    from .cost import cost_blocks

    n_a, n_b = X.shape[0], Y.shape[0]
    near = np.zeros(n_a, np.int64)
    best = np.full(n_a, np.inf)
    second = np.full(n_a, np.inf)
    k = min(2, n_b)
    for r0, blk in cost_blocks(X, Y, block_rows=block_rows, device=device):
        v, j = torch.topk(blk, k, dim=1, largest=False)
        rows = slice(r0, r0 + blk.shape[0])
        near[rows] = j[:, 0].cpu().numpy()
        best[rows] = v[:, 0].double().cpu().numpy()
        if k > 1:
            second[rows] = v[:, 1].double().cpu().numpy()
    return near, best, second


def alt_costs(col: np.ndarray, nearest: np.ndarray, best: np.ndarray, second: np.ndarray) -> np.ndarray:
    """min over j != col[i] of C_ij, from each row's two smallest costs."""
    col = np.asarray(col)
    return np.where(col == nearest, second, best)
