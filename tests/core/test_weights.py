"""core/weights.py on its own: SAEInfo, SAEWeights' validation and SAE function, as_weights on every
input kind, and a fingerprint that stays the same for the same weights (cache keys and saved
results depend on it)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from saematch_nb.core.weights import SAEInfo, SAEWeights, as_weights
from tests import _saelens_doubles as fx


def tiny(architecture="jumprelu", d_in=4, d_sae=6, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    arrays = dict(W_enc=torch.randn(d_in, d_sae, generator=g), b_enc=torch.randn(d_sae, generator=g),
                  W_dec=torch.randn(d_sae, d_in, generator=g), b_dec=torch.randn(d_in, generator=g))
    if architecture == "jumprelu":
        arrays["threshold"] = torch.rand(d_sae, generator=g) * 0.5
    if architecture == "topk":
        kw.setdefault("k", 2)
    return SAEWeights(architecture=architecture, **arrays, **kw)


# -- SAEInfo ------------------------------------------------------------------------------------
def test_info_label_prefers_the_most_specific_name():
    assert SAEInfo(layer=3, hook_name="blocks.3.hook_resid_post", sae_id="layer_3/width_16k/canonical").label \
        == "layer_3/width_16k/canonical"
    assert SAEInfo(layer=3, hook_name="blocks.3.hook_resid_post").label == "blocks.3.hook_resid_post"
    assert SAEInfo(layer=3).label == "layer 3"
    assert SAEInfo(layer=0).label == "layer 0"  # layer 0 is a layer, not "no layer"
    assert SAEInfo().label == "SAE"


def test_info_neuronpedia_urls_and_dict_roundtrip():
    info = SAEInfo(layer=12, neuronpedia_id="gemma-2-2b/12-gemmascope-res-16k", model_name="gemma-2-2b")
    assert info.neuronpedia_url() == "https://neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k"
    assert info.neuronpedia_url(np.int64(7)) == "https://neuronpedia.org/gemma-2-2b/12-gemmascope-res-16k/7"
    assert SAEInfo(layer=12).neuronpedia_url(7) is None
    d = info.to_dict()
    assert set(d) == {"layer", "hook_name", "model_name", "release", "sae_id", "neuronpedia_id", "path"}
    assert SAEInfo.from_dict(json.loads(json.dumps(d))) == info
    assert SAEInfo.from_dict(None) == SAEInfo()
    assert SAEInfo.from_dict({"layer": 2, "unknown_key": 1}) == SAEInfo(layer=2)  # newer files load


# -- SAEWeights: validation -------------------------------------------------------------------------
def test_shapes_and_required_fields_are_checked_with_the_sae_named():
    ok = tiny()
    assert (ok.d_in, ok.d_sae) == (4, 6)
    info = SAEInfo(sae_id="my/sae")
    with pytest.raises(ValueError, match=r"my/sae.*W_dec must be \[d_sae, d_in\] = \[6, 4\], got \(4, 6\)"):
        SAEWeights(ok.W_enc, ok.b_enc, ok.W_dec.T, ok.b_dec, ok.threshold, info=info)
    # every problem at once, so one fix is enough
    with pytest.raises(ValueError) as e:
        SAEWeights(ok.W_enc, ok.b_enc[:5], ok.W_dec, ok.b_dec[:3], ok.threshold[:2])
    assert all(s in str(e.value) for s in ("b_enc must be [6]", "b_dec must be [4]", "threshold must be [6]"))
    with pytest.raises(ValueError, match=r"W_enc must be 2-D \[d_in, d_sae\]"):
        SAEWeights(ok.W_enc[0], ok.b_enc, ok.W_dec, ok.b_dec, ok.threshold)
    with pytest.raises(ValueError, match="it is empty"):
        SAEWeights(torch.zeros(4, 0), torch.zeros(0), torch.zeros(0, 4), ok.b_dec, threshold=torch.zeros(0))
    with pytest.raises(ValueError, match="a JumpReLU SAE needs a threshold"):
        SAEWeights(ok.W_enc, ok.b_enc, ok.W_dec, ok.b_dec)
    with pytest.raises(ValueError, match="a TopK SAE needs k"):
        SAEWeights(ok.W_enc, ok.b_enc, ok.W_dec, ok.b_dec, architecture="topk")
    with pytest.raises(ValueError,
                       match=r"unknown SAE architecture 'gated'; expected one of \('jumprelu', 'relu', 'topk'\)"):
        SAEWeights(ok.W_enc, ok.b_enc, ok.W_dec, ok.b_dec, architecture="gated")


# -- SAEWeights: the SAE function -------------------------------------------------------------------
def test_encode_decode_per_architecture():
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    j = tiny("jumprelu")
    pre = x @ j.W_enc + j.b_enc
    torch.testing.assert_close(j.encode(x), pre * (pre > j.threshold))
    torch.testing.assert_close(j.decode(j.encode(x)), j.encode(x) @ j.W_dec + j.b_dec)
    torch.testing.assert_close(j(x), j.forward(x))
    torch.testing.assert_close(j.forward(x), j.decode(j.encode(x)))
    r = tiny("relu")
    torch.testing.assert_close(r.encode(x), torch.relu(x @ r.W_enc + r.b_enc))
    t = tiny("topk", k=2)
    f = t.encode(x)
    relu = torch.relu(x @ t.W_enc + t.b_enc)
    assert ((f != 0).sum(1) <= 2).all()
    kept = torch.topk(relu, 2, dim=1).values
    torch.testing.assert_close(torch.sort(f, dim=1, descending=True).values[:, :2], kept)
    # b_dec subtracted from the input first when the SAE says so
    b = tiny("relu", apply_b_dec_to_input=True)
    torch.testing.assert_close(b.encode(x), torch.relu((x - b.b_dec) @ b.W_enc + b.b_enc))
    # inputs of another dtype are cast to the weights'
    assert j.encode(x.double()).dtype == torch.float32


def test_with_info_to_and_state_dict():
    w = tiny()
    named = w.with_info(layer=5, sae_id="x")
    assert named.info.layer == 5 and named.info.sae_id == "x" and w.info.layer is None
    assert named.W_enc is w.W_enc  # metadata only: no copy of the weights
    d = w.to(dtype=torch.float64)
    assert d.W_enc.dtype == d.threshold.dtype == torch.float64 and d.fingerprint() == w.fingerprint()
    assert set(w.state_dict()) == {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}
    assert set(tiny("relu").state_dict()) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    assert "jumprelu" in repr(w) and "d_in=4" in repr(w) and "d_sae=6" in repr(w)


# -- fingerprint ------------------------------------------------------------------------------------
def test_fingerprint_is_stable_and_content_based():
    w = tiny(seed=3)
    fp = w.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0 and w.fingerprint() == fp
    # the same weights, built again (another object, no shared memo): the same hash
    again = SAEWeights(w.W_enc.clone(), w.b_enc.clone(), w.W_dec.clone(), w.b_dec.clone(), w.threshold.clone())
    assert again.fingerprint() == fp
    assert w.with_info(layer=9, sae_id="renamed").fingerprint() == fp  # identity, not the name
    changed = w.W_dec.clone()
    changed[0, 0] += 1e-3
    assert SAEWeights(w.W_enc, w.b_enc, changed, w.b_dec, w.threshold).fingerprint() != fp
    assert SAEWeights(w.W_enc, w.b_enc, w.W_dec, w.b_dec, w.threshold,
                      apply_b_dec_to_input=True).fingerprint() != fp
    r = tiny("relu", seed=3)
    assert tiny("topk", seed=3, k=2).fingerprint() != tiny("topk", seed=3, k=3).fingerprint()
    assert r.fingerprint() != tiny("topk", seed=3, k=2).fingerprint()  # same tensors, other rule


def test_fingerprint_of_fixed_weights_is_pinned():
    """Saved results and cache entries store this hash: a change of the scheme orphans them all
    (bump core/results.py's FORMAT_VERSION and core/cache.py's CACHE_VERSION if it must change)."""
    a = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    w = SAEWeights.from_arrays({"W_enc": a, "b_enc": np.zeros(4), "W_dec": a.T.copy(), "b_dec": np.ones(3),
                                "threshold": np.full(4, 0.5)})
    assert w.fingerprint() == PINNED


# sha256 over (shape, float32 bytes) of W_enc, b_enc, W_dec, b_dec, threshold, then "jumprelu|None|False"
PINNED = "320a97dc1f0fdd7f"


# -- construction from arrays and files -------------------------------------------------------------
def test_from_arrays_converts_and_infers():
    arrays = fx.jumprelu_arrays(8, 16, seed=2)
    w = SAEWeights.from_arrays({k: v.astype(np.float64) for k, v in arrays.items()})
    assert w.architecture == "jumprelu" and w.W_enc.dtype == torch.float32
    np.testing.assert_allclose(w.threshold.numpy(), arrays["threshold"], rtol=1e-6)
    no_thr = {k: v for k, v in arrays.items() if k != "threshold"}
    assert SAEWeights.from_arrays(no_thr).architecture == "relu"
    logged = SAEWeights.from_arrays({**no_thr, "log_threshold": np.log(arrays["threshold"])})
    np.testing.assert_allclose(logged.threshold.numpy(), arrays["threshold"], rtol=1e-5)
    with pytest.raises(KeyError, match=r"missing \['b_dec'\].*expected keys W_enc, b_enc, W_dec, b_dec"):
        SAEWeights.from_arrays({k: v for k, v in arrays.items() if k != "b_dec"})


def test_from_npz(tmp_path):
    arrays = fx.jumprelu_arrays(8, 16, seed=4)
    np.savez(tmp_path / "params.npz", **arrays)
    w = SAEWeights.from_npz(tmp_path / "params.npz")
    assert w.info.path == str(tmp_path / "params.npz") and w.d_sae == 16
    np.testing.assert_array_equal(w.W_dec.numpy(), arrays["W_dec"])
    with pytest.raises(FileNotFoundError, match="no params.npz at"):
        SAEWeights.from_npz(tmp_path / "missing.npz")


# -- as_weights on each input kind ------------------------------------------------------------------
def test_as_weights_on_every_kind(tmp_path):
    arrays = fx.jumprelu_arrays(8, 16, seed=5)
    ref = SAEWeights.from_arrays(arrays)
    fp = ref.fingerprint()
    # SAEWeights: itself, not a copy
    assert as_weights(ref) is ref
    # a lazy handle: its to_weights()
    handle = types.SimpleNamespace(to_weights=lambda: ref)
    assert as_weights(handle) is ref
    # a mapping
    assert as_weights(arrays).fingerprint() == fp
    # params.npz: the file, or the folder holding it
    np.savez(tmp_path / "params.npz", **arrays)
    assert as_weights(tmp_path / "params.npz").fingerprint() == fp
    assert as_weights(str(tmp_path)).fingerprint() == fp
    # a sae-lens folder: cfg.json + sae_weights.safetensors, metadata into SAEInfo
    folder = fx.write_saelens_folder(tmp_path / "sl", d_in=8, d_sae=16, hook_name="blocks.3.hook_resid_post",
                                     neuronpedia_id="tiny/3-res", release="rel", sae_id="sid", seed=5)
    w = as_weights(folder)
    assert w.fingerprint() == fp and w.architecture == "jumprelu"
    assert (w.info.layer, w.info.hook_name, w.info.neuronpedia_id, w.info.release, w.info.sae_id, w.info.path) == (
        3, "blocks.3.hook_resid_post", "tiny/3-res", "rel", "sid", str(folder))
    # a sae-lens SAE object (the real class), by duck typing
    sae = fx.tiny_jumprelu_sae(8, 16, hook_name="blocks.2.hook_resid_post", arrays=arrays)
    w = as_weights(sae)
    assert w.fingerprint() == fp and w.info.layer == 2 and w.info.model_name == "tiny-gemma2"
    # anything else says what it takes
    with pytest.raises(TypeError, match="cannot use int as an SAE: pass a sae-lens SAE"):
        as_weights(3)
    with pytest.raises(FileNotFoundError, match="neither a params.npz file nor a sae-lens folder"):
        as_weights(tmp_path / "sl" / "cfg.json")


def test_as_weights_reads_a_gemma_scope_2_folder(tmp_path):
    """params.safetensors (lower-case keys, stored as the SAE uses them) + config.json (hook points in
    Hugging Face names): no transposes, no scaling; hooks in TransformerLens names."""
    from safetensors.torch import save_file

    from saematch_nb.core.weights import TranscoderWarning

    arrays = {k: torch.from_numpy(v) for k, v in fx.jumprelu_arrays(8, 16, seed=2).items()}
    stored = {"w_enc": arrays["W_enc"], "w_dec": arrays["W_dec"], "b_enc": arrays["b_enc"],
              "b_dec": arrays["b_dec"], "threshold": arrays["threshold"]}
    folder = tmp_path / "attn_out" / "layer_5_width_16k_l0_big"
    folder.mkdir(parents=True)
    save_file(stored, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "jump_relu", "model_name": "gemma-v3-270m-pt",
        "hf_hook_point_in": "model.layers.5.self_attn.o_proj.input"}))
    w = as_weights(folder)
    assert w.fingerprint() == SAEWeights.from_arrays(arrays).fingerprint() and w.architecture == "jumprelu"
    # sae-lens' model name rewrite: google/ prefix, -v3 -> -3, no -pt for 270m
    assert (w.info.layer, w.info.hook_name, w.info.model_name, w.info.path) == (
        5, "blocks.5.attn.hook_z", "google/gemma-3-270m", str(folder))
    assert as_weights(folder / "params.safetensors").fingerprint() == w.fingerprint()
    # a transcoder, by its config.json alone (the folder name says nothing)
    tc = tmp_path / "mine"
    tc.mkdir()
    save_file({**stored, "affine_skip_connection": torch.zeros(8, 8)}, str(tc / "params.safetensors"))
    (tc / "config.json").write_text(json.dumps({
        "architecture": "jump_relu", "model_name": "google/gemma-3-1b-pt", "affine_connection": True,
        "hf_hook_point_in": "model.layers.3.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.3.post_feedforward_layernorm.output"}))
    said = r"jumprelu_skip_transcoder \(blocks.3.hook_mlp_in -> blocks.3.hook_mlp_out\).*W_skip"
    with pytest.warns(TranscoderWarning, match=said):
        w = as_weights(tc)
    assert w.info.hook_name == "blocks.3.hook_mlp_in" and torch.equal(w.W_dec, arrays["W_dec"])
    save_file({"W_enc": arrays["W_enc"]}, str(tc / "params.safetensors"))
    with pytest.raises(KeyError, match="is not a Gemma Scope 2 file"):
        as_weights(tc)


def test_as_weights_reads_the_architecture_of_other_saes(tmp_path):
    from safetensors.torch import save_file

    arrays = {k: torch.from_numpy(v) for k, v in fx.jumprelu_arrays(8, 16, seed=6).items() if k != "threshold"}
    for arch, want, k in (("standard", "relu", None), ("topk", "topk", 4), ("batchtopk", "topk", 4)):
        folder = tmp_path / arch
        folder.mkdir()
        save_file(arrays, str(folder / "sae_weights.safetensors"))
        cfg = {"architecture": arch, "d_in": 8, "d_sae": 16, "metadata": {"hook_name": "blocks.1.hook_resid_post"}}
        if k:
            cfg["k"] = k
        (folder / "cfg.json").write_text(json.dumps(cfg))
        w = as_weights(folder)
        assert (w.architecture, w.k, w.threshold, w.info.layer) == (want, k, None, 1), arch
    # a sae-lens-like TopK object: architecture() and k from its cfg, no threshold kept
    cfg = types.SimpleNamespace(architecture=lambda: "topk", k=3, metadata=None, hook_name="blocks.4.hook_resid_post")
    obj = types.SimpleNamespace(**arrays, cfg=cfg)
    w = as_weights(obj)
    assert (w.architecture, w.k, w.threshold, w.info.layer) == ("topk", 3, None, 4)


def test_replace_never_carries_a_stale_fingerprint():
    """The fingerprint memo is not an init field: dataclasses.replace gives another SAE a fresh
    memo, so its hash is of its own weights; moving to the same dtype keeps the hash known."""
    from dataclasses import replace

    import torch

    from saematch_nb.core.weights import SAEWeights

    g = torch.Generator().manual_seed(3)
    w = SAEWeights(W_enc=torch.randn(4, 6, generator=g), b_enc=torch.zeros(6), W_dec=torch.randn(6, 4, generator=g),
                   b_dec=torch.zeros(4), threshold=torch.ones(6))
    fp = w.fingerprint()
    other = replace(w, W_dec=w.W_dec * 2)
    assert other._cache == {} and other.fingerprint() != fp
    assert w.to(dtype=torch.float32)._cache.get("fingerprint") == fp
    assert "fingerprint" not in w.to(dtype=torch.float64)._cache


# -- issue 22 item 7: integer, bool and complex weights are refused where weights enter --------------
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.complex64])
def test_non_float_weights_are_a_clear_error(dtype):
    w = tiny()
    raw = {k: v.to(dtype) for k, v in w.state_dict().items()}
    with pytest.raises(TypeError, match=r"W_enc has dtype .*must be floating point"):
        SAEWeights(**raw)
    with pytest.raises(TypeError, match="must be floating point"):
        w.to(dtype=dtype)  # the cast itself: never "threshold <= 0" from truncated thresholds later
    with pytest.raises(TypeError, match="W_enc has dtype .*must be floating point"):
        as_weights(raw)  # torch tensors in a mapping
    with pytest.raises(TypeError, match="must be floating point"):
        as_weights({k: v.numpy() for k, v in raw.items()})  # numpy arrays in a mapping
    obj = types.SimpleNamespace(**raw, cfg={"architecture": "jumprelu"})
    with pytest.raises(TypeError, match="must be floating point"):
        as_weights(obj)  # a sae-lens-like object


def test_integer_weights_from_a_list_are_refused_too():
    with pytest.raises(TypeError, match=r"W_enc has dtype int64"):
        as_weights({"W_enc": [[1, 0], [0, 1]], "b_enc": [0.0, 0.0], "W_dec": [[1.0, 0.0], [0.0, 1.0]],
                    "b_dec": [0.0, 0.0]})
    # float input of any precision is still accepted (converted to float32)
    w = as_weights({"W_enc": np.eye(2), "b_enc": np.zeros(2, np.float16), "W_dec": np.eye(2, dtype=np.float32),
                    "b_dec": np.zeros(2)})
    assert w.W_enc.dtype == torch.float32
