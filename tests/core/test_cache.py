"""Disk cache of chain pairs: crash/resume, corrupt and stale entries, keys, location."""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from saematch_nb.core import cache as cache_mod
from saematch_nb.core.cache import CacheWarning, MatchCache, identity, pair_key
from saematch_nb.core.options import MatchOptions
from saematch_nb.core.runner import match_chain
from saematch_nb.core.synthetic import planted_chain
from tests.core._chains import PEAK, TestHandle, make_handles, run, same_pairs, save_npz


def test_crash_midchain_keeps_finished_pairs_and_resumes(cache_planted, cache_reference, tmp_path):
    handles = make_handles(cache_planted.saes, tmp_path / "saes")
    broken = list(handles)
    broken[3] = replace(handles[3], fail=True)  # the 3rd pair (layers 2 -> 3) crashes
    cdir = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="simulated crash") as ei:
        run(broken, cdir)
    assert any("2 finished pair(s)" in n and "resume" in n for n in ei.value.__notes__)
    assert len(list(cdir.glob("*.npz"))) == 2 and not list(cdir.glob(".*tmp"))

    PEAK.update(loads=0)
    resumed = run(handles, cdir)
    assert resumed.stats["cache_hits"] == 2 and resumed.stats["computed"] == 2
    assert PEAK["loads"] == 3  # layers 2, 3, 4 only: layers 0 and 1 were never loaded
    assert [p["cached"] for p in resumed.stats["pairs"]] == [True, True, False, False]
    assert same_pairs(resumed, cache_reference)
    assert resumed.layers == cache_reference.layers and resumed.infos[0] == handles[0].info

    PEAK.update(loads=0)
    again = run(handles, cdir)  # the re-run notebook cell: everything from disk, nothing loaded
    assert again.stats["cache_hits"] == 4 and again.stats["computed"] == 0 and PEAK["loads"] == 0
    assert again.stats["max_saes_held"] == 0
    assert same_pairs(again, cache_reference)
    assert again.summary()["cached"].all()


def test_corrupt_file_is_recomputed_with_a_warning(cache_planted, cache_reference, tmp_path):
    cdir = tmp_path / "cache"
    first = run(cache_planted.saes, cdir)
    store = MatchCache(cdir)
    victim = store.path(first.pairs[1].stats["cache_key"])
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # truncated, as after a full disk
    with pytest.warns(CacheWarning, match="unreadable"):
        second = run(cache_planted.saes, cdir)
    assert second.stats["cache_hits"] == 3 and second.stats["computed"] == 1
    assert second.stats["cache_rejected"] == 1
    assert same_pairs(second, cache_reference)
    assert store.get(first.pairs[1].stats["cache_key"]) is not None  # rewritten, readable again
    victim.write_bytes(b"")  # empty file: same story
    with pytest.warns(CacheWarning):
        assert same_pairs(run(cache_planted.saes, cdir), cache_reference)


def test_file_of_another_key_is_not_trusted(cache_planted, cache_reference, tmp_path):
    cdir = tmp_path / "cache"
    first = run(cache_planted.saes, cdir)
    store = MatchCache(cdir)
    k0, k1 = (first.pairs[t].stats["cache_key"] for t in (0, 1))
    shutil.copy(store.path(k0), store.path(k1))  # pair 0's result under pair 1's name
    with pytest.warns(CacheWarning, match="another key"):
        second = run(cache_planted.saes, cdir)
    assert second.stats["computed"] == 1 and same_pairs(second, cache_reference)


def test_stale_entry_is_caught_when_weights_are_loaded_anyway(tmp_path):
    pc = planted_chain(n_layers=4, n=64, d_in=32, seed=22)
    handles = make_handles(pc.saes, tmp_path / "saes", tag="v1")
    cdir = tmp_path / "cache"
    first = run(handles, cdir)
    # Layer 2 changes on disk but keeps its name (same cache_key, as a hub SAE re-uploaded would).
    other = planted_chain(n_layers=4, n=64, d_in=32, seed=23)
    p2 = Path(handles[2].path)
    save_npz(other.saes[2], p2)
    MatchCache(cdir).path(first.pairs[2].stats["cache_key"]).unlink()  # pair 2 -> 3 must be recomputed
    with pytest.warns(CacheWarning, match="weights hash"):
        second = run(handles, cdir)
    # pair 2 loaded layer 2 anyway: the cached pair 1 (1 -> 2) no longer fits and is recomputed;
    # pair 0 (0 -> 1) shares no loaded SAE and stays from the cache.
    assert [p["cached"] for p in second.stats["pairs"]] == [True, False, False]
    fresh = match_chain([pc.saes[0], pc.saes[1], other.saes[2], pc.saes[3]], cache=False,
                        progress=False)
    assert same_pairs(second, fresh)


def test_keys_follow_identity_and_options(cache_planted, tmp_path):
    a, b = cache_planted.saes[0], cache_planted.saes[1]
    ia, ib = identity(a), identity(b)
    assert ia != ib and ia == identity(a)
    assert ia.startswith("fp|") and a.fingerprint() in ia
    o = MatchOptions().key()
    # where and how fast a pair is computed is not part of its key; what decides the result is
    assert o == MatchOptions(fold=True, device="cuda", memory_budget=2**30).key()
    assert "device" not in o and "memory_budget" not in o
    assert pair_key(ia, ib, o) == pair_key(ia, ib, MatchOptions.of(solver="auto").key())
    assert pair_key(ia, ib, o) != pair_key(ia, ib, MatchOptions(params="decoder").key())
    assert pair_key(ia, ib, o) != pair_key(ib, ia, o)
    # the keys of the release before the options value: the same ten fields, so caches stay valid
    assert sorted(o) == sorted(["fold", "params", "method", "allow_unmatched", "solver", "alpha", "calibration",
                                "n_null", "seed", "bad_threshold"])
    arr = {**o, "weights": np.ones(3)}  # arrays in options are keyed by their content
    assert pair_key(ia, ib, arr) != pair_key(ia, ib, {**o, "weights": np.zeros(3)})
    # handles: the cache_key, no loading; paths: file identity, which changes with the file
    h = TestHandle(save_npz(a, tmp_path / "a.npz"), 0)
    PEAK.update(loads=0)
    assert identity(h) == f"key|{h.cache_key}" and PEAK["loads"] == 0
    pid = identity(tmp_path / "a.npz")
    assert pid.startswith("path|") and pid == identity(str(tmp_path / "a.npz"))
    st = os.stat(tmp_path / "a.npz")
    os.utime(tmp_path / "a.npz", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert identity(tmp_path / "a.npz") != pid
    # different options miss, same options hit
    cdir = tmp_path / "cache"
    run(cache_planted.saes[:2], cdir)
    assert run(cache_planted.saes[:2], cdir).stats["cache_hits"] == 1
    assert run(cache_planted.saes[:2], cdir, fold=False).stats["cache_hits"] == 0


def test_cache_location_and_switch(cache_planted, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)  # platformdirs would honour it
    monkeypatch.delenv(cache_mod.ENV_VAR, raising=False)
    assert MatchCache().dir == tmp_path / "home" / ".cache" / "saematch_nb"
    monkeypatch.setenv(cache_mod.ENV_VAR, str(tmp_path / "env"))
    assert MatchCache().dir == tmp_path / "env"
    ch = run(cache_planted.saes[:3], None)
    assert ch.stats["cache_dir"] == str(tmp_path / "env")
    assert len(list((tmp_path / "env").glob("*.npz"))) == 2
    assert MatchCache(tmp_path / "explicit").dir == tmp_path / "explicit"
    off = match_chain(cache_planted.saes[:3], cache=False, cache_dir=tmp_path / "off", progress=False)
    assert off.stats["cache_dir"] is None and not (tmp_path / "off").exists()
    assert MatchCache(tmp_path / "env").clear() == 2
    assert not list((tmp_path / "env").glob("*.npz"))


def test_no_warning_on_clean_rerun(cache_planted, tmp_path):
    cdir = tmp_path / "cache"
    run(cache_planted.saes, cdir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ch = run(cache_planted.saes, cdir)
    assert ch.stats["cache_hits"] == 4 and ch.stats["cache_rejected"] == 0


def test_real_sae_handles_from_load_saes(cache_planted, cache_reference, tmp_path):
    from saematch_nb.sources.saes import load_saes

    folders = []
    for t, w in enumerate(cache_planted.saes):
        f = tmp_path / f"layer_{t}"
        f.mkdir()
        save_npz(w, f / "params.npz")
        folders.append(f)
    handles = load_saes(folders)
    first = run(handles, tmp_path / "cache")
    assert first.layers == tuple(range(5)) and first.infos[2].path == str(folders[2])
    assert same_pairs(first, cache_reference)
    again = run(handles, tmp_path / "cache")
    assert again.stats["cache_hits"] == 4
    # an edited weights file is a new identity: its two pairs are recomputed
    save_npz(cache_planted.saes[2], folders[2] / "params.npz")
    st = os.stat(folders[2] / "params.npz")
    os.utime(folders[2] / "params.npz", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = run(load_saes(folders), tmp_path / "cache")
    assert [p["cached"] for p in third.stats["pairs"]] == [True, False, False, True]


def test_one_root_and_a_folder_per_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)  # platformdirs would honour it
    monkeypatch.delenv(cache_mod.ENV_VAR, raising=False)
    home_root = tmp_path / "home" / ".cache" / "saematch_nb"
    assert cache_mod.cache_root() == home_root
    monkeypatch.setenv(cache_mod.ENV_VAR, "")  # set but empty: as if unset
    assert cache_mod.cache_root() == home_root
    monkeypatch.setenv(cache_mod.ENV_VAR, "~/elsewhere")
    assert cache_mod.cache_root() == tmp_path / "home" / "elsewhere"
    root = cache_mod.cache_root()
    assert cache_mod.cache_folder("matches") == root
    for kind in ("activations", "examples", "neuronpedia"):
        assert cache_mod.cache_folder(kind) == root / kind
        # an explicit folder is the kind's folder itself, "~" expanded
        assert cache_mod.cache_folder(kind, "~/mine") == tmp_path / "home" / "mine"
    assert MatchCache().dir == cache_mod.cache_folder("matches")
    with pytest.raises(ValueError, match=r"unknown cache kind 'match'.*'matches'"):
        cache_mod.cache_folder("match")


def test_results_of_the_previous_criterion_are_recomputed(cache_planted, tmp_path, monkeypatch):
    """Issue #18: entries written by the previous criterion (cache version 2) are never read: the
    new criterion recomputes them, and its results say which criterion made them."""
    from saematch_nb.core import criterion as crit
    cdir = tmp_path / "c"
    real = cache_mod.CACHE_VERSION
    assert real >= 3 and crit.CRITERION_VERSION == 3  # bumped with the leave-one-out criterion
    monkeypatch.setattr(cache_mod, "CACHE_VERSION", 2)
    old = run(cache_planted.saes[:3], cdir)
    assert old.stats["computed"] == 2
    monkeypatch.setattr(cache_mod, "CACHE_VERSION", real)
    new = run(cache_planted.saes[:3], cdir)
    assert new.stats["cache_hits"] == 0 and new.stats["computed"] == 2
    assert run(cache_planted.saes[:3], cdir).stats["cache_hits"] == 2  # and the new entries are read
    assert all(p.calibration["version"] == crit.CRITERION_VERSION for p in new.pairs)
