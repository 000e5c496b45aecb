"""Feature Flow's module-resolved view (core/flow.py): scores, the null's error rate, classes on
planted SAEs, hook_z projection, graphs and their cut rules, tables, persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saematch_nb.core import flow as F
from saematch_nb.core.flow import CLASSES, FeatureFlow, FlowLayer, feature_flow
from saematch_nb.core.results import ResultFileError, ResultVersionError
from saematch_nb.core.synthetic import planted_flow
from saematch_nb.core.weights import SAEInfo, SAEWeights


def _sae(dec: np.ndarray, hook: str | None = None, layer: int | None = None, sae_id: str | None = None) -> SAEWeights:
    dec = np.asarray(dec, np.float32)
    n, d = dec.shape
    return SAEWeights(W_enc=torch.from_numpy(np.ascontiguousarray(dec.T)), b_enc=torch.zeros(n),
                      W_dec=torch.from_numpy(dec), b_dec=torch.zeros(d), threshold=torch.ones(n),
                      info=SAEInfo(layer=layer, hook_name=hook, sae_id=sae_id))


def _aniso(rng, n, d, decay=0.0, mean=0.0):
    u = rng.standard_normal((n, d)) * (np.arange(1, d + 1) ** -decay)[None, :]
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    u[:, 5] += mean
    return torch.tensor(u, dtype=torch.float32)


@pytest.fixture(scope="module")
def planted():
    return planted_flow(n_layers=4, n=256, d_in=128, seed=0)


@pytest.fixture(scope="module")
def flow(planted):
    return feature_flow(planted.res, mlp=planted.mlp, att=planted.att, attn_out_proj=planted.attn_out_proj,
                        n_null=2048)


# -- numerics -------------------------------------------------------------------------------------
def test_top1_cosine_equals_the_dense_max_in_small_blocks():
    g = torch.Generator().manual_seed(0)
    Q, K = torch.randn(700, 24, generator=g), torch.randn(333, 24, generator=g) * 5
    K[7] = 0.0  # a dead feature: cosine 0, never an error
    v, i = F.top1_cosine(Q, K, block_bytes=4 * 700 * 50)  # 7 column blocks
    Qn = Q / Q.norm(dim=1, keepdim=True)
    Kn = K / K.norm(dim=1, keepdim=True).clamp_min(1e-12)
    G = Qn @ Kn.T
    np.testing.assert_allclose(v, G.max(1).values.numpy(), atol=1e-5)
    assert (i == G.argmax(1).numpy()).mean() == 1.0
    with pytest.raises(ValueError, match="one d"):
        F.top1_cosine(Q, K[:, :5])


@pytest.mark.parametrize("flat", [False, True])
def test_hook_z_projection_is_the_reshape_einsum(flat):
    rng = np.random.default_rng(1)
    H, dh, d, n = 3, 5, 11, 40
    dec = torch.tensor(rng.standard_normal((n, H * dh)), dtype=torch.float32)
    W_O = torch.tensor(rng.standard_normal((H, dh, d)), dtype=torch.float32)
    want = torch.einsum("nhe,hed->nd", dec.reshape(n, H, dh), W_O)
    got = F.project_attention(dec, W_O.reshape(H * dh, d) if flat else W_O)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="n_heads \\* d_head"):
        F.project_attention(dec, W_O[:2])


def test_null_reflections_keep_the_features_mean_and_covariance():
    rng = np.random.default_rng(2)
    Q = _aniso(rng, 3000, 16, decay=0.8, mean=0.4)
    b = F.null_basis(Q)
    s = b.signs(np.random.default_rng(0))
    O = b.matrix(s)
    np.testing.assert_allclose(O @ O.T, np.eye(16), atol=1e-10)
    np.testing.assert_allclose(O, O.T, atol=1e-12)
    U = Q.double().numpy()
    U = U / np.linalg.norm(U, axis=1, keepdims=True)
    mu, C = U.mean(0), np.cov(U.T, bias=True)
    np.testing.assert_allclose(b.mean, mu, atol=1e-6)
    np.testing.assert_allclose(O @ C @ O, C, rtol=1e-4, atol=1e-6)  # covariance: spectrum and axes kept
    turned = b.turn(torch.as_tensor(U), s).numpy()
    np.testing.assert_allclose(turned.mean(0), mu, atol=1e-6)
    np.testing.assert_allclose(np.cov(turned.T, bias=True), C, atol=1e-5)
    np.testing.assert_allclose(turned, b.mean + (U - b.mean) @ O, atol=1e-10)
    # ... while each feature is moved away from itself
    cos = np.sum(turned * U, 1) / np.linalg.norm(turned, axis=1)
    assert np.median(cos) < 0.9
    nq, facts = F.null_queries(Q, n_null=1000, seed=0)
    assert nq.shape[0] >= 1000 and facts["n_reflections"] >= F.MIN_REFLECTIONS


def test_null_threshold_is_the_order_statistic():
    v = np.arange(1, 100, dtype=float)  # N = 99: k = ceil(0.99 * 100) = 99
    assert F.null_threshold(v, 0.01) == 99.0
    assert F.null_threshold(v, 0.05) == 95.0
    assert F.null_threshold(np.arange(10.0), 0.01) == math.inf  # too few values for alpha
    # a fresh value from the same distribution exceeds it with probability <= alpha
    rng = np.random.default_rng(0)
    exceed = [rng.random() > F.null_threshold(rng.random(199), 0.05) for _ in range(4000)]
    assert abs(np.mean(exceed) - 0.05) < 4 * math.sqrt(0.05 * 0.95 / 4000)


def _fpr_tolerance(alpha, n_null, n_test):
    # the threshold's own draw (a Beta around alpha) plus the binomial error of the test count
    return 4 * math.sqrt(alpha * (1 - alpha) / n_null + alpha * (1 - alpha) / n_test)


@pytest.mark.parametrize("decay,mean", [(0.0, 0.0), (0.8, 0.0), (0.0, 0.3), (0.8, 0.3)])
def test_null_false_positive_rate_is_alpha(decay, mean):
    """Unrelated features drawn like the SAEs' (isotropic, anisotropic, with a shared mean
    direction) pass the calibrated threshold at rate alpha."""
    rng = np.random.default_rng(10)
    d, alpha = 48, 0.02
    Q, K, T = _aniso(rng, 4000, d, decay, mean), _aniso(rng, 400, d, decay, mean), _aniso(rng, 20000, d, decay, mean)
    cal = F.calibrate_module(Q, K, alpha=alpha, n_null=4000, seed=1)
    s, _ = F.top1_cosine(T, K)
    fpr = float(np.mean(s >= cal["threshold"]))
    assert abs(fpr - alpha) < _fpr_tolerance(alpha, cal["n_null"], T.shape[0]), (fpr, cal)
    assert cal["n_null"] >= 4000 and cal["quantiles"]["0.99"] <= cal["quantiles"]["0.999"]


def test_a_uniform_rotation_null_fails_where_the_reflections_hold():
    """Why the null keeps the principal axes: a uniform random rotation of the module spreads its
    variance evenly and lets most unrelated features of an anisotropic stream through."""
    rng = np.random.default_rng(11)
    d, alpha = 48, 0.01
    Q, K, T = _aniso(rng, 4000, d, 0.8), _aniso(rng, 400, d, 0.8), _aniso(rng, 20000, d, 0.8)
    s, _ = F.top1_cosine(T, K)
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    O = torch.tensor(q * np.sign(np.diag(r)), dtype=torch.float32)
    haar = F.null_threshold(F.top1_cosine(Q @ O, K)[0], alpha)
    ours = F.calibrate_module(Q, K, alpha=alpha, n_null=4000)["threshold"]
    assert float(np.mean(s >= haar)) > 0.5
    assert float(np.mean(s >= ours)) < 2 * alpha
    assert ours > haar


def test_unrelated_saes_are_mostly_unexplained():
    rng = np.random.default_rng(12)
    d, n = 48, 3000
    res = {0: _sae(_aniso(rng, n, d)), 1: _sae(_aniso(rng, n, d))}
    fl = feature_flow(res, mlp={1: _sae(_aniso(rng, 300, d))}, att={1: _sae(_aniso(rng, 300, d))}, n_null=3000)
    share = fl.layer(1).shares()["unexplained"]
    want = (1 - fl.alpha) ** 3
    assert abs(share - want) < 4 * math.sqrt(3 * fl.alpha / n) + 3 * math.sqrt(3 * fl.alpha / 3000), share


# -- planted flows ----------------------------------------------------------------------------------
def test_planted_classes_and_predecessors_are_recovered(planted, flow):
    assert flow.layers == (1, 2, 3)
    for fl in flow.by_layer:
        truth = planted.truth[fl.layer]
        acc = float(np.mean(fl.cls == truth))
        assert acc >= 0.97, (fl.layer, acc)
        for c in range(4):  # every class recovered, not just the common one
            assert np.mean(fl.cls[truth == c] == c) >= 0.9, (fl.layer, CLASSES[c])
        # the top-1 indices are the planted sources
        rs = planted.residual_source[fl.layer]
        has_r = rs >= 0
        assert np.mean(fl.i_R[has_r] == rs[has_r]) >= 0.98
        for j, (mod, k) in enumerate(planted.source[fl.layer]):
            if mod in ("M", "A"):
                assert fl.index(mod)[j] == k
        # attention went through W_O: its threshold is calibrated on the projected directions
        assert fl.calibration["A"]["projected_through_W_O"] is True
        assert fl.thresholds["A"] != fl.thresholds["M"]


def test_thresholds_are_per_layer_and_module_and_stored(flow):
    t = {(fl.layer, m): fl.thresholds[m] for fl in flow.by_layer for m in "RMA"}
    assert len(set(t.values())) == len(t)  # calibrated, not constants
    for fl in flow.by_layer:
        for m in "RMA":
            c = fl.calibration[m]
            assert c["threshold"] == fl.thresholds[m] and c["alpha"] == flow.alpha == 0.01
            assert c["quantiles"]["0.5"] < c["threshold"] <= c["quantiles"]["0.999"] + 1e-9
            assert 0.0 < c["threshold"] < 0.7  # between chance and the planted processed mixes (~0.7)


def test_the_attention_sae_at_hook_z_needs_W_O(planted):
    with pytest.raises(ValueError, match=r"attn_out_proj=\{layer: W_O\}.*model\.W_O"):
        feature_flow(planted.res, att=planted.att)
    # no hook name, but a width that is not d_model: the same clear error
    anon = {L: _sae(w.W_dec.numpy()) for L, w in planted.att.items()}
    with pytest.raises(ValueError, match="decoder rows have 64 entries, the residual stream 128"):
        feature_flow(planted.res, att=anon)
    # a stacked [n_layers, n_heads, d_head, d_model] tensor (TransformerLens' model.W_O) works as the mapping
    stacked = torch.stack([torch.zeros(4, 16, 128)] + [torch.as_tensor(planted.attn_out_proj[L]) for L in (1, 2, 3)])
    a = feature_flow(planted.res, att=planted.att, attn_out_proj=stacked, layers=[2], n_null=256)
    b = feature_flow(planted.res, att=planted.att, attn_out_proj=planted.attn_out_proj, layers=[2], n_null=256)
    np.testing.assert_array_equal(a.layer(2).s_A, b.layer(2).s_A)


def test_an_attention_sae_already_in_d_model_is_used_as_it_is(planted):
    L = 1
    proj = F.project_attention(planted.att[L].W_dec, planted.attn_out_proj[L]).numpy()
    attn_out = {L: _sae(proj, hook=f"blocks.{L}.hook_attn_out", layer=L)}
    a = feature_flow({0: planted.res[0], 1: planted.res[1]}, att=attn_out, attn_out_proj=planted.attn_out_proj,
                     n_null=256)
    b = feature_flow({0: planted.res[0], 1: planted.res[1]}, att={L: planted.att[L]},
                     attn_out_proj=planted.attn_out_proj, n_null=256)
    np.testing.assert_allclose(a.layer(1).s_A, b.layer(1).s_A, atol=1e-5)
    assert a.layer(1).calibration["A"]["projected_through_W_O"] is False


def test_residual_only_flow_and_input_forms(planted):
    res_list = [planted.res[L] for L in (0, 1, 2)]  # layers read from the hooks
    fl = feature_flow(res_list, n_null=256)
    assert fl.layers == (1, 2)
    lay = fl.layer(1)
    assert np.isnan(lay.s_M).all() and (lay.i_M == -1).all() and math.isnan(lay.thresholds["M"])
    assert set(np.unique(lay.classes)) <= {"translated", "unexplained"}
    assert not lay.has("M") and lay.has("R")
    with pytest.raises(ValueError, match="two layers"):
        feature_flow([planted.res[0]])
    with pytest.raises(ValueError, match="no residual SAE"):
        feature_flow({0: planted.res[0], 1: planted.res[1]}, mlp={2: planted.mlp[2]})
    with pytest.raises(ValueError, match="cannot be scored"):
        feature_flow(planted.res, layers=[0])
    with pytest.raises(ValueError, match="alpha"):
        feature_flow(planted.res, alpha=0.7)


def test_a_match_chain_gives_its_saes(planted):
    from saematch_nb.core.stack import SAEStack

    class ChainLike:  # what stack_of reads from a MatchChain: pairs and its stack
        pairs = ()
        stack = SAEStack.build({0: planted.res[0], 1: planted.res[1]})

    fl = feature_flow(ChainLike(), n_null=256)
    assert fl.layers == (1,)


def test_predecessors_of_a_feature(planted, flow):
    fl = flow.layer(2)
    j = int(np.flatnonzero((planted.truth[2] == 1) & (fl.cls == 1))[0])  # a processed feature
    p = flow.predecessors(2, j)
    assert set(p) == {"R", "M", "A"}
    assert p["R"]["layer"] == 1 and p["M"]["layer"] == 2
    assert p["R"]["feature"] == planted.residual_source[2][j] and p["R"]["high"]
    mod, k = planted.source[2][j]
    assert p[mod]["feature"] == k and p[mod]["high"] and p[mod]["s"] > 0.6
    with pytest.raises(IndexError):
        flow.predecessors(2, 10_000)
    with pytest.raises(KeyError, match="no flow scores"):
        flow.layer(0)


# -- graphs -----------------------------------------------------------------------------------------
def _layer(L, s_R, i_R, s_M=None, i_M=None, s_A=None, i_A=None, n_prev=4):
    n = len(s_R)
    nan = np.full(n, np.nan)
    none = np.full(n, -1)
    return FlowLayer(layer=L, prev_layer=L - 1, n=n, s_R=s_R, i_R=i_R,
                     s_M=nan if s_M is None else s_M, i_M=none if i_M is None else i_M,
                     s_A=nan if s_A is None else s_A, i_A=none if i_A is None else i_A,
                     thresholds={"R": 0.6, "M": 0.3 if s_M is not None else np.nan,
                                 "A": 0.3 if s_A is not None else np.nan},
                     n_modules={"R": n_prev, "M": 8 if s_M is not None else 0, "A": 8 if s_A is not None else 0})


@pytest.fixture
def hand_flow():
    # layer 1: feature 0 <- L0 #2 (s 0.9); layer 2: feature 1 <- L1 #0 (0.55); feature 3 <- L1 #1 (0.4: cut)
    # layer 3: features 0 and 2 <- L2 #1 (0.8, 0.7), feature 1 <- L2 #1 but s 0.45 (cut); feature 3 <- L2 #0
    l1 = _layer(1, [0.9, 0.3, 0.2, 0.1], [2, 0, 1, 3], s_M=[0.2, 0.1, 0.5, 0.0], i_M=[5, 1, 2, 3],
                s_A=[0.1, 0.0, 0.0, 0.0], i_A=[6, 0, 0, 0])
    l2 = _layer(2, [0.3, 0.55, 0.2, 0.4], [3, 0, 2, 1], s_M=[0.0, 0.16, 0.0, 0.0], i_M=[0, 7, 0, 0],
                s_A=[0.0, 0.14, 0.0, 0.0], i_A=[0, 4, 0, 0])
    l3 = _layer(3, [0.8, 0.45, 0.7, 0.95], [1, 1, 1, 0])
    return FeatureFlow(by_layer=(l1, l2, l3), alpha=0.01)


def test_graph_follows_top1_backward_and_inverse_forward_with_the_cuts(hand_flow):
    g = hand_flow.graph(2, 1)
    res = g.residual_path()
    assert res == [(0, 2), (1, 0), (2, 1), (3, 0), (3, 2)]  # L3 #1 cut (0.45 < 0.5), L3 #3 not a successor
    edges = {(g.nodes[e.source].key, g.nodes[e.target].key): e for e in g.edges}
    assert edges[(("residual", 1, 0), ("residual", 2, 1))].weight == pytest.approx(0.55)
    assert not edges[(("residual", 1, 0), ("residual", 2, 1))].high  # below the layer's threshold 0.6
    assert edges[(("residual", 2, 1), ("residual", 3, 2))].high
    # module nodes: MLP L2 #7 (0.16 >= 0.15) kept, attn L2 #4 (0.14) dropped; L1 #0's MLP #5 (0.2) kept
    mods = sorted(n.key for n in g.nodes if n.kind != "residual")
    assert mods == [("mlp", 1, 5), ("mlp", 2, 7)]
    assert [n.key for n in g.nodes if n.origin] == [("residual", 2, 1)]
    assert g.nodes[[n.key for n in g.nodes].index(("residual", 0, 2))].cls is None  # no scores at layer 0
    # stricter cuts: the backward step (0.55) goes, modules under 0.18 go
    g2 = hand_flow.graph(2, 1, min_residual=0.6, min_module=0.18)
    assert g2.residual_path() == [(2, 1), (3, 0), (3, 2)]
    assert sorted(n.key for n in g2.nodes if n.kind != "residual") == []
    # the first layer has no scores, but its successors are followed
    g0 = hand_flow.graph(0, 2)
    assert (1, 0) in g0.residual_path() and (0, 2) in g0.residual_path()
    with pytest.raises(IndexError):
        hand_flow.graph(2, 9)


def test_graph_truncates_many_successors(hand_flow):
    g = hand_flow.graph(2, 1, min_residual=0.0, max_per_layer=1)
    assert g.truncated
    assert [k for k in g.residual_path() if k[0] == 3] == [(3, 0)]  # the strongest of 0.8, 0.45, 0.7


def test_graph_tables(hand_flow):
    g = hand_flow.graph(2, 1)
    e = g.to_pandas()
    assert list(e.columns) == ["source_kind", "source_layer", "source_feature", "target_kind", "target_layer",
                               "target_feature", "kind", "weight", "high"]
    assert len(e) == len(g.edges) == 6
    nodes = g.to_pandas("nodes")
    assert list(nodes.columns) == ["kind", "layer", "feature", "class", "origin"] and nodes["origin"].sum() == 1
    with pytest.raises(ValueError):
        g.to_pandas("both")


def test_planted_graph_reaches_the_planted_modules(planted, flow):
    fl = flow.layer(3)
    j = int(np.flatnonzero((planted.truth[3] == 2) & (fl.cls == 2))[0])  # a newborn feature
    g = flow.graph(3, j)
    mod, k = planted.source[3][j]
    kind = {"M": "mlp", "A": "attn"}[mod]
    e = [e for e in g.edges if g.nodes[e.source].key == (kind, 3, k)]
    assert len(e) == 1 and e[0].high and e[0].weight > 0.9
    assert not any(x.kind == "residual" and g.nodes[x.target].key == ("residual", 3, j) for x in g.edges)


# -- tables and persistence -------------------------------------------------------------------------
def test_to_pandas_and_summary(flow):
    df = flow.to_pandas()
    assert list(df.index.names) == ["layer", "feature"] and len(df) == 3 * 256
    assert list(df.columns) == ["prev_layer", "s_R", "pred_R", "s_M", "pred_M", "s_A", "pred_A", "high_R", "high_M",
                                "high_A", "class"]
    assert list(df["class"].cat.categories) == list(CLASSES)
    fl = flow.layer(2)
    np.testing.assert_array_equal(df.loc[2, "s_M"].to_numpy(), fl.s_M)
    sm = flow.summary()
    assert list(sm.index) == [1, 2, 3]
    assert sm.loc[2, "t_A"] == fl.thresholds["A"]
    assert sm[list(CLASSES)].sum(axis=1).round(6).eq(1.0).all()


def test_results_are_read_only(flow):
    fl = flow.layer(1)
    with pytest.raises(ValueError):
        fl.s_R[0] = 0.0
    with pytest.raises(Exception):
        fl.layer = 3


def test_save_load_round_trip(tmp_path, flow, hand_flow):
    p = flow.save(tmp_path / "flow")
    assert p.suffix == ".npz" and not list(tmp_path.glob(".*tmp"))
    back = FeatureFlow.load(p)
    assert back.layers == flow.layers and back.alpha == flow.alpha and back.options == flow.options
    for a, b in zip(flow.by_layer, back.by_layer):
        for name in ("s_R", "i_R", "s_M", "i_M", "s_A", "i_A", "cls"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.thresholds == b.thresholds and a.n_modules == b.n_modules and a.fingerprints == b.fingerprints
        assert a.infos["A"] == b.infos["A"] and a.calibration["R"]["quantiles"] == b.calibration["R"]["quantiles"]
    # NaN thresholds (modules without SAEs) survive as NaN
    back2 = FeatureFlow.load(hand_flow.save(tmp_path / "hand.npz"))
    assert math.isnan(back2.layer(3).thresholds["M"])
    assert back2.graph(2, 1).residual_path() == hand_flow.graph(2, 1).residual_path()


def test_load_refuses_damaged_and_foreign_files(tmp_path, flow):
    p = flow.save(tmp_path / "f.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ResultFileError, match="damaged"):
        FeatureFlow.load(bad)
    from tests.display.conftest import make_layer_match

    lm = make_layer_match().save(tmp_path / "lm.npz")
    with pytest.raises(ResultFileError, match="not a FeatureFlow"):
        FeatureFlow.load(lm)
    import json

    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta["format_version"] = 99
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "v.npz", **arrays)
    with pytest.raises(ResultVersionError):
        FeatureFlow.load(tmp_path / "v.npz")
    with pytest.raises(FileNotFoundError):
        FeatureFlow.load(tmp_path / "missing.npz")
