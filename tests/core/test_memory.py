"""core/_memory.py: the one reading of the process's peak resident memory and of the memory a new
allocation can take (issue #24)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import saematch_nb
from saematch_nb.core import _memory
from saematch_nb.core._memory import available_bytes, peak_rss_bytes

PKG = Path(saematch_nb.__file__).resolve().parent


def _vm(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux)")
def test_peak_is_a_positive_int_on_linux_at_least_the_current_rss():
    h0 = _vm("VmHWM")
    got = peak_rss_bytes()
    h1 = _vm("VmHWM")
    assert isinstance(got, int) and got > 0
    assert h0 <= got <= h1  # the process's own high-water mark, in bytes
    assert got >= _vm("VmRSS") > 10 * 2**20  # numpy and torch loaded: tens of MB (bytes, not KiB)


def _no_proc(monkeypatch):
    def fail(*a, **kw):
        raise OSError("no /proc here")
    monkeypatch.setattr(_memory, "open", fail, raising=False)


@pytest.mark.parametrize("platform, want", [("darwin", 5000), ("freebsd14", 5000 * 1024)])
def test_without_proc_ru_maxrss_is_read_in_the_platform_unit(monkeypatch, platform, want):
    """macOS reports ru_maxrss in bytes, the other Unixes in KiB."""
    _no_proc(monkeypatch)
    fake = SimpleNamespace(RUSAGE_SELF=0, getrusage=lambda who: SimpleNamespace(ru_maxrss=5000))
    monkeypatch.setitem(sys.modules, "resource", fake)
    monkeypatch.setattr(_memory.sys, "platform", platform)
    assert peak_rss_bytes() == want


def test_without_resource_module_the_peak_is_none(monkeypatch):
    """Windows: no /proc and no ``resource`` module: None (documented), never an ImportError."""
    _no_proc(monkeypatch)
    monkeypatch.setitem(sys.modules, "resource", None)  # makes `import resource` raise ImportError
    assert peak_rss_bytes() is None


def _module_level_imports(tree: ast.Module) -> set[str]:
    """Modules imported outside any function or class body (import time)."""
    out: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if isinstance(node, ast.Import):
                out.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.add(node.module.split(".")[0])
            visit(ast.iter_child_nodes(node))

    visit(tree.body)
    return out


def test_no_module_of_the_package_imports_resource_at_module_level():
    """``resource`` does not exist on Windows: importing it at module level breaks the import."""
    offenders = [str(p.relative_to(PKG)) for p in sorted(PKG.rglob("*.py"))
                 if "resource" in _module_level_imports(ast.parse(p.read_text(encoding="utf-8")))]
    assert offenders == []
    # the check itself sees a module-level import (and not one inside a function)
    guarded = "import os\ntry:\n    import resource\nexcept ImportError:\n    pass\n"
    assert "resource" in _module_level_imports(ast.parse(guarded))
    assert "resource" not in _module_level_imports(ast.parse("def f():\n    import resource\n"))


def test_importing_the_solvers_and_the_runner_loads_no_resource_module():
    code = ("import sys, saematch_nb.core.lap.sparse, saematch_nb.core.lap.jv, saematch_nb.core.lap.dense, "
            "saematch_nb.core.lap._shared, saematch_nb.core.runner; print('resource' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent, check=True)
    assert p.stdout.strip() == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/meminfo (Linux)")
def test_available_is_memavailable_in_bytes_on_linux():
    with open("/proc/meminfo") as fh:
        kib = next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable:"))
    got = available_bytes()
    assert isinstance(got, int) and abs(got - kib * 1024) < 2**30  # bytes, not KiB (it moves a little)
    assert got < 2**50


def test_available_without_proc_is_free_pages_or_none(monkeypatch):
    """No /proc (macOS, BSD): free physical pages x page size; where sysconf lacks them, None."""
    _no_proc(monkeypatch)
    names = {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(_memory.os, "sysconf", lambda name: names[name])
    assert available_bytes() == 1000 * 4096

    def missing(name):
        raise ValueError(f"unrecognized configuration name {name}")
    monkeypatch.setattr(_memory.os, "sysconf", missing)
    assert available_bytes() is None
