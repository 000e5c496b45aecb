"""Feature Flow on a model (analysis/flow_checks.py): the data check, the causal check and steering
along a flow graph, on the tiny random Gemma 2 (2 layers, d_model 64) with SAEs planted on its own
activations: residual SAEs at layers 0 and 1, MLP- and attention-output SAEs at layer 1. Residual
features 0..7 of layer 1 copy MLP features, 8..15 copy attention features, 16..31 copy layer 0's
residual features; the rest are drawn from layer 1's own activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saematch_nb.core.flow import feature_flow
from saematch_nb.core.weights import SAEInfo, SAEWeights
from saematch_nb.errors import ArgumentTypeError, InvalidArgumentError
from saematch_nb.analysis import flow_checks as fc
from saematch_nb.analysis.steering import steering_hooks

N = 96  # features per SAE


def _sae(dirs: torch.Tensor, data: torch.Tensor, hook: str, q: float = 0.85) -> SAEWeights:
    """Encoder along the unit decoder rows; each threshold at the q-quantile of its pre-activations
    on ``data`` (so every feature fires on ~15 % of tokens)."""
    W = torch.nn.functional.normalize(dirs.float(), dim=-1)
    pre = data @ W.T
    thr = pre.quantile(q, dim=0).clamp_min(1e-4)
    L = int(hook.split(".")[1])
    return SAEWeights(W_enc=W.T.contiguous(), b_enc=torch.zeros(len(W)), W_dec=W.clone(), b_dec=torch.zeros(W.shape[1]),
                      threshold=thr, architecture="jumprelu",
                      info=SAEInfo(layer=L, hook_name=hook, sae_id=f"test/{hook}"))


@pytest.fixture(scope="module")
def setup(tiny_model):
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(1, tiny_model.cfg.d_vocab, (24, 32), generator=g)
    toks[:, 0] = 2
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out",
             "blocks.1.hook_attn_out"]
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(toks, names_filter=names)
    data = {n: cache[n][:, 1:].reshape(-1, cache[n].shape[-1]).float() for n in names}

    def sample(n: str, k: int) -> torch.Tensor:
        x = data[n]
        return x[torch.randperm(len(x), generator=g)[:k]] - x.mean(0)

    r0 = sample(names[0], N)
    m1, a1 = sample(names[2], N), sample(names[3], N)
    r1 = sample(names[1], N)
    r1[:8], r1[8:16], r1[16:32] = m1[:8], a1[:8], r0[16:32]
    saes = {"res": {0: _sae(r0, data[names[0]], names[0]), 1: _sae(r1, data[names[1]], names[1])},
            "mlp": {1: _sae(m1, data[names[2]], names[2])}, "att": {1: _sae(a1, data[names[3]], names[3])}}
    flow = feature_flow(saes["res"], mlp=saes["mlp"], att=saes["att"], n_null=512)
    return tiny_model, toks, saes, flow, data


def test_planted_copies_are_found_by_the_weights(setup):
    _, _, _, flow, _ = setup
    fl = flow.layer(1)
    assert (fl.index("M")[:8] == np.arange(8)).all() and (fl.index("A")[8:16] == np.arange(8)).all()
    assert (fl.index("R")[16:32] == np.arange(16, 32)).all()
    assert set(fl.classes[16:32]) <= {"translated", "processed"}


def test_flow_labels_counts_equal_a_direct_count(setup):
    model, toks, saes, flow, data = setup
    lab = fc.flow_labels(flow, model, saes["res"], mlp=saes["mlp"], att=saes["att"], tokens=toks, batch_size=5)
    fl = flow.layer(1)
    on = saes["res"][1].encode(data["blocks.1.hook_resid_post"]) > 0
    r = (saes["res"][0].encode(data["blocks.0.hook_resid_post"]) > 0)[:, torch.from_numpy(np.array(fl.index("R")))]
    m = (saes["mlp"][1].encode(data["blocks.1.hook_mlp_out"]) > 0)[:, torch.from_numpy(np.array(fl.index("M")))]
    a = (saes["att"][1].encode(data["blocks.1.hook_attn_out"]) > 0)[:, torch.from_numpy(np.array(fl.index("A")))]
    want = np.zeros((N, 8), np.int64)
    for f in range(N):
        for t in torch.nonzero(on[:, f]).flatten().tolist():
            key = "+".join(k for k, x in (("R", r), ("M", m), ("A", a)) if x[t, f]) or "from nowhere"
            want[f, fc.GROUPS.index(key)] += 1
    np.testing.assert_array_equal(lab.counts[1], want)
    # the null keeps each feature's number of activations, only the pairing changes
    np.testing.assert_array_equal(lab.null_counts[1].sum(1), want.sum(1))
    assert lab.n_tokens == toks[:, 1:].numel()
    # an MLP copy fires with its MLP feature more often than with a shuffled partner
    sh = lab.share_with("M")[1]
    cols = [fc.GROUPS.index(g) for g in ("M", "R+M", "M+A", "R+M+A")]
    null = lab.null_counts[1][:8, cols].sum(1) / lab.null_counts[1][:8].sum(1)
    assert np.nanmean(sh[:8]) > np.nanmean(null) + 0.2, (sh[:8], null)
    t = lab.table()
    assert set(t["class"]) == set(fc.PREDICTED) and (t["agree"].dropna().between(0, 1)).all()
    assert "FlowLabels" in repr(lab) and "<table" in lab._repr_html_()
    assert len(lab.tests()) == 3


def test_flow_labels_round_trip(setup, tmp_path):
    model, toks, saes, flow, _ = setup
    lab = fc.flow_labels(flow, model, saes["res"], mlp=saes["mlp"], att=saes["att"], tokens=toks[:6])
    back = fc.FlowLabels.load(lab.save(tmp_path / "labels.npz"))
    np.testing.assert_array_equal(back.counts[1], lab.counts[1])
    assert list(back.classes[1]) == list(lab.classes[1])
    assert back.table().equals(lab.table())


def test_deactivation_batched_equals_one_at_a_time(setup):
    """Every (target, method) of a batched pass equals the same intervention run alone."""
    model, toks, saes, flow, _ = setup
    res = fc.deactivate(flow, model, saes["res"], mlp=saes["mlp"], att=saes["att"], tokens=toks, n_targets=6,
                        methods=("R", "M", "R+M+A"), contexts=3, group=4)
    df = res.to_pandas()
    assert len(df) == 18 and set(df["method"]) == {"R", "M", "R+M+A"}
    fl = flow.layer(1)
    w_t = saes["res"][1]
    site = {"R": "blocks.0.hook_resid_post", "M": "blocks.1.hook_mlp_out", "A": "blocks.1.hook_attn_out"}
    sae = {"R": saes["res"][0], "M": saes["mlp"][1], "A": saes["att"][1]}
    with torch.no_grad():
        _, clean = model.run_with_cache(toks, names_filter="blocks.1.hook_resid_post")
    A = w_t.encode(clean["blocks.1.hook_resid_post"])
    A[:, 0] = 0
    for row in df.itertuples():
        f = row.target
        ctx = torch.argsort(-(A[:, :, f] > 0).sum(1).float() - 1e-6 * A[:, :, f].sum(1), stable=True)[:3]

        def remover(key, p):
            w = sae[key]

            def hook(act, hook=None):
                a = w.feature_activation(act, p)
                return act - a[..., None] * w.W_dec[p]
            return hook

        hooks = [(site[k], remover(k, p)) for k, p in row.predecessors.items()]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            _, c = model.run_with_cache(toks[ctx], names_filter="blocks.1.hook_resid_post")
        after = w_t.feature_activation(c["blocks.1.hook_resid_post"], f)
        on = A[ctx, :, f] > 0
        assert row.after == pytest.approx(float(after[on].mean()), rel=1e-4, abs=1e-6)
        assert row.change == pytest.approx(1 - row.after / row.before)
        assert row.success == (row.change >= 0.5)
        if row.method in ("R", "M"):
            assert row.predecessors == {row.method: int(fl.index(row.method)[f])}


def test_removing_the_planted_predecessor_lowers_its_copy(setup):
    """Layer 1's residual features 16..31 are layer 0's features carried over: removing their R
    predecessor must lower them, far more than removing a co-active R feature that is not theirs."""
    model, toks, saes, flow, _ = setup
    fl = flow.layer(1)
    res = fc.deactivate(flow, model, saes["res"], mlp=saes["mlp"], att=saes["att"], tokens=toks, n_targets=N,
                        methods=("R", "co-active R"), contexts=4, min_active=3)
    df = res.to_pandas()
    copies = df[df["target"].between(16, 31)]
    r = copies[copies["method"] == "R"]["change"].mean()
    co = copies[copies["method"] == "co-active R"]["change"].mean()
    assert len(copies[copies["method"] == "R"]) >= 8
    assert r > 0.3 and r > co + 0.2, (r, co)
    s = res.summary()
    assert list(s["method"]) == ["R", "co-active R"] and "success" in repr(res)
    assert (fl.index("R")[copies["target"].unique()] == copies["target"].unique()).all()


def test_deactivation_round_trip_and_errors(setup, tmp_path):
    model, toks, saes, flow, _ = setup
    res = fc.deactivate(flow, model, saes["res"], mlp=saes["mlp"], att=saes["att"], tokens=toks[:8], n_targets=2,
                        methods=("A",))
    back = fc.FlowDeactivation.load(res.save(tmp_path / "d.json"))
    assert back.to_pandas().equals(res.to_pandas())
    linked = fc.deactivate(flow, model, saes["res"], mlp=saes["mlp"], att=saes["att"], tokens=toks, n_targets=50,
                           methods=("R",), classes=("translated", "processed", "newborn"))
    df = linked.to_pandas()
    assert len(df) and set(df["class"]) <= {"translated", "processed", "newborn"}
    with pytest.raises(InvalidArgumentError, match="classes"):
        fc.deactivate(flow, model, saes["res"], tokens=toks, methods=("R",), classes=("famous",))
    with pytest.raises(InvalidArgumentError, match="unknown methods"):
        fc.deactivate(flow, model, saes["res"], tokens=toks, methods=("Q",))
    with pytest.raises(InvalidArgumentError, match="chain="):
        fc.deactivate(flow, model, saes["res"], mlp=saes["mlp"], att=saes["att"], tokens=toks, methods=("match",))
    # the flow comes first; the old order (model, flow) is named before any other check
    with pytest.raises(ArgumentTypeError, match=r"FeatureFlow first and the model second"):
        fc.deactivate(model, flow, saes["res"], tokens=toks)
    with pytest.raises(ArgumentTypeError, match=r"FeatureFlow first and the model second"):
        fc.flow_labels(model, flow, saes["res"], tokens=toks)
    # the default methods leave "match" out when no chain is given (they used to demand chain=)
    d = fc.deactivate(flow, model, saes["res"], mlp=saes["mlp"], att=saes["att"], tokens=toks[:8], n_targets=1,
                      contexts=1)
    assert set(d.to_pandas()["method"]) == set(fc.METHODS) - {"match"}
    with pytest.raises(InvalidArgumentError, match="mlp="):  # the flow was scored with an MLP SAE
        fc.flow_labels(flow, model, saes["res"], att=saes["att"], tokens=toks)
    other = dict(saes["mlp"])
    other[1] = _sae(torch.randn(N, 64), torch.randn(100, 64), "blocks.1.hook_mlp_out")
    with pytest.raises(InvalidArgumentError, match="not the one the flow was scored on"):
        fc.flow_labels(flow, model, saes["res"], mlp=other, att=saes["att"], tokens=toks)
    with pytest.raises(InvalidArgumentError, match="tokens"):
        fc.flow_labels(flow, model, saes["res"], mlp=saes["mlp"], att=saes["att"], tokens=torch.zeros(3))


def test_the_match_partner_method_uses_the_chain(setup):
    from saematch_nb.core.runner import match_chain

    model, toks, saes, flow, _ = setup
    chain = match_chain([saes["res"][0], saes["res"][1]], progress=False)
    res = fc.deactivate(flow, model, saes["res"], mlp=saes["mlp"], att=saes["att"], tokens=toks, n_targets=8,
                        methods=("match",), chain=chain)
    inv = chain._inverse(0, "partner")
    for row in res.to_pandas().itertuples():
        assert row.predecessors == {"R": int(inv[row.target])}


def test_plan_flow_steering_single_cumulative_and_modules(setup):
    model, toks, saes, flow, _ = setup
    f = 20  # a carried-over feature: residual path 0 -> 1
    graph = flow.graph(1, f, min_residual=0.5, min_module=0.0)
    single = fc.plan_flow_steering(graph, saes["res"], mlp=saes["mlp"], att=saes["att"], strength=3.0,
                                   span="single", modules=False)
    assert single.layers == (1,) and single.features == (f,) and single.strengths == (3.0,)
    cum = fc.plan_flow_steering(graph, saes["res"], mlp=saes["mlp"], att=saes["att"], strength=3.0,
                                span="cumulative", modules=True, schedule="exponential", alpha=-0.5)
    kinds = cum.options["kinds"]
    assert kinds.count("residual") == 2 and {"mlp", "attn"} <= set(kinds)
    assert (0, 20) in list(zip(cum.layers, cum.features))
    for l, s in zip(cum.layers, cum.strengths):
        assert s == pytest.approx(3.0 * np.exp(-0.5 * l))
    assert len(set(cum.hook_names)) == len(cum.hook_names)
    hooks = steering_hooks(cum, model=model)
    assert len(hooks) == len(cum.layers)
    with torch.no_grad():
        base = model(toks[:2])
        with model.hooks(fwd_hooks=hooks):
            moved = model(toks[:2])
    assert not torch.allclose(base, moved)
    assert not model.hook_dict["blocks.0.hook_resid_post"].fwd_hooks  # nothing left attached
    with pytest.raises(InvalidArgumentError, match="span"):
        fc.plan_flow_steering(graph, saes["res"], span="trace")
    with pytest.raises(InvalidArgumentError, match="mlp SAE"):
        fc.plan_flow_steering(graph, saes["res"], att=saes["att"], span="cumulative", modules=True)


def test_texts_leave_padding_and_bos_out(setup, monkeypatch):
    """Texts of different lengths are padded by the tokenizer: padded positions never count."""
    import types

    model, toks, saes, flow, _ = setup
    padded = toks[:3].clone()
    padded[1, 20:] = 0
    padded[2, 10:] = 0
    fake = types.SimpleNamespace(to_tokens=lambda texts, **kw: padded, tokenizer=types.SimpleNamespace(pad_token_id=0))
    t, valid = fc._tokens(fake, ["a", "b", "c"])
    assert torch.equal(t, padded) and int(valid.sum()) == 31 + 19 + 9 and not valid[:, 0].any()
    real = fc._tokens
    monkeypatch.setattr(fc, "_tokens", lambda m, tk: real(fake, ["a", "b", "c"]))
    lab = fc.flow_labels(flow, model, saes["res"], mlp=saes["mlp"], att=saes["att"], tokens=["a", "b", "c"])
    monkeypatch.setattr(fc, "_tokens", real)
    ids = fc.flow_labels(flow, model, saes["res"], mlp=saes["mlp"], att=saes["att"], tokens=padded)
    assert lab.n_tokens == 31 + 19 + 9 and ids.n_tokens == 3 * 31
    assert ids.counts[1].sum() > lab.counts[1].sum()
