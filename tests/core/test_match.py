"""match(): recovers planted permutations, equals scipy's optimum, baselines, errors, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import saematch_nb
from saematch_nb import match
from saematch_nb.core.cost import dense_cost, feature_matrix
from saematch_nb.core.results import LayerMatch, ResultMismatchError
from saematch_nb.core.synthetic import planted_pair
from saematch_nb.core.weights import SAEWeights


def test_folded_matching_recovers_planted_permutation(planted):
    a, b, truth = planted
    lm = match(a, b)
    assert isinstance(lm, LayerMatch) and saematch_nb.match is match
    assert np.array_equal(lm.permutation, truth)
    assert np.array_equal(lm.partner, lm.permutation)  # bijective default
    assert lm.matched.all()
    assert lm.options["mse_on"] == "folded" and lm.options["fold"] is True
    assert lm.stats["solver"] == "dense" and lm.stats["gap"] == 0.0 and lm.stats["seconds"] > 0
    assert lm.fingerprint_a == a.fingerprint() and lm.info_b == b.info
    assert (lm.margin > 0).all()


def test_unfolded_matching_is_measurably_worse():
    # per-feature rescaling of B's thresholds (×[0.1, 10]) is what folding undoes
    a, b, truth = planted_pair(256, 64, rescale=(0.1, 10.0), noise=0.3, seed=5)
    folded = match(a, b)
    raw = match(a, b, fold=False)
    assert (folded.permutation == truth).all()
    assert (raw.permutation != truth).sum() >= 3  # measured: 4 of 256 wrong
    # the reported MSE is on folded parameters for both, so they are comparable
    assert raw.options["mse_on"] == "folded" and raw.options["fold"] is False
    assert raw.mse.mean() > 1.1 * folded.mse.mean()  # measured: 1.24x
    assert raw.matched.sum() < folded.matched.sum()


def test_optimum_equals_scipy_on_same_cost(planted_fresh):
    a, b, _ = planted_fresh
    lm = match(a, b)
    C = dense_cost(feature_matrix(a), feature_matrix(b))
    r, c = linear_sum_assignment(C)
    assert np.isclose(C[np.arange(a.d_sae), lm.permutation].sum(), C[r, c].sum(), rtol=1e-9)
    assert np.isclose(lm.stats["total_cost"], C[r, c].sum(), rtol=1e-5)
    # mse = C / D, alt_mse = best other column
    D = 2 * a.d_in
    assert np.allclose(lm.mse, C[np.arange(a.d_sae), lm.permutation] / D, rtol=1e-4, atol=1e-7)
    Cm = C.copy()
    Cm[np.arange(a.d_sae), lm.permutation] = np.inf
    assert np.allclose(lm.alt_mse, Cm.min(1) / D, rtol=1e-4, atol=1e-7)


def test_rectangular_64_to_256():
    a, b, truth = planted_pair(64, 64, n_b=256, seed=2)
    lm = match(a, b)
    assert lm.n_a == 64 and lm.n_b == 256
    assert np.array_equal(lm.permutation, truth)
    assert len(set(lm.permutation.tolist())) == 64
    assert lm.matched.mean() >= 0.95


def test_more_rows_than_columns_leaves_rows_without_partner():
    a, b, truth = planted_pair(64, 64, n_b=256, seed=2)
    lm = match(b, a)  # 256 -> 64: only 64 B-features to give out
    assert (lm.partner >= 0).sum() == 64 and (lm.partner < 0).sum() == 192
    back = np.full(256, -1)
    back[truth] = np.arange(64)
    ok = lm.partner >= 0
    assert np.array_equal(lm.partner[ok], back[ok])
    assert not lm.matched[~ok].any()


def test_identity_and_cosine_methods(planted):
    a, b, truth = planted
    van = match(a, b, method="identity")
    assert np.array_equal(van.permutation, np.arange(256))
    assert van.mse.mean() > 10 * match(a, b).mse.mean()
    assert van.matched.mean() < 0.05
    cos = match(a, b, method="cosine")
    assert np.array_equal(cos.permutation, truth)  # top-1 cosine finds them too on this pair
    with pytest.raises(ValueError, match="equal widths"):
        match(*planted_pair(16, 8, n_b=32)[:2], method="identity")
    with pytest.raises(ValueError, match="method must be one of"):
        match(a, b, method="hungarian")


def test_cosine_is_many_to_one():
    # two B-features copy the same A-feature: cosine maps both A-neighbours to one of them
    a, b, _ = planted_pair(64, 32, seed=4)
    W_dec = a.W_dec.clone()
    W_dec[1] = W_dec[0] * 1.01
    a2 = SAEWeights(a.W_enc, a.b_enc, W_dec, a.b_dec, threshold=a.threshold)
    cos = match(a2, b, method="cosine")
    assert cos.permutation[0] == cos.permutation[1]
    lap = match(a2, b)
    assert len(set(lap.permutation.tolist())) == 64


def test_params_variants_and_errors(planted):
    a, b, truth = planted
    for p in ("decoder", "encoder+decoder+bias"):
        lm = match(a, b, params=p)
        assert np.array_equal(lm.permutation, truth) and lm.options["params"] == p
    with pytest.raises(ValueError, match="params must be one of"):
        match(a, b, params="dec")


def test_d_in_mismatch():
    a = planted_pair(16, 8, seed=0)[0]
    b = planted_pair(16, 12, seed=0)[0]
    with pytest.raises(ValueError, match=r"\(16, 8\).*\(16, 12\)"):
        match(a, b)


def test_nan_weights_rejected(planted):
    a, b, _ = planted
    W = a.W_dec.clone()
    W[3, 2] = float("nan")
    bad = SAEWeights(a.W_enc, a.b_enc, W, a.b_dec, threshold=a.threshold)
    with pytest.raises(ValueError, match="W_dec"):
        match(bad, b)


def test_save_load_roundtrip_and_mismatch(tmp_path, planted, planted_fresh):
    a, b, _ = planted
    lm = match(a, b)
    p = lm.save(tmp_path / "m.npz")
    back = LayerMatch.load(p, a, b)
    for name in ("permutation", "partner", "mse", "alt_mse", "score", "matched"):
        assert np.array_equal(getattr(back, name), getattr(lm, name))
    assert back.threshold == lm.threshold and back.options == lm.options
    with pytest.raises(ResultMismatchError, match="recompute"):
        LayerMatch.load(p, a, planted_fresh[1])
    with pytest.raises(ResultMismatchError):
        LayerMatch.load(p, planted_fresh[0], b)


@pytest.mark.parametrize("other", ["sparse", "jv"])
@pytest.mark.parametrize("allow_unmatched", [False, True])
def test_sparse_and_jv_solvers_give_the_same_match(allow_unmatched, other):
    a, b, _ = planted_pair(256, 64, fresh_fraction=0.3, gain_spread=1.5, fresh_scale=0.05,
                           noise=0.3, seed=0)
    d = match(a, b, allow_unmatched=allow_unmatched, solver="dense")
    s = match(a, b, allow_unmatched=allow_unmatched, solver=other)
    assert s.stats["solver"] == other and s.stats["gap"] == 0.0
    for name in ("partner", "permutation", "matched"):
        assert np.array_equal(getattr(d, name), getattr(s, name)), name
    assert np.allclose(d.mse, s.mse) and np.allclose(d.score, s.score)
    # alt_mse comes from the solver's own lists (no second pass) in the bijective mode;
    # its costs are exact, the dense matrix has float32 cancellation on tiny costs
    assert np.allclose(d.alt_mse, s.alt_mse, rtol=1e-4, atol=1e-6 * float(d.alt_mse.max()))


def test_bad_thresholds_reach_match_and_chain(tmp_path):
    """match/match_chain raise naming the features; bad_threshold='skip' is the explicit way out."""
    from dataclasses import replace

    from saematch_nb import match_chain

    a, b, truth = planted_pair(64, 16, seed=3)
    thr = a.threshold.clone()
    thr[[5, 9]] = torch.tensor([0.0, float("nan")])
    bad = replace(a, threshold=thr)
    for fold in (True, False):  # the reported MSE is on folded parameters even with fold=False
        with pytest.raises(ValueError, match=r"2 feature\(s\).*5, 9.*bad_threshold='skip'"):
            match(bad, b, fold=fold)
    lm = match(bad, b, bad_threshold="skip")
    assert lm.options["bad_threshold"] == "skip"
    ok = np.arange(64) != 5
    ok &= np.arange(64) != 9
    assert np.mean(lm.permutation[ok] == truth[ok]) > 0.9  # the other features still match
    with pytest.raises(ValueError, match="bad_threshold"):
        match_chain([bad, b], cache_dir=tmp_path, progress=False)
    chain = match_chain([bad, b], cache_dir=tmp_path, progress=False, bad_threshold="skip")
    assert np.array_equal(chain.pair(chain.layers[0]).permutation, lm.permutation)


def test_auto_picks_jv_above_the_scipy_size_and_respects_the_budget(monkeypatch):
    import saematch_nb.core.lap as lap

    a, b, truth = planted_pair(200, 32, fresh_fraction=0.2, noise=0.1, seed=3)
    monkeypatch.setattr(lap, "AUTO_SCIPY_MAX", 100)  # this pair is now "large"
    jv = match(a, b)
    assert jv.stats["solver"] == "jv" and jv.stats["gap"] == 0.0
    sp = match(a, b, memory_budget=0)  # nothing fits: the sparse solver
    assert sp.stats["solver"] == "sparse"
    for name in ("partner", "permutation", "matched"):
        assert np.array_equal(getattr(jv, name), getattr(sp, name)), name
    alive = truth >= 0
    assert (jv.permutation[alive] == truth[alive]).mean() > 0.95


# -- issue 22 item 12: features without a direction are never matched --------------------------------
def _zeroed(w: SAEWeights, rows=None) -> SAEWeights:
    """``w`` with the decoder rows and encoder columns of ``rows`` (all when None) set to zero."""
    from dataclasses import replace

    W_dec, W_enc = w.W_dec.clone(), w.W_enc.clone()
    idx = slice(None) if rows is None else torch.as_tensor(rows)
    W_dec[idx] = 0
    W_enc[:, idx] = 0
    return replace(w, W_dec=W_dec, W_enc=W_enc)


@pytest.mark.parametrize("arch", ["jumprelu", "relu"])
def test_an_all_zero_sae_is_a_clear_error_not_100_percent_matched(arch):
    a, b, _ = planted_pair(64, 16, seed=0)
    if arch == "relu":
        from dataclasses import replace

        a, b = (replace(w, threshold=None, architecture="relu") for w in (a, b))
    z = _zeroed(a)
    for x, y, side in ((z, z, "SAE A"), (z, b, "SAE A"), (a, _zeroed(b), "SAE B")):
        with pytest.raises(ValueError, match=side + r" .*has no non-zero feature.*Check the weights"):
            match(x, y)
    with pytest.raises(ValueError, match="no non-zero feature"):
        saematch_nb.match_chain({0: z, 1: b}, cache=False, progress=False)


def test_zero_features_are_unmatched_with_a_reason():
    a, b, truth = planted_pair(64, 16, seed=0)
    dead_a = np.arange(10)
    dead_b = truth[20:25]  # the partners of A's features 20..24
    with pytest.warns(saematch_nb.SaematchWarning, match="10 of SAE A's and 5 of SAE B's features are zero"):
        lm = match(_zeroed(a, dead_a), _zeroed(b, dead_b))
    assert not lm.matched[:10].any() and not lm.matched[20:25].any()
    assert lm.stats["n_zero_a"] == 10 and lm.stats["n_zero_b"] == 5
    rest = np.setdiff1d(np.arange(64), np.r_[dead_a, 20:25])
    assert lm.matched[rest].mean() > 0.9  # the others keep their partners
    assert lm.threshold < 0.5  # the null was not filled with the zero features' convention of 1


def test_calibrate_refuses_an_all_zero_side():
    from saematch_nb.core import criterion as crit

    a, b, _ = planted_pair(64, 16, seed=0)
    X, Y = feature_matrix(a), feature_matrix(b)
    with pytest.raises(ValueError, match="every feature of SAE B is zero"):
        crit.calibrate(X, torch.zeros_like(Y), parts=crit.part_slices("encoder+decoder", 16))
