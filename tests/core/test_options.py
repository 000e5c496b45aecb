"""MatchOptions: the one value of SAE Match's options (match, match_chain, the cache key, LayerMatch)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import saematch_nb as smn
from saematch_nb.core.options import HOW, MatchOptions
from saematch_nb.core.synthetic import planted_chain


@pytest.fixture(scope="module")
def pc():
    return planted_chain(n_layers=3, n=64, d_in=16, fresh_fraction=0.1, noise=0.05, seed=3)


def test_fields_checked_when_made():
    assert MatchOptions().method == "lap" and MatchOptions().fold is True
    for bad, msg in ((dict(method="hungarian"), "method must be one of"), (dict(params="both"), "params"),
                     (dict(method="cosine", allow_unmatched=True), "allow_unmatched=True needs"),
                     (dict(alpha=1.5), "alpha"), (dict(n_null=0), "n_null"),
                     (dict(bad_threshold="ignore"), "bad_threshold")):
        with pytest.raises(ValueError, match=msg):
            MatchOptions(**bad)
    with pytest.raises(TypeError, match=r"unknown match option\(s\) \['fodl'\]; the options are fold, params"):
        MatchOptions.of(fodl=False)
    with pytest.raises(TypeError, match="MatchOptions"):
        MatchOptions.of(42)
    with pytest.raises(dataclasses.FrozenInstanceError):
        MatchOptions().fold = False


def test_of_layers_keywords_over_a_value():
    base = MatchOptions(solver="jv", fold=False)
    o = MatchOptions.of(base, fold=True)
    assert (o.solver, o.fold) == ("jv", True) and base.fold is False
    assert MatchOptions.of(base.key()) == MatchOptions(solver="jv", fold=False)  # a saved chain's options
    assert base.replace(seed=3).seed == 3


def test_key_leaves_out_only_where_and_how_fast():
    o = MatchOptions()
    assert set(o.kwargs()) - set(o.key()) == set(HOW) == {"device", "memory_budget"}
    assert MatchOptions(device="cpu", memory_budget=1).key() == o.key()
    assert MatchOptions(seed=1).key() != o.key()


def test_match_takes_the_value_or_its_keywords(pc):
    a, b = pc.saes[0], pc.saes[1]
    by_kw = smn.match(a, b, fold=False, seed=2)
    by_value = smn.match(a, b, MatchOptions(fold=False, seed=2))
    assert np.array_equal(by_kw.permutation, by_value.permutation)
    assert by_kw.options == by_value.options == MatchOptions(fold=False, seed=2).record("auto")
    # keywords win over the value given
    assert smn.match(a, b, MatchOptions(fold=False), fold=True).options["fold"] is True
    with pytest.raises(TypeError, match="unknown match option"):
        smn.match(a, b, fodl=False)


def test_match_chain_checks_options_before_loading_anything(tmp_path):
    missing = [tmp_path / "nope_0.npz", tmp_path / "nope_1.npz"]
    with pytest.raises(TypeError, match="unknown match option"):
        smn.match_chain(missing, fodl=False, progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        smn.match_chain(missing, method="hungarian", progress=False)


def test_the_chain_keeps_the_key_and_check_composition_reuses_it(pc):
    opts = MatchOptions(params="decoder", seed=5)
    ch = smn.match_chain(pc.saes, options=opts, cache=False, progress=False)
    assert ch.options == opts.key()
    assert all(p.options == opts.record("auto") for p in ch.pairs)
    direct = smn.match(pc.saes[0], pc.saes[2], opts)
    assert ch.check_composition(0, 2, cache=False) == pytest.approx(ch.agreement(0, 2, direct))
    # keywords override the chain's options there too
    assert ch.check_composition(0, 2, cache=False, params="encoder+decoder") == pytest.approx(
        ch.agreement(0, 2, smn.match(pc.saes[0], pc.saes[2], opts, params="encoder+decoder")))


def test_a_device_torch_cannot_use_is_said_before_loading_anything(tmp_path, monkeypatch):
    """A device name torch does not know fails when the options are made; a GPU this machine lacks
    when match / match_chain start, before any SAE is loaded: an InvalidArgumentError naming what to
    pass, never torch's own assertion ("Torch not compiled with CUDA enabled") from inside a solver.
    An options value naming a GPU can still be made anywhere (its key leaves the device out)."""
    import torch

    from saematch_nb.core.cost import default_device
    from saematch_nb.errors import InvalidArgumentError

    missing = [tmp_path / "nope_0.npz", tmp_path / "nope_1.npz"]
    with pytest.raises(InvalidArgumentError, match=r"device='tpu' is not a torch device.*use 'cpu', 'cuda'"):
        MatchOptions(device="tpu")
    with pytest.raises(InvalidArgumentError, match=r"device='tpu' is not a torch device"):
        smn.match_chain(missing, device="tpu", progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, whatever runs this
    assert MatchOptions(device="cuda").key() == MatchOptions().key()
    no_gpu = r"device='cuda', but torch .* sees no CUDA GPU here; use device='cpu'"
    with pytest.raises(InvalidArgumentError, match=no_gpu):
        smn.match_chain(missing, device="cuda", progress=False)
    with pytest.raises(ValueError, match=no_gpu):  # also a ValueError
        smn.match(*missing, MatchOptions(device="cuda"))
    assert default_device(None) == torch.device("cpu") and default_device("cpu") == torch.device("cpu")
    # a machine with 2 GPUs: cuda:1 is fine, cuda:2 is not there
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert default_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(InvalidArgumentError, match=r"sees 2 CUDA GPU\(s\) \(cuda:0 to cuda:1\)"):
        default_device("cuda:2")
