"""Steering (analysis/steering.py) on a tiny random Gemma-2 HookedSAETransformer (conftest
``tiny_model``: 2 layers, d_model 64) with planted SAEs reading its residual stream."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import saematch_nb as smn
from saematch_nb.core.synthetic import planted_chain
from saematch_nb.analysis.steering import (
    SteeringPlan, direct_logit_effect, feature_logit_effect, plan_steering, schedule_strengths, schedule_weights,
    steer, steered_logits, steering_hooks, strength_sweep,
)
from tests import _saelens_doubles as fx

PROMPT = "The quick brown fox jumps over the lazy dog."


def n_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())


@pytest.fixture(scope="module")
def planted():
    return planted_chain(n_layers=2, n=32, d_in=64, seed=0)


@pytest.fixture(scope="module")
def saes(planted):
    return {0: planted.saes[0], 1: planted.saes[1]}


@pytest.fixture(scope="module")
def chain(planted):
    return smn.match_chain(planted.saes, cache=False, progress=False)


@pytest.fixture(scope="module")
def chain3():
    pc = planted_chain(n_layers=3, n=32, d_in=16, seed=1)
    return smn.match_chain(pc.saes, cache=False, progress=False)


@pytest.fixture(autouse=True)
def _no_hooks_left(tiny_model):
    yield
    assert n_hooks(tiny_model) == 0, "a test left hooks on the shared model"


def most_active(model, sae, layer):
    """(feature active on most tokens of PROMPT, its activations [pos])."""
    _, cache = model.run_with_cache(PROMPT)
    a = sae.encode(cache[f"blocks.{layer}.hook_resid_post"])[0]
    f = int((a > 0).sum(0).argmax())
    assert (a[:, f] > 0).sum() >= 3
    return f, a[:, f]


# -- schedules and plans --------------------------------------------------------------------------
def test_schedule_values():
    layers = [2, 3, 5]
    assert schedule_strengths(layers, 4.0, "constant") == [4.0, 4.0, 4.0]
    assert schedule_strengths(layers, 3.0, "linear") == pytest.approx([3.0, 2.0, 1.0])
    assert schedule_strengths(layers, 2.0, "exponential") == pytest.approx(
        [2.0 * math.exp(-0.05 * 2), 2.0 * math.exp(-0.05 * 3), 2.0 * math.exp(-0.05 * 5)])
    assert schedule_strengths(layers, 2.0, "exponential", alpha=0.1) == pytest.approx(
        [2.0 * math.exp(0.2), 2.0 * math.exp(0.3), 2.0 * math.exp(0.5)])
    # scale mode: the schedule scales the deviation from the no-op r = 1
    assert schedule_strengths(layers, 0.0, "linear", mode="scale") == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert schedule_strengths(layers, 1.0, "exponential", mode="scale") == [1.0, 1.0, 1.0]
    assert schedule_weights([], "linear") == []
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        schedule_weights(layers, "cosine")
    with pytest.raises(ValueError, match="unknown steering mode"):
        schedule_strengths(layers, 1.0, mode="clamp")


def test_plan_spans_follow_the_trace(chain3):
    layers = chain3.layers
    assert layers == (0, 1, 2)
    # a feature of the middle layer with accepted partners on both sides
    f = next(i for i in range(32) if all(x >= 0 for x in chain3.trace(1, i, accepted_only=True).features))
    tr = chain3.trace(1, f, accepted_only=True)

    single = plan_steering(chain3, 1, f, span="single", strength=2.0)
    assert (single.layers, single.features, single.strengths) == ((1,), (f,), (2.0,))
    assert single.hook_names == ("blocks.1.hook_resid_post",)

    full = plan_steering(chain3, 1, f, span="trace", strength=2.0, schedule="exponential")
    assert full.layers == (0, 1, 2) and full.features == tr.features
    assert full.strengths == pytest.approx([2.0 * math.exp(-0.05 * l) for l in (0, 1, 2)])
    assert full.hook_names == tuple(f"blocks.{l}.hook_resid_post" for l in (0, 1, 2))
    assert full.fingerprints == (chain3.pairs[0].fingerprint_a, chain3.pairs[1].fingerprint_a,
                                 chain3.pairs[1].fingerprint_b)
    assert full.origin == (1, f) and full.options["span"] == "trace"

    cum = plan_steering(chain3, 1, f, span="cumulative", strength=2.0, schedule="linear")
    assert cum.layers == (0, 1) and cum.features == tr.features[:2]
    assert cum.strengths == pytest.approx([2.0, 1.0])
    df = cum.to_pandas()
    assert list(df.columns) == ["layer", "feature", "hook_name", "strength"] and len(df) == 2
    assert "L0:#" in repr(cum)


def test_plan_accepted_only_stops_at_rejected_step(chain3):
    lm = chain3.pairs[0]
    rejected = np.flatnonzero(~lm.matched & (lm.partner >= 0))
    if rejected.size == 0:
        pytest.fail("the planted chain should have rejected steps (fresh features)")
    i = int(rejected[0])
    assert plan_steering(chain3, 0, i, accepted_only=True).layers == (0,)
    loose = plan_steering(chain3, 0, i, accepted_only=False)
    assert loose.layers[:2] == (0, 1) and loose.features[1] == int(lm.partner[i])


def test_plan_errors(chain3):
    with pytest.raises(IndexError, match="feature 99 is out of range"):
        plan_steering(chain3, 0, 99)
    with pytest.raises(IndexError, match="out of range"):
        plan_steering(chain3, 0, -1, span="single")
    with pytest.raises(KeyError, match="layer 7 is not in this chain"):
        plan_steering(chain3, 7, 0)
    for kw, msg in (({"span": "all"}, "unknown span"), ({"mode": "clamp"}, "unknown steering mode"),
                    ({"schedule": "cos"}, "unknown schedule")):
        with pytest.raises(ValueError, match=msg):
            plan_steering(chain3, 0, 0, **kw)
    with pytest.raises(ValueError, match="equal length"):
        SteeringPlan(layers=(0, 1), features=(0,), hook_names=("a",), strengths=(1.0,))
    with pytest.raises(ValueError, match="finite"):
        SteeringPlan(layers=(0,), features=(0,), hook_names=("a",), strengths=(float("nan"),))


# -- interventions on the model -------------------------------------------------------------------
def test_add_mode_moves_the_residual_along_the_folded_decoder_row(tiny_model, saes, chain):
    w = saes[0]
    f = 5
    plan = plan_steering(chain, 0, f, span="single", strength=3.0)
    clean, steered = steered_logits(plan, tiny_model, PROMPT, saes=saes)
    assert (steered - clean).abs().max() > 1e-3

    _, c0 = tiny_model.run_with_cache(PROMPT)
    with tiny_model.hooks(fwd_hooks=steering_hooks(plan, saes, model=tiny_model)):
        _, c1 = tiny_model.run_with_cache(PROMPT)
    delta = c1["blocks.0.hook_resid_post"] - c0["blocks.0.hook_resid_post"]
    expected = 3.0 * w.W_dec[f] * w.threshold[f]  # folded decoder row, on every token
    assert torch.allclose(delta, expected.expand_as(delta), atol=1e-5)
    # the change propagates: the next layer's residual moves too, and not only by that vector
    d1 = c1["blocks.1.hook_resid_post"] - c0["blocks.1.hook_resid_post"]
    assert not torch.allclose(d1, expected.expand_as(d1), atol=1e-3)


def test_add_mode_trace_steers_every_traced_layer(tiny_model, saes, chain):
    plan = plan_steering(chain, 0, 3, span="trace", strength=2.0, accepted_only=False)
    assert plan.layers == (0, 1)
    hooks = steering_hooks(plan, saes, model=tiny_model)
    assert [n for n, _ in hooks] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    # the layer-1 hook adds feature plan.features[1]'s folded row of the layer-1 SAE
    x = torch.zeros(1, 2, 64)
    w1, f1 = saes[1], plan.features[1]
    assert torch.allclose(hooks[1][1](x), (2.0 * w1.W_dec[f1] * w1.threshold[f1]).expand_as(x), atol=1e-6)


@pytest.mark.parametrize("layer", [0, 1])
def test_scale_zero_removes_the_feature(tiny_model, saes, chain, layer):
    w = saes[layer]
    f, a = most_active(tiny_model, w, layer)
    plan = plan_steering(chain, layer, f, span="single", mode="scale", strength=0.0)
    _, c0 = tiny_model.run_with_cache(PROMPT)
    with tiny_model.hooks(fwd_hooks=steering_hooks(plan, saes, model=tiny_model)):
        _, c1 = tiny_model.run_with_cache(PROMPT)
    name = f"blocks.{layer}.hook_resid_post"
    # exactly the feature's contribution is taken away, token by token
    assert torch.allclose(c1[name][0], c0[name][0] - a[:, None] * w.W_dec[f], atol=1e-5)
    a_after = w.encode(c1[name])[0, :, f]
    active = a > 0
    assert a[active].min() > 1.0
    assert a_after[active].abs().max() < 1e-3 * a.max()
    # other features keep firing
    others = w.encode(c1[name])[0].clone()
    others[:, f] = 0
    assert (others > 0).any()


def test_scale_one_is_a_no_op(tiny_model, saes, chain):
    f, _ = most_active(tiny_model, saes[0], 0)
    for schedule in ("constant", "exponential"):
        plan = plan_steering(chain, 0, f, span="trace", mode="scale", strength=1.0, schedule=schedule,
                             accepted_only=False)
        assert plan.strengths == (1.0,) * len(plan.layers)
        clean, steered = steered_logits(plan, tiny_model, PROMPT, saes=saes)
        assert torch.equal(clean, steered)
    plan = plan_steering(chain, 0, f, span="single", mode="scale", strength=2.0)
    clean, steered = steered_logits(plan, tiny_model, PROMPT, saes=saes)
    assert (steered - clean).abs().max() > 1e-4


def test_steer_generates_baseline_and_steered(tiny_model, saes, chain):
    plan = plan_steering(chain, 0, 3, span="trace", strength=50.0)
    res = steer(plan, tiny_model, "The quick", saes=saes, max_new_tokens=6)
    again = steer(plan, tiny_model, "The quick", saes=saes, max_new_tokens=6)
    assert (res.baseline, res.steered) == (again.baseline, again.steered)  # same seed, same text
    assert res.baseline and res.steered and res.changed
    assert not res.baseline.startswith("The quick")  # only the continuation is kept
    html = res._repr_html_()
    assert "SteeringResult" in html and "blocks.0.hook_resid_post" in html
    assert "baseline" in repr(res) and res.to_pandas().shape == (1, 3)
    sampled = steer(plan, tiny_model, "The quick", saes=saes, max_new_tokens=6, temperature=1.0, seed=3)
    assert steer(plan, tiny_model, "The quick", saes=saes, max_new_tokens=6, temperature=1.0,
                 seed=3).baseline == sampled.baseline


def test_hooks_are_removed_when_generation_raises(tiny_model, saes, chain, monkeypatch):
    plan = plan_steering(chain, 0, 3, span="trace", strength=5.0)
    real = tiny_model.generate
    seen = []

    def flaky_generate(*args, **kw):
        seen.append(n_hooks(tiny_model))
        if len(seen) == 2:  # the steered generation, hooks attached
            raise RuntimeError("boom")
        return real(*args, **kw)

    monkeypatch.setattr(tiny_model, "generate", flaky_generate)
    with pytest.raises(RuntimeError, match="boom"):
        steer(plan, tiny_model, "The quick", saes=saes, max_new_tokens=3)
    assert seen == [0, 2]  # baseline ran without hooks, the steered run had both
    assert n_hooks(tiny_model) == 0


def test_hooks_are_removed_when_a_hook_raises(tiny_model, chain, planted):
    # SAEs of the wrong width: the hook itself raises mid-forward
    wrong = {0: planted_chain(n_layers=1, n=32, d_in=16, seed=0).saes[0]}
    plan = SteeringPlan(layers=(0,), features=(1,), hook_names=("blocks.0.hook_resid_post",), strengths=(1.0,))
    with pytest.raises(ValueError, match="width 64 .* d_in=16"):
        steered_logits(plan, tiny_model, PROMPT, saes=wrong)
    assert n_hooks(tiny_model) == 0


def test_steering_errors(tiny_model, saes, chain, planted):
    bad_feature = SteeringPlan(layers=(0,), features=(99,), hook_names=("blocks.0.hook_resid_post",),
                               strengths=(1.0,))
    with pytest.raises(IndexError, match="feature 99 is out of range for the layer-0 SAE"):
        steering_hooks(bad_feature, saes)
    plan = plan_steering(chain, 1, 0, span="single")
    with pytest.raises(KeyError, match=r"no SAE for steered layer 1.*layers \[0\]"):
        steering_hooks(plan, {0: saes[0]})
    with pytest.raises(KeyError, match="no SAE for steered layer 1"):
        steer(plan, tiny_model, "The", saes=[saes[0]])
    no_layer = SteeringPlan(layers=(5,), features=(0,), hook_names=("blocks.5.hook_resid_post",),
                            strengths=(1.0,))
    with pytest.raises(KeyError, match="no hook point.*2 layers"):
        steer(no_layer, tiny_model, "The", saes={5: saes[0].with_info(layer=5)})
    other = planted_chain(n_layers=2, n=32, d_in=64, seed=9).saes
    with pytest.raises(ValueError, match="not the one the chain was matched on"):
        steering_hooks(plan, {1: other[1]})
    with pytest.raises(ValueError, match="two of the SAEs given read layer 0"):
        steering_hooks(plan, [saes[0], saes[0], saes[1]])
    with pytest.raises(ValueError, match="non-empty prompt"):
        steer(plan, tiny_model, "", saes=saes)


def test_saes_given_as_a_list_are_placed_by_their_hook(tiny_model, saes, chain, planted):
    plan = plan_steering(chain, 1, 4, span="single", strength=2.0)
    ref = steered_logits(plan, tiny_model, PROMPT, saes=saes)[1]
    # reversed list: the layer comes from each SAE's info, not its position
    got = steered_logits(plan, tiny_model, PROMPT, saes=[planted.saes[1], planted.saes[0]])[1]
    assert torch.equal(ref, got)
    # sae-lens SAE objects: the layer comes from cfg.metadata.hook_name
    sl = [fx.tiny_jumprelu_sae(64, 32, hook_name=f"blocks.{L}.hook_resid_post",
                               arrays={k: v.numpy() for k, v in planted.saes[L].state_dict().items()})
          for L in (1, 0)]
    got = steered_logits(plan, tiny_model, PROMPT, saes=sl)[1]
    assert torch.allclose(ref, got, atol=1e-5)


def test_feature_logit_effect(tiny_model, saes, chain):
    plan = plan_steering(chain, 0, 3, span="trace", strength=5.0)
    up = feature_logit_effect(plan, tiny_model, PROMPT, saes=saes, k=5)
    down = feature_logit_effect(plan, tiny_model, PROMPT, saes=saes, k=5, direction="down")
    assert list(up.columns) == ["token", "token_id", "delta_logprob"] and len(up) == 5
    assert (np.diff(up["delta_logprob"]) <= 0).all() and up["delta_logprob"].iloc[0] > 0
    assert (np.diff(down["delta_logprob"]) >= 0).all() and down["delta_logprob"].iloc[0] < 0
    assert set(up["token_id"]).isdisjoint(down["token_id"])
    assert up["token"].iloc[0] == tiny_model.tokenizer.decode([int(up["token_id"].iloc[0])])
    with pytest.raises(ValueError, match="direction"):
        feature_logit_effect(plan, tiny_model, PROMPT, saes=saes, direction="sideways")


# -- through sae-lens' HookedSAETransformer with the SAE spliced in --------------------------------
def test_steering_through_an_attached_sae(tiny_model, saes, chain, planted):
    w = planted.saes[0]
    sae = fx.tiny_jumprelu_sae(64, 32, hook_name="blocks.0.hook_resid_post",
                               arrays={k: v.numpy() for k, v in w.state_dict().items()})
    f, _ = most_active(tiny_model, w, 0)
    plans = {
        "add": plan_steering(chain, 0, f, span="single", strength=3.0),
        "remove": plan_steering(chain, 0, f, span="single", mode="scale", strength=0.0),
        "noop": plan_steering(chain, 0, f, span="single", mode="scale", strength=1.0),
    }
    plain = {k: steered_logits(p, tiny_model, PROMPT, saes=saes) for k, p in plans.items()}
    tiny_model.add_sae(sae, use_error_term=True)
    try:
        names = [n for n, _ in steering_hooks(plans["add"], saes, model=tiny_model)]
        assert names == ["blocks.0.hook_resid_post.hook_sae_output"]
        names = [n for n, _ in steering_hooks(plans["remove"], saes, model=tiny_model)]
        assert names == ["blocks.0.hook_resid_post.hook_sae_acts_post"]
        for k, p in plans.items():
            clean, steered = steered_logits(p, tiny_model, PROMPT, saes=saes)
            # with the error term the spliced SAE is transparent: the same intervention, same logits
            assert torch.allclose(clean, plain[k][0], atol=1e-4)
            assert torch.allclose(steered, plain[k][1], atol=1e-4), k
        with tiny_model.hooks(fwd_hooks=steering_hooks(plans["remove"], saes, model=tiny_model)):
            _, cache = tiny_model.run_with_cache(PROMPT)
        assert cache["blocks.0.hook_resid_post.hook_sae_acts_post"][0, :, f].abs().max() == 0
        res = steer(plans["add"], tiny_model, "The quick", saes=saes, max_new_tokens=3)
        assert res.baseline and res.steered
        other = fx.tiny_jumprelu_sae(64, 48, hook_name="blocks.0.hook_resid_post")
        tiny_model.add_sae(other, use_error_term=True)
        with pytest.raises(ValueError, match="attached to the model .* d_sae=48"):
            steering_hooks(plans["add"], saes, model=tiny_model)
    finally:
        tiny_model.reset_saes()


# -- other SAE architectures (hook functions on plain tensors) -------------------------------------
def _arch_sae(arch: str):
    from saematch_nb.core.weights import SAEWeights

    g = torch.Generator().manual_seed(0)
    W_enc = torch.randn(16, 12, generator=g)
    return SAEWeights(W_enc=W_enc, b_enc=torch.zeros(12), W_dec=2.0 * W_enc.T.clone(), b_dec=torch.zeros(16),
                      architecture=arch, k=3 if arch == "topk" else None)


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_other_architectures(arch):
    w = _arch_sae(arch)
    x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))
    a = w.encode(x)
    f = int((a > 0).sum(dim=(0, 1)).argmax())
    add = SteeringPlan(layers=(0,), features=(f,), hook_names=("h",), strengths=(2.0,))
    (_, fn), = steering_hooks(add, {0: w})
    # folded decoder row: unit norm for ReLU; TopK with unequal norms cannot be folded, raw row
    v = w.W_dec[f] / w.W_dec[f].norm() if arch == "relu" else w.W_dec[f]
    assert torch.allclose(fn(x) - x, (2.0 * v).expand_as(x), atol=1e-5)
    remove = SteeringPlan(layers=(0,), features=(f,), hook_names=("h",), strengths=(0.0,), mode="scale")
    (_, fn), = steering_hooks(remove, {0: w})
    assert torch.allclose(fn(x), x - a[..., f:f + 1] * w.W_dec[f], atol=1e-5)
    assert (a[..., f] > 0).any()


def test_hooks_follow_the_activation_dtype(saes):
    w = saes[0]
    x = torch.randn(1, 3, 64, dtype=torch.float64)
    for mode, s in (("add", 2.0), ("scale", 0.0)):
        plan = SteeringPlan(layers=(0,), features=(7,), hook_names=("h",), strengths=(s,), mode=mode)
        (_, fn), = steering_hooks(plan, saes)
        y = fn(x)
        assert y.dtype == torch.float64
        if mode == "add":
            assert torch.allclose(y - x, (2.0 * w.W_dec[7] * w.threshold[7]).double().expand_as(x), atol=1e-5)
        else:
            a = w.encode(x.float())[..., 7:8].double()
            assert torch.allclose(y, x - a * w.W_dec[7].double(), atol=1e-5)


# -- issue #22 item 14: bad input is a clear error, checked before any forward pass -----------------
def test_issue22_token_ids_must_be_in_the_vocabulary(tiny_model, saes, chain):
    """steered_logits read token id -3 as d_vocab - 3 (and cut float ids)."""
    plan = plan_steering(chain, 0, 3, span="single", strength=2.0)
    n = tiny_model.cfg.d_vocab
    for bad in (torch.tensor([[1, -3, 5]]), [[1, n, 2]], torch.tensor([[1.0, 2.0]]), np.array([[0.5, 2]])):
        with pytest.raises(ValueError, match=r"token id|integer token ids"):
            steered_logits(plan, tiny_model, bad, saes=saes)
        with pytest.raises(ValueError, match=r"token id|integer token ids"):
            feature_logit_effect(plan, tiny_model, bad, saes=saes)
    ok = tiny_model.to_tokens(PROMPT)
    assert steered_logits(plan, tiny_model, ok, saes=saes)[0].shape[-1] == n
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        feature_logit_effect(plan, tiny_model, ok, saes=saes, k=0)


def test_issue22_direct_logit_effect_feature_in_range(tiny_model, chain):
    """direct_logit_effect(..., -1) used the last feature."""
    from saematch_nb.analysis.steering import direct_logit_effect

    for bad in (-1, 32):
        with pytest.raises(IndexError, match=f"feature {bad} is out of range for the layer-0 SAE"):
            direct_logit_effect(chain, tiny_model, 0, bad)
    with pytest.raises(TypeError, match="feature must be an integer"):
        direct_logit_effect(chain, tiny_model, 0, 1.5)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        direct_logit_effect(chain, tiny_model, 0, 1, k=0)
    up, down = direct_logit_effect(chain, tiny_model, 0, 31, k=3)
    assert len(up) == len(down) == 3


def test_issue22_temperature_must_be_finite_and_not_negative(tiny_model, saes, chain, monkeypatch):
    """temperature NaN or -1 decoded greedily without a word."""
    plan = plan_steering(chain, 0, 3, span="single", strength=2.0)
    monkeypatch.setattr(tiny_model, "generate", lambda *a, **k: pytest.fail("generated"))
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            steer(plan, tiny_model, "The", max_new_tokens=2, temperature=bad)
    with pytest.raises(TypeError, match="temperature"):
        steer(plan, tiny_model, "The", max_new_tokens=2, temperature="hot")


def test_issue22_overflows_are_explained(tiny_model, chain3, chain):
    """An exponential schedule with alpha=1000 and strength_sweep(target=-5) raised raw OverflowErrors."""
    from saematch_nb.errors import InvalidArgumentError
    from saematch_nb.analysis.steering import strength_sweep

    with pytest.raises(InvalidArgumentError, match=r"alpha=1000 .*overflow at layer 2"):
        plan_steering(chain3, 0, 1, schedule="exponential", alpha=1000.0)
    with pytest.raises(InvalidArgumentError, match="alpha must be a finite number"):
        schedule_weights([0, 1], "exponential", alpha=float("nan"))
    with pytest.raises(InvalidArgumentError, match="beyond a float"):
        schedule_strengths([0, 1, 2], 1e300, "exponential", alpha=10.0)
    assert schedule_weights([0, 700], "exponential", alpha=1.0)[1] == pytest.approx(math.exp(700))
    for bad in (-5, tiny_model.cfg.d_vocab, 2**70):
        with pytest.raises(InvalidArgumentError, match="target token id .* is not in"):
            strength_sweep(chain, tiny_model, 0, 3, "The quick", strengths=(0.0, 2.0), target=bad)
    df = strength_sweep(chain, tiny_model, 0, 3, "The quick", strengths=(0.0, 2.0), target=5)
    assert list(df["strength"]) == [0.0, 2.0]


def test_the_chain_or_its_plan_comes_first(tiny_model, chain, saes):
    """Every analysis call takes the chain (or what was made from it) first, then the model, then
    data; the old orders fail with a message that names the new one (no shim that guesses)."""
    from saematch_nb.errors import ArgumentTypeError
    from saematch_nb.widgets.steering import SteeringPanel

    plan = plan_steering(chain, 0, 1, span="single")
    for call in (lambda: steer(tiny_model, plan, "The"), lambda: steered_logits(tiny_model, plan, PROMPT),
                 lambda: feature_logit_effect(tiny_model, plan, PROMPT)):
        with pytest.raises(ArgumentTypeError, match="SteeringPlan first and the model second"):
            call()
    with pytest.raises(TypeError, match="positional"):
        steer(tiny_model, saes, plan, "The")  # the old (model, saes, plan, prompt) form: too many positionals
    for call in (lambda: strength_sweep(tiny_model, chain, 0, 1, "The"),
                 lambda: direct_logit_effect(tiny_model, chain, 0, 1)):
        with pytest.raises(ArgumentTypeError, match="MatchChain first and the model second"):
            call()
    with pytest.raises(ArgumentTypeError, match="chain comes first"):
        SteeringPanel(tiny_model, chain)
