"""evaluate (EV / ΔL of SAE Match Eq. 5 and baselines) and coactivation on a tiny random model."""

import gc
import weakref

import numpy as np
import pandas as pd
import pytest
import torch

from saematch_nb.core.runner import match_chain
from saematch_nb.core.weights import SAEInfo, SAEWeights
from saematch_nb.sources.activations import collect_activations
from saematch_nb.analysis.evaluate import METHODS, coactivation, evaluate
from tests import _saelens_doubles as fx

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
    by_method = table.set_index(["layer_from", "method"]).delta_loss.abs()
    assert rt.delta_loss.abs().iloc[0] > by_method[(0, "recon_current")]


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


# -- memory: evaluate holds at most the two SAEs of the current pair --------------------------------
class CountingHandle:
    """A lazy handle (``to_weights()``) that builds fresh tensors on every load and records, at each
    load, how many SAEs an earlier load returned are still alive (weak references to W_dec)."""

    def __init__(self, w, log):
        self.w, self.log, self.info = w, log, w.info

    def to_weights(self):
        gc.collect()
        self.log["alive_at_load"].append(sum(r() is not None for r in self.log["refs"]))
        w = SAEWeights(W_enc=self.w.W_enc.clone(), b_enc=self.w.b_enc.clone(), W_dec=self.w.W_dec.clone(),
                       b_dec=self.w.b_dec.clone(), threshold=self.w.threshold.clone(), info=self.w.info)
        self.log["refs"].append(weakref.ref(w.W_dec))
        return w


def test_evaluate_holds_at_most_two_saes(model, saes, table):
    log = {"alive_at_load": [], "refs": []}
    handles = [CountingHandle(w, log) for w in saes]
    chain = match_chain(saes, cache=False, progress=False)
    lazy = evaluate(chain, model, TEXTS, saes=handles, quantile=0.5, progress=False)
    # one load per SAE; when SAE t+1 is loaded only SAE t is still held (so never more than two)
    assert len(log["alive_at_load"]) == len(saes)
    assert max(log["alive_at_load"]) <= 1, log["alive_at_load"]
    gc.collect()
    assert all(r() is None for r in log["refs"])  # nothing kept after evaluate returns
    cols = ["layer_from", "method", "explained_variance", "delta_loss", "n_tokens"]
    pd.testing.assert_frame_equal(lazy[cols], table[cols])


def test_evaluate_checks_lazy_saes_against_the_chain(model, saes):
    log = {"alive_at_load": [], "refs": []}
    chain = match_chain(saes, cache=False, progress=False)
    wrong = [CountingHandle(w, log) for w in (saes[0], saes[2], saes[1])]
    wrong[1].info = saes[1].info
    wrong[2].info = saes[2].info
    with pytest.raises(ValueError, match="weights hashes differ"):
        evaluate(chain, model, TEXTS, saes=wrong, methods=["skip"], progress=False)


# -- App. B pruned@q on a pair where the match is imperfect -----------------------------------------
def _rand_sae(layer, seed):
    a = fx.jumprelu_arrays(D, 2 * D, seed=seed)
    return SAEWeights.from_arrays(a, info=SAEInfo(layer=layer, hook_name=f"blocks.{layer}.hook_resid_post"))


def _expected_pruned(wa, wb, lm, q, x):
    """App. B written out feature by feature: features with MSE above the q-quantile are decoded by
    layer t's decoder, the others moved (folded) to their partner in layer t+1's decoder."""
    f = wa.encode(x).double()
    cut = np.quantile(lm.mse, q)
    out = wb.b_dec.double().expand(x.shape[0], -1).clone()
    th_a, th_b = wa.threshold.double(), wb.threshold.double()
    for i in range(wa.d_sae):
        if lm.mse[i] > cut or lm.permutation[i] < 0:
            out += f[:, i:i + 1] * wa.W_dec[i].double()
        else:
            j = int(lm.permutation[i])
            out += f[:, i:i + 1] * (th_b[j] / th_a[i]) * wb.W_dec[j].double()
    return out


def test_pruned_quantile_against_its_definition():
    from saematch_nb.core.match import match
    from saematch_nb.analysis.evaluate import _method_fn

    wa, wb = _rand_sae(0, 11), _rand_sae(1, 12)
    lm = match(wa, wb)
    x = torch.randn(400, D, generator=torch.Generator().manual_seed(1)) * 3
    fn = lambda m: _method_fn(m, wa, wb, lambda kind: lm)(x, None).double()  # noqa: E731
    folded, prev = fn("folded+matched"), fn("recon_previous")
    assert (folded - prev).norm() > 0.1 * prev.norm()  # the match is far from exact here
    dists = []
    for q in (1.0, 0.75, 0.5, 0.25, 0.0):
        got = fn(f"pruned@{q:g}")
        torch.testing.assert_close(got, _expected_pruned(wa, wb, lm, q, x), rtol=1e-4, atol=1e-4)
        dists.append(float((got - prev).norm()))
    torch.testing.assert_close(fn("pruned@1"), folded)  # nothing pruned: the folded match itself
    # fewer moved features as q decreases: closer and closer to layer t's own reconstruction
    assert all(a > b for a, b in zip(dists, dists[1:])), dists
    # q = 0: every feature but the one(s) of least MSE decoded by layer t (bias still b_dec(t+1))
    least = np.flatnonzero(lm.mse <= lm.mse.min())
    f = wa.encode(x).double()
    j = lm.permutation[least]
    moved = f[:, least] * (wb.threshold[j] / wa.threshold[least]).double() @ wb.W_dec[j].double() \
        - f[:, least] @ wa.W_dec[least].double()
    torch.testing.assert_close(fn("pruned@0"), prev - wa.b_dec.double() + wb.b_dec.double() + moved,
                               rtol=1e-4, atol=1e-4)


def test_pruned_rows_in_evaluate_go_from_folded_to_previous(model):
    wa, wb = _rand_sae(0, 11), _rand_sae(1, 12)
    wb = SAEWeights(W_enc=wb.W_enc, b_enc=wb.b_enc, W_dec=wb.W_dec, b_dec=wa.b_dec, threshold=wb.threshold,
                    info=wb.info)  # same b_dec: pruned@0 differs from recon_previous by one feature only
    df = evaluate([wa, wb], model, TEXTS, methods=["folded+matched", "recon_previous"],
                  quantile=[0.0, 0.5, 1.0], progress=False).set_index("method")
    ev = df.explained_variance
    assert ev["pruned@1"] == pytest.approx(ev["folded+matched"], abs=1e-6)
    assert abs(ev["folded+matched"] - ev["recon_previous"]) > 0.05
    assert abs(ev["pruned@0"] - ev["recon_previous"]) < abs(ev["pruned@0.5"] - ev["recon_previous"]) \
        < abs(ev["folded+matched"] - ev["recon_previous"])


# -- coactivation: SAEs checked against the chain, and a planted known answer -----------------------
class SameStream:
    """Activations duck: the same Gaussian residual stream at layers 0 and 1."""

    def __init__(self, n=3000, seed=0):
        self.x = torch.randn(n, D, generator=torch.Generator().manual_seed(seed))
        self.layers = (0, 1)

    def batches(self, layer, n):
        for s in range(0, len(self.x), n):
            yield self.x[s:s + n]


def test_coactivation_agreement_on_a_planted_permutation(saes):
    acts = SameStream()
    # layer 1's SAE is layer 0's with its features permuted and rescaled: on one stream every
    # feature's best-Pearson partner is its planted twin, so the data agrees with SAE Match fully
    pair = saes[:2]
    good = coactivation(match_chain(pair, cache=False, progress=False), acts, pair, progress=False)
    row = good.to_pandas().iloc[0]
    assert row.n_active == 2 * D and row.agreement == 1.0
    assert row.pearson == pytest.approx(1.0, abs=1e-6) and row.pearson_random < 0.2
    # a wrong chain over the same SAEs (identity pairing) disagrees with the data
    bad = coactivation(match_chain(pair, cache=False, progress=False, method="identity"), acts, pair,
                       progress=False)
    assert bad.to_pandas().agreement.iloc[0] < 0.2


def test_coactivation_checks_the_saes_against_the_chain(saes):
    chain = match_chain(saes[:2], cache=False, progress=False)
    other = saes[2].with_info(layer=1)
    with pytest.raises(ValueError, match=r"pair 0->1: .*other SAEs .* layer 1 .*weight hashes.*match_chain"):
        coactivation(chain, SameStream(), {0: saes[0], 1: other}, progress=False)


def test_issue22_max_tokens_must_be_positive(model, saes, monkeypatch):
    """Item 10: max_tokens <= 0 reported loss and ΔL 0.0 and EV NaN (a table of nothing); now an
    error before the model runs, as are a float count and context 0 (not "the default")."""
    from saematch_nb.sources.activations import ActivationError

    chain = match_chain(saes, cache=False, progress=False)
    monkeypatch.setattr(model, "forward", lambda *a, **k: pytest.fail("the model ran"))
    for bad in (0, -3):
        with pytest.raises(ValueError, match=r"max_tokens .* must be an integer >= 1"):
            evaluate(chain, model, TEXTS, max_tokens=bad, progress=False)
    with pytest.raises(TypeError, match="max_tokens"):
        evaluate(chain, model, TEXTS, max_tokens=2.5, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(chain, model, TEXTS, batch_size=0, progress=False)
    with pytest.raises(ActivationError, match="context must be at least 2"):
        evaluate(chain, model, TEXTS, context=0, progress=False)
