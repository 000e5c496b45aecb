"""core/lap's module layout (issue #24): the solvers share core/lap/_shared.py and the search
building blocks of _numba.py instead of each other's private names; the nearest-cost helpers
live in core/cost.py, not in the criterion."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import saematch_nb
from saematch_nb.core import cost, criterion
from saematch_nb.core.lap import _shared

PKG = Path(saematch_nb.__file__).resolve().parent
LAP = PKG / "core" / "lap"
KERNEL_MODULES = {"_jv", "_numba"}  # the numba kernel modules: their helpers are shared on purpose


def _private_imports(path: Path) -> list[str]:
    """``from .X import _name`` of another core/lap module's private name (kernel modules aside)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            if node.module in KERNEL_MODULES:
                continue
            out += [f"{path.name}: from .{node.module} import {a.name}" for a in node.names
                    if a.name.startswith("_")]
    return out


def test_no_lap_module_imports_another_lap_modules_private_names():
    found = [x for p in sorted(LAP.glob("*.py")) for x in _private_imports(p)]
    assert found == []


def test_the_private_import_check_catches_one(tmp_path):
    p = tmp_path / "jv.py"
    p.write_text("from .sparse import _check_inputs\nfrom ._numba import _push\nfrom ._shared import check_inputs\n")
    assert _private_imports(p) == ["jv.py: from .sparse import _check_inputs"]


def test_nearest_costs_live_in_cost_and_the_dense_solver_does_not_import_the_criterion():
    for name in ("nearest_two", "nearest_two_costs", "alt_costs"):
        assert callable(getattr(cost, name))
        assert not hasattr(criterion, name), f"criterion.{name} left behind (no re-export shims)"
    tree = ast.parse((LAP / "dense.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "criterion" not in {m.rsplit(".", 1)[-1] for m in imported if m}
    code = "import sys, saematch_nb.core.lap.dense; print('saematch_nb.core.criterion' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent, check=True)
    assert p.stdout.strip() == "False"


def test_nearest_two_and_alt_costs():
    C = np.array([[3.0, 1.0, 2.0], [5.0, 5.0, 4.0]])
    near, best, second = cost.nearest_two(C)
    assert near.tolist() == [1, 2] and best.tolist() == [1.0, 4.0] and second.tolist() == [2.0, 5.0]
    assert cost.alt_costs(np.array([1, 0]), near, best, second).tolist() == [2.0, 4.0]
    X = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    Y = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    n2, b2, s2 = cost.nearest_two_costs(X, Y, device="cpu")
    assert n2.tolist() == [0, 2] and b2.tolist() == [1.0, 1.0] and s2.tolist() == [4.0, 4.0]


def test_shared_input_checks_name_the_caller():
    with pytest.raises(ValueError, match="solve_jv: X and Y need the same feature length D"):
        _shared.check_inputs(torch.zeros(2, 3), torch.zeros(2, 4), None, who="solve_jv")
    with pytest.raises(TypeError, match="solve_sparse: X must be a torch.Tensor"):
        _shared.check_inputs(np.zeros((2, 3)), torch.zeros(2, 3), None)
    w = _shared.check_inputs(torch.zeros(2, 3), torch.zeros(4, 3), 1.5)
    assert w.dtype == np.float64 and w.tolist() == [1.5, 1.5]


def test_peak_bytes_of_a_cpu_solve_is_the_process_peak():
    from saematch_nb.core._memory import peak_rss_bytes

    got = _shared.peak_bytes(torch.device("cpu"))
    assert isinstance(got, int) and 0 < got <= peak_rss_bytes()
