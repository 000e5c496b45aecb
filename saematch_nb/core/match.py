"""``match(sae_a, sae_b)``: SAE Match of one layer pair -> :class:`LayerMatch`.

Whatever parameters chose the assignment (``fold=False``, another ``params``, ``method``), the
reported ``mse``/``alt_mse`` are measured on the FOLDED parameters (``params`` as given), as the
paper's Fig. 3 does, so that results of different options are comparable;
``options["mse_on"] = "folded"`` records it. The criterion (``score``, ``matched``) uses the
direction distance, which folding does not change (:mod:`saematch_nb.core.criterion`).
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import numpy as np
import torch

from . import criterion as crit
from .lap import AssignmentResult, pick_solver, solve
from .cost import (alt_costs, check_same_d_in, cost_blocks, default_device, feature_matrix, nearest_two_costs,
                   pair_cost)
from .results import LayerMatch
from .options import METHODS, MatchOptions
from .weights import SAEWeights, as_weights

__all__ = ["match", "match_weights", "METHODS"]


def match(sae_a: Any, sae_b: Any, options: MatchOptions | None = None, *, progress: bool = False,
          **keywords: Any) -> LayerMatch:
    """Match the features of ``sae_a`` (layer t) to those of ``sae_b`` (layer t+1).

    The options are a :class:`~saematch_nb.MatchOptions` (``options``) and / or its fields as
    keywords (keywords win): ``match(a, b, fold=False)``, ``match(a, b, MatchOptions(solver="jv"))``.
    An unknown keyword is a TypeError that lists the options.

    Parameters
    ----------
    sae_a, sae_b:
        Anything :func:`saematch_nb.as_weights` takes (sae-lens SAE, handle, SAEWeights, path).
    fold:
        Fold the parameters before choosing the assignment (paper Eq. 4). ``False`` reproduces
        the paper's "matched without folding" baseline; the reported MSE is still on folded
        parameters.
    params:
        Which parameters build the cost: "decoder", "encoder", "encoder+decoder" (default, as in
        the paper) or "encoder+decoder+bias".
    method:
        "lap" (exact linear assignment, default), "identity" (vanilla baseline: i ↔ i, needs equal
        widths) or "cosine" (Feature Flow: top-1 cosine of the unit decoder rows, many-to-one).
    allow_unmatched:
        Partial assignment ("lap" only): a feature may stay without partner (``partner = -1``).
        The assignment is then solved on the criterion's direction distance with the calibrated
        threshold as every feature's no-partner cost, so that no feature is favoured for its norm
        (and ``fold`` makes no difference: directions do not change under folding).
    solver:
        "auto", "dense" (scipy), "jv" (dense float32 Jonker-Volgenant, certified) or "sparse"
        (see :mod:`saematch_nb.core.lap`).
    memory_budget:
        Bytes of extra memory ``solver="auto"`` may spend on the "jv" solver's dense float32
        cost matrix (None: 1.5 GiB, :data:`saematch_nb.core.lap.DEFAULT_MEMORY_BUDGET`); larger
        problems go to the sparse solver.
    alpha:
        False-match rate of the criterion's null test (default 1%): a feature with no partner is
        accepted with about this probability.
    calibration:
        None (default): calibrate on this pair (:func:`saematch_nb.core.criterion.calibrate`).
        A float: an expert threshold on the direction distance (``matched = s <= calibration``).
        A :class:`~saematch_nb.core.criterion.Calibration` (e.g. ``other.calibration``): reuse it.
    n_null:
        Null distances drawn for the calibration (sampled rows; see the criterion module).
    seed:
        Seed of the calibration's sampling (results are deterministic for a given seed).
    bad_threshold:
        JumpReLU features whose threshold is <= 0, NaN or inf: "raise" (default, the error names
        them) or "skip" (leave them unscaled when folding; see :func:`saematch_nb.fold`).
        Passed through ``match_chain(..., bad_threshold="skip")`` as well.
    progress:
        A progress bar for the solver's long phases.
    """
    opts = MatchOptions.of(options, **keywords)
    default_device(opts.device)  # a GPU this machine lacks is said before any SAE is loaded
    wa, wb = as_weights(sae_a), as_weights(sae_b)
    check_same_d_in(wa, wb)
    # The reported MSE is always on folded parameters, so fold once here (raw wa/wb stay for fold=False).
    from .fold import fold as _fold

    wa_f = wa if wa.folded else _fold(wa, bad_threshold=opts.bad_threshold)
    wb_f = wb if wb.folded else _fold(wb, bad_threshold=opts.bad_threshold)
    return match_weights(wa, wb, wa_f, wb_f, opts, progress=progress)


def match_weights(wa: SAEWeights, wb: SAEWeights, wa_f: SAEWeights, wb_f: SAEWeights,
                  options: MatchOptions | None = None, *, progress: bool = False) -> LayerMatch:
    """:func:`match` on SAEWeights already converted and folded (``wa_f``/``wb_f`` the folded
    copies of ``wa``/``wb``): what a chain's SAE stack hands over, so that each SAE of an analysis
    is folded once."""
    o = MatchOptions() if options is None else options
    fold, params, method, allow_unmatched = o.fold, o.params, o.method, o.allow_unmatched
    solver, alpha, calibration, n_null, seed = o.solver, o.alpha, o.calibration, o.n_null, o.seed
    t0 = time.perf_counter()
    check_same_d_in(wa, wb)
    if not (wa_f.folded and wb_f.folded) or (wa_f.d_sae, wb_f.d_sae) != (wa.d_sae, wb.d_sae):
        raise ValueError("match_weights needs the folded copies of the two SAEs (saematch_nb.fold(sae))")
    n_a, n_b = wa.d_sae, wb.d_sae
    dev = default_device(o.device)

    # Folded feature vectors: always needed for the reported MSE and the criterion.
    Xf = feature_matrix(wa_f, params, fold=True)
    Yf = feature_matrix(wb_f, params, fold=True)
    if method != "cosine":  # the folded copies are not needed past this point: free them early
        del wa_f, wb_f
    D = Xf.shape[1]
    parts = crit.part_slices(params, wa.d_in)
    zero_a, zero_b = _zero_features(Xf, Yf, parts, wa, wb)
    kw_cal = dict(parts=parts, alpha=alpha, n_null=n_null, seed=seed, device=dev)
    # a given calibration (expert threshold or reused) is checked before any work; the pair's own
    # is made once the direction pass is there (the solver's product gives it, see below)
    cal = None if calibration is None else crit.resolve(calibration, Xf, Yf, **kw_cal)
    near_dir = None  # each row's and column's nearest in direction distance (mutual test, pi0)

    nearest = best = second = None  # each row's two cheapest columns on the folded cost
    solve_stats: dict[str, Any] = {}
    total = gap = float("nan")
    if method == "lap":
        which = pick_solver(n_a, n_b, solver, memory_budget=o.memory_budget)
        if allow_unmatched and cal is None:
            # the threshold is the no-partner cost: calibrate first, pi0 once the pass is there
            cal = crit.calibrate(Xf, Yf, **kw_cal, pi0_later=True)
        res = _solve_lap(Xf, Yf, wa, wb, parts, o, which, cal, dev, progress)
        if fold and not allow_unmatched and res.nearest_cost is not None and res.second_cost is not None:
            # the dense solver's matrix and the sparse one's candidate lists hold each row's two
            # cheapest columns: no second pass
            nearest, best, second = res.nearest, res.nearest_cost, res.second_cost
        if res.cosine_pass is not None:
            near_dir = crit.pass_from_cosines(res.cosine_pass)
        partner = res.col.copy()
        permutation = partner  # rows left without partner are pointed at their nearest below
        total, gap = float(res.total), float(res.gap)
        solve_stats = dict(res.stats)
    elif method == "identity":
        if n_a != n_b:
            raise ValueError(
                f"method='identity' pairs feature i with feature i and needs equal widths, got "
                f"{n_a} and {n_b}: use method='lap' for SAEs of different widths"
            )
        permutation = np.arange(n_a, dtype=np.int64)
        partner = permutation.copy()
        solve_stats = {"solver": "identity"}
    else:  # cosine
        permutation = _top1_cosine(wa_f if fold else wa, wb_f if fold else wb, fold, dev)
        partner = permutation.copy()
        solve_stats = {"solver": "cosine"}

    if near_dir is None:
        near_dir = crit.direction_pass(Xf, Yf, parts, device=dev)
    cal = crit.calibrate(Xf, Yf, **kw_cal, nearest=near_dir) if cal is None else crit.with_pi0(cal, near_dir)
    v = _verdict(Xf, Yf, partner, parts, cal, near_dir, zero_a, zero_b, allow_unmatched)
    partner, score, below, mutual, matched = v.partner, v.score, v.below, v.mutual, v.matched
    if nearest is None:
        nearest, best, second = nearest_two_costs(Xf, Yf, device=dev)
    if method == "lap":
        # rows without partner point at their nearest B-feature on the folded cost (the one their
        # mse / alt_mse / margin describe)
        permutation = np.where(partner >= 0, partner, nearest)
    if method == "lap" and fold and not allow_unmatched and which != "dense" and res.nearest is not None \
            and np.array_equal(permutation, np.where(res.col >= 0, res.col, res.nearest)):
        cost_f = np.asarray(res.cost, np.float64)  # the solver's exact (float64) costs of these pairs
    else:
        cost_f = pair_cost(Xf, Yf, np.arange(n_a), permutation)
    alt_f = alt_costs(permutation, nearest, best, second)
    if method == "lap" and fold and not allow_unmatched:
        total = float(cost_f.sum())
    n_matched = int(matched.sum())
    efm = _expected_false(cal, near_dir, partner if allow_unmatched else permutation, n_a, n_b)

    return LayerMatch(
        permutation=permutation, partner=partner, mse=cost_f / D, alt_mse=alt_f / D,
        score=score, matched=matched, threshold=float(cal.threshold), n_a=n_a, n_b=n_b, d_in=wa.d_in,
        info_a=wa.info, info_b=wb.info, fingerprint_a=wa.fingerprint(), fingerprint_b=wb.fingerprint(),
        options=o.record("expert" if cal.expert else ("given" if calibration is not None else "auto")),
        calibration=cal.to_dict(),
        stats={**solve_stats, "seconds": time.perf_counter() - t0, "total_cost": total, "gap": gap,
               "solver": solve_stats.get("solver", solver), "n_unmatched": int((partner < 0).sum()),
               "n_matched": n_matched, "n_below_threshold": int(below.sum()),
               "n_not_mutual": int((below & ~mutual).sum()),
               "n_zero_a": int(zero_a.sum()), "n_zero_b": int(zero_b.sum()),
               "expected_false_matches": efm},
    )


class _Verdict(NamedTuple):
    partner: np.ndarray  # in the partial mode -1 where no match was accepted
    score: np.ndarray  # each pair's direction distance (inf: no partner, or not accepted in the partial mode)
    below: np.ndarray  # at or under the calibrated threshold
    mutual: np.ndarray  # each the other's nearest
    matched: np.ndarray  # below, mutual, and both features have a direction


def _verdict(Xf: torch.Tensor, Yf: torch.Tensor, partner: np.ndarray, parts: Any, cal: Any,
             near_dir: "crit.DirectionPass", zero_a: np.ndarray, zero_b: np.ndarray,
             allow_unmatched: bool) -> _Verdict:
    """The criterion's reading of a partner array: which pairs are matches."""
    s = crit.direction_distance(Xf, Yf, partner, parts)
    score = np.where(np.isnan(s), np.inf, s)
    # float32 solves may put a partial-mode partner a rounding error past the threshold
    tol = 1e-6 if allow_unmatched else 0.0
    below = (partner >= 0) & (score <= cal.threshold + tol)
    # the same feature on both sides: each is the other's nearest (a sibling's candidate is not)
    mutual = crit.mutual_best(Xf, Yf, np.where(below, partner, -1), parts, nearest=near_dir,
                              distance=np.where(below, s, np.nan))
    has = partner >= 0
    no_direction = zero_a.copy()
    no_direction[has] |= zero_b[partner[has]]
    matched = below & mutual & ~no_direction
    if allow_unmatched:  # the partial mode's partners are its accepted matches
        partner = np.where(matched, partner, -1)
        score = np.where(matched, score, np.inf)
    return _Verdict(partner, score, below, mutual, matched)


def _zero_features(Xf: torch.Tensor, Yf: torch.Tensor, parts: Any, wa: SAEWeights, wb: SAEWeights
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Each side's features with an all-zero decoder row or encoder column: they have no direction
    and are never matched (an all-zero SAE would otherwise be "100% matched": every distance 1, a
    null of 1s, threshold 1). An SAE with no other feature is an error; some are a warning."""
    zero_a, zero_b = crit.zero_rows(Xf, parts), crit.zero_rows(Yf, parts)
    for side, w, zero in (("A", wa, zero_a), ("B", wb, zero_b)):
        if zero.all():
            raise ValueError(
                f"SAE {side} ({w.info.label}) has no non-zero feature: every one of its {zero.size} features "
                "has an all-zero decoder row or encoder column, so none has a direction to match. Check the "
                "weights that were loaded (an untrained, blanked or wrongly converted SAE)")
    if zero_a.any() or zero_b.any():
        import warnings

        from ..errors import SaematchWarning

        warnings.warn(
            f"match: {int(zero_a.sum())} of SAE A's and {int(zero_b.sum())} of SAE B's features are zero (an "
            "all-zero decoder row or encoder column: no direction); they are never matched "
            "(stats n_zero_a / n_zero_b)", SaematchWarning, stacklevel=4)
    return zero_a, zero_b


def _solve_lap(Xf: torch.Tensor, Yf: torch.Tensor, wa: SAEWeights, wb: SAEWeights, parts: Any, o: MatchOptions,
               which: str, cal: Any, dev: torch.device, progress: bool) -> AssignmentResult:
    """The linear assignment of a "lap" match: on the folded (or, ``fold=False``, raw) parameters;
    in the partial mode on the criterion's statistic (|X̃ - Ỹ|² = 2 s) with 2·threshold as every
    feature's no-partner cost. The dense JV solver reads the direction pass off its own product
    (no second n x n pass); directions do not change under folding, so the unfolded solve gives it too."""
    cos_parts = parts if which == "jv" else None
    if o.allow_unmatched:
        Xd, Yd = crit.directions(Xf, parts), crit.directions(Yf, parts)
        return solve(Xd, Yd, unmatched_cost=np.full(Xf.shape[0], 2.0 * cal.threshold), solver=which, device=dev,
                     progress=progress, cosine_parts=cos_parts)
    X, Y = (Xf, Yf) if o.fold else (feature_matrix(wa, o.params, fold=False), feature_matrix(wb, o.params, fold=False))
    return solve(X, Y, solver=which, device=dev, progress=progress, cosine_parts=cos_parts)


def _expected_false(cal, near: "crit.DirectionPass", partner: np.ndarray, n_a: int, n_b: int) -> float:
    """The calibration's expected false matches (accept_rate · pi0 · n_a: features that the null
    says a free B feature would accept by chance) corrected for what the pair itself shows: a
    chance candidate is lost when its nearest B feature is claimed by a closer row (a persisting
    feature's partner: the share ``claimed`` of B's columns are mutual candidates within the
    threshold), and, in the bijective mode, when the assignment gives its column to another row
    (``kept``: the share of mutual candidates that keep their nearest)."""
    base = cal.expected_false_matches(n_a)
    if not math.isfinite(base):
        return base
    rows = np.arange(n_a)
    cand = (near.row_s <= cal.threshold) & (near.col_arg[near.row_arg] == rows)
    if not cand.any():
        return base
    claimed = float(cand.sum()) / n_b
    kept = float(np.mean(partner[cand] == near.row_arg[cand]))
    return float(base * (1.0 - claimed) * kept)


def _top1_cosine(wa, wb, fold: bool, dev: torch.device) -> np.ndarray:
    """Feature Flow: for each A-feature, the B-feature with the most similar decoder direction."""
    A = feature_matrix(wa, "decoder", fold=fold)
    B = feature_matrix(wb, "decoder", fold=fold)
    A = A / A.norm(dim=1, keepdim=True).clamp_min(1e-12)
    B = B / B.norm(dim=1, keepdim=True).clamp_min(1e-12)
    out = np.empty(A.shape[0], np.int64)
    # unit rows: the smallest squared distance is the largest cosine
    for r0, blk in cost_blocks(A, B, device=dev):
        out[r0:r0 + blk.shape[0]] = blk.argmin(dim=1).cpu().numpy()
    return out
