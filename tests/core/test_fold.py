"""fold(): same reconstruction, θ = 1, clear errors; on SAEWeights and on sae-lens SAEs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from saematch_nb import fold
from saematch_nb.core.synthetic import planted_pair
from saematch_nb.core.weights import SAEWeights


def _random_jumprelu(d_in=24, d_sae=40, seed=0, arch="jumprelu", k=None, equal_norms=False):
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    if equal_norms:
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True) * 2.5
    return SAEWeights(
        W_enc=torch.randn(d_in, d_sae, generator=g), b_enc=0.3 * torch.randn(d_sae, generator=g),
        W_dec=W_dec, b_dec=0.1 * torch.randn(d_in, generator=g),
        threshold=(torch.rand(d_sae, generator=g) * 2 + 0.1) if arch == "jumprelu" else None,
        architecture=arch, k=k,
    )


def _inputs_away_from_threshold(w: SAEWeights, n=256, margin=1e-3, seed=1):
    x = torch.randn(n, w.d_in, generator=torch.Generator().manual_seed(seed))
    pre = w.pre_acts(x)
    thr = w.threshold if w.threshold is not None else torch.zeros(w.d_sae)
    keep = ((pre - thr).abs() > margin * (1 + thr.abs())).all(dim=1)
    # rows with every pre-activation away from the jump; plenty survive at this margin
    assert keep.sum() > n // 4
    return x[keep]


def test_fold_jumprelu_weights_same_function():
    w = _random_jumprelu()
    f = fold(w)
    assert isinstance(f, SAEWeights) and f.folded and not w.folded
    assert torch.allclose(f.threshold, torch.ones(w.d_sae))
    assert torch.allclose(f.W_dec, w.W_dec * w.threshold[:, None], rtol=1e-6)
    x = _inputs_away_from_threshold(w)
    assert torch.allclose(f.forward(x), w.forward(x), rtol=1e-5, atol=1e-4)
    # the original is untouched
    assert not torch.allclose(w.threshold, torch.ones(w.d_sae))


def test_fold_on_planted_pair_undoes_rescaling():
    a, b, truth = planted_pair(64, 16, noise=0.0, seed=3)
    fa, fb = fold(a), fold(b)
    # noise 0: the partner's folded decoder equals the feature's exactly, unfolded it does not
    assert torch.allclose(fb.W_dec[truth], fa.W_dec, atol=1e-5)
    assert not torch.allclose(b.W_dec[truth], a.W_dec, atol=1e-2)


def test_fold_relu_unit_decoder_norm_same_function():
    w = _random_jumprelu(arch="relu")
    f = fold(w)
    assert torch.allclose(f.W_dec.norm(dim=1), torch.ones(w.d_sae), atol=1e-5)
    x = torch.randn(128, w.d_in)
    assert torch.allclose(f.forward(x), w.forward(x), rtol=1e-5, atol=1e-4)


def test_fold_topk_unequal_norms_is_noop_with_warning():
    w = _random_jumprelu(arch="topk", k=5)
    from saematch_nb.core.architectures import FoldWarning

    with pytest.warns(FoldWarning, match="TopK"):
        f = fold(w)
    assert torch.equal(f.W_dec, w.W_dec) and torch.equal(f.W_enc, w.W_enc)
    x = torch.randn(64, w.d_in)
    assert torch.allclose(f.forward(x), w.forward(x))


def test_fold_topk_equal_norms_is_unit_norm_and_keeps_ranking():
    w = _random_jumprelu(arch="topk", k=5, equal_norms=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = fold(w)
    assert torch.allclose(f.W_dec.norm(dim=1), torch.ones(w.d_sae), atol=1e-5)
    x = torch.randn(64, w.d_in)
    assert torch.allclose(f.forward(x), w.forward(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf")])
def test_fold_bad_threshold_raises_with_indices(bad):
    w = _random_jumprelu()
    thr = w.threshold.clone()
    thr[[3, 17]] = bad
    w = SAEWeights(w.W_enc, w.b_enc, w.W_dec, w.b_dec, threshold=thr)
    with pytest.raises(ValueError, match=r"2 feature\(s\).*3, 17.*bad_threshold='skip'"):
        fold(w)


def test_fold_bad_threshold_skip_leaves_those_features():
    w = _random_jumprelu()
    thr = w.threshold.clone()
    thr[5] = 0.0
    w = SAEWeights(w.W_enc, w.b_enc, w.W_dec, w.b_dec, threshold=thr)
    f = fold(w, bad_threshold="skip")
    assert torch.equal(f.W_dec[5], w.W_dec[5]) and f.threshold[5] == 0.0
    others = torch.arange(w.d_sae) != 5
    assert torch.allclose(f.threshold[others], torch.ones(int(others.sum())))
    with pytest.raises(ValueError, match="bad_threshold must be one of"):
        fold(w, bad_threshold="ignore")


@pytest.mark.parametrize("name", ["W_enc", "b_enc", "W_dec", "threshold"])
def test_fold_nan_weights_name_the_tensor(name):
    w = _random_jumprelu()
    d = w.state_dict()
    d = {k: v.clone() for k, v in d.items()}
    d[name].view(-1)[2] = float("nan")
    with pytest.raises(ValueError, match=name):
        fold(SAEWeights.from_arrays(d))


# -- sae-lens objects ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saelens_jumprelu():
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig

    cfg = JumpReLUSAEConfig(d_in=24, d_sae=40, apply_b_dec_to_input=False)
    sae = JumpReLUSAE(cfg)
    w = _random_jumprelu(seed=7)
    with torch.no_grad():
        for name, t in w.state_dict().items():
            getattr(sae, name).copy_(t)
    return sae, w


def test_fold_saelens_jumprelu_same_function(saelens_jumprelu):
    sae, w = saelens_jumprelu
    before = sae.threshold.detach().clone()
    f = fold(sae)
    assert type(f) is type(sae) and f is not sae
    assert torch.equal(sae.threshold.detach(), before)  # original untouched
    assert torch.allclose(f.threshold.detach(), torch.ones(40))
    x = _inputs_away_from_threshold(w)
    with torch.no_grad():
        assert torch.allclose(f(x), sae(x), rtol=1e-5, atol=1e-4)
        # and the folded sae-lens SAE computes what our folded SAEWeights computes
        assert torch.allclose(f(x), fold(w).forward(x), rtol=1e-5, atol=1e-4)


def test_fold_saelens_bad_threshold(saelens_jumprelu):
    import copy

    sae = copy.deepcopy(saelens_jumprelu[0])
    with torch.no_grad():
        sae.threshold[0] = -1.0
    with pytest.raises(ValueError, match=r"indices 0\b"):
        fold(sae)
    f = fold(sae, bad_threshold="skip")
    assert float(f.threshold.detach()[0]) == -1.0
    assert np.isfinite(f.W_dec.detach().numpy()).all()


def test_match_takes_saelens_objects_and_fold_is_idempotent_for_matching(saelens_jumprelu):
    from saematch_nb import match

    sae, w = saelens_jumprelu
    lm = match(sae, fold(sae))  # folding again changes nothing in folded space
    assert np.array_equal(lm.permutation, np.arange(40))
    assert np.allclose(lm.mse, 0.0, atol=1e-9)
    assert lm.fingerprint_a == w.fingerprint()


def test_float32_fold_is_bit_for_bit_the_float64_detour():
    """fold computes float32 weights with float32 scales directly: the same bits as dividing /
    multiplying in float64 and rounding back (double rounding is harmless for one * or /)."""
    from saematch_nb.core.synthetic import planted_pair
    from saematch_nb.core.fold import fold
    a, _, _ = planted_pair(300, 40, seed=3)
    f = fold(a)
    s = a.threshold.double()
    assert torch.equal(f.W_enc, (a.W_enc.double() / s[None, :]).float())
    assert torch.equal(f.W_dec, (a.W_dec.double() * s[:, None]).float())
    assert torch.equal(f.b_enc, (a.b_enc.double() / s).float())


# -- issue 22 item 7: an integer SAE is never folded by truncation -----------------------------------
def test_fold_refuses_integer_weights_of_a_saelens_like_module():
    import types

    sae = types.SimpleNamespace(W_enc=torch.full((4, 3), 3, dtype=torch.int64), b_enc=torch.zeros(3, dtype=torch.int64),
                                W_dec=torch.ones(3, 4, dtype=torch.int64), b_dec=torch.zeros(4, dtype=torch.int64),
                                threshold=torch.full((3,), 2, dtype=torch.int64),
                                cfg={"architecture": "jumprelu"})
    with pytest.raises(TypeError, match=r"fold\(.*\): W_enc has dtype int64.*must be floating point"):
        fold(sae)
