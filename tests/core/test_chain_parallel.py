"""Pairs of a chain run on concurrent.futures executors: a local process pool and a
dask.distributed LocalCluster. Workers get handles (picklable, no tensors) and load their own SAEs."""

from __future__ import annotations

import multiprocessing as mp
import pickle
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np
import pytest

from saematch_nb.core.cache import MatchCache
from saematch_nb.core.runner import match_chain
from saematch_nb.core.synthetic import planted_chain
from tests.core._chains import make_handles


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pc = planted_chain(n_layers=4, n=96, d_in=32, seed=31)
    handles = make_handles(pc.saes, tmp_path_factory.mktemp("saes"))
    ref = match_chain(handles, cache=False, progress=False)
    return handles, ref


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
        yield ex


def same_pairs(a, b) -> bool:
    return all(np.array_equal(x.partner, y.partner) and np.array_equal(x.mse, y.mse)
               and np.array_equal(x.matched, y.matched) for x, y in zip(a.pairs, b.pairs))


def test_handles_are_small_to_send(setup):
    handles, _ = setup
    assert len(pickle.dumps(handles[0])) < 1000  # a name, not the weights


def test_process_pool(setup, pool, tmp_path):
    handles, ref = setup
    ch = match_chain(handles, executor=pool, cache_dir=tmp_path, progress=False)
    assert same_pairs(ch, ref) and ch.layers == ref.layers and ch.infos == ref.infos
    assert ch.stats["executor"] == "ProcessPoolExecutor" and ch.stats["computed"] == 3
    assert ch.stats["max_saes_held"] == 0  # the parent loaded nothing
    assert all(p["worker_maxrss_bytes"] > 0 for p in ch.stats["pairs"])
    assert len(list(tmp_path.glob("*.npz"))) == 3
    for lm in ch.pairs:  # rebuilt after pickling: still immutable
        assert not lm.partner.flags.writeable
    again = match_chain(handles, executor=pool, cache_dir=tmp_path, progress=False)
    assert again.stats["cache_hits"] == 3 and same_pairs(again, ref)


def test_process_pool_failure_keeps_other_pairs(setup, pool, tmp_path):
    handles, ref = setup
    broken = list(handles)
    broken[3] = replace(handles[3], fail=True)  # pair 2 -> 3 fails in its worker
    with pytest.raises(RuntimeError, match="simulated crash") as ei:
        match_chain(broken, executor=pool, cache_dir=tmp_path, progress=False)
    assert any("pair 2 failed" in n and "2 finished" in n for n in ei.value.__notes__)
    assert len(list(tmp_path.glob("*.npz"))) == 2  # the other pairs were cached anyway
    resumed = match_chain(handles, executor=pool, cache_dir=tmp_path, progress=False)
    assert resumed.stats["cache_hits"] == 2 and resumed.stats["computed"] == 1
    assert same_pairs(resumed, ref)


def test_dask_local_cluster(setup, tmp_path):
    import distributed

    handles, ref = setup
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        ch = match_chain(handles, executor=client.get_executor(), cache_dir=tmp_path,
                         progress=False)
    assert same_pairs(ch, ref)
    assert ch.stats["computed"] == 3
    assert len({p["worker_pid"] for p in ch.stats["pairs"]}) >= 1
    store = MatchCache(tmp_path)
    assert all(store.get(lm.stats["cache_key"]) is not None for lm in ch.pairs)
