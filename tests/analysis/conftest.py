"""Fixtures for tests/analysis: the same offline hub and tiny model as tests/sources (the analysis
layer runs on models and SAEs the loaders bring; no test here may reach the network)."""

from tests.sources.conftest import _offline_hub, tiny_model  # noqa: F401  (fixtures, re-used)
