"""collect_examples: streaming top-k equals brute force, quantile samples lie in their bins, cache,
escaped HTML, trace side by side."""

import numpy as np
import pytest
import torch

from saematch_nb.core.results import FeatureTrace
from saematch_nb.core.weights import SAEInfo, SAEWeights
from saematch_nb.display.examples import feature_examples_html, trace_examples_html
from saematch_nb.analysis import examples as ex_mod
from saematch_nb.sources.activations import collect_activations
from saematch_nb.analysis.examples import Example, FeatureExamples, collect_examples
from tests import _saelens_doubles as fx

TEXTS = ["The cat sat on the mat and looked around the room.", "Numbers: 1, 2, 3 and <b>bold</b> & more",
         "short one", "Another document with a few more tokens in it for the sampler."]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = fx.tiny_gemma2_model(seed=0, n_layers=2, d_model=16)
    acts = collect_activations(model, TEXTS, [0, 1], cache_dir=tmp_path_factory.mktemp("acts"), progress=False)
    saes = [SAEWeights.from_arrays(fx.jumprelu_arrays(16, 48, seed=s),
                                   info=SAEInfo(layer=s, neuronpedia_id=f"tiny/{s}-res")) for s in (0, 1)]
    return model, acts, saes


def test_topk_streaming_equals_brute_force(setup, tmp_path):
    _, acts, saes = setup
    small = collect_examples(saes, acts, k=5, batch_tokens=7, cache=False, progress=False)
    big = collect_examples(saes, acts, k=5, batch_tokens=10_000, cache=False, progress=False)
    for L, w in zip((0, 1), saes):
        f = w.encode(torch.from_numpy(np.array(acts[L]))).numpy()
        want = -np.sort(-f, axis=0)[:5].T  # [n, 5]
        np.testing.assert_allclose(small[L].top_vals, np.maximum(want, 0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(big[L].top_vals, small[L].top_vals, rtol=1e-6)
        np.testing.assert_allclose(small[L].max_value, f.max(0), rtol=1e-6)
        assert (small[L].n_active == (f > 0).sum(0)).all()


def test_quantile_samples_and_contexts(setup):
    _, acts, saes = setup
    exs = collect_examples(saes, acts, k=3, n_bins=4, per_bin=2, cache=False, progress=False)
    le = exs[1]
    w = saes[1]
    f = w.encode(torch.from_numpy(np.array(acts[1]))).numpy()
    n_checked = 0
    for i in range(le.n_features):
        for b in range(4):
            for r, v in zip(le.sample_rows[i, b], le.sample_vals[i, b]):
                if r < 0:
                    continue
                n_checked += 1
                assert f[r, i] == pytest.approx(v, rel=1e-5) and v > 0
                assert b / 4 <= v / le.max_value[i] < (b + 1) / 4 + 1e-6
                assert r not in set(le.top_rows[i].tolist())
    assert n_checked > 20
    fe = le[int(np.argmax(le.n_active))]
    assert isinstance(fe, FeatureExamples)
    top = fe.top[0]
    assert top.value == pytest.approx(float(le.top_vals[fe.feature, 0]), rel=1e-5)
    assert top.values[top.center] == pytest.approx(top.value)
    assert fe.url == f"https://neuronpedia.org/tiny/1-res/{fe.feature}"
    assert fe.url in fe._repr_html_() and "FeatureExamples" in repr(fe)
    assert len(fe.to_pandas()) >= len(fe.top)


def test_examples_cache_is_reused(setup, tmp_path, monkeypatch):
    _, acts, saes = setup
    a = collect_examples(saes, acts, k=4, cache_dir=tmp_path, progress=False)
    monkeypatch.setattr(ex_mod, "_scan_layer", lambda *a, **k: (_ for _ in ()).throw(AssertionError("rescanned")))
    b = collect_examples(saes, acts, k=4, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(a[0].top_rows, b[0].top_rows)
    with pytest.raises(AssertionError, match="rescanned"):  # other options -> other key
        collect_examples(saes, acts, k=5, cache_dir=tmp_path, progress=False)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp.npz", ".tmp"))]


HOSTILE = ["<script>alert(1)</script>", '" onmouseover="x', "</span><img src=x onerror=y>", "&amp;", "\n"]


def test_hostile_tokens_are_escaped():
    e = Example(doc=0, pos=2, value=3.0, tokens=tuple(HOSTILE), values=(0.0, 1.0, 3.0, 0.5, 0.0), center=2)
    fe = FeatureExamples(layer=3, feature=7, max_value=3.0, frac_active=0.1, top=(e,),
                         quantiles=(("25%–50% of max", (e,)),),
                         info=SAEInfo(neuronpedia_id='evil"/x<y>'))
    h = feature_examples_html(fe)
    assert "<script" not in h and "<img" not in h and 'onmouseover="x' not in h
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in h
    assert "&amp;amp;" in h
    assert "rgba(255, 127, 14, 1.000)" in h and "rgba(255, 127, 14, 0.333)" in h  # alpha = value / max
    assert "javascript" not in h


def test_the_saes_come_first(setup):
    """collect_examples(chain, acts): the old (acts, chain) order fails and names the new one."""
    from saematch_nb.errors import ArgumentTypeError

    _, acts, saes = setup
    with pytest.raises(ArgumentTypeError, match="chain .or the SAEs. first and the activations second"):
        collect_examples(acts, saes, k=2, cache=False, progress=False)
    with pytest.raises(ArgumentTypeError, match="needs the Activations"):
        collect_examples(saes, "not activations", k=2, cache=False, progress=False)


def test_trace_side_by_side(setup):
    _, acts, saes = setup
    exs = collect_examples(saes, acts, k=2, cache=False, progress=False)
    tr = FeatureTrace(origin_layer=0, origin_feature=3, layers=(0, 1), features=(3, 11), steps=(),
                      born_layer=0, dies_layer=None)
    h = exs.for_trace(tr)._repr_html_()
    assert h == trace_examples_html(tr, exs)
    assert "layer 0 · feature 3" in h and "layer 1 · feature 11" in h and "smn-ex-row" in h
    gone = FeatureTrace(origin_layer=0, origin_feature=3, layers=(0, 1), features=(3, -1), steps=(),
                        born_layer=0, dies_layer=0)
    assert "layer 1: —" in repr(exs.for_trace(gone))


# -- issue #22 --------------------------------------------------------------------------------------
def _sae(layer, seed, hook=True):
    info = SAEInfo(hook_name=f"blocks.{layer}.hook_resid_post") if hook else SAEInfo(layer=layer)
    return SAEWeights.from_arrays(fx.jumprelu_arrays(16, 48, seed=seed), info=info)


def test_issue22_an_sae_of_another_layer_is_refused(setup, tmp_path):
    """Item 2: ``match_chain({0: saes[3], 1: saes[4]})`` then collect_examples on activations of
    layers [0, 1] ran the layer-3 SAE on layer 0's activations without a word; steering refuses
    that mix, and so do examples now, before anything is scanned or cached."""
    _, acts, _ = setup
    for given in ({0: _sae(3, 0), 1: _sae(4, 1)}, [_sae(3, 0), _sae(4, 1)], {0: _sae(0, 0, hook=False), 1: _sae(4, 1)}):
        with pytest.raises(ValueError, match=r"SAE given for layer \d reads layer [34].*key each SAE by the layer"):
            collect_examples(given, acts, cache_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())
    # the same check through a chain, and SAEs that do not say which layer they read are taken as given
    from saematch_nb.core.stack import SAEStack

    with pytest.raises(ValueError, match="reads layer 3"):
        collect_examples(SAEStack.build({0: _sae(3, 0), 1: _sae(1, 1)}), acts, cache=False, progress=False)
    anon = [SAEWeights.from_arrays(fx.jumprelu_arrays(16, 48, seed=s)) for s in (0, 1)]
    assert sorted(collect_examples(anon, acts, k=2, cache=False, progress=False).layers) == [0, 1]


def test_issue22_layers_and_features_must_be_integers(setup):
    """Item 9: a float layer gave results keyed 1.9 computed with layer 1; a float feature was cut."""
    _, acts, saes = setup
    for bad in ([1.9], [True], "01"):
        with pytest.raises(TypeError, match="layers"):
            collect_examples(saes, acts, layers=bad, cache=False, progress=False)
    with pytest.raises(TypeError, match="k must be an integer"):
        collect_examples(saes, acts, k=2.5, cache=False, progress=False)
    exs = collect_examples(saes, acts, layers=[np.int64(1)], k=2, cache=False, progress=False)
    assert list(exs.layers) == [1] and type(next(iter(exs.layers))) is int
    for bad in (1.9, True):
        with pytest.raises(TypeError, match="layer must be an integer"):
            exs[bad]
        with pytest.raises(TypeError, match="feature must be an integer"):
            exs[1][bad]
        with pytest.raises(TypeError, match="feature must be an integer"):
            exs[1].activations(bad)
    assert exs[np.int64(1)][np.int32(0)].feature == 0
