"""core/lap/_numba.py: the shortest-path searches' helpers are compiled without numba's reference
counting (``_nrt=False``, a private numba option). With it counted, every array argument costs an
atomic incref / decref per call and the searches ran 2-4x slower (benchmarks/README.md, issue #24).
A numba that renamed the option would fail at import; one that accepted and ignored it would only
be slow, so these tests fail instead."""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="the solvers' kernels are the [scale] extra (numba)")

from saematch_nb.core.lap import _numba as K  # noqa: E402

HELPERS = {"_relax_row", "_settle", "_update_duals", "_augment", "_clear_labels"}


def _dispatchers():
    return {n: f for n, f in vars(K).items() if hasattr(f, "targetoptions") and hasattr(f, "py_func")}


def test_the_search_helpers_and_only_they_skip_reference_counting():
    got = {n for n, f in _dispatchers().items() if f.targetoptions.get("_nrt") is False}
    assert got == HELPERS
    # the kernels that allocate (augment_all's buffers, ...) keep numba's reference counting
    assert any("_nrt" not in f.targetoptions for f in _dispatchers().values())


def test_this_numba_honours_the_option():
    """Without reference counting numba cannot allocate: the same function compiles with the option
    off and fails to type with it on. A numba that ignored ``_nrt`` would compile both."""
    def alloc(n):
        return np.zeros(n)

    assert numba.njit(alloc)(3).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(numba.core.errors.TypingError):
        numba.njit(_nrt=False)(alloc)(3)
