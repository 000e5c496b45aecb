"""The chain is the spine of an analysis: its SAE stack is built once and every later step takes
the chain (issue #12). One demo analysis, match_chain -> collect_examples -> evaluate ->
coactivation -> plan_steering/steer, counted: each SAE is converted, hashed and folded once."""

from __future__ import annotations

import pytest
import torch

import saematch_nb as smn
from saematch_nb.core import fold as fold_mod
from saematch_nb.core import weights as weights_mod


@pytest.fixture(scope="module")
def bundle():
    return smn.demo.load()


@pytest.fixture()
def counts(monkeypatch):
    """Calls of the three expensive per-SAE operations (whole SAEs, not one-feature slices)."""
    got = {"converted": 0, "hashed": 0, "folded": 0}

    def counting(name, fn, cond=lambda *a: True):
        def wrapped(*a, **kw):
            if cond(*a):
                got[name] += 1
            return fn(*a, **kw)
        return wrapped

    monkeypatch.setattr(weights_mod, "_from_saelens_object",
                        counting("converted", weights_mod._from_saelens_object))
    monkeypatch.setattr(weights_mod, "_hash_weights", counting("hashed", weights_mod._hash_weights))
    monkeypatch.setattr(fold_mod, "_fold_weights", counting("folded", fold_mod._fold_weights))
    return got


def test_one_analysis_converts_hashes_and_folds_each_sae_once(bundle, counts, tmp_path):
    n = len(bundle.saes)
    chain = smn.match_chain(bundle.saes, cache=False, progress=False)
    after_chain = dict(counts)
    acts = smn.collect_activations(bundle.model, list(bundle.texts[:6]), chain.layers, progress=False,
                                   cache_dir=tmp_path)
    ex = smn.collect_examples(chain, acts, k=3, cache=False, progress=False)
    ev = smn.evaluate(chain, bundle.model, list(bundle.texts[:3]), max_tokens=192, progress=False)
    co = smn.coactivation(chain, acts, progress=False)
    tr = chain.trace(0, int(chain.pairs[0].best(1)[0]))
    plan = smn.plan_steering(chain, tr.origin_layer, tr.origin_feature, strength=4.0)
    res = smn.steer(plan, bundle.model, "HAMLET.\n", max_new_tokens=4)
    assert counts == {"converted": n, "hashed": n, "folded": n}, counts
    assert after_chain == counts  # every later step reused the chain's stack
    # and the steps did their work
    assert set(ex.layers) == set(chain.layers) and len(ev) == (n - 1) * len(smn.analysis.evaluate.METHODS)
    assert len(co.summary_rows) == n - 1 and isinstance(res.steered, str)
    assert chain.stack.stats == {"converted": n, "loaded": 0, "folded": n, "hashed": n}


def test_saes_given_again_are_accepted_and_checked(bundle, tmp_path):
    chain = smn.match_chain(bundle.saes, cache=False, progress=False)
    acts = smn.collect_activations(bundle.model, list(bundle.texts[:2]), chain.layers, progress=False,
                                   cache_dir=tmp_path)
    same = smn.collect_examples(chain, acts, saes=bundle.saes, k=2, cache=False, progress=False)
    assert set(same.layers) == set(chain.layers)
    # a list of SAEs that say which layer they read may come in any order; a mapping that
    # pairs a layer with another layer's SAE is caught
    reordered = [bundle.saes[i] for i in (0, 2, 1, 3, 4, 5)]
    assert set(smn.collect_examples(chain, acts, saes=reordered, k=2, cache=False, progress=False).layers) \
        == set(chain.layers)
    wrong = dict(enumerate(bundle.saes))
    wrong[1], wrong[2] = wrong[2], wrong[1]
    with pytest.raises(ValueError, match="layer 1"):
        smn.collect_examples(chain, acts, saes=wrong, k=2, cache=False, progress=False)
    plan = smn.plan_steering(chain, 0, 0, span="single")
    with pytest.raises(ValueError, match="reads layer 2"):
        smn.steer(smn.plan_steering(chain, 1, 0, span="single"), bundle.model, "The", saes=wrong, max_new_tokens=2)
    assert isinstance(smn.steer(plan, bundle.model, "The", saes=bundle.saes, max_new_tokens=2).steered, str)


def test_a_loaded_chain_needs_its_saes_once(bundle, tmp_path):
    chain = smn.match_chain(bundle.saes, cache=False, progress=False)
    chain.save(tmp_path / "chain")
    bare = smn.MatchChain.load(tmp_path / "chain")
    assert bare.stack is None
    with pytest.raises(ValueError, match="no SAEs attached"):
        smn.evaluate(bare, bundle.model, list(bundle.texts[:1]), max_tokens=32, progress=False)
    full = smn.MatchChain.load(tmp_path / "chain", saes=bundle.saes)
    assert full.stack is not None and full.fingerprints == chain.fingerprints
    plan = smn.plan_steering(full, 0, 0, span="single")
    assert isinstance(smn.steer(plan, bundle.model, "The", max_new_tokens=2).steered, str)
    # a list is taken in depth order (issue 22 item 3): the same SAEs reversed are the chain's SAEs
    shuffled = list(bundle.saes)[::-1]
    assert smn.MatchChain.load(tmp_path / "chain", saes=shuffled).fingerprints == chain.fingerprints
    wrong = [bundle.saes[1], *list(bundle.saes)[1:]]  # layer 1's SAE given for layer 0
    with pytest.raises(smn.core.results.ResultMismatchError, match="not the one this chain was matched on"):
        smn.MatchChain.load(tmp_path / "chain", saes=wrong)


def test_replace_does_not_carry_stale_traces(bundle):
    from dataclasses import replace

    chain = smn.match_chain(bundle.saes[:3], cache=False, progress=False)
    before = chain.trace(0, 5)
    other = smn.match_chain(bundle.saes[1:4], cache=False, progress=False)
    swapped = replace(chain, pairs=(chain.pairs[0], chain.pairs[0].__class__(
        **{**{f: getattr(chain.pairs[1], f) for f in chain.pairs[1].__dataclass_fields__},
           "permutation": other.pairs[0].permutation, "partner": other.pairs[0].partner})))
    assert swapped._memo == {} and swapped._memo is not chain._memo
    after = swapped.trace(0, 5)
    assert before.features[:2] == after.features[:2]
    f1 = before.features[1]
    assert after.features[2] == int(other.pairs[0].partner[f1]) or after.features[2] == -1


def test_stack_holds_at_most_two_lazy_saes(bundle):
    handles = bundle.handles
    st = smn.SAEStack.build(handles)
    for L in st.layers:
        st.weights(L)
        st.folded(L)
    assert st.peak_held == 2 and len(st._held) == 2
    assert st.stats["loaded"] == len(handles) and st.stats["converted"] == 0
    # a hash is remembered when its weights are dropped
    fp0 = st.fingerprint(st.layers[0])  # layer 0 was dropped: loaded again to be hashed
    assert st.stats["hashed"] == 1 and st.stats["loaded"] == len(handles) + 1
    st.weights(st.layers[0])  # loaded again: its hash is known, not recomputed
    assert st.fingerprint(st.layers[0]) == fp0 and st.stats["hashed"] == 1


def test_architecture_classes_are_the_one_place():
    """encode, a single feature's activation and folding come from one class per architecture;
    a TopK feature's activation is exact (no longer approximated by ReLU)."""
    from saematch_nb.core import architectures as A
    from saematch_nb.core.weights import SAEWeights

    g = torch.Generator().manual_seed(0)
    W = torch.randn(8, 16, generator=g)
    base = dict(W_enc=W, b_enc=torch.zeros(16), W_dec=W.T.contiguous(), b_dec=torch.zeros(8))
    x = torch.randn(50, 8, generator=g)
    for arch, extra in (("jumprelu", {"threshold": torch.full((16,), 0.5)}), ("relu", {}), ("topk", {"k": 3})):
        w = SAEWeights(architecture=arch, **base, **extra)
        assert isinstance(w.arch, A.ARCHITECTURES[arch].__class__)
        full = w.encode(x)
        for f in (0, 7, 15):
            assert torch.allclose(w.feature_activation(x, f), full[:, f])
    topk = SAEWeights(architecture="topk", k=3, **base)
    relu_like = torch.relu(x @ W)
    assert not torch.allclose(topk.feature_activation(x, 0), relu_like[:, 0])
    with pytest.raises(ValueError, match="unknown SAE architecture"):
        A.get("gated")
