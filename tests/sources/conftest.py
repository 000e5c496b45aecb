"""Shared fixtures for tests/sources: no test here may reach the network.

- autouse ``_offline_hub``: huggingface_hub in offline mode with an empty cache, so a test that
  would download fails at once with the real offline error instead of retrying for ~25 s.
- ``gemma_scope_snapshot``: tiny Gemma Scope hub snapshot (layers 0..2, d_in 16, d_sae 64).
- ``routed_hub``: sae-lens' hub downloads routed to that snapshot (returns the request log).
- ``gemma_scope_2_snapshot``: tiny snapshot of the Gemma Scope 2 repo google/gemma-scope-2-1b-pt
  (res-all layers 0..2, res / mlp / att / transcoders layer 7, transcoders-all layer 0; d_in 16,
  attention d_in 32, d_sae 64); ``routed_hub_2`` routes sae-lens to it.
- ``saelens_folder``: one sae-lens cfg.json + sae_weights.safetensors folder.
- ``tiny_model``: session-wide random Gemma-2-architecture HookedSAETransformer (2 layers,
  d_model 64). Tests that add SAEs or hooks must remove them (reset_saes / model.hooks context).
"""

from __future__ import annotations

import pytest

from tests import _saelens_doubles as fx


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch, tmp_path_factory):
    fx.force_offline_hub(monkeypatch, tmp_path_factory.mktemp("empty_hf_cache"))


@pytest.fixture(scope="session")
def gemma_scope_snapshot(tmp_path_factory):
    return fx.write_gemma_scope_snapshot(tmp_path_factory.mktemp("gemma-scope-2b-pt-res"), layers=(0, 1, 2))


@pytest.fixture
def routed_hub(monkeypatch, gemma_scope_snapshot):
    return fx.route_hub_to(monkeypatch, {fx.GEMMA_SCOPE_REPO: gemma_scope_snapshot})


@pytest.fixture
def saelens_folder(tmp_path):
    return fx.write_saelens_folder(
        tmp_path / "sae_l1", d_in=16, d_sae=64, hook_name="blocks.1.hook_resid_post",
        model_name="tiny-gemma2", neuronpedia_id="tiny/1-res", seed=3,
    )


@pytest.fixture(scope="session")
def tiny_model():
    return fx.tiny_gemma2_model(seed=0, n_layers=2, d_model=64, sae_transformer=True)


GEMMA_SCOPE_2_REPO = "google/gemma-scope-2-1b-pt"


@pytest.fixture(scope="session")
def gemma_scope_2_snapshot(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma-scope-2-1b-pt")
    fx.write_gemma_scope_2_snapshot(root, "gemma-scope-2-1b-pt-res-all", layers=(0, 1, 2))
    for release in ("res", "mlp", "att", "transcoders"):
        fx.write_gemma_scope_2_snapshot(root, f"gemma-scope-2-1b-pt-{release}", layers=(7,))
    fx.write_gemma_scope_2_snapshot(root, "gemma-scope-2-1b-pt-transcoders-all", layers=(0,))
    return root


@pytest.fixture
def routed_hub_2(monkeypatch, gemma_scope_2_snapshot):
    return fx.route_hub_to(monkeypatch, {GEMMA_SCOPE_2_REPO: gemma_scope_2_snapshot})
