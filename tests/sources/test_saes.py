"""load_saes / SAEHandle: naming offline, loading through the real sae-lens loaders on fixtures."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest
import torch

from saematch_nb import load_saes
from saematch_nb.core.weights import SAEWeights, as_weights
from saematch_nb.sources import saes as S
from tests import _saelens_doubles as fx

CANON = "gemma-scope-2b-pt-res-canonical"
FULL = "gemma-scope-2b-pt-res"


# -- the directory, read without sae-lens, agrees with sae-lens -------------------------------
def test_directory_matches_sae_lens():
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    theirs = get_pretrained_saes_directory()
    ours = S._directory()
    assert set(ours) == set(theirs)
    for name in (CANON, FULL, "gpt2-small-res-jb", "gemma-scope-9b-pt-res-canonical"):
        t, o = theirs[name], ours[name]
        assert (o.repo_id, o.model, o.conversion_func) == (t.repo_id, t.model, t.conversion_func)
        assert o.saes == t.saes_map
        assert o.neuronpedia == t.neuronpedia_id


@pytest.mark.parametrize("repo,folder", [
    ("google/gemma-scope-2b-pt-res", "layer_7/width_16k/average_l0_69"),
    ("google/gemma-scope-2b-pt-mlp", "layer_3/width_65k/average_l0_20"),
    ("google/gemma-scope-2b-pt-att", "layer_11/width_16k/average_l0_79"),
    ("google/gemma-scope-9b-pt-res", "embedding/width_4k/average_l0_6"),
])
def test_gemma_hook_naming_matches_sae_lens(repo, folder):
    from sae_lens.loading.pretrained_sae_loaders import get_gemma_2_config_from_hf

    cfg = get_gemma_2_config_from_hf(repo, folder, "cpu")
    layer, hook = S._gemma_2_hook(repo, folder)
    assert hook == cfg["hook_name"]
    assert layer == int(folder.split("/")[0].split("_")[1]) if folder.startswith("layer_") else layer == 0


def test_fixture_canonical_l0s_are_the_directorys():
    rel = S._directory()[CANON]
    for L, n in enumerate(fx.CANONICAL_16K_L0):
        assert rel.saes[f"layer_{L}/width_16k/canonical"] == f"layer_{L}/width_16k/average_l0_{n}"


# -- naming and selection (no download) --------------------------------------------------------
def test_canonical_handles_are_named_without_download(routed_hub):
    hs = load_saes(CANON, layers=[2, 0, 1])
    assert isinstance(hs, S.SAEList) and hs.layers == [0, 1, 2]  # layer order
    for L, h in enumerate(hs):
        assert h.sae_id == f"layer_{L}/width_16k/canonical"
        assert h.hook_name == f"blocks.{L}.hook_resid_post"
        assert h.model_name == "gemma-2-2b"
        assert h.neuronpedia_id == f"gemma-2-2b/{L}-gemmascope-res-16k"
        assert h.width == 16384 and h.l0 == fx.CANONICAL_16K_L0[L]
        assert h.info.neuronpedia_url(5) == f"https://neuronpedia.org/gemma-2-2b/{L}-gemmascope-res-16k/5"
    assert routed_hub == []  # naming downloaded nothing
    assert len(load_saes(CANON)) == 26 and load_saes(CANON, width="65k")[-1].neuronpedia_id.endswith("-65k")
    assert load_saes(CANON, width=65536)[0].sae_id == "layer_0/width_65k/canonical"
    assert load_saes(CANON, width="1m").layers == [5, 12, 19]
    # cache_key: stable, distinct, no loading
    k = [h.cache_key for h in hs]
    assert len(set(k)) == 3 and k == [h.cache_key for h in load_saes(CANON, layers=[0, 1, 2])]
    assert "average_l0_105" in k[0]


def test_l0_selection_on_full_release():
    rel = S._directory()[FULL]
    l0s12 = sorted(int(s.rsplit("_", 1)[1]) for s in rel.saes if s.startswith("layer_12/width_16k/"))
    assert load_saes(FULL, 12, l0=l0s12[0])[0].sae_id == f"layer_12/width_16k/average_l0_{l0s12[0]}"
    near = load_saes(FULL, [12], l0="nearest:1000")[0]
    assert near.l0 == max(l0s12)
    target = 80
    best = min(l0s12, key=lambda v: (abs(v - target), v))
    h = load_saes(FULL, [12], l0=f"nearest:{target}")[0]
    assert h.sae_id == f"layer_12/width_16k/average_l0_{best}"
    # the id that is also the canonical one gets the canonical Neuronpedia id; others none
    canon_folder = S._directory()[CANON].saes["layer_12/width_16k/canonical"]
    canon_l0 = int(canon_folder.rsplit("_", 1)[1])
    assert load_saes(FULL, 12, l0=canon_l0)[0].neuronpedia_id == "gemma-2-2b/12-gemmascope-res-16k"
    other = next(v for v in l0s12 if v != canon_l0)
    listed = rel.neuronpedia[f"layer_12/width_16k/average_l0_{other}"]  # sae-lens lists some
    assert load_saes(FULL, 12, l0=other)[0].neuronpedia_id == listed
    unlisted = next(s for s in rel.saes if s.startswith("layer_") and not rel.neuronpedia[s]
                    and rel.saes[s] not in S._canonical_folders())
    assert load_saes(FULL, sae_ids=[unlisted])[0].neuronpedia_id is None
    # 1m width at layer 12
    assert load_saes(FULL, 12, width="1m", l0="nearest:100")[0].width == 2**20


def test_explicit_ids_and_other_releases():
    hs = load_saes("gpt2-small-res-jb", sae_ids=["blocks.3.hook_resid_pre", "blocks.11.hook_resid_post"])
    assert [(h.layer, h.hook_name, h.neuronpedia_id) for h in hs] == [
        (3, "blocks.3.hook_resid_pre", "gpt2-small/3-res-jb"),
        (11, "blocks.11.hook_resid_post", "gpt2-small/12-res-jb"),
    ]
    assert load_saes("gpt2-small-res-jb", layers=[4])[0].sae_id == "blocks.4.hook_resid_pre"
    with pytest.raises(S.SAELoadError, match="2 SAEs at layer 11"):
        load_saes("gpt2-small-res-jb", layers=[11])
    with pytest.raises(S.SAELoadError, match="either sae_ids or layers"):
        load_saes(CANON, layers=[1], sae_ids=["layer_1/width_16k/canonical"])


# -- errors ------------------------------------------------------------------------------------
def test_unknown_release_lists_close_matches_first():
    with pytest.raises(S.UnknownReleaseError) as e:
        load_saes("gemma-scope-2b-pt-res-canonicl")
    msg = str(e.value)
    assert "Did you mean: gemma-scope-2b-pt-res-canonical" in msg
    listing = msg.split("closest first): ", 1)[1]
    assert listing.startswith("gemma-scope-2b-pt-res-canonical, ")  # close matches lead the list
    assert "list_releases()" in msg
    assert isinstance(e.value, ValueError)


def test_unknown_id_lists_ids_at_layer():
    with pytest.raises(S.UnknownSAEIdError) as e:
        load_saes(CANON, sae_ids=["layer_3/width_16k/average_l0_59"])
    assert "layer_3/width_16k/canonical" in str(e.value) and "layer_3/width_65k/canonical" in str(e.value)
    with pytest.raises(S.UnknownSAEIdError, match=r"L0s available at layer 3, width 16k: \[14, 28, 59, 142, 315\]"):
        load_saes(FULL, [3], l0=7)
    with pytest.raises(S.UnknownSAEIdError, match="gemma-scope-2b-pt-res-canonical"):
        load_saes(FULL, [3])  # l0="canonical" is not valid on the full release
    with pytest.raises(S.UnknownSAEIdError, match="exactly one SAE per layer"):
        load_saes(FULL, [3], l0=None)
    with pytest.raises(S.SAELoadError, match="nearest:<number>"):
        load_saes(FULL, [3], l0="nearest:abc")


def test_layers_out_of_range_says_valid_range():
    with pytest.raises(S.LayerOutOfRangeError, match=r"valid layers are 0\.\.25"):
        load_saes(CANON, layers=[24, 26])
    with pytest.raises(S.LayerOutOfRangeError, match=r"\[5, 12, 19\]"):
        load_saes(CANON, layers=[4], width="1m")
    with pytest.raises(S.SAELoadError, match="unknown SAE width"):
        load_saes(CANON, width="17k")


# -- loading through sae-lens' real Gemma Scope loader, hub routed to fixtures ----------------
def test_hub_load_runs_sae_lens_gemma_loader(routed_hub, gemma_scope_snapshot):
    h = load_saes(CANON, layers=[1])[0]
    sae = h.load()
    assert routed_hub == [(fx.GEMMA_SCOPE_REPO, "layer_1/width_16k/average_l0_102/params.npz")]
    with np.load(gemma_scope_snapshot / "layer_1/width_16k/average_l0_102/params.npz") as z:
        ref = {k: z[k] for k in z.files}
    for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        assert torch.equal(getattr(sae, k).detach(), torch.from_numpy(ref[k])), k
    assert type(sae).__name__ == "JumpReLUSAE"
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert sae.cfg.metadata.model_name == "gemma-2-2b"
    assert sae.cfg.metadata.neuronpedia_id == "gemma-2-2b/1-gemmascope-res-16k"
    assert sae.cfg.apply_b_dec_to_input is False
    # to_weights: same numbers, the handle's identity, and the SAE function agrees with sae-lens
    w = as_weights(h)
    assert isinstance(w, SAEWeights) and w.architecture == "jumprelu"
    assert torch.equal(w.W_dec, torch.from_numpy(ref["W_dec"]))
    assert w.info == h.info and w.info.layer == 1
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert torch.allclose(w.encode(x), sae.encode(x), atol=1e-6)
        assert torch.allclose(w.forward(x), sae.decode(sae.encode(x)), atol=1e-5)
    # the non-canonical id of the same folder loads the same file
    n = fx.real_l0s(2)[0]
    h2 = load_saes(FULL, [2], l0=n)[0]
    assert torch.equal(h2.to_weights().W_enc, torch.from_numpy(
        np.load(gemma_scope_snapshot / f"layer_2/width_16k/average_l0_{n}/params.npz")["W_enc"]))
    assert routed_hub[-1] == (fx.GEMMA_SCOPE_REPO, f"layer_2/width_16k/average_l0_{n}/params.npz")


def test_offline_hub_gives_clear_error(monkeypatch):
    # autouse fixture: real huggingface_hub, offline, empty cache (no routing)
    h = load_saes(CANON, layers=[0])[0]
    assert h.cached is False
    # fails at once, without any network attempt (so without retries): every connection and name
    # lookup is recorded and refused
    attempts = []

    def refuse(kind):
        def f(*a, **k):
            attempts.append((kind, a[:2]))
            raise OSError(f"test: no network ({kind})")
        return f

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    with pytest.raises(S.HubUnavailableError) as e:
        h.load()
    assert attempts == []
    msg = str(e.value)
    for needle in ("unreachable", "load_saes(path)", "saematch_nb.demo.load()", "HF_HOME"):
        assert needle in msg, needle
    assert isinstance(e.value, S.SAELoadError)
    with pytest.raises(S.HubUnavailableError):
        h.to_weights()


def test_cached_reports_hf_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    h = load_saes(CANON, layers=[4])[0]
    snap = tmp_path / "models--google--gemma-scope-2b-pt-res" / "snapshots" / ("a" * 40)
    (snap / h.folder).mkdir(parents=True)
    (snap / h.folder / "params.npz").write_bytes(b"x")
    (tmp_path / "models--google--gemma-scope-2b-pt-res" / "refs").mkdir()
    (tmp_path / "models--google--gemma-scope-2b-pt-res" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    assert h.cached is True


# -- local folders -----------------------------------------------------------------------------
def test_local_saelens_folder(saelens_folder):
    hs = load_saes(saelens_folder)
    assert len(hs) == 1
    h = hs[0]
    assert (h.layer, h.hook_name, h.model_name, h.neuronpedia_id) == (
        1, "blocks.1.hook_resid_post", "tiny-gemma2", "tiny/1-res")
    assert h.path == str(saelens_folder.resolve())
    sae = h.load()  # sae-lens' load_from_disk
    w = h.to_weights()  # read without sae-lens
    ref = fx.jumprelu_arrays(16, 64, seed=3)
    for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        assert torch.equal(getattr(sae, k).detach(), torch.from_numpy(ref[k]))
        assert torch.equal(getattr(w, k), torch.from_numpy(ref[k]))
    assert w.info.neuronpedia_id == "tiny/1-res" and w.info.path == h.path
    key = h.cache_key
    assert key == load_saes(str(saelens_folder))[0].cache_key
    time.sleep(0.01)
    fx.write_saelens_folder(saelens_folder, hook_name="blocks.1.hook_resid_post", seed=4)
    os.utime(saelens_folder / "sae_weights.safetensors", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert h.cache_key != key  # rewritten weights are a new identity


def test_local_gemma_snapshot_and_npz_folder(gemma_scope_snapshot):
    hs = load_saes(gemma_scope_snapshot, layers=[0, 2])  # a snapshot: canonical by default
    assert [h.l0 for h in hs] == [fx.CANONICAL_16K_L0[0], fx.CANONICAL_16K_L0[2]]
    assert [h.hook_name for h in hs] == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    assert hs[0].sae_id == "layer_0/width_16k/average_l0_105"
    assert load_saes(gemma_scope_snapshot, layers=[1], l0="nearest:1")[0].l0 == fx.real_l0s(1)[0]
    assert load_saes(gemma_scope_snapshot).layers == [0, 1, 2]
    with pytest.raises(S.LayerOutOfRangeError, match=r"0\.\.2"):
        load_saes(gemma_scope_snapshot, layers=[3])
    # one params.npz folder, loaded by sae-lens' load_from_disk with our npz converter
    folder = gemma_scope_snapshot / "layer_2/width_16k/average_l0_141"
    h = load_saes(folder)[0]
    sae = h.load()
    ref = np.load(folder / "params.npz")
    assert torch.equal(sae.W_dec.detach(), torch.from_numpy(ref["W_dec"]))
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_post" and sae.cfg.apply_b_dec_to_input is False
    assert torch.equal(h.to_weights().threshold, torch.from_numpy(ref["threshold"]))
    # a list of folders, in layer order
    hs = load_saes([gemma_scope_snapshot / "layer_2/width_16k/average_l0_141",
                    gemma_scope_snapshot / "layer_0/width_16k/average_l0_105"])
    assert hs.layers == [0, 2]
    with pytest.raises(S.SAELoadError, match="does not exist"):
        load_saes("./no/such/folder")


def test_hf_cache_snapshot_path_is_recognised(tmp_path):
    snap = tmp_path / "models--google--gemma-scope-2b-pt-res" / "snapshots" / ("b" * 40)
    fx.write_gemma_scope_snapshot(snap, layers=(12,), l0s={12: (82, 41)})
    h = load_saes(snap / "layer_12/width_16k/average_l0_82")[0]
    assert (h.layer, h.model_name, h.neuronpedia_id) == (12, "gemma-2-2b", "gemma-2-2b/12-gemmascope-res-16k")


def test_list_repr_and_slicing():
    hs = load_saes(CANON, layers=range(3))
    assert isinstance(hs[:2], S.SAEList) and len(hs[:2]) == 2
    assert "layer" in repr(hs) and isinstance(hs._repr_html_(), str)
    assert "blocks.0.hook_resid_post" in repr(hs[0]) or "0" in repr(hs[0])
    assert hs.by_layer(2).layer == 2
    with pytest.raises(KeyError):
        hs.by_layer(9)
    with pytest.raises(Exception):
        hs[0].layer = 5  # frozen


def test_naming_does_not_import_sae_lens():
    import subprocess
    import sys

    code = ("import sys, saematch_nb as s; h = s.load_saes('gemma-scope-2b-pt-res-canonical', layers=[3]); "
            "assert h[0].hook_name == 'blocks.3.hook_resid_post'; h[0].cache_key; "
            "print('sae_lens' in sys.modules, 'transformer_lens' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(__import__("pathlib").Path(__file__).parents[2]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_other_release_in_saelens_format_loads_through_routed_hub(monkeypatch, tmp_path):
    rel = S._directory()["gpt2-small-res-jb"]
    assert rel.conversion_func is None  # sae-lens' own cfg.json + safetensors format
    folder = rel.saes["blocks.3.hook_resid_pre"]
    fx.write_saelens_folder(tmp_path / folder, d_in=16, d_sae=32, hook_name="blocks.3.hook_resid_pre",
                            model_name="gpt2-small", seed=11)
    log = fx.route_hub_to(monkeypatch, {rel.repo_id: tmp_path})
    h = load_saes("gpt2-small-res-jb", sae_ids=["blocks.3.hook_resid_pre"])[0]
    sae = h.load()
    assert (rel.repo_id, f"{folder}/cfg.json") in log and (rel.repo_id, f"{folder}/sae_weights.safetensors") in log
    ref = fx.jumprelu_arrays(16, 32, seed=11)
    assert torch.equal(sae.W_dec.detach(), torch.from_numpy(ref["W_dec"]))
    assert sae.cfg.metadata.hook_name == "blocks.3.hook_resid_pre"
    # sae-lens puts the directory's neuronpedia id into metadata only for pre-6.0 cfg.json files;
    # the handle (and so SAEWeights.info) has it from the directory either way
    w = h.to_weights()
    assert h.neuronpedia_id == w.info.neuronpedia_id == "gpt2-small/3-res-jb"
    assert w.info.layer == 3 and w.info.release == "gpt2-small-res-jb"


def test_reprs_show_the_handles_facts():
    """The reprs are display's (no local fallback): the handle's identity, in text and HTML."""
    hs = load_saes(CANON, layers=[1, 2])
    text = repr(hs)
    assert text.startswith("SAEList: 2 SAEs") and "layer_2/width_16k/canonical" in text
    assert "gemma-2-2b/2-gemmascope-res-16k" in text
    one = repr(hs[0])
    assert one.startswith("SAEHandle: layer_1/width_16k/canonical (not loaded)")
    assert "blocks.1.hook_resid_post" in one and "gemma-scope-2b-pt-res-canonical" in one
    html = hs[0]._repr_html_()
    assert "blocks.1.hook_resid_post" in html and "https://neuronpedia.org/gemma-2-2b/1-gemmascope-res-16k" in html
    assert "<script" not in html.lower() and "smn-" in html
    assert "layer_2/width_16k/canonical" in hs._repr_html_()


def test_reprs_delegate_to_display(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("saematch_nb.display.html")
    fake.saes_html = lambda lst: f"<table>{len(lst)} saes</table>"
    fake.handle_html = lambda h: f"<b>{h.layer}</b>"
    monkeypatch.setitem(sys.modules, "saematch_nb.display.html", fake)
    hs = load_saes(CANON, layers=[1, 2])
    assert hs._repr_html_() == "<table>2 saes</table>"
    assert hs[1]._repr_html_() == "<b>2</b>"
