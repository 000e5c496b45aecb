"""The calibrated criterion on planted families it was not tuned on, and on pure null pairs.

Targets (issue: a criterion that holds on data it was not tuned on), on every family of
``saematch_nb.core.synthetic_families.FAMILIES`` and two seeds each:

- criterion accuracy >= 95%: ``matched`` is True exactly where the assigned partner is the
  planted one;
- partial mode: >= 98% of persisting features keep their true partner and <= 3% of fresh ones get
  a partner, wherever true and fresh direction distances are separable;
- pure null pair (nothing persists): accepted share within 2·alpha of alpha, in both modes.

benchmarks/bench_criterion.py prints the same numbers at twice these widths, with more seeds and
next to the rules a user would otherwise pick.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saematch_nb import match
from saematch_nb.core import criterion as crit
from saematch_nb.core.cost import feature_matrix
from dataclasses import replace

from saematch_nb.core.synthetic_families import FAMILIES, FamilySpec, family, family_pair
from saematch_nb.core.weights import SAEWeights

ALPHA = crit.DEFAULT_ALPHA
PLANTED = [name for name, spec in FAMILIES.items() if not spec.null]
# families built so that true partners' and fresh features' distances do not overlap
SEPARABLE = {"isotropic", "anisotropic", "clusters", "heterogeneous", "rectangular", "stable", "splitting",
             "drifting-minority", "shared-drift"}


def criterion_accuracy(lm, truth) -> float:
    """matched must be True exactly where the accepted partner is the planted one."""
    correct = (lm.partner == truth) & (truth >= 0)
    return float(np.mean(lm.matched == correct))


def separable(a, b, truth) -> bool:
    """True partners' distances (99th percentile) below fresh features' nearest distances (1st)."""
    X, Y = feature_matrix(a), feature_matrix(b)
    parts = crit.part_slices("encoder+decoder", a.d_in)
    alive = truth >= 0
    if not alive.any() or alive.all():
        return True
    s_true = crit.direction_distance(X, Y, np.where(alive, truth, -1), parts)[alive]
    _, s_nn = crit.nearest_direction(crit.directions(X[torch.as_tensor(np.flatnonzero(~alive))], parts), Y, parts)
    return float(np.quantile(s_true, 0.99)) < float(np.quantile(s_nn, 0.01))


@pytest.fixture(scope="module", params=[(name, seed) for name in PLANTED for seed in (0, 1)],
                ids=lambda p: f"{p[0]}-{p[1]}")
def planted_case(request):
    name, seed = request.param
    a, b, truth = family(name, seed=seed)
    return name, a, b, truth, match(a, b), match(a, b, allow_unmatched=True)


def test_accuracy_on_every_family(planted_case):
    name, a, b, truth, lm, _ = planted_case
    acc = criterion_accuracy(lm, truth)
    assert acc >= 0.95, (name, acc)
    assert lm.threshold == lm.calibration["threshold"]
    assert lm.calibration["alpha"] == ALPHA


def test_partial_mode_keeps_persisting_and_rejects_fresh(planted_case):
    name, a, b, truth, _, lp = planted_case
    alive = truth >= 0
    kept = float(np.mean(lp.partner[alive] == truth[alive]))
    fresh = float(np.mean(lp.partner[~alive] >= 0)) if (~alive).any() else 0.0
    # the targets apply where true and fresh distances are separable (noisy-splitting: some
    # persisting features move as far as a sibling; duplicates: a dying feature's near-copy persists)
    sep = separable(a, b, truth)
    if name in SEPARABLE:
        assert sep, name
    if sep:
        assert kept >= 0.98, (name, kept)
        assert fresh <= 0.03, (name, fresh)
    else:
        assert kept >= 0.9 and fresh <= 0.03, (name, kept, fresh)
    # partner >= 0 exactly where the criterion accepts
    assert np.array_equal(lp.partner >= 0, lp.matched)


def test_false_matches_stay_near_alpha(planted_case):
    """Fresh features accepted at about the null's rate, never many more."""
    name, a, b, truth, lm, lp = planted_case
    fresh = truth < 0
    if not fresh.any():  # the 'stable' family: nothing to reject, everything to accept
        assert lm.matched_fraction >= 0.98 and lp.matched_fraction >= 0.98, name
        return
    for m in (lm, lp):
        rate = float(np.mean(m.matched[fresh]))
        assert rate <= 3 * ALPHA, (name, rate)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spec", ["null", "isotropic-null", "anisotropic-null", "shared-null",
                                  "shared-null-tight", "shared-null-duplicates"])
def test_pure_null_pair_accepts_about_alpha(spec, seed):
    base = {"null": FAMILIES["null"],
            "isotropic-null": FamilySpec(n=512, d_in=64, null=True),
            "anisotropic-null": FamilySpec(n=768, d_in=96, null=True, spectrum_decay=0.6,
                                           spectrum_basis="random", clusters=0.5),
            # issue #18: clusters that both layers share make unrelated features close by chance
            "shared-null": FAMILIES["shared-null"],
            "shared-null-tight": replace(FAMILIES["shared-null"], shared_centres=32, member_cos=0.8, n=768),
            "shared-null-duplicates": replace(FAMILIES["shared-null"], shared_centres=300, member_cos=0.5,
                                              duplicates=0.05, d_in=128)}[spec]
    a, b, _ = family_pair(base, seed=seed)
    for allow in (False, True):
        lm = match(a, b, allow_unmatched=allow)
        assert lm.matched_fraction <= 3 * ALPHA, (spec, allow, lm.matched_fraction)
    # the estimated share of features without partner is (nearly) all of them
    assert lm.calibration["pi0"] >= 0.9


def test_null_adapts_to_the_spectrum():
    """An anisotropic pair has higher chance similarity: its null threshold is lower, so a fixed
    threshold fitted on isotropic pairs would accept false matches there."""
    a_iso, b_iso, _ = family_pair(FamilySpec(n=512, d_in=64, null=True), seed=0)
    a_an, b_an, _ = family_pair(FamilySpec(n=512, d_in=64, null=True, spectrum_decay=0.8), seed=0)
    t_iso = match(a_iso, b_iso).calibration["null_threshold"]
    t_an = match(a_an, b_an).calibration["null_threshold"]
    assert t_an < 0.8 * t_iso
    # and it holds its rate there (a rotation null would make this pair look isotropic)
    assert match(a_an, b_an).matched_fraction <= 3 * ALPHA


def test_siblings_are_rejected():
    """Dying features whose nearest candidate is a surviving sibling's partner (feature splitting)
    pass the null's threshold; the mutual test rejects them (the partner prefers the sibling). In
    the 'duplicates' family a dying feature's near-copy (8°) often persists."""
    a, b, truth = family("duplicates", seed=3, stable_share=1.0)  # a persisting copy turns 1-4°
    X, Y = feature_matrix(a), feature_matrix(b)
    parts = crit.part_slices("encoder+decoder", a.d_in)
    dying = np.flatnonzero(truth < 0)
    near, s_nn = crit.nearest_direction(crit.directions(X[torch.as_tensor(dying)], parts), Y, parts)
    for lm in (match(a, b), match(a, b, allow_unmatched=True)):
        # would pass the threshold alone, and their nearest is a persisting feature's partner
        sib = (s_nn < lm.calibration["null_threshold"]) & np.isin(near, truth[truth >= 0])
        assert sib.sum() >= 5  # the family really has them
        assert not lm.matched[dying[sib]].any()


def _copy(w, fn):
    return SAEWeights(W_enc=fn(w.W_enc), b_enc=fn(w.b_enc), W_dec=fn(w.W_dec), b_dec=w.b_dec,
                      threshold=w.threshold, info=w.info)


@pytest.mark.parametrize("how", ["itself", "float16", "noise-1e-3", "rescaled"])
@pytest.mark.parametrize("which", ["planted", "demo"])
def test_an_sae_against_a_near_copy_is_accepted(how, which):
    """Issue #18's positive control: the same SAE, or a near-copy of it, is >= 99.5% accepted."""
    if which == "planted":
        a, _, _ = family("anisotropic", seed=0)
    else:
        from saematch_nb import as_weights
        from saematch_nb.demo import sae_paths
        a = as_weights(str(sae_paths()[2]))
    g = torch.Generator().manual_seed(0)
    if how == "itself":
        b = a
    elif how == "float16":
        b = _copy(a, lambda t: t.half().float())
    elif how == "noise-1e-3":
        b = _copy(a, lambda t: t * (1 + 1e-3 * torch.randn(t.shape, generator=g)))
    else:  # per-feature rescaling: the same SAE function
        r = torch.exp(torch.randn(a.d_sae, generator=g))
        b = SAEWeights(W_enc=a.W_enc * r, b_enc=a.b_enc * r, W_dec=a.W_dec / r[:, None], b_dec=a.b_dec,
                       threshold=a.threshold * r, info=a.info)
    for allow in (False, True):
        lm = match(a, b, allow_unmatched=allow)
        assert lm.matched_fraction >= 0.995, (which, how, allow, lm.matched_fraction)
        assert np.array_equal(lm.partner[lm.matched], np.flatnonzero(lm.matched))


@pytest.mark.parametrize("seed", range(2))
def test_a_drifting_minority_is_kept(seed):
    """Issue #18 item 1: 80% of persisting features stable, 20% drifting 10-35°: every drifting
    feature (mutual nearest, far from every fresh one) is accepted, in both modes."""
    a, b, truth = family("drifting-minority", seed=seed)
    alive = truth >= 0
    for lm in (match(a, b), match(a, b, allow_unmatched=True)):
        assert np.mean(lm.matched[alive] & (lm.partner[alive] == truth[alive])) >= 0.99
        assert np.mean(lm.matched[~alive]) <= 0.01


def test_duplicates_inside_one_sae_do_not_collapse_the_null():
    """5% near-copies inside each SAE would put the null's 1% quantile at their distance (~0.01),
    rejecting every drifting feature; the bulk model drops them."""
    a, b, truth = family("duplicates", seed=0)
    lm = match(a, b)
    clean = match(*family("duplicates", seed=0, duplicates=0.0)[:2])
    assert lm.calibration["n_duplicates"] >= 0.7 * 0.05 * (a.d_sae + b.d_sae)  # 5% of rows in copies
    assert lm.threshold > 0.8 * clean.threshold
    alive = truth >= 0
    assert np.mean(lm.matched[alive] & (lm.partner[alive] == truth[alive])) >= 0.97


@pytest.mark.parametrize("seed", range(3))
def test_shared_clusters_do_not_fool_the_null(seed):
    """Shared clusters: every row of a shared-cluster null pair is unrelated, so the share of rows
    whose nearest B feature lies within the threshold is the null test's real false-match rate
    (the previous null put the threshold above 99.8% of them)."""
    a, b, _ = family("shared-null", seed=seed)
    lm = match(a, b)
    X = feature_matrix(a)
    parts = crit.part_slices("encoder+decoder", a.d_in)
    _, s_nn = crit.nearest_direction(crit.directions(X, parts), feature_matrix(b), parts)
    # the real rows here are all unrelated: the share below the threshold is the false-match rate
    assert np.mean(s_nn <= lm.threshold) <= 3 * ALPHA
    assert np.mean(s_nn <= lm.threshold) <= np.mean(s_nn <= lm.calibration["null_median"])


@pytest.mark.parametrize("name", ["shared-null", "shared-drift"])
def test_expected_false_matches_are_honest(name):
    """Issue #18: never 0 while many matches are false; within a factor 2 of the actual count
    where that is >= 10 (alpha raised so that it is, at CI size)."""
    for seed in range(2):
        a, b, truth = family(name, seed=seed)
        lm = match(a, b, alpha=0.05)
        actual = int((lm.matched & ~((lm.partner == truth) & (truth >= 0))).sum())
        exp = lm.expected_false_matches
        assert exp > 0
        if actual >= 10:
            assert actual / 2 <= exp <= 2 * actual, (name, seed, actual, exp)


def test_partial_mode_does_not_favour_large_norms():
    """Scaling fresh features up (in folded units) must not let them displace persisting ones:
    the no-partner decision is scale-free."""
    a, b, truth = family("isotropic", seed=5)
    base = match(a, b, allow_unmatched=True)
    fresh = np.flatnonzero(truth < 0)
    g = torch.ones(a.d_sae)
    g[torch.as_tensor(fresh)] = 100.0  # dec x100, enc x100: the folded vector of fresh rows grows
    big = a.__class__(W_enc=a.W_enc * g, b_enc=a.b_enc * g, W_dec=a.W_dec * g[:, None], b_dec=a.b_dec,
                      threshold=a.threshold, info=a.info)
    scaled = match(big, b, allow_unmatched=True)
    assert np.array_equal(scaled.partner, base.partner)


def test_calibration_is_deterministic_and_reusable():
    a, b, _ = family("anisotropic", seed=2)
    lm1, lm2 = match(a, b), match(a, b)
    assert lm1.calibration == lm2.calibration
    assert np.array_equal(lm1.matched, lm2.matched)
    cal = crit.Calibration.from_dict(lm1.calibration)
    again = match(a, b, calibration=cal)
    assert np.array_equal(again.matched, lm1.matched)
    assert again.options["calibration"] == "given"


def test_alpha_is_a_knob():
    a, b, _ = family("heterogeneous", seed=1)
    lo, hi = match(a, b, alpha=0.001), match(a, b, alpha=0.2)
    assert lo.calibration["null_threshold"] < hi.calibration["null_threshold"]
    assert lo.expected_false_matches < hi.expected_false_matches


def test_expert_threshold():
    a, b, truth = family("isotropic", seed=0)
    none = match(a, b, calibration=0.0)
    everything = match(a, b, calibration=2.0)
    auto = match(a, b)
    assert not none.matched.any()
    # every distance passes 2.0: what is left is the mutual-best rule alone, a superset of auto's
    assert everything.stats["n_below_threshold"] == a.d_sae
    assert (everything.matched >= auto.matched).all() and everything.matched.sum() > auto.matched.sum()
    assert none.options["calibration"] == "expert" and none.calibration["expert"] is True
    assert np.isnan(none.expected_false_matches)


@pytest.mark.parametrize("kw, err", [
    (dict(alpha=0.0), ValueError), (dict(alpha=0.7), ValueError), (dict(alpha="x"), TypeError),
    (dict(calibration=-0.1), ValueError), (dict(calibration="auto"), TypeError),
    (dict(calibration=True), TypeError), (dict(n_null=10), ValueError),
])
def test_bad_criterion_options_are_clear_errors(kw, err):
    a, b, _ = family("isotropic", seed=0, n=64)
    with pytest.raises(err, match="alpha|calibration|n_null"):
        match(a, b, **kw)


def test_direction_distance_is_mean_cosine():
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(10, 16, generator=g), torch.randn(10, 16, generator=g)
    parts = crit.part_slices("encoder+decoder", 8)
    s = crit.direction_distance(X, Y, np.arange(10), parts)
    cos = lambda u, v: torch.nn.functional.cosine_similarity(u, v, dim=1)  # noqa: E731
    want = 1 - (cos(X[:, :8], Y[:, :8]) + cos(X[:, 8:], Y[:, 8:])) / 2
    assert np.allclose(s, want.numpy(), atol=1e-5)
    # scale-free: rescaling a feature does not change it
    assert np.allclose(crit.direction_distance(X * 7.0, Y, np.arange(10), parts), s, atol=1e-5)
    assert np.isnan(crit.direction_distance(X, Y, np.array([-1] * 10), parts)).all()


def test_leave_one_out_never_takes_the_row_itself():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 12, generator=g)
    X[7] = X[3] * 2.0  # an exact duplicate (in direction) of row 3
    parts = crit.part_slices("encoder+decoder", 6)
    rows = np.arange(40)
    near, s = crit.nearest_direction(crit.directions(X, parts), X, parts, exclude=rows)
    assert (near != rows).all()
    assert near[3] == 7 and near[7] == 3 and s[3] < 1e-6
    S = 1 - (crit.directions(X, parts) @ crit.directions(X, parts).T).double().numpy()
    np.fill_diagonal(S, np.inf)
    assert np.array_equal(near, S.argmin(1))


def test_lower_quantile_is_below_the_plain_quantile():
    v = np.random.default_rng(0).lognormal(-0.5, 0.2, size=4096)
    q = crit._lower_quantile(v, 0.01)
    assert np.quantile(v, 0.002) < q < np.quantile(v, 0.01)
    assert crit._lower_quantile(np.array([0.3]), 0.01) == 0.3


def test_nearest_direction_streams_columns():
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(50, 12, generator=g), torch.randn(300, 12, generator=g)
    parts = crit.part_slices("encoder+decoder", 6)
    near, s = crit.nearest_direction(crit.directions(X, parts), Y, parts)
    S = 1 - (crit.directions(X, parts) @ crit.directions(Y, parts).T).double().numpy()
    assert np.array_equal(near, S.argmin(1))
    assert np.allclose(s, S.min(1), atol=1e-5)


@pytest.mark.parametrize("case", ["square", "wide", "tall", "unfolded", "partial", "decoder"])
def test_the_jv_solvers_direction_pass_is_the_criterions(case):
    """The dense JV solver reads each row's and column's nearest direction off its own product
    (no second pass over all pairs): the same pass, and so the same verdicts, as the blocked one."""
    a, b, truth = family("shared-drift", seed=4, n=300, n_b=420 if case in ("wide", "tall") else None)
    if case == "tall":
        a, b = b, a
    kw = {"unfolded": dict(fold=False), "partial": dict(allow_unmatched=True),
          "decoder": dict(params="decoder")}.get(case, {})
    via_jv, via_dense = match(a, b, solver="jv", **kw), match(a, b, solver="dense", **kw)
    assert via_jv.stats["solver"] == "jv"
    assert np.array_equal(via_jv.partner, via_dense.partner)
    assert np.array_equal(via_jv.matched, via_dense.matched)
    assert via_jv.calibration == via_dense.calibration
    params = kw.get("params", "encoder+decoder")
    X, Y = feature_matrix(a, params), feature_matrix(b, params)
    parts = crit.part_slices(params, a.d_in)
    from saematch_nb.core.lap import solve
    res = solve(X, Y, solver="jv", cosine_parts=parts)
    got, want = crit.pass_from_cosines(res.cosine_pass), crit.direction_pass(X, Y, parts)
    assert np.array_equal(got.row_arg, want.row_arg) and np.array_equal(got.col_arg, want.col_arg)
    assert np.allclose(got.row_s, want.row_s, atol=2e-6) and np.allclose(got.col_s, want.col_s, atol=2e-6)
    assert solve(X, Y, solver="dense", cosine_parts=parts).cosine_pass is None
