"""Fixtures of the core tests: the 5-layer planted chain of the cache tests (test_cache.py,
test_reliability.py) and its chain matched without a cache."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cache_planted():
    from saematch_nb.core.synthetic import planted_chain

    return planted_chain(n_layers=5, n=64, d_in=32, seed=21)


@pytest.fixture(scope="module")
def cache_reference(cache_planted):
    from saematch_nb import match_chain

    return match_chain(cache_planted.saes, cache=False, progress=False)
