"""feature_matrix / cost_blocks / dense_cost: the cost convention of docs/ARCHITECTURE.md."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saematch_nb.core.cost import PARAMS_CHOICES, cost_blocks, dense_cost, feature_matrix, pair_cost
from saematch_nb.core.fold import fold
from saematch_nb.core.synthetic import planted_pair


def test_feature_matrix_layout(planted):
    a = planted[0]
    f = fold(a)
    X = feature_matrix(a)
    assert X.dtype == torch.float32 and X.shape == (a.d_sae, 2 * a.d_in)
    assert torch.allclose(X[:, : a.d_in], f.W_dec) and torch.allclose(X[:, a.d_in:], f.W_enc.T)
    assert torch.allclose(feature_matrix(a, "decoder"), f.W_dec)
    assert torch.allclose(feature_matrix(a, "encoder"), f.W_enc.T)
    Xb = feature_matrix(a, "encoder+decoder+bias")
    assert Xb.shape == (a.d_sae, 2 * a.d_in + 1) and torch.allclose(Xb[:, -1], f.b_enc)
    # fold=False uses the raw parameters
    assert torch.allclose(feature_matrix(a, "decoder", fold=False), a.W_dec)


def test_unknown_params_lists_choices(planted):
    with pytest.raises(ValueError) as e:
        feature_matrix(planted[0], "decoder+bias")
    for c in PARAMS_CHOICES:
        assert c in str(e.value)


def test_cost_blocks_match_direct_distances(test_device):
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(37, 9, generator=g), torch.randn(53, 9, generator=g)
    want = torch.cdist(X.double(), Y.double()) ** 2
    starts = []
    for r0, blk in cost_blocks(X, Y, block_rows=10, device=test_device):
        starts.append(r0)
        assert blk.device.type == torch.device(test_device).type
        blk = blk.cpu()
        assert blk.dtype == torch.float32 and (blk >= 0).all()
        assert torch.allclose(blk.double(), want[r0:r0 + blk.shape[0]], rtol=1e-4, atol=1e-4)
    assert starts == [0, 10, 20, 30]
    C = dense_cost(X, Y, block_rows=7, device=test_device)
    assert C.dtype == np.float64 and C.shape == (37, 53)
    assert np.allclose(C, want.numpy(), rtol=1e-4, atol=1e-4)
    assert np.allclose(pair_cost(X, Y, np.arange(5), np.arange(5)), want.numpy()[np.arange(5), np.arange(5)])


def test_identical_rows_cost_zero_not_negative():
    X = torch.randn(20, 16, generator=torch.Generator().manual_seed(0)) * 100
    C = dense_cost(X, X)
    # |x|² + |x|² − 2 x·x in float32 cancels to a few ulps of 2|x|² (seeded: it was flaky at a
    # fixed atol of 0.1 with |x|² ~ 1.6e5, where one ulp of 2|x|² is 0.03)
    sq = (X.double() ** 2).sum(1).numpy()
    assert (C >= 0).all() and (np.abs(np.diag(C)) <= 16 * np.finfo(np.float32).eps * 2 * sq).all()


def test_d_in_mismatch_names_both_shapes():
    a = planted_pair(16, 8, seed=0)[0]
    b = planted_pair(16, 12, seed=0)[0]
    with pytest.raises(ValueError, match=r"\(16, 16\).*\(16, 24\)"):
        list(cost_blocks(feature_matrix(a), feature_matrix(b)))
