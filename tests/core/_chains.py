"""Helpers of the chain tests (test_chain.py, test_cache.py, test_chain_parallel.py, test_stack.py,
test_reliability.py): lazy test handles that count their loads, SAEs saved as .npz, the ground
truth of planted chains, and the cache tests' comparisons."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saematch_nb import match_chain
from saematch_nb.core.weights import SAEInfo, SAEWeights

LIVE: set = set()  # ids of SAEWeights made by TestHandle that are still alive (this process)
PEAK = {"live": 0, "loads": 0}


@dataclass(frozen=True)
class TestHandle:
    """A lazy handle like sources' SAEHandle: identity without loading, weights on demand."""

    __test__ = False  # not a pytest class
    path: str
    layer: int
    tag: str = ""
    fail: bool = False

    @property
    def info(self) -> SAEInfo:
        return SAEInfo(layer=self.layer, hook_name=f"blocks.{self.layer}.hook_resid_post",
                       sae_id=f"test/layer_{self.layer}")

    @property
    def cache_key(self) -> str:
        return f"test|{self.path}|{self.tag}"

    def to_weights(self) -> SAEWeights:
        if self.fail:
            raise RuntimeError(f"simulated crash while loading layer {self.layer}")
        w = SAEWeights.from_npz(self.path, info=self.info)
        PEAK["loads"] += 1
        LIVE.add(id(w))
        PEAK["live"] = max(PEAK["live"], len(LIVE))
        weakref.finalize(w, LIVE.discard, id(w))
        return w


def save_npz(w: SAEWeights, path: Path) -> str:
    np.savez(path, **{k: v.numpy() for k, v in w.state_dict().items()})
    return str(path)


def make_handles(saes, folder: Path, tag: str = "") -> list[TestHandle]:
    folder.mkdir(parents=True, exist_ok=True)
    return [TestHandle(save_npz(w, folder / f"layer_{t}.npz"), t, tag) for t, w in enumerate(saes)]


def truth_path(truths, start: int, feature: int) -> list[int]:
    """Ground-truth features of one feature at every layer (-1 where it does not exist)."""
    T = len(truths) + 1
    path = [-1] * T
    path[start] = feature
    f = feature
    for t in range(start, T - 1):
        f = int(truths[t][f])
        if f < 0:
            break
        path[t + 1] = f
    f = feature
    for t in range(start - 1, -1, -1):
        src = np.flatnonzero(truths[t] == f)
        if len(src) == 0:
            break
        f = int(src[0])
        path[t] = f
    return path


def truth_lifetimes(truths, n: int) -> list[np.ndarray]:
    T = len(truths) + 1
    life = [np.zeros(n, dtype=np.int64) for _ in range(T)]
    for t in range(T - 2, -1, -1):
        ok = truths[t] >= 0
        life[t][ok] = 1 + life[t + 1][truths[t][ok]]
    return life


# -- the cache tests' helpers (test_cache.py, test_reliability.py; their chain: conftest.py) ------
def same_pairs(a, b) -> bool:
    return all(np.array_equal(x.partner, y.partner) and np.array_equal(x.mse, y.mse)
               and np.array_equal(x.matched, y.matched) for x, y in zip(a.pairs, b.pairs))


def run(saes, cache_dir, **kw):
    return match_chain(saes, cache_dir=cache_dir, progress=False, **kw)
