"""read_off_persistence: features read off later layers' residual streams, against a null."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saematch_nb.core.weights import SAEInfo, SAEWeights
from saematch_nb.analysis.evaluate import read_off_persistence


class FakeActs:
    """Just what read_off_persistence needs: .layers and .batches(layer, n)."""

    def __init__(self, arrays: dict[int, np.ndarray]):
        self.arrays = arrays
        self.layers = tuple(sorted(arrays))

    def batches(self, layer, n):
        a = self.arrays[layer]
        for s in range(0, a.shape[0], n):
            yield torch.from_numpy(a[s:s + n].astype(np.float32))


def _sae(d: int, n: int, seed: int, layer: int) -> SAEWeights:
    g = torch.Generator().manual_seed(seed)
    W = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    return SAEWeights(W_enc=W.T.contiguous(), b_enc=torch.zeros(n), W_dec=W.contiguous(), b_dec=torch.zeros(d),
                      threshold=torch.full((n,), 0.5), info=SAEInfo(layer=layer))


def test_copied_stream_persists_and_a_fresh_stream_does_not():
    rng = np.random.default_rng(0)
    d, n, T = 16, 64, 3000
    x0 = rng.standard_normal((T, d)) * 1.5
    x1 = x0 + 0.1 * rng.standard_normal((T, d))  # layer 1 keeps layer 0's directions
    x2 = rng.standard_normal((T, d)) * 1.5  # layer 2 is unrelated
    acts = FakeActs({0: x0, 1: x1, 2: x2})
    saes = {L: _sae(d, n, 10 + L, L) for L in range(3)}
    df = read_off_persistence(saes, acts, progress=False)
    assert set(df.index) == {(0, 1), (0, 2), (1, 1)}
    assert df.loc[(0, 1), "fraction"] > 0.9
    assert df.loc[(0, 2), "fraction"] <= 0.05  # the null's 1% and a little sampling error
    assert df.loc[(1, 1), "fraction"] <= 0.05
    assert df.loc[(0, 2), "persisting"] <= df.loc[(0, 1), "persisting"]  # persisting runs only shrink
    assert 0 < df.loc[(0, 1), "threshold"] < df.loc[(0, 1), "median_pearson"]


def test_read_off_bad_input():
    acts = FakeActs({0: np.zeros((10, 4))})
    with pytest.raises(ValueError, match="at least two"):
        read_off_persistence({0: _sae(4, 8, 0, 0)}, acts, progress=False)
    with pytest.raises(ValueError, match="null_quantile"):
        read_off_persistence({0: _sae(4, 8, 0, 0)}, acts, null_quantile=0.2, progress=False)
