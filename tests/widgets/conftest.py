"""Fixtures shared by the widget tests: a planted 3-layer chain and a tiny model (n_ctx 128)."""

from __future__ import annotations

import pytest

import saematch_nb as smn
from saematch_nb.core.synthetic import planted_chain


@pytest.fixture(scope="module")
def planted():
    return planted_chain(n_layers=3, n=24, d_in=64, seed=2)


@pytest.fixture(scope="module")
def chain(planted):
    return smn.match_chain(planted.saes, cache=False, progress=False)


@pytest.fixture(scope="module")
def model():
    from tests import _saelens_doubles as fx

    return fx.tiny_gemma2_model(seed=0, n_layers=3, d_model=64)


def n_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())
