"""The tiny Gemma 2 model, hooks, sae-lens' HookedSAETransformer on it, and load_model's errors."""

from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from saematch_nb.sources import models as M
from tests import _saelens_doubles as fx

PROMPT = "The quick brown fox jumps over the lazy dog."


def test_tiny_config_is_tl_gemma2(tiny_model):
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    ref = convert_hf_model_config("google/gemma-2-2b")
    cfg = tiny_model.cfg
    for k in ("act_fn", "normalization_type", "positional_embedding_type", "attn_scores_soft_cap",
              "output_logits_soft_cap", "gated_mlp", "final_rms", "use_normalization_before_and_after",
              "use_local_attn", "original_architecture", "rotary_base", "eps"):
        assert getattr(cfg, k) == ref[k], k
    assert cfg.attn_types == ["local", "global"] and cfg.n_key_value_heads == 2 < cfg.n_heads
    assert type(tiny_model).__name__ == "HookedSAETransformer"


def test_tokenizer_is_local_and_prepends_bos(tiny_model):
    tok = tiny_model.tokenizer
    assert Path(tok.name_or_path).is_dir()  # a hub name would be reloaded from the hub
    toks = tiny_model.to_tokens(PROMPT)
    assert toks[0, 0].item() == tok.bos_token_id
    assert tiny_model.to_string(toks[0, 1:]) == PROMPT


def test_forward_and_soft_capping(tiny_model):
    toks = tiny_model.to_tokens(PROMPT)
    with torch.no_grad():
        logits, cache = tiny_model.run_with_cache(toks)
        assert logits.shape == (1, toks.shape[1], tiny_model.cfg.d_vocab)
        assert torch.isfinite(logits).all()
        # soft-capping really acts: logits = 30 tanh(raw / 30), raw from the final norm and W_U;
        # scale the raw logits up so the cap binds
        resid = cache[f"blocks.{tiny_model.cfg.n_layers - 1}.hook_resid_post"]
        raw = tiny_model.ln_final(resid) @ tiny_model.W_U + tiny_model.b_U
        assert torch.allclose(logits, 30 * torch.tanh(raw / 30), atol=1e-5)
        W = tiny_model.unembed.W_U
        saved = W.detach().clone()
        try:
            W.mul_(1000.0)
            big = tiny_model(toks)
            raw_big = tiny_model.ln_final(resid) @ W + tiny_model.b_U
        finally:
            W.copy_(saved)
        assert raw_big.abs().max() > 100
        assert big.abs().max() <= 30.0 and big.abs().max() > 29.0


def test_resid_post_hooks_fire(tiny_model):
    seen = {}

    def record(x, hook):
        seen[hook.name] = tuple(x.shape)

    names = [f"blocks.{L}.hook_resid_post" for L in range(tiny_model.cfg.n_layers)]
    toks = tiny_model.to_tokens(PROMPT)
    with torch.no_grad():
        tiny_model.run_with_hooks(toks, fwd_hooks=[(n, record) for n in names])
    assert seen == {n: (1, toks.shape[1], 64) for n in names}


def _n_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) + len(hp._forward_hooks) for hp in model.hook_dict.values())


def test_hooks_context_cleans_up_even_on_error(tiny_model):
    before = _n_hooks(tiny_model)
    toks = tiny_model.to_tokens(PROMPT)
    with torch.no_grad():
        clean = tiny_model(toks)

    def zero(x, hook):
        return torch.zeros_like(x)

    with pytest.raises(RuntimeError, match="boom"):
        with tiny_model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", zero)]):
            with torch.no_grad():
                hooked = tiny_model(toks)
            assert not torch.allclose(hooked, clean)  # the hook was live
            raise RuntimeError("boom")
    assert _n_hooks(tiny_model) == before
    with torch.no_grad():
        assert torch.equal(tiny_model(toks), clean)


def test_hooked_sae_transformer_with_jumprelu_sae(tiny_model):
    hook = "blocks.1.hook_resid_post"
    n_before = _n_hooks(tiny_model)
    sae = fx.tiny_jumprelu_sae(64, 256, hook_name=hook, seed=1)
    toks = tiny_model.to_tokens(PROMPT)
    with torch.no_grad():
        clean, clean_cache = tiny_model.run_with_cache(toks)
        # thresholds small enough that features fire on this random model's residual norms
        sae.threshold.data = torch.full_like(sae.threshold, 0.01)
        tiny_model.add_sae(sae, use_error_term=False)
        try:
            logits, cache = tiny_model.run_with_cache_with_saes(toks, saes=[])
            acts = cache[f"{hook}.hook_sae_acts_post"]
            assert acts.shape == (1, toks.shape[1], 256)
            expected = sae.encode(clean_cache[hook])
            assert torch.allclose(acts, expected, atol=1e-5)
            assert (acts > 0).any()

            feature = int(acts[0].sum(0).argmax())

            def clamp(x, hook):
                x = x.clone()
                x[..., feature] = 50.0
                return x

            clamped = tiny_model.run_with_hooks(toks, fwd_hooks=[(f"{hook}.hook_sae_acts_post", clamp)])
            spliced = tiny_model(toks)
            assert (clamped - spliced).abs().max() > 1e-2  # the clamp really changes the logits
        finally:
            tiny_model.reset_saes()
        assert torch.equal(tiny_model(toks), clean)  # SAE removed, model as before
    assert _n_hooks(tiny_model) == n_before


def test_load_model_offline_error():
    # autouse fixture: hub offline, empty cache; TL's real path runs until the weights download
    with pytest.raises(M.HubUnavailableError) as e:
        M.load_model("gemma-2-2b", device="cpu")
    msg = str(e.value)
    assert isinstance(e.value, M.ModelLoadError)
    for needle in ("unreachable", "google/gemma-2-2b", "huggingface-cli login", "demo", "HF_HOME"):
        assert needle in msg, needle


def test_gated_error_explained():
    import httpx
    from huggingface_hub.errors import GatedRepoError

    url = "https://huggingface.co/google/gemma-2-2b/resolve/main/config.json"
    gated = GatedRepoError("401 Client Error. Cannot access gated repo",
                           response=httpx.Response(401, request=httpx.Request("GET", url)))
    try:
        try:
            raise gated
        except GatedRepoError as inner:
            raise OSError("You are trying to access a gated repo.") from inner
    except OSError as wrapped:
        err = M._explain(wrapped, "google/gemma-2-2b")
    assert isinstance(err, M.ModelAccessError)
    assert "huggingface-cli login" in str(err) and "saematch_nb.demo.load()" in str(err)
    other = KeyError("x")
    assert M._explain(other, "gpt2") is other  # unrelated errors pass through unchanged


def test_load_model_demo_reads_the_demo_files_without_the_demo(monkeypatch, tmp_path):
    """load_model("demo") is the demo's model, read through sources.demo_assets: the demo module
    (which sits above sources) is never imported for it, so the two form no circle."""
    import json

    import torch

    from saematch_nb.sources import demo_assets

    fake = types.ModuleType("saematch_nb.demo")
    fake.load = lambda *a, **k: pytest.fail("load_model('demo') went through the demo module")
    monkeypatch.setitem(sys.modules, "saematch_nb.demo", fake)
    model = M.load_model("demo")
    cfg = json.loads((demo_assets.ASSETS / "model_cfg.json").read_text())
    assert model.cfg.n_layers == cfg["n_layers"]
    assert torch.equal(model.W_E, M.load_saved_model(demo_assets.ASSETS).W_E)
    monkeypatch.setattr(demo_assets, "ASSETS", tmp_path / "nowhere")
    with pytest.raises(demo_assets.MissingAssetsError, match="build_demo.py"):
        M.load_model("demo")


def test_load_model_bad_dtype():
    with pytest.raises(M.ModelLoadError, match="unknown dtype"):
        M.load_model("gemma-2-2b", dtype="float33")


def test_deprecation_warning_silenced_only_for_our_calls():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fx.tiny_gemma2_model(seed=1, n_layers=1, d_model=32, n_heads=2, n_key_value_heads=1, d_head=16, d_mlp=64)
    assert not [w for w in rec if "is deprecated" in str(w.message)]
    from transformer_lens import HookedTransformer

    with pytest.warns(DeprecationWarning):  # filters were restored: the user still sees TL's own
        HookedTransformer(fx.tiny_gemma2_config(n_layers=1, d_model=32, n_heads=2, n_key_value_heads=1,
                                                 d_head=16, d_mlp=64))


# -- TL's HookedTransformer Gemma 2 reproduces Hugging Face; the bridge backend agrees ----------
@pytest.fixture(scope="module")
def hf_gemma2_dir(tmp_path_factory):
    return fx.write_tiny_hf_gemma2(tmp_path_factory.mktemp("tiny_hf_gemma2"), seed=2)


def test_hooked_gemma2_matches_hf_and_bridge(hf_gemma2_dir):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(hf_gemma2_dir).eval()
    hooked = fx.hooked_from_hf_gemma2(hf, fx.tiny_tokenizer(), sae_transformer=True)
    bridge = M.load_model(str(hf_gemma2_dir), device="cpu", backend="bridge")
    assert type(bridge).__name__ == "SAETransformerBridge"
    gen = torch.Generator().manual_seed(0)
    toks = torch.randint(5, hf.config.vocab_size, (2, 40), generator=gen)  # longer than the window (8)
    toks[:, 0] = hf.config.bos_token_id
    with torch.no_grad():
        ref = hf(toks, output_hidden_states=True)
        lh, ch = hooked.run_with_cache(toks)
        lb, cb = bridge.run_with_cache(toks)
    assert torch.allclose(lh, ref.logits, atol=1e-5) and torch.allclose(lb, ref.logits, atol=1e-5)
    for L in range(hf.config.num_hidden_layers - 1):  # HF's last hidden state is after the final norm
        name = f"blocks.{L}.hook_resid_post"
        assert torch.allclose(ch[name], ref.hidden_states[L + 1], atol=1e-5), name
        assert torch.allclose(cb[name], ch[name], atol=1e-5), name
    # an SAE spliced into the bridge computes the same features as on the hooked model, but the
    # bridge names its SAE hooks after the resolved hook ("blocks.0.hook_out...."), and in
    # sae-lens 6.54 run_with_cache_with_saes leaves them out of the bridge's cache: add_sae instead
    sae = fx.tiny_jumprelu_sae(64, 128, hook_name="blocks.0.hook_resid_post", seed=5)
    sae.threshold.data.fill_(0.01)
    with torch.no_grad():
        _, ch2 = hooked.run_with_cache_with_saes(toks, saes=[sae])
        bridge.add_sae(sae, use_error_term=False)
        try:
            _, cb2 = bridge.run_with_cache(toks)
        finally:
            bridge.reset_saes()
    hooked_acts = ch2["blocks.0.hook_resid_post.hook_sae_acts_post"]
    assert (hooked_acts > 0).any()
    assert torch.allclose(cb2["blocks.0.hook_out.hook_sae_acts_post"], hooked_acts, atol=1e-5)


def test_load_model_rejects_local_folder_for_hooked(hf_gemma2_dir):
    with pytest.raises(M.ModelLoadError, match="backend='bridge'"):
        M.load_model(str(hf_gemma2_dir))
    with pytest.raises(M.ModelLoadError, match="backend must be"):
        M.load_model("gemma-2-2b", backend="jax")


# -- a saved model folder (the demo's layout), read by the sources layer -------------------------
def test_load_saved_model_reads_the_demo_layout(tmp_path):
    import json

    from saematch_nb import demo

    plain = M.load_saved_model(demo.ASSETS, sae_transformer=False)
    assert type(plain).__name__ == "HookedTransformer" and not plain.training
    cfg = json.loads((demo.ASSETS / "model_cfg.json").read_text())
    assert plain.cfg.n_layers == cfg["n_layers"] and plain.cfg.d_model == cfg["d_model"]
    toks = plain.to_tokens("HAMLET.")
    assert toks[0, 0].item() == plain.tokenizer.bos_token_id and toks.shape[1] > 1

    with pytest.raises(M.ModelLoadError, match=r"not a saved model folder: model_cfg.json, model.safetensors"):
        M.load_saved_model(tmp_path)
    # a config that does not fit the weights: the error names the keys
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").symlink_to(demo.ASSETS / "model.safetensors")
    (bad / "tokenizer").symlink_to(demo.ASSETS / "tokenizer")
    (bad / "model_cfg.json").write_text(json.dumps({**cfg, "n_layers": cfg["n_layers"] - 1}))
    with pytest.raises(M.ModelLoadError, match=r"does not fit model_cfg.json: missing \[\], unexpected \['blocks\."):
        M.load_saved_model(bad)
    # the demo says to rebuild its assets when they do not fit
    for name in ("texts.jsonl", "saes"):
        (bad / name).symlink_to(demo.ASSETS / name)
    with pytest.raises(demo.MissingAssetsError, match="does not fit model_cfg.json.*rebuild the assets"):
        demo.load(bad)


def test_issue22_unknown_dtype_is_named():
    """Item 16: load_model(dtype='bogus') said "unknown dtype None"; the error names what was
    given, before anything is loaded."""
    import torch

    for bad, shown in (("bogus", "'bogus'"), ("nn", "'nn'"), (torch.int64, "torch.int64"), (3, "3")):
        with pytest.raises(M.ModelLoadError, match=f"unknown dtype {shown}; use a floating dtype"):
            M.load_model("demo", dtype=bad)
