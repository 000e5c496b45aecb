"""scripts/build_gemma3.py at toy size on the real Gemma 3 270M: 2 layers, width 256, a few
thousand tokens; end to end, sae-lens format, and an interrupted build that resumes exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "build_gemma3.py"


def _run(args, models, **env_extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "SAEMATCH_CACHE_DIR": str(Path(models).parent),
           **env_extra}
    if not env_extra:
        env.pop("BUILD_GEMMA3_STOP_AFTER_ROUND", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def models(gemma3_models):
    # the script finds the checkpoint under $SAEMATCH_CACHE_DIR/models
    if Path(gemma3_models).name != "models":
        link = Path(gemma3_models).parent / "cache_for_script" / "models"
        link.parent.mkdir(exist_ok=True)
        if not link.exists():
            link.symlink_to(gemma3_models)
        return str(link)
    return gemma3_models


def test_toy_build_end_to_end_and_exact_resume(tmp_path, models):
    full = tmp_path / "full"
    r = _run(["--out", str(full), "--toy", "--no-docs", "--tokens", "3000"], models)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = json.loads((full / "metrics.json").read_text())
    res = m["eval"]["saes"]
    # the seed ceiling is a second SAE of layer 0, listed after layer 1: each SAE must be evaluated
    # on its own layer (load_saes orders by layer; a mix-up gives a negative EV here)
    assert set(res) == {"saes/layer_0", "saes/layer_1", "seed_ceiling/layer_0"}
    for v in res.values():
        assert v["explained_variance"] > 0.3 and 0 < v["l0"] < 256  # trained, not an untouched init
    assert set(m["eval"]["seed_agreement"]) >= {"layer", "matched_fraction", "top1_decoder_cos_median"}
    assert all(0 < v["decoder_cos_with_init_median"] < 1 for v in res.values())
    cfg = json.loads((full / "saes/layer_1/cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu"
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert cfg["metadata"]["model_name"] == "google/gemma-3-270m"
    w = load_file(str(full / "saes/layer_1/sae_weights.safetensors"))
    assert w["W_enc"].dtype == torch.float16 and w["threshold"].dtype == torch.float32
    # Gemma Scope's convention: unit decoder rows, thresholds in the layer's own (raw) scale
    assert torch.allclose(w["W_dec"].float().norm(dim=-1), torch.ones(256), atol=2e-3)
    seeds = {json.loads((full / f / "cfg.json").read_text())["metadata"]["seed"] for f in res}
    assert len(seeds) == 3  # each SAE its own seed
    texts = [json.loads(x) for x in (full / "texts.jsonl").read_text().splitlines()]
    assert texts and all(t["text"] for t in texts)

    # interrupted after round 2, then resumed: the same SAEs as the uninterrupted build
    cut = tmp_path / "cut"
    r = _run(["--out", str(cut), "--toy", "--no-docs", "--tokens", "3000"], models, BUILD_GEMMA3_STOP_AFTER_ROUND="2")
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    assert not (cut / "saes").exists() and (cut / "train_state.pt").exists()
    r = _run(["--out", str(cut), "--toy", "--no-docs", "--tokens", "3000"], models)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "resuming at step" in r.stdout
    for f in res:
        a = load_file(str(full / f / "sae_weights.safetensors"))
        b = load_file(str(cut / f / "sae_weights.safetensors"))
        for k in a:
            assert torch.equal(a[k], b[k]), (f, k)


def test_toy_flow_build_and_the_flow_experiment(tmp_path, models):
    """--flow: residual, attention-output and MLP-output SAEs at their own hooks and seeds (data
    init), then benchmarks/gemma3_flow.py end to end on them: every table written, offline."""
    out = tmp_path / "flow"
    r = _run(["--out", str(out), "--toy", "--no-docs", "--tokens", "3000", "--flow", "1-1", "--init", "data"], models)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    res = m["eval"]["saes"]
    assert set(res) == {"saes/layer_0", "saes/layer_1", "attn/layer_1", "mlp/layer_1", "seed_ceiling/layer_1"}
    hooks = {f: json.loads((out / f / "cfg.json").read_text())["metadata"]["hook_name"] for f in res}
    assert hooks["attn/layer_1"] == "blocks.1.hook_attn_out" and hooks["mlp/layer_1"] == "blocks.1.hook_mlp_out"
    assert hooks["saes/layer_0"] == "blocks.0.hook_resid_post"
    assert len({v["seed"] for v in res.values()}) == 5  # no two SAEs share an initialisation
    for v in res.values():
        assert v["explained_variance"] > 0.3 and 0 < v["l0"] < 256
    assert m["recipe"]["init"] == "data" and m["recipe"]["flow"] == "1-1"

    x = tmp_path / "x"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "SAEMATCH_CACHE_DIR": str(Path(models).parent)}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gemma3_flow.py"), "--build", str(out),
                        "--out", str(x),
                        "--windows", "4", "--deact-windows", "4", "--targets", "3", "--origins", "1", "--prompts", "2",
                        "--gen-tokens", "4", "--strengths", "2"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for f in ("flow.npz", "labels.npz", "deactivation.json", "weights_classes.csv", "labels.csv", "labels_tests.csv",
              "deactivation.csv", "steering.csv", "steering_generations.csv", "results.md", "meta.json"):
        assert (x / f).exists(), f
    import pandas as pd

    d = pd.read_csv(x / "deactivation.csv")
    assert set(d["method"]) >= {"R", "M", "A", "R+M+A"} and (d["targets"] > 0).all()
    st = pd.read_csv(x / "steering.csv")
    assert set(st["setting"]) == {"single layer", "cumulative", "cumulative + modules"}
    assert "## Deactivation" in (x / "results.md").read_text()
