"""Hostile inputs and faults through the core API (issue #11): the cache never crashes a run and
never returns a result it cannot vouch for, saved results are checked on load, bad arguments are
clear errors. Each test says which defect of the issue it guards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import saematch_nb as smn
from saematch_nb.core import chain as chain_mod
from saematch_nb.core import pair as pair_mod
from saematch_nb.core.cache import CacheWarning, MatchCache
from saematch_nb.core.chain import MatchChain
from saematch_nb.core.runner import match_chain
from saematch_nb.core.fold import fold
from saematch_nb.core.results import FORMAT_VERSION, LayerMatch, ResultFileError
from saematch_nb.core.synthetic import planted_chain
from saematch_nb.core.weights import SAEWeights, as_weights
from tests._faults import as_unprivileged, blocked_folder, home_is_a_file, unwritable_warning
from tests.core._chains import make_handles, run, same_pairs

ROOT = Path(__file__).resolve().parents[2]


def cache_warnings(rec) -> list[str]:
    return [str(w.message) for w in rec if issubclass(w.category, CacheWarning)]


def rewrite_meta(path: Path, **changes) -> None:
    """Re-save a LayerMatch file with some metadata fields changed (a forged or foreign file)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(bytes(arrays.pop("meta")).decode())
    for k, v in changes.items():
        if isinstance(v, dict) and isinstance(meta.get(k), dict):
            meta[k] = {**meta[k], **v}
        else:
            meta[k] = v
    np.savez(path, **arrays, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))


# -- defect 1: an unwritable cache never crashes a run --------------------------------------------
def test_unwritable_cache_folder_warns_and_the_chain_completes(cache_planted, cache_reference, tmp_path):
    folder = blocked_folder(tmp_path)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = run(cache_planted.saes, folder)
    assert same_pairs(got, cache_reference) and got.stats["computed"] == 4
    unwritable_warning(rec, folder)


def test_unwritable_default_cache_location(cache_planted, cache_reference, tmp_path, monkeypatch):
    home = home_is_a_file(tmp_path, monkeypatch)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = run(cache_planted.saes, None)
    assert same_pairs(got, cache_reference)
    unwritable_warning(rec, home / ".cache" / "saematch_nb")


def _chains_in(saes, base):
    """Two chains with read-only caches: an explicit cache_dir, and ~/.cache/saematch_nb."""
    os.environ.pop("SAEMATCH_CACHE_DIR", None)  # in the child of as_unprivileged (or a monkeypatched env)
    os.environ["HOME"] = str(base / "home")
    a = match_chain(saes, cache_dir=base / "cache", progress=False)
    b = match_chain(saes, progress=False)  # ~/.cache/saematch_nb
    return [[lm.partner for lm in c.pairs] for c in (a, b)]


def _warm_chain(saes, base):
    match_chain(saes, cache=False, progress=False)  # imports and kernels, before the rights go


def test_read_only_cache_as_an_unprivileged_user(cache_planted, cache_reference, monkeypatch):
    """Real permissions: as this user when it is not root, else as nobody (root ignores them)."""
    base = Path(tempfile.mkdtemp(prefix="smn_ro_", dir="/tmp"))
    # not root, _chains_in runs in this process: its environment changes are undone after the test
    monkeypatch.setenv("HOME", os.environ.get("HOME", "/"))
    monkeypatch.delenv("SAEMATCH_CACHE_DIR", raising=False)
    try:
        (base / "cache").mkdir()
        (base / "home").mkdir()
        for p in (base, base / "cache", base / "home"):
            p.chmod(0o555)  # readable, not writable (and owned by root when run as root)
        got, rec = as_unprivileged(_chains_in, cache_planted.saes, base, prepare=_warm_chain)
        want = [lm.partner for lm in cache_reference.pairs]
        assert all(np.array_equal(x, y) for g in got for x, y in zip(g, want))
        cw = [w for w in rec if issubclass(w.category, CacheWarning)]
        assert len(cw) == 2 and all("Permission" in str(w.message) for w in cw)
        unwritable_warning(cw[:1], base / "cache")
        unwritable_warning(cw[1:], base / "home" / ".cache" / "saematch_nb")
        assert not list((base / "cache").iterdir()) and not list((base / "home").iterdir())
    finally:
        for p in (base, base / "cache", base / "home"):
            p.chmod(0o755)
        shutil.rmtree(base)


def test_a_failed_write_leaves_no_temp_file(cache_planted, cache_reference, tmp_path, monkeypatch):
    def full_disk(fh, **arrays):
        fh.write(b"PK\x03\x04 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.warns(CacheWarning, match="No space left"):
        got = run(cache_planted.saes, tmp_path)
    monkeypatch.undo()
    assert same_pairs(got, cache_reference)
    assert list(tmp_path.iterdir()) == []  # neither results nor temp files


def test_resume_note_does_not_claim_an_unwritable_cache(cache_planted, tmp_path):
    broken = make_handles(cache_planted.saes, tmp_path / "saes")
    broken[3] = replace(broken[3], fail=True)
    with pytest.warns(CacheWarning), pytest.raises(RuntimeError, match="simulated crash") as ei:
        run(broken, blocked_folder(tmp_path))
    note = " ".join(getattr(ei.value, "__notes__", []))
    assert "not cached" in note and "could not be written" in note


# -- defect 5: a cache entry must fit the SAEs at hand -----------------------------------------------
def test_directory_at_a_cache_path_does_not_crash(cache_planted, cache_reference, tmp_path):
    first = run(cache_planted.saes, tmp_path)
    p = MatchCache(tmp_path).path(first.pairs[1].stats["cache_key"])
    p.unlink()
    p.mkdir()
    (p / "user_file").write_text("keep me")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = run(cache_planted.saes, tmp_path)
    assert same_pairs(got, cache_reference) and got.stats["computed"] == 1
    msgs = cache_warnings(rec)
    assert any("is a folder" in m for m in msgs)
    assert (p / "user_file").read_text() == "keep me"  # a user's folder is never deleted


def test_clear_removes_temp_files_left_by_a_kill(cache_planted, tmp_path):
    first = run(cache_planted.saes, tmp_path)
    store = MatchCache(tmp_path)
    key = first.pairs[0].stats["cache_key"]
    for pid in (4242, 4343):  # what a process killed inside LayerMatch.save leaves behind
        (tmp_path / f".{key}.npz.{pid}.tmp").write_bytes(b"PK partial")
    (tmp_path / "notes.txt").write_text("not ours")
    assert store.clear() == 4 + 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_file_for_other_saes_under_the_right_key_is_recomputed(cache_planted, cache_reference, tmp_path):
    """In-memory SAEs: the stored fingerprints are checked against the SAEs' own."""
    first = run(cache_planted.saes, tmp_path)
    store = MatchCache(tmp_path)
    k1, k2 = (first.pairs[t].stats["cache_key"] for t in (1, 2))
    shutil.copy(store.path(k2), store.path(k1))  # pair 2's result posing as pair 1's
    rewrite_meta(store.path(k1), stats={"cache_key": k1})
    with pytest.warns(CacheWarning, match="fingerprint_a"):
        got = run(cache_planted.saes, tmp_path)
    assert same_pairs(got, cache_reference) and got.stats["computed"] == 1
    assert LayerMatch.load(store.path(k1)).fingerprint_a == cache_reference.pairs[1].fingerprint_a  # overwritten


@pytest.mark.parametrize("forgery", ["other_width", "other_saes"])
def test_forged_entries_of_lazy_handles_are_recomputed(cache_planted, cache_reference, tmp_path, forgery):
    """Handles are keyed by name: nothing is known of their weights before loading, but two
    cached neighbours must agree about the SAE they share."""
    handles = make_handles(cache_planted.saes, tmp_path / "saes")
    first = run(handles, tmp_path / "cache")
    store = MatchCache(tmp_path / "cache")
    k1 = first.pairs[1].stats["cache_key"]
    other = planted_chain(n_layers=3, n=32 if forgery == "other_width" else 64, d_in=32, seed=99)
    alien = match_chain(other.saes, cache=False, progress=False).pairs[0]
    store.put(k1, alien)
    with pytest.warns(CacheWarning, match="recomputing cached pairs"):
        got = run(handles, tmp_path / "cache")
    assert same_pairs(got, cache_reference)
    got.trace(2, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert same_pairs(run(handles, tmp_path / "cache"), cache_reference)  # rewritten: clean again


def test_out_of_range_indices_are_rejected_on_load(cache_planted, cache_reference, tmp_path):
    first = run(cache_planted.saes, tmp_path)
    store = MatchCache(tmp_path)
    k = first.pairs[2].stats["cache_key"]
    lm = LayerMatch.load(store.path(k))
    bad = replace(lm, partner=np.where(np.arange(lm.n_a) == 3, lm.n_b + 7, lm.partner))
    bad.save(store.path(k))
    with pytest.raises(ResultFileError, match=r"partner holds indices outside -1 \.\. 63"):
        LayerMatch.load(store.path(k))
    with pytest.warns(CacheWarning, match="outside"):
        got = run(cache_planted.saes, tmp_path)
    assert same_pairs(got, cache_reference)
    got.trace(2, 3)


# -- defect 12: format versions and damaged files ---------------------------------------------------
@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, FORMAT_VERSION - 1, None])
def test_a_layer_match_of_another_format_version_is_refused(cache_reference, tmp_path, version):
    p = cache_reference.pairs[0].save(tmp_path / "pair.npz")
    rewrite_meta(p, format_version=version)
    with pytest.raises(ResultFileError, match="another saematch_nb version") as ei:
        LayerMatch.load(p)
    assert str(p) in str(ei.value) and "recompute" in str(ei.value)


def test_a_chain_of_another_format_version_is_refused(cache_reference, tmp_path):
    d = cache_reference.save(tmp_path / "chain")
    meta = json.loads((d / "chain.json").read_text())
    (d / "chain.json").write_text(json.dumps({**meta, "format_version": chain_mod.FORMAT_VERSION + 1}))
    with pytest.raises(ResultFileError, match="another saematch_nb version") as ei:
        MatchChain.load(d)
    assert str(d / "chain.json") in str(ei.value)


def test_a_cache_file_of_another_version_is_recomputed(cache_planted, cache_reference, tmp_path):
    first = run(cache_planted.saes, tmp_path)
    p = MatchCache(tmp_path).path(first.pairs[0].stats["cache_key"])
    rewrite_meta(p, format_version=FORMAT_VERSION + 1)
    with pytest.warns(CacheWarning, match="it is stale .*another saematch_nb version"):
        got = run(cache_planted.saes, tmp_path)
    assert same_pairs(got, cache_reference) and got.stats["computed"] == 1
    assert LayerMatch.load(p).n_a == 64  # rewritten in this version's format


def test_truncated_files_name_the_file(cache_reference, tmp_path):
    p = cache_reference.pairs[0].save(tmp_path / "pair.npz")
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ResultFileError, match="damaged or truncated") as ei:
        LayerMatch.load(p)
    assert str(p) in str(ei.value)
    d = cache_reference.save(tmp_path / "chain")
    victim = d / "pair_001.npz"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(ResultFileError) as ei:
        MatchChain.load(d)
    assert str(victim) in str(ei.value)
    (d / "chain.json").write_text('{"kind": "MatchCh')
    with pytest.raises(ResultFileError, match="chain.json"):
        MatchChain.load(d)
    with pytest.raises(FileNotFoundError, match="is a folder"):
        LayerMatch.load(d)


# -- defect 13: layers and features are integers ------------------------------------------------------
def test_trace_rejects_non_integer_layers_and_features(cache_reference):
    with pytest.raises(TypeError, match="layer must be an integer, got 1.9"):
        cache_reference.trace(1.9, 5.7)
    with pytest.raises(TypeError, match="feature must be an integer, got 5.7"):
        cache_reference.trace(1, 5.7)
    with pytest.raises(TypeError, match="layer"):
        cache_reference.compose(0.0, 2)
    with pytest.raises(TypeError, match="layer"):
        cache_reference.pair(True)
    a = cache_reference.trace(np.int64(1), np.int32(5))
    assert a.features == cache_reference.trace(1, 5).features and a.origin_layer == 1


# -- defect 4: Python 3.10 has no BaseException.add_note ----------------------------------------------
class _NoNotes(RuntimeError):
    """An exception as on Python 3.10: no add_note."""

    def __getattribute__(self, name):
        if name == "add_note":
            raise AttributeError(name)
        return super().__getattribute__(name)


def test_a_failing_pair_raises_its_own_error_without_add_note(cache_planted, monkeypatch):
    def broken(*a, **kw):
        raise _NoNotes("the real error")

    monkeypatch.setattr(pair_mod, "_resolve", lambda target: broken)
    with pytest.warns(RuntimeWarning, match="pair 0 failed"), pytest.raises(_NoNotes, match="the real error") as ei:
        match_chain(cache_planted.saes, cache=False, progress=False)
    assert "pair 0 failed" in ei.value.__notes__[0]


# -- defect 11: an empty SAE is rejected where SAEs enter --------------------------------------------
def test_an_empty_sae_is_a_clear_error(cache_planted):
    empty = {"W_enc": np.zeros((8, 0)), "b_enc": np.zeros(0), "W_dec": np.zeros((0, 8)), "b_dec": np.zeros(8),
             "threshold": np.zeros(0)}
    with pytest.raises(ValueError, match=r"empty \(d_in=8, d_sae=0\)"):
        as_weights(empty)
    with pytest.raises(ValueError, match="empty"):
        smn.match(empty, empty)
    with pytest.raises(ValueError, match=r"empty \(d_in=0, d_sae=4\)"):
        SAEWeights(W_enc=torch.zeros(0, 4), b_enc=torch.zeros(4), W_dec=torch.zeros(4, 0), b_dec=torch.zeros(0),
                   threshold=torch.ones(4))

    class Module:  # a sae-lens-like object without features
        W_enc, b_enc, W_dec, b_dec = torch.zeros(8, 0), torch.zeros(0), torch.zeros(0, 8), torch.zeros(8)
        threshold = torch.zeros(0)

    with pytest.raises(ValueError, match="at least one feature"):
        fold(Module())


# -- defect 10: folding must not overflow the SAE's dtype ---------------------------------------------
def test_folding_a_float16_sae_with_tiny_thresholds_is_a_clear_error(cache_planted):
    w = cache_planted.saes[0]
    thr = w.threshold.clone()
    thr[[3, 17]] = 1e-6  # W_enc / θ overflows float16 (max 65504)
    half = replace(w, W_enc=w.W_enc.half(), b_enc=w.b_enc.half(), W_dec=w.W_dec.half(), b_dec=w.b_dec.half(),
                   threshold=thr.half())
    with pytest.raises(ValueError, match=r"overflows float16 for 2 feature\(s\) \(indices 3, 17.*float32"):
        fold(half)
    with pytest.raises(ValueError, match="overflows float16"):
        smn.match(half, cache_planted.saes[1])
    ok = fold(replace(w, threshold=thr))  # float32 holds it
    assert all(bool(torch.isfinite(t).all()) for t in (ok.W_enc, ok.b_enc, ok.W_dec))
    small = replace(half, threshold=w.threshold.half())
    assert bool(torch.isfinite(fold(small).W_enc).all())  # ordinary θ fold fine in float16


# -- held: kill -9 mid-chain and two chains at once on one cache --------------------------------------
_SCRIPT = textwrap.dedent("""
    import sys, time
    from saematch_nb.core import pair as pair_mod
    from saematch_nb.core.runner import match_chain
    from saematch_nb.core.match import match

    def slow(a, b, **kw):  # long enough to be killed between two pairs, or in the middle of one
        # the options come as keywords, as match takes them: the same cache keys as match itself
        time.sleep(float(sys.argv[2]))
        return match(a, b, **kw)

    pair_mod.MATCHER = "__main__:slow"
    c = match_chain(sys.argv[3:], cache_dir=sys.argv[1], progress=False)
    print("done", c.stats["cache_hits"], c.stats["computed"], flush=True)
""")


def _spawn(tmp_path, cache, delay, paths):
    script = tmp_path / "chain_job.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(script), str(cache), str(delay), *map(str, paths)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _saved(cache_planted, folder):
    return [h.path for h in make_handles(cache_planted.saes, folder)]


def test_kill_9_mid_chain_loses_no_finished_pair(cache_planted, cache_reference, tmp_path):
    paths = _saved(cache_planted, tmp_path / "saes")
    cache = tmp_path / "cache"
    proc = _spawn(tmp_path, cache, 0.4, paths)
    try:
        deadline = time.monotonic() + 120
        while len(list(cache.glob("*.npz"))) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the chain made no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = len(list(cache.glob("*.npz")))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # every file there is whole
        got = run(paths, cache)
    assert got.stats["cache_hits"] == done >= 2 and got.stats["computed"] == 4 - done
    assert same_pairs(got, cache_reference)
    MatchCache(cache).clear()
    assert list(cache.iterdir()) == []


def test_two_chains_at_once_on_one_cache(cache_planted, cache_reference, tmp_path):
    paths = _saved(cache_planted, tmp_path / "saes")
    cache = tmp_path / "cache"
    procs = [_spawn(tmp_path, cache, 0.05, paths) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.startswith("done"), err[-2000:]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        got = run(paths, cache)
    assert got.stats["cache_hits"] == 4 and same_pairs(got, cache_reference)
    assert not list(cache.glob(".*tmp"))
