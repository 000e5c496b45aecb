"""Fixtures shared across the test tree: planted synthetic SAE pairs and chains (small, fast).

- ``planted``: a square planted pair, every A-feature has a partner; B's features are permuted,
  rescaled per feature (θ × U[0.3, 3]), perturbed (noise 0.1). Returns ``(sae_a, sae_b, truth)``.
- ``planted_fresh``: the same with 30% of A's features dying (their B slot holds a fresh one).
- ``chain``: a 4-layer planted chain (``PlantedChain`` with ``.saes`` and ``.truths``).
"""

from __future__ import annotations

import pytest

from saematch_nb.core.synthetic import planted_chain, planted_pair


@pytest.fixture(scope="session")
def planted():
    return planted_pair(256, 64, rescale=(0.3, 3.0), noise=0.1, seed=0)


@pytest.fixture(scope="session")
def planted_fresh():
    return planted_pair(256, 64, fresh_fraction=0.3, rescale=(0.3, 3.0), noise=0.1, seed=1)


@pytest.fixture(scope="session")
def chain():
    return planted_chain(n_layers=4, n=128, d_in=32, fresh_fraction=0.1, noise=0.1, seed=0)
