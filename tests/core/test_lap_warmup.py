"""The install-time warm-up (``python -m saematch_nb warmup``) compiles every kernel a user's
analysis reaches: after it, a fresh process running other problems (other sizes, families,
modes) compiles nothing and only loads kernels from numba's cache.

Counted, not timed: numba's per-dispatcher cache statistics (a miss = a signature compiled in
that process). Each child gets its own empty NUMBA_CACHE_DIR (set for the child only)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba")

pytestmark = pytest.mark.slow

# What a user's analysis runs after installing: the public match() on families the warm-up does not
# use (planted pairs of other sizes and widths, a Gemma-like clustered pair), in every mode and through
# every solver, plus the certificate check.
USER = textwrap.dedent("""
    import json
    import numpy as np, torch
    from saematch_nb.core.match import match
    from saematch_nb.core.synthetic import planted_pair
    from saematch_nb.core.synthetic_hard import gemma_like_pair
    from saematch_nb.core.lap import solve_sparse, verify_certificate
    from saematch_nb.core.lap.warmup import kernel_stats
    a, b, _ = planted_pair(300, 40, fresh_fraction=0.3, seed=3)
    c, d, _ = gemma_like_pair(520, 24, dups=0.6, group_size=(2, 8), seed=4)
    e, f, _ = planted_pair(200, 40, n_b=350, seed=5)
    for sa, sb in ((a, b), (c, d), (e, f), (b, a)):
        for solver in ("jv", "sparse"):
            for partial in (False, True):
                match(sa, sb, solver=solver, allow_unmatched=partial)
    X = torch.randn(90, 16, dtype=torch.float64)
    Y = torch.randn(130, 16, dtype=torch.float64)
    r = solve_sparse(X, Y, k=1, return_duals=True)
    verify_certificate(X, Y, r.col, r.stats["u"], r.stats["v"])
    print(json.dumps(kernel_stats()))
""")


def _child(code: str, cache: str) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_after_warmup_a_fresh_process_compiles_nothing(tmp_path):
    cache = str(tmp_path / "numba_cache")
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    p = subprocess.run([sys.executable, "-m", "saematch_nb", "warmup"], env=env, capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "not reached" not in p.stdout, p.stdout
    # in an empty cache everything is compiled: the miss counter the assertion below reads works
    compiled = int(re.search(r"\((\d+) compiled, 0 loaded", p.stdout).group(1))
    assert compiled >= 30, p.stdout
    stats = _child(USER, cache)
    missed = {k: s["cache_misses"] for k, s in stats.items() if s["cache_misses"]}
    assert missed == {}, f"compiled after the warm-up (not covered by it): {missed}"
    assert sum(s["cache_hits"] for s in stats.values()) >= 20  # the user's run did load kernels


def test_warmup_reports_counts_in_process():
    from saematch_nb.core.lap.warmup import kernel_stats, warm_up

    r = warm_up()
    stats = kernel_stats()
    public = [k for k in stats if not k.split(".")[1].startswith("_")]  # the others run inside them
    assert len(public) >= 25 and r["kernels"] == len(stats)
    assert r["not_reached"] == []  # every public kernel has a signature in this process
    # ... compiled here or loaded from the cache (counts are per process: whichever test ran first)
    assert r["signatures"] >= len(public) and r["compiled"] + r["loaded"] >= len(public)


NO_NUMBA = textwrap.dedent("""
    import sys
    sys.modules["numba"] = None  # as if the `scale` extra were not installed
    import torch
    from saematch_nb.core.lap import pick_solver, solve
    assert pick_solver(5000, 5000) == "sparse"  # auto, above scipy's limit without numba
    X = torch.randn(8, 4)
    for solver in ("jv", "sparse"):
        try:
            solve(X, X, solver=solver)
        except ImportError as e:
            print(solver, "|", e)
    from saematch_nb.__main__ import main
    print("warmup rc", main(["warmup"]))
""")


def test_without_numba_every_numba_path_says_what_to_install():
    p = subprocess.run([sys.executable, "-c", NO_NUMBA], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert [ln.split(" |")[0] for ln in lines[:2]] == ["jv", "sparse"], p.stdout
    for ln in lines[:2]:
        assert "pip install 'saematch_nb[scale]'" in ln and "python -m saematch_nb warmup" in ln, ln
    assert lines[-1] == "warmup rc 1"
    assert "needs numba" in p.stderr


def test_warm_devices_follow_cuda_availability(monkeypatch):
    import torch

    from saematch_nb.core.lap.warmup import precisions, warm_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert warm_devices() == ["cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert warm_devices() == ["cpu", "cuda"]
    assert precisions("cpu") == ("float32", "bfloat16")
    assert precisions("cuda") == precisions("cuda:1") == ("float32",)


def test_warmup_on_a_cuda_machine_names_devices_and_keeps_bfloat16_on_the_cpu(monkeypatch):
    """A GPU machine as the warm-up sees it: torch.cuda.is_available() is True, so a call without
    ``device=`` resolves to CUDA. Every solver call is recorded, checked the way the solver checks
    it (sparse._pick_precision raises for bfloat16 off the CPU), then run on the CPU (no GPU here)."""
    import torch

    import saematch_nb.core.lap as lap
    from saematch_nb.core.cost import default_device
    from saematch_nb.core.lap import sparse
    from saematch_nb.core.lap.warmup import warm_up

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls = []

    def recorder(name, real):
        def fn(*args, device=None, **kw):
            dev = default_device(device)  # what the solver would run on: CUDA when not named
            calls.append((name, device, dev.type, kw.get("precision", "auto")))
            if name == "solve_sparse":
                sparse._pick_precision(kw.get("precision", "auto"), dev)
            return real(*args, device="cpu", **kw)
        return fn

    for name in ("solve_jv", "solve_sparse", "verify_certificate"):
        monkeypatch.setattr(lap, name, recorder(name, getattr(lap, name)))
    r = warm_up()
    assert r["devices"] == ["cpu", "cuda"] and r["not_reached"] == []
    assert all(device is not None for _, device, _, _ in calls), "a warm-up call left its device to the default"
    assert not [c for c in calls if c[3] == "bfloat16" and c[2] != "cpu"]
    assert {c[3] for c in calls if c[0] == "solve_sparse" and c[2] == "cpu"} >= {"float32", "bfloat16"}
    on_gpu = {name for name, _, dev, _ in calls if dev == "cuda"}
    assert on_gpu == {"solve_jv", "solve_sparse", "verify_certificate"}, on_gpu


# -- issue 22 item 5: no writable numba cache folder -------------------------------------------------
def unwritable_numba_cache(monkeypatch):
    """What a read-only installation with an unwritable home looks like to numba: no cache locator
    applies, so ``@njit(cache=True)`` fails when the kernel modules are imported. The kernel modules
    are imported afresh (they are put back afterwards)."""
    from numba.core import caching

    import saematch_nb.core.lap as lap_pkg

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in numba 0.59
    monkeypatch.setattr(impl, "_locator_classes", [])
    monkeypatch.setattr(caching.config, "CACHE_LOCATOR_CLASSES", "", raising=False)
    for name in ("_numba", "_jv"):
        monkeypatch.delitem(sys.modules, f"saematch_nb.core.lap.{name}", raising=False)
        monkeypatch.delattr(lap_pkg, name, raising=False)


@pytest.mark.parametrize("solver", ["jv", "sparse"])
def test_no_writable_numba_cache_says_to_set_numba_cache_dir(monkeypatch, solver):
    import torch

    import saematch_nb
    from saematch_nb.core.lap import solve

    unwritable_numba_cache(monkeypatch)
    env = dict(os.environ)
    with pytest.raises(RuntimeError, match=r"Set the environment variable NUMBA_CACHE_DIR to a writable "
                                           r"folder.*no locator available") as ei:
        solve(torch.randn(8, 4), torch.randn(8, 4), solver=solver, device="cpu")
    assert isinstance(ei.value, saematch_nb.SaematchError)
    assert "solver='dense'" in str(ei.value)
    assert dict(os.environ) == env  # the library never sets the variable itself


def test_a_numba_cache_dir_set_after_numba_was_imported_is_read(monkeypatch):
    """The retry reads numba's settings again: a NUMBA_CACHE_DIR set in a notebook cell counts."""
    from numba.core import caching, config

    from saematch_nb.core.lap import warmup

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl
    real = list(impl._locator_classes)
    unwritable_numba_cache(monkeypatch)
    # the user sets NUMBA_CACHE_DIR: numba's locators apply again once its settings are re-read
    monkeypatch.setattr(config, "reload_config", lambda: impl.__dict__["_locator_classes"].extend(real))
    (mod,) = warmup.load_kernels("_numba")
    assert hasattr(mod, "augment_all")


def test_warmup_command_prints_the_hint_instead_of_a_traceback(monkeypatch, capsys):
    from saematch_nb.__main__ import main

    unwritable_numba_cache(monkeypatch)
    assert main(["warmup"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("saematch_nb warmup: numba cannot cache the solver kernels")
    assert "NUMBA_CACHE_DIR" in err and "Traceback" not in err
