"""MatchChain on planted chains with a known ground truth: traces, births/deaths, composition,
persistence, agreement with direct matches, save/load, lazy pairwise loading."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

import saematch_nb
from saematch_nb.core.chain import MatchChain
from saematch_nb.core.results import ResultMismatchError
from saematch_nb.core.runner import match_chain
from saematch_nb.core.synthetic import planted_chain
from saematch_nb.core.weights import SAEInfo
from tests.core._chains import PEAK, TestHandle, make_handles, save_npz, truth_lifetimes, truth_path


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted():
    return planted_chain(n_layers=5, n=128, d_in=32, fresh_fraction=0.1, seed=3)


@pytest.fixture(scope="module")
def chain(planted):
    return match_chain(planted.saes, cache=False, progress=False)


# -- tests -----------------------------------------------------------------------------------------
def test_exported_and_shapes(chain, planted):
    assert saematch_nb.match_chain is match_chain and saematch_nb.MatchChain is MatchChain
    assert chain.layers == (0, 1, 2, 3, 4)
    assert len(chain.pairs) == 4
    assert [i.sae_id for i in chain.infos] == [f"synthetic/layer_{t}" for t in range(5)]
    assert chain.pair(2) is chain.pairs[2]
    with pytest.raises(KeyError, match="last layer"):
        chain.pair(4)
    with pytest.raises(KeyError, match="not in this chain"):
        chain.pair(7)
    assert chain.options["fold"] is True and chain.options["method"] == "lap"
    assert "device" not in chain.options and "progress" not in chain.options
    assert chain.stats["computed"] == 4 and chain.stats["cache_hits"] == 0


def test_pairs_recover_planted_partners(chain, planted):
    for lm, truth in zip(chain.pairs, planted.truths):
        alive = truth >= 0
        assert np.mean(lm.partner[alive] == truth[alive]) >= 0.95
        # accepted exactly where the truth has a partner, up to the criterion's accuracy
        assert np.mean(lm.matched == alive) >= 0.95


def test_trace_matches_ground_truth_paths(chain, planted):
    agree = total = 0
    for s in range(5):
        for i in range(0, 128, 4):
            tr = chain.trace(s, i, accepted_only=True)
            agree += list(tr.features) == truth_path(planted.truths, s, i)
            total += 1
    assert agree / total >= 0.95


def test_trace_default_follows_partner_and_records_steps(chain):
    tr = chain.trace(2, 5)
    assert tr.origin_layer == 2 and tr.origin_feature == 5 and tr.features[2] == 5
    # bijective default: the walk reaches every layer, through rejected steps too
    assert all(f >= 0 for f in tr.features)
    assert [s.layer for s in tr.steps] == [0, 1, 2, 3]
    for s in tr.steps:
        lm = chain.pair(s.layer)
        assert tr.feature_at(s.layer) == s.feature and tr.feature_at(s.next_layer) == s.next_feature
        assert lm.partner[s.feature] == s.next_feature
        assert s.mse == pytest.approx(float(lm.mse[s.feature]))
        assert s.margin == pytest.approx(float(lm.margin[s.feature]))
        assert s.matched == bool(lm.matched[s.feature])
    df = tr.to_pandas()
    assert list(df.index) == [0, 1, 2, 3, 4] and pd.isna(df.loc[4, "next_feature"])
    assert str(df["next_feature"].dtype) == "Int64" and str(df["feature"].dtype) == "Int64"  # ids stay integers
    assert df.loc[0, "next_feature"] == tr.steps[0].next_feature


def test_born_and_dies_where_the_chain_replaces_features(chain, planted):
    tr_t = planted.truths
    # a feature of layer 0 whose planted partner at layer 1 is replaced at layer 2
    dying = [i for i in range(128) if tr_t[0][i] >= 0 and tr_t[1][tr_t[0][i]] < 0]
    assert dying
    ok = [chain.trace(0, i).dies_layer == 1 and chain.trace(0, i).born_layer is None for i in dying]
    assert np.mean(ok) >= 0.95
    # fresh features of layer 2 (no planted source at layer 1) are born there
    fresh = np.setdiff1d(np.arange(128), tr_t[1][tr_t[1] >= 0])
    assert len(fresh)
    assert np.mean([chain.trace(2, j).born_layer == 2 for j in fresh]) >= 0.95
    # a feature alive through the whole planted chain is neither born nor dies inside it
    full = [i for i in range(128) if all(f >= 0 for f in truth_path(tr_t, 0, i))]
    assert full
    assert np.mean([(lambda t: t.born_layer is None and t.dies_layer is None)(chain.trace(0, i))
                    for i in full]) >= 0.95


def test_trace_bad_input(chain):
    with pytest.raises(IndexError, match="out of range"):
        chain.trace(1, 128)
    with pytest.raises(KeyError):
        chain.trace(9, 0)


def test_compose_equals_composition_of_truths(chain, planted):
    for a, b in ((0, 2), (0, 4), (1, 3)):
        truth = np.arange(128)
        for t in range(a, b):
            truth = np.where(truth >= 0, planted.truths[t][np.maximum(truth, 0)], -1)
        comp = chain.compose(a, b)
        assert np.mean(comp == truth) >= 0.95
        # backward composition inverts the accepted forward one
        back = chain.compose(b, a)
        ok = comp >= 0
        assert np.array_equal(back[comp[ok]], np.flatnonzero(ok))
    assert np.array_equal(chain.compose(3, 3), np.arange(128))


def test_compose_raw_is_product_of_permutations(chain):
    p0, p1, p2 = (chain.pairs[t].permutation for t in range(3))
    assert np.array_equal(chain.compose(0, 3, raw=True), p2[p1[p0]])
    inv = np.argsort(p2[p1[p0]])
    assert np.array_equal(chain.compose(3, 0, raw=True), inv)
    # unraw composition breaks exactly where a step is rejected
    comp = chain.compose(0, 2)
    m0 = chain.pairs[0].matched
    m1 = chain.pairs[1].matched[p0]
    assert np.array_equal(comp >= 0, m0 & m1)
    with pytest.raises(ValueError):
        chain.compose(0, 2).__setitem__(0, 1)  # read-only result


def test_persistence_matches_truth_lifetimes(chain, planted):
    per = chain.persistence()
    truth = truth_lifetimes(planted.truths, 128)
    got = np.concatenate([per.loc[x, "lifetime"].to_numpy() for x in chain.layers])
    want = np.concatenate(truth)
    assert np.mean(got == want) >= 0.95
    assert per["survives"].equals(per["lifetime"] == 4 - per.index.get_level_values("layer"))
    dist = chain.persistence("layer")
    assert list(dist.index) == [0, 1, 2, 3, 4] and (dist.sum(axis=1) == 128).all()
    for s, x in enumerate(chain.layers):
        assert np.array_equal(dist.loc[x].to_numpy(), np.bincount(got[s * 128:(s + 1) * 128], minlength=5))
        assert dist.loc[x, 5 - s:].sum() == 0  # nobody outlives the chain
    frac = chain.persistence("layer", normalize=True)
    assert np.allclose(frac.sum(axis=1), 1.0)
    # ages are the lifetimes seen from the other end
    assert per.loc[0, "age"].eq(0).all() and (per.loc[4, "age"] <= 4).all()
    with pytest.raises(ValueError, match="feature' or 'layer"):
        chain.persistence("pair")


def test_agreement_with_direct_match_three_layers():
    pc = planted_chain(n_layers=3, n=128, d_in=32, fresh_fraction=0.1, noise=0.05, seed=11)
    ch = match_chain(pc.saes, cache=False, progress=False)
    direct = saematch_nb.match(pc.saes[0], pc.saes[2])
    got = ch.check_composition(0, 2, saes=pc.saes, cache=False)
    with pytest.raises(TypeError):  # the old (saes, layer_from, layer_to) form is gone
        ch.check_composition(pc.saes, 0, 2, cache=False)
    agr = ch.agreement(0, 2, direct)
    assert agr >= 0.95 and got == pytest.approx(agr)
    # raw permutations agree on the surviving features, not on the replaced ones
    raw = ch.agreement(0, 2, direct, raw=True)
    survivors = np.mean([truth_path(pc.truths, 0, i)[2] >= 0 for i in range(128)])
    assert raw >= 0.95 * survivors
    # a direct match of other SAEs is refused
    other = planted_chain(n_layers=3, n=128, d_in=32, seed=12)
    with pytest.raises(ResultMismatchError):
        ch.agreement(0, 2, saematch_nb.match(other.saes[0], other.saes[2]))
    small = planted_chain(n_layers=2, n=64, d_in=32, seed=1)
    with pytest.raises(ValueError, match="features"):
        ch.agreement(0, 2, saematch_nb.match(small.saes[0], small.saes[1]))


def test_tables(chain):
    s = chain.summary()
    assert len(s) == 4 and list(s["layer_a"]) == [0, 1, 2, 3] and list(s["layer_b"]) == [1, 2, 3, 4]
    assert (~s["cached"].astype(bool)).all()
    assert s["matched_fraction"].between(0.8, 1.0).all()
    df = chain.to_pandas()
    assert len(df) == 4 * 128 and {"partner", "mse", "margin", "matched", "next_layer"} <= set(df.columns)
    assert df.loc[(2, 7), "partner"] == chain.pairs[2].partner[7]


def test_save_load_roundtrip(chain, tmp_path):
    d = chain.save(tmp_path / "chain")
    assert (d / "chain.json").exists() and len(list(d.glob("pair_*.npz"))) == 4
    back = MatchChain.load(d)
    assert back.layers == chain.layers and back.infos == chain.infos
    for a, b in zip(back.pairs, chain.pairs):
        assert np.array_equal(a.partner, b.partner) and np.array_equal(a.mse, b.mse)
        assert np.array_equal(a.matched, b.matched)
    assert back.trace(1, 3).features == chain.trace(1, 3).features
    assert back.options == chain.options
    with pytest.raises(FileNotFoundError, match="chain.json"):
        MatchChain.load(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        chain.save(tmp_path / "file")


def test_bad_input():
    pc = planted_chain(n_layers=2, n=32, d_in=16, seed=0)
    with pytest.raises(ValueError, match="at least two"):
        match_chain(pc.saes[:1], cache=False, progress=False)
    with pytest.raises(TypeError, match="list of SAEs"):
        match_chain("layer_0.npz", cache=False, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        match_chain(["/nonexistent/a.npz", "/nonexistent/b.npz"], progress=False,
                    cache_dir="/tmp/unused_saematch_cache")
    with pytest.raises(TypeError, match="flod"):
        match_chain(pc.saes, cache=False, progress=False, flod=False)
    with pytest.raises(ValueError, match="at least one pair"):
        MatchChain(pairs=(), layers=(0,), infos=(SAEInfo(),))


def test_lazy_handles_are_loaded_pairwise(tmp_path):
    pc = planted_chain(n_layers=6, n=64, d_in=32, seed=5)
    handles = make_handles(pc.saes, tmp_path / "saes")
    del pc
    PEAK.update(live=0, loads=0)
    ch = match_chain(handles, cache=False, progress=False)
    assert PEAK["loads"] == 6  # each SAE loaded once
    assert PEAK["live"] <= 2  # never more than the two SAEs of one pair alive at once
    one = 2 * 64 * 32 * 4 + 64 * 4 * 2 + 32 * 4
    assert ch.stats["max_saes_held"] == 2 and ch.stats["peak_held_weights_bytes"] == 2 * one
    assert ch.layers == tuple(range(6)) and ch.infos[3] == handles[3].info
    assert ch.stats["rss_peak_after_bytes"] >= ch.stats["rss_peak_before_bytes"] > 0


def test_mapping_and_paths(tmp_path):
    pc = planted_chain(n_layers=3, n=64, d_in=32, seed=6)
    paths = [save_npz(w, tmp_path / f"l{t}.npz") for t, w in enumerate(pc.saes)]
    by_path = match_chain({10: paths[0], 12: paths[1], 14: paths[2]}, cache=False, progress=False)
    direct = match_chain(pc.saes, cache=False, progress=False)
    assert by_path.layers == (10, 12, 14)
    assert by_path.pair(12).n_a == 64
    for a, b in zip(by_path.pairs, direct.pairs):
        assert np.array_equal(a.partner, b.partner)
    # npz files carry no layer: a plain list of paths falls back to positions
    assert match_chain(paths, cache=False, progress=False).layers == (0, 1, 2)


def test_partial_and_many_to_one_chains(planted):
    partial = match_chain(planted.saes, cache=False, progress=False, allow_unmatched=True)
    assert partial.options["allow_unmatched"] is True
    for lm, truth in zip(partial.pairs, planted.truths):
        assert np.mean((lm.partner >= 0) == (truth >= 0)) >= 0.95
    # the walk stops at a missing partner: nothing beyond it
    i = next(i for i in range(128) if partial.pairs[0].partner[i] >= 0
             and partial.pairs[1].partner[partial.pairs[0].partner[i]] < 0)
    tr = partial.trace(0, i)
    assert tr.features[2:] == (-1, -1, -1) and tr.dies_layer == 1 and len(tr.steps) == 2
    assert tr.steps[-1].next_feature == -1 and not tr.steps[-1].matched
    assert partial.compose(0, 2)[i] == -1
    cos = match_chain(planted.saes[:3], cache=False, progress=False, method="cosine")
    # many-to-one: backward steps pick one source per target, and they are true sources
    back = cos.compose(2, 0)
    fwd = cos.compose(0, 2)
    ok = back >= 0
    assert ok.any() and np.array_equal(fwd[back[ok]], np.flatnonzero(ok))


@dataclass(frozen=True)
class KeylessHandle:
    """A handle with to_weights() but no cache_key: still loaded lazily, fingerprinted for the cache."""

    inner: TestHandle

    def to_weights(self):
        return self.inner.to_weights()


def test_handles_without_cache_key_stay_lazy(tmp_path):
    pc = planted_chain(n_layers=4, n=64, d_in=32, seed=8)
    handles = [KeylessHandle(h) for h in make_handles(pc.saes, tmp_path / "saes")]
    del pc
    PEAK.update(live=0, loads=0)
    ch = match_chain(handles, cache_dir=tmp_path / "cache", progress=False)
    assert PEAK["live"] <= 2  # fingerprinting and matching both one or two at a time
    assert PEAK["loads"] == 4 + 4  # once to fingerprint, once to match
    assert match_chain(handles, cache_dir=tmp_path / "cache", progress=False).stats["cache_hits"] == 3
    assert ch.stats["max_saes_held"] == 2


# -- issue 22 item 16: a generator of SAEs is read once --------------------------------------------------
def test_match_chain_and_attach_take_a_generator(tmp_path):
    pc = planted_chain(n_layers=3, n=32, d_in=16, seed=2)
    want = match_chain(pc.saes, cache=False, progress=False)
    got = match_chain((w for w in pc.saes), cache=False, progress=False)
    assert got.layers == want.layers and len(got.pairs) == 2
    for a, b in zip(got.pairs, want.pairs):
        assert np.array_equal(a.partner, b.partner)
    back = MatchChain.load(got.save(tmp_path / "c"), saes=(w for w in pc.saes))
    assert back.stack is not None and back.fingerprints == want.fingerprints
    with pytest.raises(ValueError, match="at least two SAEs, got 1"):
        match_chain((w for w in pc.saes[:1]), cache=False, progress=False)


# -- issue 22 item 1: MatchChain.save is atomic for the whole folder, load checks the pair files ------
import json  # noqa: E402
import os  # noqa: E402

from saematch_nb.core.results import LayerMatch, ResultFileError  # noqa: E402


@pytest.fixture(scope="module")
def two_chains():
    """Two chains of the same SAEs and widths with other matches (other options): pair files of one
    fit the other's shapes, so only their identity tells them apart."""
    pc = planted_chain(n_layers=3, n=48, d_in=16, fresh_fraction=0.2, seed=21)
    a = match_chain(pc.saes, cache=False, progress=False)
    b = match_chain(pc.saes, cache=False, progress=False, fold=False, params="decoder")
    other = match_chain(planted_chain(n_layers=3, n=48, d_in=16, seed=22).saes, cache=False, progress=False)
    assert not np.array_equal(a.pairs[0].permutation, b.pairs[0].permutation)
    return a, b, other


def _same(x: MatchChain, y: MatchChain) -> bool:
    return x.layers == y.layers and all(np.array_equal(p.permutation, q.permutation) and p.options == q.options
                                        for p, q in zip(x.pairs, y.pairs))


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_an_interrupted_save_leaves_the_old_chain_whole(two_chains, tmp_path, monkeypatch):
    a, b, _ = two_chains
    d = a.save(tmp_path / "chain")
    real_save = LayerMatch.save
    calls = []

    def interrupted(self, path):  # Ctrl-C while the second pair file is written
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_save(self, path)

    monkeypatch.setattr(LayerMatch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        b.save(d)
    monkeypatch.undo()
    assert _same(MatchChain.load(d), a) and _hidden(tmp_path) == []
    # interrupted between the renames that swap the folders: the old chain is put back
    real_rename = os.rename

    def rename(src, dst):
        if str(dst) == str(d) and ".saving-" in str(src):
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        b.save(d)
    monkeypatch.undo()
    assert _same(MatchChain.load(d), a) and _hidden(tmp_path) == []
    assert _same(MatchChain.load(b.save(d)), b) and _hidden(tmp_path) == []


def test_a_chain_moved_aside_by_a_killed_save_is_pointed_to_and_cleaned_up(two_chains, tmp_path):
    a, b, _ = two_chains
    d = a.save(tmp_path / "chain")
    aside = tmp_path / ".chain.old-99999999-0000"  # a save killed between its two renames
    os.rename(d, aside)
    with pytest.raises(FileNotFoundError, match=r"\.chain\.old-99999999-0000 holds the chain an interrupted "
                                                r"MatchChain\.save moved aside: rename it"):
        MatchChain.load(d)
    (tmp_path / ".chain.saving-99999999-0001").mkdir()  # a save killed while writing
    b.save(d)
    assert _same(MatchChain.load(d), b) and _hidden(tmp_path) == []


def test_save_never_deletes_other_files(two_chains, tmp_path):
    a, _, _ = two_chains
    d = tmp_path / "results"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds files MatchChain.save did not write \(notes.txt\)"):
        a.save(d)
    assert (d / "notes.txt").read_text() == "mine" and sorted(os.listdir(d)) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _same(MatchChain.load(a.save(empty)), a)


def _edit(d, **fields):
    f = d / "chain.json"
    meta = json.loads(f.read_text())
    for k, v in fields.items():
        if v is _DROP:
            meta.pop(k, None)
        else:
            meta[k] = v(meta[k]) if callable(v) else v
    f.write_text(json.dumps(meta))


_DROP = object()
_LEGACY = dict(pairs=_DROP, fingerprints=_DROP, digest=_DROP)  # chain.json as saved before issue 22


@pytest.mark.parametrize("legacy", [False, True], ids=["checksums", "older chain.json"])
def test_load_refuses_pair_files_of_another_chain_or_swapped(two_chains, tmp_path, legacy):
    a, b, other = two_chains
    src = other.save(tmp_path / "other")
    d = a.save(tmp_path / "a")
    if legacy:
        _edit(d, **_LEGACY)
    (d / "pair_001.npz").write_bytes((src / "pair_001.npz").read_bytes())  # same widths, other SAEs
    with pytest.raises(ResultFileError, match="pair_001.npz") as ei:
        MatchChain.load(d)
    assert "another chain" in str(ei.value) and "save the chain again" in str(ei.value)

    d = a.save(tmp_path / "a")  # swapped pair files
    if legacy:
        _edit(d, **_LEGACY)
    os.rename(d / "pair_000.npz", d / "x")
    os.rename(d / "pair_001.npz", d / "pair_000.npz")
    os.rename(d / "x", d / "pair_001.npz")
    with pytest.raises(ResultFileError, match="pair_00[01].npz"):
        MatchChain.load(d)


def test_load_refuses_a_pair_file_of_the_same_saes_with_other_options(two_chains, tmp_path):
    """What an interrupted save over an existing folder left before issue 22: a new pair 0 next to
    the old pair 1 (same SAEs, so the weights hashes agree)."""
    a, b, _ = two_chains
    src = b.save(tmp_path / "b")
    d = a.save(tmp_path / "a")
    (d / "pair_000.npz").write_bytes((src / "pair_000.npz").read_bytes())
    with pytest.raises(ResultFileError, match=r"pair_000.npz is not the pair file this chain saved"):
        MatchChain.load(d)


def test_load_refuses_an_edited_layer_list(two_chains, tmp_path):
    a, _, _ = two_chains
    d = a.save(tmp_path / "a")
    _edit(d, layers=[0, 1, 3])
    with pytest.raises(ResultFileError, match=r"chain.json was edited: its layers"):
        MatchChain.load(d)


# -- issue 22 item 16: a damaged chain.json is one error naming the file and the field -----------------
@pytest.mark.parametrize("field_, value, says", [
    ("files", _DROP, "'files' is missing"),
    ("files", 3, "'files' must be a list, got int"),
    ("files", ["pair_000.npz"], "'files' must name 2 pair files for 3 layers"),
    ("files", ["../../elsewhere.npz", "pair_001.npz"], "'files' must hold pair file names"),
    ("files", [7, "pair_001.npz"], "'files' must hold pair file names"),
    ("layers", _DROP, "'layers' is missing"),
    ("layers", ["0", "1", "2"], "'layers' must hold integers"),
    ("layers", [0, 1, 1], "'layers' must hold at least two distinct layers"),
    ("infos", "x", "'infos' must be a list, got str"),
    ("infos", [1, 2, 3], "'infos' must hold objects, got int"),
    ("infos", lambda v: [{**v[0], "layer": "zero"}, *v[1:]], "'infos' has layer='zero'"),
    ("infos", lambda v: v[:2], "'infos' must hold one entry per layer"),
    ("options", [1], "'options' must be an object"),
    ("stats", "fast", "'stats' must be an object"),
    ("pairs", [{"file": "pair_000.npz"}], "'pairs' must hold one {file, sha256} per pair file"),
    ("fingerprints", [1, 2, 3], "'fingerprints' must hold one weights hash"),
])
def test_a_damaged_chain_json_names_the_file_and_the_field(two_chains, tmp_path, field_, value, says):
    a, _, _ = two_chains
    d = a.save(tmp_path / "a")
    _edit(d, **{field_: value, "digest": _DROP})
    with pytest.raises(ResultFileError) as ei:
        MatchChain.load(d)
    msg = str(ei.value)
    assert str(d / "chain.json") in msg and says in msg and "save the chain again" in msg, msg


def test_a_missing_pair_file_names_it(two_chains, tmp_path):
    a, _, _ = two_chains
    d = a.save(tmp_path / "a")
    (d / "pair_001.npz").unlink()
    with pytest.raises(ResultFileError, match=r"lists the pair file pair_001.npz, but .*pair_001.npz is missing"):
        MatchChain.load(d)
