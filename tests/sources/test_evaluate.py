"""evaluate (EV / ΔL of SAE Match Eq. 5 and baselines) and coactivation on a tiny random model."""

import numpy as np
import pytest
import torch

from saematch_nb.core.chain import match_chain
from saematch_nb.core.weights import SAEInfo, SAEWeights
from saematch_nb.sources import _fixtures as fx
from saematch_nb.sources.activations import collect_activations
from saematch_nb.sources.evaluate import METHODS, coactivation, evaluate

TEXTS = ["The cat sat on the mat and looked around.", "Numbers: 1, 2, 3 and more text here", "short one"]
D = 32


def split_sae(layer, perm=None, scale=None):
    """A well-fit JumpReLU SAE: features ±e_k, so SAE(x) = x up to the tiny threshold. ``perm`` and
    ``scale`` plant the same SAE with features reordered and rescaled (what folding undoes)."""
    eye = torch.eye(D)
    W_enc, W_dec, th = torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0), torch.full((2 * D,), 1e-4)
    if scale is not None:
        W_enc, W_dec, th = W_enc * scale, W_dec / scale[:, None], th * scale
    if perm is not None:
        W_enc, W_dec, th = W_enc[:, perm], W_dec[perm], th[perm]
    return SAEWeights(W_enc=W_enc.contiguous(), b_enc=torch.zeros(2 * D), W_dec=W_dec.contiguous(),
                      b_dec=torch.zeros(D), threshold=th,
                      info=SAEInfo(layer=layer, hook_name=f"blocks.{layer}.hook_resid_post"))


@pytest.fixture(scope="module")
def model():
    return fx.tiny_gemma2_model(seed=0, n_layers=3, d_model=D)


@pytest.fixture(scope="module")
def saes():
    g = torch.Generator().manual_seed(0)
    return [split_sae(0), split_sae(1, torch.randperm(2 * D, generator=g), torch.rand(2 * D, generator=g) * 2 + 0.5),
            split_sae(2, torch.randperm(2 * D, generator=g))]


@pytest.fixture(scope="module")
def table(model, saes):
    chain = match_chain(saes, cache=False, progress=False)
    return evaluate(chain, model, TEXTS, saes=saes, quantile=0.5, progress=False)


def test_table_shape_and_columns(table):
    assert {"layer_from", "layer_to", "method", "explained_variance", "delta_loss"} <= set(table.columns)
    assert len(table) == 2 * (len(METHODS) + 1)
    assert set(table.method) == set(METHODS) | {"pruned@0.5"}
    assert table.n_tokens.nunique() == 1 and table.n_tokens.iloc[0] > 10


def test_recon_current_of_a_fit_sae_beats_a_random_one(table, model):
    ev = table.set_index(["layer_from", "method"]).explained_variance
    assert ev[(0, "recon_current")] > 0.999
    rnd = [SAEWeights.from_arrays(fx.jumprelu_arrays(D, 64, seed=s), info=SAEInfo(layer=s)) for s in (0, 1)]
    rt = evaluate(rnd, model, TEXTS, methods=["recon_current"], progress=False)
    assert rt.explained_variance.iloc[0] < ev[(0, "recon_current")] - 0.05
    assert rt.delta_loss.abs().iloc[0] > table.set_index(["layer_from", "method"]).delta_loss.abs()[(0, "recon_current")]


def test_planted_permutation_identity_is_worse_than_folded_match(table):
    ev = table.set_index(["layer_from", "method"]).explained_variance
    for t in (0, 1):
        assert ev[(t, "folded+matched")] > ev[(t, "identity")] + 0.3
        # The folded transfer of an exact ±e_k code through the right permutation is x_t itself.
        assert ev[(t, "folded+matched")] == pytest.approx(ev[(t, "skip")], abs=1e-4)
        assert ev[(t, "pruned@0.5")] == pytest.approx(ev[(t, "skip")], abs=1e-4)


def test_raw_transfer_is_not_scale_invariant(model, saes):
    # Pair 0 -> 1 differs by a per-feature rescaling: the folded transfer undoes it, the raw one cannot.
    chain = match_chain(saes[:2], cache=False, progress=False)
    kw = dict(saes=saes[:2], methods=["folded+matched"], progress=False)
    folded = evaluate(chain, model, TEXTS, **kw).explained_variance.iloc[0]
    raw = evaluate(chain, model, TEXTS, transfer="raw", **kw).explained_variance.iloc[0]
    assert folded > raw + 0.05
    with pytest.raises(ValueError, match="transfer"):
        evaluate(chain, model, TEXTS, transfer="nope", **kw)


def test_hooks_removed_after_an_error(model, saes):
    class Boom(Exception):
        pass

    class BadSAE(SAEWeights):
        def encode(self, x):
            raise Boom("encode failed")

    a = saes[0]
    bad = BadSAE(W_enc=a.W_enc, b_enc=a.b_enc, W_dec=a.W_dec, b_dec=a.b_dec, threshold=a.threshold, info=a.info)
    with pytest.raises(Boom):
        evaluate([bad, saes[1]], model, TEXTS, methods=["recon_previous"], progress=False)
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
    clean = model(model.to_tokens(TEXTS[0]), return_type="loss")
    assert torch.isfinite(clean)


def test_bad_arguments(model, saes):
    with pytest.raises(ValueError, match="unknown method"):
        evaluate(saes[:2], model, TEXTS, methods=["nope"], progress=False)
    with pytest.raises(ValueError, match="adjacent"):
        evaluate([saes[0], saes[2]], model, TEXTS, progress=False)
    with pytest.raises(ValueError, match="quantile"):
        evaluate(saes[:2], model, TEXTS, quantile=1.5, progress=False)


def test_coactivation_matched_beats_random(model, saes, tmp_path):
    acts = collect_activations(model, TEXTS * 3, [0, 1, 2], cache_dir=tmp_path, progress=False)
    chain = match_chain(saes, cache=False, progress=False)
    co = coactivation(chain, acts, saes, progress=False, block_bytes=8 * 64 * 10)  # blocks of 10 A-features
    df = co.to_pandas()
    assert list(df.layer_from) == [0, 1]
    assert (df.pearson > df.pearson_random + 0.2).all()
    assert (df.matching_score > df.matching_score_random).all()
    assert ((df.agreement >= 0) & (df.agreement <= 1)).all()
    f = co.features[0]
    assert {"partner", "data_partner", "pearson", "sufficiency", "necessity", "jaccard", "agrees"} <= set(f.columns)
    # blocked and unblocked Pearson partners agree
    co2 = coactivation(chain, acts, saes, progress=False)
    np.testing.assert_array_equal(co2.features[0].data_partner, f.data_partner)
    assert "Coactivation" in repr(co) and "<script" not in co._repr_html_()
