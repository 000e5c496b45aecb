"""Hostile inputs and faults through the sources API (issue #11): caches that cannot be written,
Neuronpedia ids that would leave the cache folder, model options that were ignored, steering with
SAEs that are not the chain's or past the model's context, an interrupt mid-generation."""

from __future__ import annotations

import functools
import gc
import shutil
import signal
import tempfile
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import saematch_nb as smn
from saematch_nb.core.fold import fold
from saematch_nb.core.synthetic import planted_chain
from saematch_nb.core.weights import SAEInfo, SAEWeights
from saematch_nb.sources import models as M
from saematch_nb.sources.activations import collect_activations
from saematch_nb.analysis.examples import collect_examples
from saematch_nb.sources.neuronpedia import fetch_feature
from saematch_nb.analysis.steering import plan_steering, steer, steered_logits, steering_hooks
from tests import _saelens_doubles as fx
from tests._faults import as_unprivileged, blocked_folder, home_is_a_file, unwritable_warning

TEXTS = ["The cat sat on the mat.", "Numbers: 1, 2, 3 and more", "short one"]
RECORDED = Path(__file__).resolve().parents[1] / "data" / "neuronpedia" / "gemma-2-2b__12-gemmascope-res-16k__1234.json"


def n_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())


@functools.lru_cache(maxsize=1)
def _tiny_model():
    # seeded: a spawned child (as_unprivileged) builds the same model instead of unpickling one
    return fx.tiny_gemma2_model(seed=0, n_layers=2, d_model=16)


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.fixture(scope="module")
def saes():
    return [SAEWeights.from_arrays(fx.jumprelu_arrays(16, 48, seed=s), info=SAEInfo(layer=s)) for s in (0, 1)]


# -- defect 1: collect_activations / collect_examples / fetch_feature with an unwritable cache --------
def test_activations_and_examples_complete_with_an_unwritable_cache(model, saes, tmp_path):
    ref = collect_activations(model, TEXTS, [0, 1], cache=False, progress=False)
    folder = blocked_folder(tmp_path)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        acts = collect_activations(model, TEXTS, [0, 1], cache_dir=folder, progress=False)
    unwritable_warning(rec, folder)
    np.testing.assert_array_equal(acts[1], ref[1])
    want = collect_examples(saes, ref, k=3, cache=False, progress=False)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ex = collect_examples(saes, acts, k=3, cache_dir=folder, progress=False)
    unwritable_warning(rec, folder)  # once, not once per layer
    np.testing.assert_array_equal(ex[1].top_vals, want[1].top_vals)


def test_default_location_unwritable(model, saes, tmp_path, monkeypatch):
    home = home_is_a_file(tmp_path, monkeypatch)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        acts = collect_activations(model, TEXTS, [1], progress=False)
    assert "activations" in unwritable_warning(rec, home / ".cache" / "saematch_nb" / "activations")
    assert acts.n_tokens > 0


def _collect_in(base):
    acts = collect_activations(_tiny_model(), TEXTS, [0], cache_dir=base, progress=False)
    out, where = np.array(acts[0]), acts.path
    del acts
    gc.collect()  # its uncached folder goes with it (the child exits without atexit)
    return out, where


def _warm_collect(base):
    collect_activations(_tiny_model(), TEXTS, [0], cache=False, progress=False)  # imports, before the rights go


def test_read_only_activation_cache_as_an_unprivileged_user(model):
    ref = collect_activations(model, TEXTS, [0], cache=False, progress=False)
    base = Path(tempfile.mkdtemp(prefix="smn_ro_", dir="/tmp"))
    try:
        base.chmod(0o555)
        (got, where), rec = as_unprivileged(_collect_in, base, prepare=_warm_collect)
        np.testing.assert_array_equal(got, ref[0])
        assert "Permission" in unwritable_warning(rec, base)
        assert list(base.iterdir()) == [] and not where.exists()
    finally:
        base.chmod(0o755)
        shutil.rmtree(base)


def test_neuronpedia_feature_is_returned_when_its_cache_cannot_be_written(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda req, timeout=None: _Resp(RECORDED.read_bytes()))
    folder = blocked_folder(tmp_path)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        f = fetch_feature("gemma-2-2b/12-gemmascope-res-16k", 1234, cache_dir=folder)
    assert f.explanations == ("names of French cities",)
    unwritable_warning(rec, folder)


class _Resp:
    def __init__(self, data):
        self.data = data

    def read(self):
        return self.data

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# -- defect 6: a Neuronpedia id never leaves the cache folder ------------------------------------------
@pytest.mark.parametrize("bad", ["../..", "gemma-2-2b/..", "../12-res", "a/b\\..\\c", "gemma/12-res?x=1",
                                 "gemma/12-res#frag", "gemma/.hidden", "gemma/12 res"])
def test_neuronpedia_ids_with_paths_are_refused_before_any_access(bad, tmp_path, monkeypatch):
    outside = tmp_path / "7.json"  # where "../.." would have led from cache/../..
    outside.write_text("{not json")
    cache = tmp_path / "x" / "cache"
    cache.mkdir(parents=True)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network touched"))
    with pytest.raises(ValueError, match="Neuronpedia"):
        fetch_feature(bad, 7, cache_dir=cache)
    assert outside.read_text() == "{not json"  # neither read nor deleted
    assert list(cache.iterdir()) == []


def test_neuronpedia_index_must_be_an_integer(tmp_path):
    with pytest.raises(TypeError, match="feature index must be an integer"):
        fetch_feature("gemma-2-2b/12-gemmascope-res-16k", 7.5, cache_dir=tmp_path)


# -- defect 7: load_model("demo", device=..., dtype=...) -------------------------------------------------
def test_demo_model_honours_dtype_and_device():
    m = M.load_model("demo", dtype="bfloat16", device="cpu")
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16} and m.cfg.dtype == torch.bfloat16
    assert m.generate("HAMLET.", max_new_tokens=3, verbose=False, do_sample=False)
    if torch.cuda.is_available():
        assert next(M.load_model("demo", device="cuda").parameters()).is_cuda
    else:
        with pytest.raises(M.ModelLoadError, match="no CUDA GPU"):
            M.load_model("demo", device="cuda")
    with pytest.raises(M.ModelLoadError, match="unknown dtype"):
        M.load_model("demo", dtype="int8")
    with pytest.raises(M.ModelLoadError, match="unknown device"):
        M.load_model("demo", device="toaster")


# -- defect 8: steering checks that each SAE is the chain's --------------------------------------------
@pytest.fixture(scope="module")
def steering_setup():
    model = fx.tiny_gemma2_model(seed=0, n_layers=2, d_model=64, sae_transformer=True)
    pc = planted_chain(n_layers=2, n=32, d_in=64, seed=0)
    chain = smn.match_chain(pc.saes, cache=False, progress=False)
    sl = [fx.tiny_jumprelu_sae(64, 32, hook_name=f"blocks.{L}.hook_resid_post",
                               arrays={k: v.numpy() for k, v in pc.saes[L].state_dict().items()}) for L in (0, 1)]
    return model, pc, chain, sl


def test_a_mapping_must_give_each_layer_its_own_sae(steering_setup):
    model, pc, chain, sl = steering_setup
    plan = plan_steering(chain, 0, 3, span="single")
    with pytest.raises(ValueError, match="given for layer 0 reads layer 1"):
        steering_hooks(plan, {0: pc.saes[1], 1: pc.saes[0]})
    with pytest.raises(ValueError, match=r"given for layer 0 reads layer 1 \(blocks.1.hook_resid_post\)"):
        steering_hooks(plan, {0: sl[1]})  # a sae-lens SAE: its layer from its hook
    assert n_hooks(model) == 0


def test_sae_lens_saes_are_checked_against_the_chain(steering_setup):
    model, pc, chain, sl = steering_setup
    plan = plan_steering(chain, 1, 2, span="single", strength=3.0)
    ok = steered_logits(plan, model, "The quick brown fox", saes={1: sl[1]})[1]  # the chain's own SAE
    assert torch.allclose(ok, steered_logits(plan, model, "The quick brown fox", saes={1: pc.saes[1]})[1], atol=1e-5)
    other = planted_chain(n_layers=2, n=32, d_in=64, seed=9).saes[1]
    impostor = fx.tiny_jumprelu_sae(64, 32, hook_name="blocks.1.hook_resid_post",
                                    arrays={k: v.numpy() for k, v in other.state_dict().items()})
    with pytest.raises(ValueError, match="not the one the chain was matched on"):
        steering_hooks(plan, {1: impostor})
    wider = fx.tiny_jumprelu_sae(64, 48, hook_name="blocks.1.hook_resid_post", seed=1).to(torch.bfloat16)
    with pytest.raises(ValueError, match="48 features.*32 features"):  # low precision: the width still counts
        steering_hooks(plan, {1: wider})
    assert n_hooks(model) == 0


# -- defect 9: the context length is checked before generating -----------------------------------------
def test_steer_refuses_more_tokens_than_the_context_holds(steering_setup, monkeypatch):
    model, pc, chain, _ = steering_setup
    plan = plan_steering(chain, 0, 3, span="single")
    prompt = "The quick brown fox"
    n = model.to_tokens(prompt).shape[1]
    room = model.cfg.n_ctx - n + 1
    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.raises(ValueError, match=rf"prompt is {n} tokens.*context of {model.cfg.n_ctx}.*at most {room}"):
        steer(plan, model, prompt, saes={0: pc.saes[0]}, max_new_tokens=room + 1)
    assert calls == [] and n_hooks(model) == 0  # nothing generated
    res = steer(plan, model, prompt, saes={0: pc.saes[0]}, max_new_tokens=room)  # exactly fits
    assert len(model.to_tokens(prompt + res.baseline)[0]) >= n
    with pytest.raises(ValueError, match="shorten the prompt"):
        steer(plan, model, "word " * 200, saes={0: pc.saes[0]}, max_new_tokens=1)


# -- held: an interrupt during steering leaves no hook ----------------------------------------------
def test_sigint_during_steered_generation_leaves_no_hook(steering_setup, monkeypatch):
    model, pc, chain, _ = steering_setup
    plan = plan_steering(chain, 0, 3, span="trace", strength=5.0)
    real = model.generate
    seen = []

    def interrupted(*a, **kw):
        seen.append(n_hooks(model))
        if len(seen) == 2:  # the steered run, hooks attached: a real SIGINT, as from Ctrl-C
            signal.raise_signal(signal.SIGINT)
        return real(*a, **kw)

    monkeypatch.setattr(model, "generate", interrupted)
    # Python's own Ctrl-C handler, whatever an earlier test or library left installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            steer(plan, model, "The quick", saes={0: pc.saes[0], 1: pc.saes[1]}, max_new_tokens=3)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [0, 2] and n_hooks(model) == 0


# -- defect 10 (sae-lens SAEs): folding must not overflow their dtype -----------------------------------
def test_folding_a_float16_sae_lens_sae_with_tiny_thresholds(steering_setup):
    sae = fx.tiny_jumprelu_sae(16, 24, seed=2).to(torch.float16)
    with torch.no_grad():
        sae.threshold[5] = 1e-7
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    with pytest.raises(ValueError, match=r"overflows float16 for 1 feature\(s\) \(indices 5"):
        fold(sae)
    assert all(torch.equal(before[k], v) for k, v in sae.state_dict().items())  # the input untouched


def test_steer_leaves_the_global_random_state_alone(steering_setup):
    model, pc, chain, _ = steering_setup
    plan = plan_steering(chain, 0, 3, span="single")
    torch.manual_seed(1234)
    want = torch.rand(3)
    torch.manual_seed(1234)
    a = steer(plan, model, "The quick", saes={0: pc.saes[0]}, max_new_tokens=4, temperature=1.0, seed=7)
    assert torch.equal(torch.rand(3), want)  # seeded inside, restored after
    assert steer(plan, model, "The quick", saes={0: pc.saes[0]}, max_new_tokens=4, temperature=1.0,
                 seed=7).steered == a.steered


def test_plan_steering_rejects_non_integer_layers_and_features(steering_setup):
    _, _, chain, _ = steering_setup
    with pytest.raises(TypeError, match="layer must be an integer, got 1.9"):
        plan_steering(chain, 1.9, 5)
    with pytest.raises(TypeError, match="feature must be an integer, got 5.7"):
        plan_steering(chain, 1, 5.7)
    assert plan_steering(chain, np.int64(1), np.int32(5)).origin == (1, 5)
