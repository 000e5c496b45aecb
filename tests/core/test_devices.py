"""Inputs on any device, and on mixed devices: the cost functions, the criterion's passes and the
solvers take X and Y wherever they live (one on the device under test, the other on the CPU, or
both) and compute on the device they are given, with the same result as on the CPU.

The device under test is ``SAEMATCH_TEST_DEVICE`` (tests/conftest.py; "cpu" by default, "cuda"
as benchmarks/gpu_check.sh runs them); on the CPU alone these tests still check the placements."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saematch_nb.core import criterion as crit
from saematch_nb.core.cost import dense_cost, nearest_two_costs, pair_cost

pytest.importorskip("numba")

PLACES = ["x", "y", "both"]


def _place(X, Y, where, dev):
    return (X.to(dev) if where in ("x", "both") else X), (Y.to(dev) if where in ("y", "both") else Y)


def _pair(n_a, n_b, D, seed):
    g = torch.Generator().manual_seed(seed)
    Y = torch.randn(n_b, D, generator=g)
    X = Y[torch.randperm(n_b, generator=g)[:n_a]] + 0.1 * torch.randn(n_a, D, generator=g) if n_a <= n_b \
        else torch.randn(n_a, D, generator=g)
    return X, Y


@pytest.mark.parametrize("where", PLACES)
def test_costs_on_any_device(test_device, where):
    X, Y = _pair(21, 17, 6, 1)
    want = (torch.cdist(X.double(), Y.double()) ** 2).numpy()
    Xt, Yt = _place(X, Y, where, test_device)
    for dev in ("cpu", test_device):
        assert np.allclose(dense_cost(Xt, Yt, block_rows=5, device=dev), want, rtol=1e-4, atol=1e-4)
    rows, cols = np.arange(10), np.arange(10)[::-1].copy()
    assert np.allclose(pair_cost(Xt, Yt, rows, cols), want[rows, cols], rtol=1e-12)


@pytest.mark.parametrize("where", PLACES)
def test_criterion_passes_on_any_device(test_device, where):
    X, Y = _pair(40, 50, 8, 2)
    parts = crit.part_slices("encoder+decoder", 4)
    partner = np.arange(40)
    ref = (crit.nearest_direction(crit.directions(X, parts), Y, parts, device="cpu"),
           crit.mutual_best(X, Y, partner, parts, device="cpu"),
           nearest_two_costs(X, Y, device="cpu"),
           crit.direction_distance(X, Y, partner, parts))
    Xt, Yt = _place(X, Y, where, test_device)
    got = (crit.nearest_direction(crit.directions(Xt, parts), Yt, parts, device=test_device),
           crit.mutual_best(Xt, Yt, partner, parts, device=test_device),
           nearest_two_costs(Xt, Yt, device=test_device),
           crit.direction_distance(Xt, Yt, partner, parts))
    np.testing.assert_array_equal(got[0][0], ref[0][0])
    np.testing.assert_allclose(got[0][1], ref[0][1], atol=1e-5)
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[2][0], ref[2][0])
    np.testing.assert_allclose(got[2][1], ref[2][1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[3], ref[3], rtol=1e-12)


@pytest.mark.parametrize("solver", ["jv", "sparse"])
@pytest.mark.parametrize("shape", ["square", "wide", "tall", "partial"])
def test_solvers_on_any_device(test_device, solver, shape):
    """Rows on the device under test, columns on the CPU (and the reverse for the tall case, which
    the sparse solver solves transposed): the CPU's optimum, proven."""
    from saematch_nb.core.lap import solve_jv, solve_sparse, verify_certificate

    n_a, n_b = {"square": (150, 150), "wide": (90, 150), "tall": (150, 90), "partial": (150, 150)}[shape]
    X, Y = _pair(n_a, n_b, 12, 3)
    w = np.full(n_a, 0.5) if shape == "partial" else None
    fn = solve_jv if solver == "jv" else solve_sparse
    kw = {"precision": "float32"} if solver == "sparse" else {}
    ref = fn(X, Y, unmatched_cost=w, device="cpu", **kw)
    Xt, Yt = _place(X, Y, "y" if shape == "tall" else "x", test_device)
    got = fn(Xt, Yt, unmatched_cost=w, device=test_device, return_duals=shape != "tall", **kw)
    assert got.gap == 0.0 and got.stats["device"].startswith(torch.device(test_device).type)
    np.testing.assert_array_equal(got.col, ref.col)
    assert got.total == pytest.approx(ref.total, rel=1e-12)
    if shape != "tall":
        cert = verify_certificate(Xt, Yt, got.col, got.stats["u"], got.stats["v"], unmatched_cost=w,
                                  device=test_device)
        assert cert["ok"], cert
