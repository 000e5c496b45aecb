"""core/stack.py: the order and layers of an analysis' SAEs (issue 22 item 3), as ``SAEStack.build``
and ``match_chain`` take them: a list is matched in depth order, two SAEs on one layer are an error,
unknown layers keep the list's order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from saematch_nb.core.chain import MatchChain
from saematch_nb.core.runner import match_chain
from saematch_nb.core.stack import SAEStack
from saematch_nb.core.synthetic import planted_chain
from saematch_nb.core.weights import SAEInfo, SAEWeights
from tests.core._chains import save_npz


def _layered(saes, layers):
    return [w.with_info(layer=L, hook_name=f"blocks.{L}.hook_resid_post") for w, L in zip(saes, layers)]


@pytest.fixture(scope="module")
def four():
    return _layered(planted_chain(n_layers=4, n=48, d_in=16, seed=11).saes, [0, 1, 2, 3])


def test_two_saes_on_one_layer_are_an_error_never_renumbered(four):
    saes = _layered(four[:3], [0, 1, 1])
    with pytest.raises(ValueError, match=r"SAEs 1 and 2 of the list both read layer 1 .*\{layer: sae\} mapping"):
        SAEStack.build(saes)
    with pytest.raises(ValueError, match="both read layer 1"):
        match_chain(saes, cache=False, progress=False)
    # a mapping says which layer each SAE stands for: accepted
    assert match_chain(dict(zip([0, 1, 2], saes)), cache=False, progress=False).layers == (0, 1, 2)


def test_a_list_out_of_depth_order_is_matched_in_depth_order_like_a_mapping(four, tmp_path):
    shuffled = [four[2], four[0], four[3], four[1]]
    st = SAEStack.build(shuffled)
    assert st.layers == (0, 1, 2, 3) and st.source(2) is four[2]
    got = match_chain(shuffled, cache=False, progress=False)
    want = match_chain(four, cache=False, progress=False)
    by_map = match_chain({2: four[2], 0: four[0], 3: four[3], 1: four[1]}, cache=False, progress=False)
    assert got.layers == want.layers == by_map.layers == (0, 1, 2, 3)
    for a, b in zip(got.pairs, want.pairs):
        assert np.array_equal(a.partner, b.partner) and a.fingerprint_a == b.fingerprint_a
    assert got.stack.source(3) is four[3] and got.infos == want.infos
    # the same list attaches to the saved chain
    back = MatchChain.load(got.save(tmp_path / "c"), saes=shuffled)
    assert back.stack.source(1) is four[1]


@dataclass(frozen=True)
class LateHandle:
    """A lazy handle that knows its layer only once loaded (as a path does)."""

    path: str
    layer: int

    def to_weights(self) -> SAEWeights:
        return SAEWeights.from_npz(self.path, info=SAEInfo(layer=self.layer,
                                                         hook_name=f"blocks.{self.layer}.hook_resid_post"))


def test_layers_known_only_once_loaded(four, tmp_path):
    paths = [save_npz(w, tmp_path / f"l{t}.npz") for t, w in enumerate(four)]
    ok = match_chain([LateHandle(p, L) for p, L in zip(paths, [0, 1, 2, 3])], cache=False, progress=False)
    assert ok.layers == (0, 1, 2, 3)
    with pytest.raises(ValueError, match=r"read layers \[2, 0, 3, 1\] once loaded, but were matched in list "
                                         r"order.*depth order"):
        match_chain([LateHandle(paths[L], L) for L in (2, 0, 3, 1)], cache=False, progress=False)
    with pytest.raises(ValueError, match="SAEs 1 and 2 of the list both read layer 1 once loaded"):
        match_chain([LateHandle(p, L) for p, L in zip(paths, [0, 1, 1, 2])], cache=False, progress=False)


def test_unknown_layers_keep_list_order(four, tmp_path):
    # npz files say no layer: positions, in the order given
    paths = [save_npz(w, tmp_path / f"l{t}.npz") for t, w in enumerate(four)]
    rev = match_chain(paths[::-1], cache=False, progress=False)
    assert rev.layers == (0, 1, 2, 3)
    assert rev.pairs[0].fingerprint_a == four[3].fingerprint()
