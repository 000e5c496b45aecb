"""``match(sae_a, sae_b)``: SAE Match of one layer pair -> :class:`LayerMatch`.

Whatever parameters chose the assignment (``fold=False``, another ``params``, ``method``), the
reported ``mse``/``alt_mse`` and the criterion's ``score`` are measured on the FOLDED parameters
(``params`` as given), as the paper's Fig. 3 does, so that results of different options are
comparable; ``options["mse_on"] = "folded"`` records it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from . import criterion as crit
from .assign import AssignmentResult, pick_solver, solve, solve_dense
from .cost import (check_params, check_same_d_in, cost_blocks, default_device, dense_cost,
                   feature_matrix, pair_cost)
from .results import LayerMatch
from .weights import as_weights

METHODS = ("lap", "identity", "cosine")


def match(
    sae_a: Any, sae_b: Any, *, fold: bool = True, params: str = "encoder+decoder", method: str = "lap",
    allow_unmatched: bool = False, solver: str = "auto", device: Any = None, progress: bool = False,
    calibration: float = crit.DEFAULT_THRESHOLD, n_sample: int = crit.DEFAULT_SAMPLE, seed: int = 0,
    bad_threshold: str = "raise",
) -> LayerMatch:
    """Match the features of ``sae_a`` (layer t) to those of ``sae_b`` (layer t+1).

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
        Partial assignment ("lap" only): a feature may stay without partner (``partner = -1``) at
        the per-row no-partner cost given by the calibrated criterion.
    solver:
        "auto", "dense" or "sparse" (see :mod:`saematch_nb.core.assign`).
    calibration:
        Threshold of the criterion's score (``matched = score <= calibration``); see
        :mod:`saematch_nb.core.criterion`.
    bad_threshold:
        JumpReLU features whose threshold is <= 0, NaN or inf: "raise" (default, the error names
        them) or "skip" (leave them unscaled when folding; see :func:`saematch_nb.fold`).
        Passed through ``match_chain(..., bad_threshold="skip")`` as well.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_params(params)
    if allow_unmatched and method != "lap":
        raise ValueError(f"allow_unmatched=True needs method='lap' (got method={method!r})")
    wa, wb = as_weights(sae_a), as_weights(sae_b)
    check_same_d_in(wa, wb)
    # The reported MSE is always on folded parameters, so fold once here (raw wa/wb stay for fold=False).
    from .fold import fold as _fold

    wa_f = wa if wa.folded else _fold(wa, bad_threshold=bad_threshold)
    wb_f = wb if wb.folded else _fold(wb, bad_threshold=bad_threshold)
    n_a, n_b = wa.d_sae, wb.d_sae
    dev = default_device(device)

    # Folded feature vectors: always needed for the reported MSE and the criterion.
    Xf = feature_matrix(wa_f, params, fold=True)
    Yf = feature_matrix(wb_f, params, fold=True)
    if method != "cosine":  # the folded copies are not needed past this point: free them early
        del wa_f, wb_f
    D = Xf.shape[1]
    parts = crit.part_slices(params, wa.d_in)
    # With the dense solver on folded parameters the cost matrix is built once and also gives
    # each row's nearest / second costs; otherwise a blocked pass collects them.
    which = pick_solver(n_a, n_b, solver) if method == "lap" else None
    C_dense = dense_cost(Xf, Yf, device=dev, progress=progress) if (which == "dense" and fold) else None
    # the sparse solver returns each row's two cheapest columns from its own pass: no second
    # pass over all pairs (a whole extra product) unless the partial mode needs them first
    from_solver = which == "sparse" and fold and not allow_unmatched
    stats_rows = crit.row_statistics(Xf, Yf, parts=parts, n_sample=n_sample, seed=seed,
                                     nearest=C_dense is None and not from_solver, device=dev)
    if C_dense is not None:
        stats_rows = crit.with_nearest(stats_rows, C_dense)

    solve_stats: dict[str, Any] = {}
    total = float("nan"); gap = float("nan")
    if method == "lap":
        X, Y = (Xf, Yf) if fold else (feature_matrix(wa, params, fold=False), feature_matrix(wb, params, fold=False))
        unmatched = None
        if allow_unmatched:
            st = stats_rows if fold else crit.row_statistics(X, Y, parts=parts, n_sample=n_sample, seed=seed, device=dev)
            unmatched = crit.calibrate(st, calibration)
        if C_dense is not None:
            res: AssignmentResult = solve_dense(C_dense, unmatched_cost=unmatched)
            del C_dense
        else:
            res = solve(X, Y, unmatched_cost=unmatched, solver=which, device=dev, progress=progress)
        if from_solver:
            if res.nearest is not None and res.nearest_cost is not None:
                stats_rows = replace(stats_rows, nearest=res.nearest, best_cost=res.nearest_cost,
                                     second_cost=res.second_cost)
            else:  # e.g. a transposed result (n_a > n_b): collect them the usual way
                stats_rows = crit.row_statistics(Xf, Yf, parts=parts, n_sample=n_sample, seed=seed,
                                                 device=dev)
        partner = res.col.copy()
        # rows without partner point at their nearest B-feature (on the cost the solver used)
        near = res.nearest if res.nearest is not None else stats_rows.nearest
        permutation = np.where(partner >= 0, partner, near)
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

    cost_f = pair_cost(Xf, Yf, np.arange(n_a), permutation)
    alt_f = stats_rows.alt_cost(permutation)
    score = crit.score(stats_rows, Xf, Yf, permutation)
    matched = (score <= calibration) & (partner >= 0)
    if method == "lap" and fold and not allow_unmatched:
        total = float(cost_f.sum())

    return LayerMatch(
        permutation=permutation, partner=partner, mse=cost_f / D, alt_mse=alt_f / D,
        score=score, matched=matched, threshold=float(calibration), n_a=n_a, n_b=n_b, d_in=wa.d_in,
        info_a=wa.info, info_b=wb.info, fingerprint_a=wa.fingerprint(), fingerprint_b=wb.fingerprint(),
        options={"fold": bool(fold), "params": params, "method": method,
                 "allow_unmatched": bool(allow_unmatched), "solver": solver, "mse_on": "folded",
                 "criterion": "direction-distance extreme-value score", "calibration": float(calibration),
                 "n_sample": int(n_sample), "seed": int(seed), "bad_threshold": bad_threshold},
        stats={**solve_stats, "seconds": time.perf_counter() - t0, "total_cost": total, "gap": gap,
               "solver": solve_stats.get("solver", solver), "n_unmatched": int((partner < 0).sum()),
               "n_matched": int(matched.sum())},
    )


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
