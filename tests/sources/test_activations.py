"""collect_activations: rows = the model's residuals (BOS excluded), disk cache reuse, atomic writes."""

import sys
import types

import numpy as np
import pytest
import torch

from saematch_nb.sources.activations import (DEFAULT_DATASET_DOCS, ActivationError, Activations, collect_activations,
                                              tokenize)
from tests import _saelens_doubles as fx

TEXTS = ["The cat sat on the mat.", "Numbers: 1, 2, 3 and <b>bold</b> & more", "short one"]


@pytest.fixture(scope="module")
def model():
    return fx.tiny_gemma2_model(seed=0, n_layers=3, d_model=32)


def test_rows_are_the_residuals_without_bos(model, tmp_path):
    acts = collect_activations(model, TEXTS, [0, 2], cache_dir=tmp_path, batch_size=2, progress=False)
    lengths = [model.to_tokens(t).shape[1] for t in TEXTS]
    assert acts.n_tokens == sum(n - 1 for n in lengths)
    assert 0 not in set(acts.pos.tolist())
    for d, text in enumerate(TEXTS):
        _, cache = model.run_with_cache(model.to_tokens(text))
        rows = np.flatnonzero(acts.doc == d)
        for L in (0, 2):
            want = cache[f"blocks.{L}.hook_resid_post"][0, 1:].numpy()
            np.testing.assert_allclose(acts[L][rows], want, rtol=1e-4, atol=1e-5)
        assert acts.token_ids[rows].tolist() == model.to_tokens(text)[0, 1:].tolist()
    assert "".join(acts.token_str(t) for t in acts.doc_tokens(0)[1:]) == TEXTS[0]
    assert not acts[0].flags.writeable
    assert "tokens=" in repr(acts)
    with pytest.raises(KeyError, match="not collected"):
        acts[1]


def test_cache_reuse_and_keying(model, tmp_path):
    a = collect_activations(model, TEXTS, [1], cache_dir=tmp_path, progress=False)
    b = collect_activations(model, TEXTS, [1], cache_dir=tmp_path, progress=False)
    assert a.stats["cached"] is False and b.stats["cached"] is True
    assert a.path == b.path
    np.testing.assert_array_equal(a[1], b[1])
    c = collect_activations(model, TEXTS, [1], cache_dir=tmp_path, dtype="float16", progress=False)
    assert c.path != a.path and c[1].dtype == np.float16 and c.stats["cached"] is False
    d = collect_activations(model, TEXTS[:2], [1], cache_dir=tmp_path, progress=False)
    assert d.path != a.path
    e = Activations.load(a.path)
    np.testing.assert_array_equal(e[1], a[1])
    assert e.to_pandas().token.tolist() == a.to_pandas().token.tolist()


def test_failure_midway_leaves_no_cache(model, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = model.run_with_cache

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real(*args, **kw)

    monkeypatch.setattr(model, "run_with_cache", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        collect_activations(model, TEXTS, [0], cache_dir=tmp_path, batch_size=1, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither a final entry nor a temporary folder
    monkeypatch.undo()
    ok = collect_activations(model, TEXTS, [0], cache_dir=tmp_path, batch_size=1, progress=False)
    assert ok.stats["cached"] is False


def test_bad_inputs_are_explained(model, tmp_path):
    with pytest.raises(ActivationError, match="out of range"):
        collect_activations(model, TEXTS, [7], cache_dir=tmp_path, progress=False)
    with pytest.raises(ActivationError, match="empty"):
        collect_activations(model, [], [0], cache_dir=tmp_path, progress=False)
    with pytest.raises(ActivationError, match="offline"):
        collect_activations(model, "monology/pile-uncopyrighted", [0], cache_dir=tmp_path, progress=False)
    with pytest.raises(ActivationError, match="outside"):
        collect_activations(model, [[1, 2, 10**6]], [0], cache_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_token_ids_and_max_tokens(model, tmp_path):
    ids = [list(range(2, 30)), torch.arange(5, 20)]
    acts = collect_activations(model, ids, [0], cache_dir=tmp_path, max_tokens=30, progress=False)
    assert acts.n_tokens == 30
    assert acts.token_ids[:27].tolist() == list(range(3, 30))  # first id of a doc is its BOS
    assert acts.n_docs == 2 and (acts.doc == 1).sum() == 3


# -- Hugging Face dataset input (never the network: `datasets` is replaced or hidden) ---------------
class _FakeDatasets(types.ModuleType):
    """Stands in for `datasets`: load_dataset streams an endless train split (or raises)."""

    def __init__(self, error=None):
        super().__init__("datasets")
        self.calls, self.rows_read, self.error = [], 0, error

    def load_dataset(self, name, split=None, streaming=False):
        self.calls.append((name, split, streaming))
        if self.error is not None:
            raise self.error

        def rows():
            i = 0
            while True:
                self.rows_read += 1
                yield {"id": i, "text": f"Document number {i} of {name}."}
                i += 1
        return rows()


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)


def test_dataset_name_streams_max_docs(model, tmp_path, monkeypatch, online):
    fake = _FakeDatasets()
    monkeypatch.setitem(sys.modules, "datasets", fake)
    acts = collect_activations(model, "org/corpus", [0], max_docs=3, cache_dir=tmp_path, progress=False)
    assert acts.n_docs == 3 and fake.calls == [("org/corpus", "train", True)] and fake.rows_read == 3
    assert "".join(acts.token_str(t) for t in acts.doc_tokens(2)[1:]) == "Document number 2 of org/corpus."
    # the (name, n) form, and the default of 100 documents
    assert len(tokenize(model, ("org/corpus", 5))) == 5
    assert len(tokenize(model, "org/corpus")) == DEFAULT_DATASET_DOCS == 100
    assert len(tokenize(model, TEXTS, max_docs=2)) == 2  # a list is cut too
    with pytest.raises(ActivationError, match="max_docs"):
        tokenize(model, "org/corpus", max_docs=0)


def test_dataset_without_the_datasets_package(model, monkeypatch, online):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ActivationError, match=r"`datasets` package is not installed; pip install datasets"):
        collect_activations(model, "org/corpus", [0], cache=False, progress=False)


def test_dataset_offline(model, monkeypatch):
    fake = _FakeDatasets()
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ActivationError, match=r"hub is offline .*list of strings"):
        collect_activations(model, ("org/corpus", 4), [0], cache=False, progress=False)
    assert fake.calls == []  # failed before asking for the dataset
    # offline without the variable: the connection error is explained, with what to do
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    offline = ConnectionError("Couldn't reach 'org/corpus' on the Hub")
    monkeypatch.setitem(sys.modules, "datasets", _FakeDatasets(offline))
    with pytest.raises(ActivationError, match=r"could not read dataset 'org/corpus'.*Couldn't reach.*connection"):
        collect_activations(model, "org/corpus", [0], cache=False, progress=False)


def test_rows_of_agrees_with_row_of_everywhere(model, tmp_path):
    acts = collect_activations(model, TEXTS, [0], cache_dir=tmp_path, batch_size=2, progress=False)
    for d in range(len(TEXTS)):
        ps = np.arange(-2, acts.doc_tokens(d).size + 3)  # BOS, every kept token, past the end
        got = acts.rows_of(d, ps)
        assert got.tolist() == [acts.row_of(d, int(p)) for p in ps]
        assert (got[ps == 0] == -1).all() and (got[ps >= acts.doc_tokens(d).size] == -1).all()
    assert acts.rows_of(len(TEXTS), np.arange(3)).tolist() == [-1, -1, -1]  # no such document


# -- issue #22: bad input is a clear error, before anything runs or is written -----------------------
def test_issue22_layers_must_be_integers(model, tmp_path):
    """Item 9: a float, a bool or a string of digits is not a layer (int() truncated them)."""
    for bad in ("12", [1.9], [True], 1.0):
        with pytest.raises(TypeError, match="layers"):
            collect_activations(model, TEXTS, bad, cache_dir=tmp_path, progress=False)
    acts = collect_activations(model, TEXTS, np.array([0, 1]), cache_dir=tmp_path, progress=False)
    assert acts.layers == (0, 1) and acts.layer(np.int64(1)).shape[0] == acts.n_tokens
    for bad in (1.9, True, "1"):
        with pytest.raises(TypeError, match="layer must be an integer"):
            acts.layer(bad)
        with pytest.raises(TypeError, match="layer must be an integer"):
            acts[bad]


def test_issue22_counts_context_hook_and_token_ids(model, tmp_path):
    """Item 13: max_tokens <= 0, context <= 1 (0 is not "the default"), a hook template with
    another field and float token ids are explained up front; nothing is written."""
    for bad in (0, -5):
        with pytest.raises(ActivationError, match="max_tokens must be a positive"):
            collect_activations(model, TEXTS, [0], cache_dir=tmp_path, max_tokens=bad, progress=False)
    with pytest.raises(TypeError, match="max_tokens"):
        collect_activations(model, TEXTS, [0], cache_dir=tmp_path, max_tokens=2.5, progress=False)
    for bad in (-1, 0, 1):
        with pytest.raises(ActivationError, match="context must be at least 2"):
            collect_activations(model, TEXTS, [0], cache_dir=tmp_path, context=bad, progress=False)
    for bad in ("blocks.{L}.{x}", "blocks.{0}.{L}", "blocks.{L"):
        with pytest.raises(ActivationError, match="hook"):
            collect_activations(model, TEXTS, [0], cache_dir=tmp_path, hook=bad, progress=False)
    for bad in ([0.0, 5.9, 17.2], np.array([1.0, 2.0, 3.0]), torch.tensor([1.0, 2.0]), [True, False, True]):
        with pytest.raises(ActivationError, match="token ids must be integers"):
            collect_activations(model, [bad], [0], cache_dir=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())
    # what does work: integer ids of any integer dtype, context=None for n_ctx
    ok = collect_activations(model, [np.array([1, 5, 17], np.int32)], [0], cache_dir=tmp_path, progress=False)
    assert ok.token_ids.tolist() == [5, 17]


def _fake_temp(root, name, *, lock=None, age_s=0.0):
    import os
    import time

    d = root / name
    d.mkdir(parents=True)
    (d / "layer_0.npy").write_bytes(b"\0" * 64)
    if lock is not None:
        (d / "writer.lock").write_text("1\n")
    if age_s:
        t = time.time() - age_s
        os.utime(d, (t, t))
    return d


def test_issue22_stale_temp_folders_of_killed_runs_are_removed(model, tmp_path):
    """Item 13: a kill -9 leaves ``.<key>.xxxxxxxx``; the next collection removes it when its writer
    is gone (its lock can be taken, or, without a lock file, when it is a day old), and nothing
    else: a folder whose writer holds the lock, a fresh lockless one, other names."""
    import fcntl
    import os

    key = "0123456789abcdef0123"
    dead = _fake_temp(tmp_path, f".{key}.abc_1234", lock=True)
    old = _fake_temp(tmp_path, f".{key}.oldoldol", age_s=2 * 86400)
    fresh = _fake_temp(tmp_path, f".{key}.fresh_00")
    alive = _fake_temp(tmp_path, f".{key}.alive_00", lock=True)
    other = _fake_temp(tmp_path, ".not-ours.abcdefgh", lock=True, age_s=2 * 86400)
    held = os.open(alive / "writer.lock", os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a writer that is still running
    try:
        acts = collect_activations(model, TEXTS, [0], cache_dir=tmp_path, progress=False)
        assert acts.stats["stale_temp_removed"] == 2
        assert not dead.exists() and not old.exists()
        assert fresh.exists() and alive.exists() and other.exists()
        assert not (acts.path / "writer.lock").exists()  # the lock is no part of the entry
    finally:
        os.close(held)


def test_issue22_kill_9_during_collection_leaves_nothing_behind(tmp_path):
    """Item 13, the real thing: a collection killed with SIGKILL mid-run leaves its temp folder;
    the next collection in that cache removes it and writes the entry."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, signal
        from tests import _saelens_doubles as fx
        from saematch_nb.sources.activations import collect_activations
        model = fx.tiny_gemma2_model(seed=0, n_layers=3, d_model=32)
        real = model.run_with_cache
        def dying(*a, **k):
            real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
        model.run_with_cache = dying
        collect_activations(model, {TEXTS!r}, [0], cache_dir={str(tmp_path)!r}, batch_size=1, progress=False)
    """)
    import os

    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == -9, r.stderr[-2000:]
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert len(left) == 1 and (left[0] / "layer_0.npy").exists()
    from tests import _saelens_doubles as fx

    acts = collect_activations(fx.tiny_gemma2_model(seed=0, n_layers=3, d_model=32), TEXTS, [0],
                               cache_dir=tmp_path, progress=False)
    assert acts.stats["stale_temp_removed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [acts.key]
