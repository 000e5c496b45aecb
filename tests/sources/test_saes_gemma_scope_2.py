"""load_saes on Gemma Scope 2 (Gemma 3): selection by layer / width / L0 label / seed / affine, hook
names and Neuronpedia ids from sae-lens' directory, errors, and loading through sae-lens' real
gemma_3 loader on fixtures in the hub's on-disk layout."""

from __future__ import annotations

import json
import socket

import pytest
import torch
from safetensors.torch import load_file

from saematch_nb import load_saes
from saematch_nb.core.weights import SAEWeights
from saematch_nb.sources import saes as S
from tests import _saelens_doubles as fx

from .conftest import GEMMA_SCOPE_2_REPO as REPO

RES_ALL = "gemma-scope-2-1b-pt-res-all"
RES = "gemma-scope-2-1b-pt-res"
GS2 = sorted(r for r in S._directory() if r.startswith("gemma-scope-2-"))


# -- the directory -----------------------------------------------------------------------------
def test_every_gemma_scope_2_release_is_selectable_and_round_trips():
    """Every id of every Gemma Scope 2 release is reached by (layers, width, l0, seed, affine), with
    its own hook, width, L0 and Neuronpedia id from sae-lens' directory."""
    assert len(GS2) >= 75 and {"gemma-scope-2-27b-pt-res", "gemma-scope-2-270m-it-att-all"} <= set(GS2)
    hooks = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z", "transcoders": "hook_mlp_in"}
    n = 0
    for name in GS2:
        rel = S._directory()[name]
        assert rel.conversion_func == "gemma_3" and S._is_gemma_scope_2(rel), name
        kind = name.removesuffix("-all").rsplit("-", 1)[1]
        table = S._gemma_2_table(rel)
        assert sum(len(o) for o in table.values()) == len(rel.saes), f"{name}: ids the regex does not read"
        combos = {(w, k) for (_, w), opts in table.items() for k in opts}
        for w, (label, seed, affine) in sorted(combos):
            expect = {L: opts[(label, seed, affine)] for (L, ww), opts in table.items()
                      if ww == w and (label, seed, affine) in opts}
            hs = load_saes(name, list(expect), width=w, l0=label, seed=seed,
                           affine=affine if kind == "transcoders" else None)
            assert [h.sae_id for h in hs] == [expect[L] for L in sorted(expect)], (name, w, label)
            for h in hs:
                L = h.layer
                assert h.hook_name == f"blocks.{L}.{hooks[kind]}"
                assert h.hook_name_out == (f"blocks.{L}.hook_mlp_out" if kind == "transcoders" else None)
                assert h.width == S._WIDTHS[w] and h.l0 == rel.l0[h.sae_id]
                assert h.neuronpedia_id == rel.neuronpedia[h.sae_id]
                assert h.model_name == rel.model and h.folder == rel.saes[h.sae_id]
                n += 1
    assert n == sum(len(S._directory()[r].saes) for r in GS2)


# -- what the issue tried -----------------------------------------------------------------------
def test_selection_by_width_and_l0_label():
    hs = load_saes(RES_ALL, width="262k", l0="small")
    assert hs.layers == list(range(26))
    assert [h.sae_id for h in hs[:2]] == ["layer_0_width_262k_l0_small", "layer_1_width_262k_l0_small"]
    assert hs[3].hook_name == "blocks.3.hook_resid_post" and hs[3].width == 262144
    assert hs[0].model_name == "google/gemma-3-1b-pt"
    hs = load_saes(RES_ALL, layers=range(3), width="16k", l0="small")
    assert [h.sae_id for h in hs] == [f"layer_{L}_width_16k_l0_small" for L in range(3)]
    assert load_saes(RES_ALL, 3, width=16384, l0="big")[0].sae_id == "layer_3_width_16k_l0_big"
    # a non -all release: 4 layers, three L0 labels, four widths
    hs = load_saes(RES, width="65k", l0="medium")
    assert hs.layers == [7, 13, 17, 22] and hs[0].sae_id == "layer_7_width_65k_l0_medium"
    mlp = load_saes("gemma-scope-2-1b-pt-mlp", 7, l0="small")
    assert [(h.sae_id, h.hook_name) for h in mlp] == [("layer_7_width_16k_l0_small", "blocks.7.hook_mlp_out")]
    # nearest:N by the L0 sae-lens lists (layer 7: small 18, medium 54, big 132)
    rel = S._directory()[RES]
    assert [rel.l0[f"layer_7_width_16k_l0_{x}"] for x in ("small", "medium", "big")] == [18, 54, 132]
    assert load_saes(RES, 7, l0="nearest:100")[0].sae_id == "layer_7_width_16k_l0_big"
    assert load_saes(RES, 7, l0="nearest:36")[0].sae_id == "layer_7_width_16k_l0_small"  # tie: smaller


def test_hooks_of_attention_and_transcoders():
    att = load_saes("gemma-scope-2-1b-pt-att", 7, width="262k", l0="big")[0]
    assert (att.sae_id, att.hook_name, att.hook_name_out) == (
        "layer_7_width_262k_l0_big", "blocks.7.attn.hook_z", None)
    tc = load_saes("gemma-scope-2-1b-pt-transcoders", 7, l0="medium")[0]
    assert tc.sae_id == "transcoder/layer_7_width_16k_l0_medium"
    assert (tc.hook_name, tc.hook_name_out) == ("blocks.7.hook_mlp_in", "blocks.7.hook_mlp_out")
    assert "hook_name_out  blocks.7.hook_mlp_out" in repr(tc) and "blocks.7.hook_mlp_out" in tc._repr_html_()
    assert "hook_name_out" not in repr(att)


def test_neuronpedia_ids_where_listed():
    hs = load_saes(RES, width="16k", l0="medium")
    assert [h.neuronpedia_id for h in hs] == [f"gemma-3-1b/{L}-gemmascope-2-res-16k" for L in (7, 13, 17, 22)]
    assert hs[0].info.neuronpedia_url(3) == "https://neuronpedia.org/gemma-3-1b/7-gemmascope-2-res-16k/3"
    assert load_saes(RES, 7, l0="small")[0].neuronpedia_id is None  # only the medium ones are hosted
    assert load_saes("gemma-scope-2-1b-pt-mlp", 7, l0="medium")[0].neuronpedia_id is None
    assert load_saes("gemma-scope-2-1b-pt-att", 7, l0="medium")[0].neuronpedia_id is None
    tc = load_saes("gemma-scope-2-4b-it-transcoders-all", 9, width="262k", l0="small", affine=True)[0]
    assert tc.neuronpedia_id == "gemma-3-4b-it/9-gemmascope-2-transcoder-262k"
    assert load_saes("gemma-scope-2-4b-it-transcoders-all", 9, width="262k", l0="small")[0].neuronpedia_id is None


def test_seed_1_is_reachable():
    a = load_saes(RES, width="262k", l0="medium")
    b = load_saes(RES, width="262k", l0="medium", seed=1)
    assert a.layers == b.layers == [7, 13, 17, 22]
    assert [h.sae_id for h in b] == [f"layer_{L}_width_262k_l0_medium_seed_1" for L in b.layers]
    assert [h.hook_name for h in a] == [h.hook_name for h in b]
    assert [h.folder for h in b] == [f"resid_post/layer_{L}_width_262k_l0_medium_seed_1" for L in b.layers]
    assert {h.cache_key for h in a}.isdisjoint({h.cache_key for h in b})
    with pytest.raises(S.UnknownSAEIdError) as e:
        load_saes(RES, 7, width="16k", l0="medium", seed=1)
    assert "no seed=1 SAE at layer 7, width 16k" in str(e.value) and "['262k']" in str(e.value)
    with pytest.raises(S.UnknownSAEIdError, match=r"no l0='small' seed=1 SAE at layer 7, width 262k"):
        load_saes(RES, 7, width="262k", l0="small", seed=1)
    with pytest.raises(S.UnknownSAEIdError, match="no seed=1 SAE"):
        load_saes("gemma-scope-2-1b-pt-mlp", 7, width="262k", l0="medium", seed=1)


def test_affine_picks_skip_transcoders():
    plain = load_saes("gemma-scope-2-1b-pt-transcoders", [7, 13], width="65k", l0="big")
    skip = load_saes("gemma-scope-2-1b-pt-transcoders", [7, 13], width="65k", l0="big", affine=True)
    assert [h.sae_id for h in plain] == [f"transcoder/layer_{L}_width_65k_l0_big" for L in (7, 13)]
    assert [h.sae_id for h in skip] == [f"transcoder/layer_{L}_width_65k_l0_big_affine" for L in (7, 13)]
    one = load_saes("gemma-scope-2-1b-pt-transcoders", 7, l0="big", affine=False)[0]
    assert one.sae_id == "transcoder/layer_7_width_16k_l0_big"
    one = load_saes("gemma-scope-2-1b-pt-transcoders-all", 0, l0="small", affine=True)[0]
    assert one.sae_id == "layer_0_width_16k_l0_small_affine" and one.folder == "transcoder_all/" + one.sae_id
    # a release with only skip transcoders says so
    with pytest.raises(S.UnknownSAEIdError) as e:
        load_saes("gemma-scope-2-270m-pt-transcoders", 9, l0="small")
    assert "no affine=False SAE at layer 9, width 16k" in str(e.value)
    assert "affine=True: small (L0 20)" in str(e.value)
    assert load_saes("gemma-scope-2-270m-pt-transcoders", 9, l0="small", affine=True)[0].sae_id == (
        "transcoder/layer_9_width_16k_l0_small_affine")
    with pytest.raises(S.SAELoadError, match="affine=True picks skip transcoders"):
        load_saes(RES, 7, l0="small", affine=True)
    with pytest.raises(S.SAELoadError, match="do not apply to release 'gemma-scope-2b-pt-res-canonical'"):
        load_saes("gemma-scope-2b-pt-res-canonical", 7, seed=1)
    with pytest.raises(S.SAELoadError, match="do not apply to sae_ids"):
        load_saes(RES, sae_ids=["layer_7_width_16k_l0_small"], affine=False)
    with pytest.raises(S.SAELoadError, match="seed must be an int"):
        load_saes(RES, 7, l0="small", seed=True)


# -- errors: what exists at the layers asked ----------------------------------------------------
def test_errors_list_what_exists():
    with pytest.raises(S.UnknownSAEIdError) as e:  # the default l0="canonical"
        load_saes(RES_ALL, layers=range(3), width="16k")
    msg = str(e.value)
    assert "pass l0='small', 'medium' or 'big'" in msg and "none of its SAEs is canonical" in msg
    for L, (small, big) in enumerate([(10, 60), (11, 66), (12, 73)]):
        assert f"At layer {L}, width 16k: small (L0 {small}), big (L0 {big})." in msg
    rel = S._directory()[RES_ALL]
    assert rel.l0["layer_2_width_16k_l0_big"] == 73  # the listing is the directory's
    with pytest.raises(S.UnknownSAEIdError) as e:  # all 26 layers: the first six, then their names
        load_saes(RES_ALL)
    assert "At layer 5, width 16k: small (L0 15), big (L0 94). (Layers 6..25 not shown" in str(e.value)
    assert "At layer 6," not in str(e.value)
    with pytest.raises(S.UnknownSAEIdError, match=r"l0='tiny' is not one of its L0 labels\. At layer 3"):
        load_saes(RES_ALL, 3, l0="tiny")
    with pytest.raises(S.UnknownSAEIdError, match="l0=20 is not one of its L0 labels"):
        load_saes(RES_ALL, 3, l0=20)
    with pytest.raises(S.UnknownSAEIdError, match=r"no l0='medium' SAE at layer 0, width 16k\. "
                                                  r"At layer 0, width 16k: small \(L0 10\), big \(L0 60\)\.$"):
        load_saes(RES_ALL, [0, 1], l0="medium")
    with pytest.raises(S.UnknownSAEIdError, match=r"no SAEs of width '65k'; widths available: \['16k', '262k'\]"):
        load_saes(RES_ALL, 0, width="65k", l0="small")
    with pytest.raises(S.SAELoadError, match="unknown SAE width"):
        load_saes(RES_ALL, 0, width="17k", l0="small")
    with pytest.raises(S.LayerOutOfRangeError, match=r"\[26\] out of range .* valid layers are 0\.\.25"):
        load_saes(RES_ALL, [25, 26], l0="small")
    with pytest.raises(S.LayerOutOfRangeError, match=r"valid layers are \[7, 13, 17, 22\]"):
        load_saes(RES, [8], l0="small")
    with pytest.raises(S.LayerOutOfRangeError,
                       match=r"valid layers are \[9\] \(widths at layer\(s\) \[15\]: \['262k'\]\)"):
        load_saes("gemma-scope-2-270m-pt-transcoders", 15, l0="big", affine=True)
    with pytest.raises(S.UnknownSAEIdError, match="l0=None needs exactly one SAE.*small .L0 18., medium"):
        load_saes("gemma-scope-2-1b-pt-mlp", 7, l0=None)
    with pytest.raises(S.SAELoadError, match="nearest:<number>"):
        load_saes(RES, 7, l0="nearest:x")
    with pytest.raises(S.UnknownSAEIdError, match="Ids at that layer: layer_7_width_16k_l0_big, "):
        load_saes(RES, sae_ids=["layer_7_width_16k_l0_tiny"])


def test_naming_gemma_scope_2_does_not_import_sae_lens():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, saematch_nb as s; h = s.load_saes('gemma-scope-2-1b-pt-transcoders', 7, l0='small'); "
            "assert h[0].hook_name_out == 'blocks.7.hook_mlp_out'; h[0].cache_key; "
            "print('sae_lens' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(Path(__file__).parents[2]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False"]


# -- loading through sae-lens' gemma_3 loader, hub routed to fixtures --------------------------
def _file(snapshot, h):
    return load_file(str(snapshot / h.folder / "params.safetensors"))


@pytest.mark.parametrize("release,layer,kw,d_in", [
    (RES_ALL, 1, dict(width="16k", l0="small"), 16),
    (RES, 7, dict(width="262k", l0="medium", seed=1), 16),
    ("gemma-scope-2-1b-pt-mlp", 7, dict(width="65k", l0="big"), 16),
    ("gemma-scope-2-1b-pt-att", 7, dict(width="16k", l0="small"), 32),  # hook_z: n_heads * d_head
])
def test_sae_lens_loads_the_fixture_files(routed_hub_2, gemma_scope_2_snapshot, release, layer, kw, d_in):
    h = load_saes(release, layer, **kw)[0]
    assert routed_hub_2 == []  # naming downloaded nothing
    sae = h.load()
    f = f"{h.folder}/params.safetensors"
    assert routed_hub_2 == [(REPO, f"{h.folder}/config.json"), (REPO, f"{f}#bytes=0-7"),
                            (REPO, routed_hub_2[2][1]), (REPO, f)]  # config, header size, header, file
    ref = _file(gemma_scope_2_snapshot, h)
    assert type(sae).__name__ == "JumpReLUSAE" and sae.cfg.d_in == d_in == ref["w_enc"].shape[0]
    for ours, theirs in (("W_enc", "w_enc"), ("W_dec", "w_dec"), ("b_enc", "b_enc"), ("b_dec", "b_dec"),
                         ("threshold", "threshold")):
        assert torch.equal(getattr(sae, ours).detach(), ref[theirs]), ours
    assert sae.cfg.metadata.hook_name == h.hook_name and sae.cfg.metadata.model_name == h.model_name
    assert sae.cfg.apply_b_dec_to_input is False
    w = h.to_weights()
    assert isinstance(w, SAEWeights) and w.architecture == "jumprelu" and w.info == h.info
    assert torch.equal(w.W_dec, ref["w_dec"]) and torch.equal(w.threshold, ref["threshold"])
    x = 2 * torch.randn(64, d_in)
    with torch.no_grad():
        codes = w.encode(x)
        assert torch.allclose(codes, sae.encode(x), atol=1e-6)
        assert 0 < int((codes > 0).sum()) < codes.numel()  # the thresholds cut some, not all
        assert torch.allclose(w.forward(x), sae.decode(sae.encode(x)), atol=1e-5)


def test_sae_lens_infers_the_config_when_the_folder_has_none(monkeypatch, tmp_path):
    root = fx.write_gemma_scope_2_snapshot(tmp_path, RES, sae_ids=["layer_13_width_16k_l0_big"], config=False)
    log = fx.route_hub_to(monkeypatch, {REPO: root})
    h = load_saes(RES, 13, l0="big")[0]
    sae = h.load()
    assert (REPO, f"{h.folder}/config.json") in log and not (root / h.folder / "config.json").exists()
    assert sae.cfg.metadata.hook_name == "blocks.13.hook_resid_post"
    assert torch.equal(sae.W_enc.detach(), _file(root, h)["w_enc"])


@pytest.mark.parametrize("affine", [False, True])
def test_transcoders_load_with_a_statement(routed_hub_2, gemma_scope_2_snapshot, affine):
    h = load_saes("gemma-scope-2-1b-pt-transcoders", 7, width="262k", l0="small", affine=affine)[0]
    sae = h.load()
    ref = _file(gemma_scope_2_snapshot, h)
    assert type(sae).__name__ == ("JumpReLUSkipTranscoder" if affine else "JumpReLUTranscoder")
    assert sae.cfg.metadata.hook_name == h.hook_name == "blocks.7.hook_mlp_in"
    assert sae.cfg.metadata.hook_name_out == h.hook_name_out == "blocks.7.hook_mlp_out"
    assert ("affine_skip_connection" in ref) is affine
    if affine:  # stored [d_in, d_out]; sae-lens' W_skip is [d_out, d_in]
        assert torch.equal(sae.W_skip.detach(), ref["affine_skip_connection"].T)
    from saematch_nb.core.weights import TranscoderWarning

    with pytest.warns(TranscoderWarning) as record:
        w = h.to_weights()
    said = " ".join(str(r.message) for r in record)
    assert "W_enc reads blocks.7.hook_mlp_in" in said and "written to blocks.7.hook_mlp_out" in said
    assert ("W_skip" in said) is affine
    for ours, theirs in (("W_enc", "w_enc"), ("W_dec", "w_dec"), ("b_dec", "b_dec"), ("threshold", "threshold")):
        assert torch.equal(getattr(w, ours), ref[theirs]), ours
    assert w.info.hook_name == "blocks.7.hook_mlp_in"
    x = torch.randn(8, 16)
    with torch.no_grad():  # the features are the transcoder's, skip connection or not
        assert torch.allclose(w.encode(x), sae.encode(x), atol=1e-6)
        out = sae.decode(sae.encode(x))
        if affine:
            assert torch.allclose(sae(x), out + x @ sae.W_skip.T, atol=1e-5)
        assert torch.allclose(w.forward(x), out, atol=1e-5)


def test_hook_naming_matches_sae_lens(routed_hub_2):
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_3_config_from_hf

    for release, layer, kw in [(RES_ALL, 2, {}), (RES, 7, {}), ("gemma-scope-2-1b-pt-mlp", 7, {}),
                               ("gemma-scope-2-1b-pt-att", 7, {}), ("gemma-scope-2-1b-pt-transcoders", 7, {}),
                               ("gemma-scope-2-1b-pt-transcoders-all", 0, {"affine": True})]:
        h = load_saes(release, layer, l0="small", **kw)[0]
        cfg = get_gemma_3_config_from_hf(REPO, h.folder, "cpu")
        assert (h.hook_name, h.hook_name_out, h.model_name) == (
            cfg["hook_name"], cfg.get("hook_name_out"), cfg["model_name"]), release
        assert cfg["d_sae"] == 64


# -- offline: cached hub files, and downloaded folders ------------------------------------------
CASES = [  # release, layer, selection, handle dtype
    (RES, 7, dict(l0="small"), "float32"),
    (RES, 7, dict(width="262k", l0="medium", seed=1), "bfloat16"),  # the cast happens as in sae-lens
    ("gemma-scope-2-1b-pt-att", 7, dict(l0="big"), "float32"),
    ("gemma-scope-2-1b-pt-transcoders", 7, dict(width="262k", l0="small"), "float32"),
    ("gemma-scope-2-1b-pt-transcoders", 7, dict(width="262k", l0="small", affine=True), "float32"),
]


def _hf_cache(monkeypatch, tmp_path, release, sae_ids, config=True):
    """``sae_ids`` of ``release`` in an HF cache at tmp_path, laid out as huggingface_hub stores them."""
    import huggingface_hub.constants as c

    repo_dir = tmp_path / "models--google--gemma-scope-2-1b-pt"
    snap = fx.write_gemma_scope_2_snapshot(repo_dir / "snapshots" / ("c" * 40), release, sae_ids=sae_ids,
                                           config=config)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text("c" * 40)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    return snap


def _refuse_network(monkeypatch) -> list:
    attempts = []

    def refuse(*a, **k):
        attempts.append(a[:2])
        raise OSError("test: no network")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def _through_sae_lens(h, snapshot):
    """h.load() and h.to_weights() (with its warnings) through sae-lens' own gemma_3 loader, the hub
    online and routed to ``snapshot``."""
    import huggingface_hub.constants as c

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(c, "HF_HUB_OFFLINE", False)
        log = fx.route_hub_to(mp, {REPO: snapshot})
        sae = h.load()
        w, said = _to_weights_saying(h)
    assert any("#bytes=" in f for _, f in log), "sae-lens' loader did not run"
    return sae, w, said


def _to_weights_saying(h):
    """h.to_weights() and the warnings it gave, as (category, text)."""
    import warnings

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        w = h.to_weights()
    return w, [(m.category, str(m.message)) for m in said]


def _same_sae(a, b):
    assert type(a) is type(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    for k in ("architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations"):
        assert getattr(a.cfg, k) == getattr(b.cfg, k), k
    assert a.cfg.to_dict() == b.cfg.to_dict()


def _same_weights(a, b):
    for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert (a.architecture, a.apply_b_dec_to_input) == (b.architecture, b.apply_b_dec_to_input) == ("jumprelu", False)
    assert a.fingerprint() == b.fingerprint()


@pytest.mark.parametrize("release,layer,kw,dtype", CASES)
def test_cached_gemma_scope_2_loads_offline(monkeypatch, tmp_path, release, layer, kw, dtype):
    """Weights in the HF cache load with the hub out of reach, from the cached files, into what
    sae-lens' own loader gives for the same files: the same SAE object, SAEWeights and warnings."""
    import huggingface_hub.constants as c

    h = load_saes(release, layer, dtype=dtype, **kw)[0]
    snap = _hf_cache(monkeypatch, tmp_path, release, [h.sae_id])
    ref_sae, ref_w, ref_said = _through_sae_lens(h, snap)
    assert ref_sae.cfg.dtype == dtype and ref_w.W_enc.dtype == torch.float32
    attempts = _refuse_network(monkeypatch)
    # HF_HUB_OFFLINE (set for every test here): straight to the cache, no attempt at the network
    assert c.HF_HUB_OFFLINE is True
    sae = h.load()
    _same_sae(sae, ref_sae)
    w, said = _to_weights_saying(h)
    _same_weights(w, ref_w)
    assert w.info == ref_w.info == h.info and said == ref_said
    assert bool(said) is (h.hook_name_out is not None)  # the transcoder statement, and only there
    assert attempts == []
    # online but unreachable: sae-lens fails at its HTTP shape request, then the cached files serve
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    _same_sae(h.load(), ref_sae)
    assert attempts, "the hub was not even tried"


def test_cached_gemma_scope_2_without_its_config(monkeypatch, tmp_path):
    """params.safetensors cached, config.json not: the config sae-lens infers for a folder that has
    none; not cached at all: the usual offline error."""
    h = load_saes("gemma-scope-2-1b-pt-transcoders", 7, width="262k", l0="small", affine=True)[0]
    assert h.cached is False
    with pytest.raises(S.HubUnavailableError) as e:
        h.load()
    assert "not in the local cache" in str(e.value) and "saematch_nb.demo.load()" in str(e.value)
    snap = _hf_cache(monkeypatch, tmp_path, "gemma-scope-2-1b-pt-transcoders", [h.sae_id], config=False)
    assert h.cached is True and not (snap / h.folder / "config.json").exists()
    ref_sae, _, _ = _through_sae_lens(h, snap)
    sae = h.load()
    _same_sae(sae, ref_sae)
    assert type(sae).__name__ == "JumpReLUSkipTranscoder" and sae.cfg.metadata.model_name == "google/gemma-3-1b-pt"


@pytest.mark.parametrize("release,layer,kw,dtype", CASES)
def test_downloaded_gemma_scope_2_folder(monkeypatch, tmp_path, release, layer, kw, dtype):
    """load_saes(folder) on a downloaded Gemma Scope 2 folder (here: the HF cache's own path): the
    same identity as the hub handle, and the same weights as sae-lens' loader gives for the files."""
    hub = load_saes(release, layer, dtype=dtype, **kw)[0]
    snap = _hf_cache(monkeypatch, tmp_path, release, [hub.sae_id])
    ref_sae, ref_w, ref_said = _through_sae_lens(hub, snap)
    h = load_saes(snap / hub.folder, dtype=dtype)[0]
    for k in ("layer", "hook_name", "hook_name_out", "model_name", "sae_id", "neuronpedia_id", "width", "l0",
              "repo_id", "folder", "conversion_func"):
        assert getattr(h, k) == getattr(hub, k), k
    assert h.release is None and h.path == str((snap / hub.folder).resolve())
    w, said = _to_weights_saying(h)  # read without sae-lens
    if dtype == "float32":
        _same_weights(w, ref_w)  # the folder is read as stored, like a sae-lens folder
    assert said == ref_said
    assert w.info.path == h.path and w.info.hook_name == hub.hook_name and w.info.sae_id == hub.sae_id
    sae = h.load()  # sae-lens' load_from_disk with the Gemma Scope 2 converter
    assert type(sae) is type(ref_sae) and sae.cfg.dtype == dtype
    for k, v in ref_sae.state_dict().items():
        assert torch.equal(sae.state_dict()[k], v), k
    assert (sae.cfg.metadata.hook_name, sae.cfg.metadata.model_name, sae.cfg.metadata.neuronpedia_id) == (
        ref_sae.cfg.metadata.hook_name, ref_sae.cfg.metadata.model_name, ref_sae.cfg.metadata.neuronpedia_id)
    assert h.cache_key.startswith("path|") and h.cache_key.split("|")[1].endswith("params.safetensors")


def test_downloaded_folder_hooks_come_from_config_json(tmp_path):
    """Moved out of the hub's layout, a folder is still read by its config.json; without one, an
    error says what is missing."""
    import shutil

    snap = fx.write_gemma_scope_2_snapshot(tmp_path / "hub", "gemma-scope-2-1b-pt-att",
                                           sae_ids=["layer_7_width_16k_l0_big"])
    att = tmp_path / "my_saes" / "att7"
    shutil.copytree(snap / "attn_out" / "layer_7_width_16k_l0_big", att)
    h = load_saes(att)[0]
    assert (h.layer, h.hook_name, h.hook_name_out, h.model_name) == (
        7, "blocks.7.attn.hook_z", None, "google/gemma-3-1b-pt")
    assert h.sae_id is None and h.neuronpedia_id is None
    assert h.to_weights().d_in == 32
    tc = fx.write_gemma_scope_2_snapshot(tmp_path / "hub", "gemma-scope-2-1b-pt-transcoders",
                                         sae_ids=["transcoder/layer_7_width_16k_l0_big_affine"])
    mine = tmp_path / "my_saes" / "tc"
    shutil.copytree(tc / "transcoder" / "layer_7_width_16k_l0_big_affine", mine)
    h = load_saes(mine)[0]
    assert (h.hook_name, h.hook_name_out) == ("blocks.7.hook_mlp_in", "blocks.7.hook_mlp_out")
    from saematch_nb.core.weights import TranscoderWarning

    with pytest.warns(TranscoderWarning, match="W_skip"):
        h.to_weights()
    (att / "config.json").unlink()
    with pytest.raises(S.SAELoadError, match="neither a config.json naming its hook point"):
        load_saes(att)
    (mine / "params.safetensors").write_bytes(b"")  # not what it says it is
    from safetensors.torch import save_file

    save_file({"W": torch.zeros(2)}, str(mine / "params.safetensors"))
    with pytest.raises(S.SAELoadError, match=r"is not a Gemma Scope 2 file: it lacks \['w_enc'"):
        load_saes(mine)[0].to_weights()


def test_folder_of_gemma_scope_2_saes_is_selected_like_a_release(gemma_scope_2_snapshot, tmp_path):
    hs = load_saes(gemma_scope_2_snapshot / "resid_post_all", layers=[0, 2], width="16k", l0="small")
    assert [h.folder for h in hs] == [f"resid_post_all/layer_{L}_width_16k_l0_small" for L in (0, 2)]
    assert [h.hook_name for h in hs] == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    assert load_saes(gemma_scope_2_snapshot / "resid_post_all", 1, l0="nearest:60")[0].l0 == 66  # L0s from config.json
    with pytest.raises(S.UnknownSAEIdError) as e:  # the default l0: the labels that exist
        load_saes(gemma_scope_2_snapshot / "resid_post_all", layers=[0])
    msg = str(e.value)
    assert "is a Gemma Scope 2 folder" in msg and "At layer 0, width 16k: small (L0 10), big (L0 60)." in msg
    hs = load_saes(gemma_scope_2_snapshot / "transcoder", 7, width="65k", l0="big", affine=True)
    assert [h.folder for h in hs] == ["transcoder/layer_7_width_65k_l0_big_affine"]
    with pytest.raises(S.SAELoadError, match=r"holds Gemma Scope 2 SAEs of 6 kinds \(attn_out, mlp_out, resid_post"):
        load_saes(gemma_scope_2_snapshot, 7, l0="small")
    with pytest.raises(S.SAELoadError, match="do not apply to an SAE folder given as such"):
        load_saes(gemma_scope_2_snapshot / hs[0].folder, seed=1)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "weights.pt").write_bytes(b"x")
    with pytest.raises(S.SAELoadError) as e:
        load_saes(tmp_path / "notes")
    msg = str(e.value)
    assert "no SAE found in or under" in msg and "params.safetensors + config.json (Gemma Scope 2)" in msg


def test_downloaded_folder_loads_without_sae_lens(gemma_scope_2_snapshot):
    import subprocess
    import sys
    from pathlib import Path

    folder = gemma_scope_2_snapshot / "mlp_out" / "layer_7_width_16k_l0_small"
    code = ("import sys, warnings, saematch_nb as s; h = s.load_saes(sys.argv[1])[0]; w = h.to_weights(); "
            "print(h.hook_name, w.d_in, w.d_sae, 'sae_lens' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120,
                         cwd=str(Path(__file__).parents[2]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["blocks.7.hook_mlp_out", "16", "64", "False"]


def test_fixture_config_is_what_sae_lens_infers(gemma_scope_2_snapshot):
    """The fixture's config.json has the keys the loader reads, with the values of its own fallback."""
    from sae_lens.loading.pretrained_sae_loaders import _infer_gemma_3_raw_cfg_dict

    folder = "transcoder/layer_7_width_16k_l0_small_affine"
    cfg = json.loads((gemma_scope_2_snapshot / folder / "config.json").read_text())
    assert cfg["affine_connection"] is True and cfg["architecture"] == "jump_relu"
    assert cfg["hf_hook_point_out"] == "model.layers.7.post_feedforward_layernorm.output"
    inferred = _infer_gemma_3_raw_cfg_dict(REPO, folder)
    assert {k: cfg[k] for k in inferred} == inferred
    assert set(load_file(str(gemma_scope_2_snapshot / folder / "params.safetensors"))) == {
        "w_enc", "w_dec", "b_enc", "b_dec", "threshold", "affine_skip_connection"}
