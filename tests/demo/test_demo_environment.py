"""demo.load() loads local files with local-only options and leaves the process environment
alone (issue #11: it set HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, so every later hub load in the
same kernel failed as "unreachable")."""

from __future__ import annotations

import os

from saematch_nb import demo


def test_load_leaves_the_environment_alone(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    before = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_", "SAEMATCH_"))}
    bundle = demo.load(handles=False)
    after = {k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_", "SAEMATCH_"))}
    assert after == before
    assert bundle.model.to_tokens("HAMLET.").shape[1] > 1 and len(bundle.saes) == bundle.n_layers
