"""Helpers for fault tests: caches that cannot be written, and running as an unprivileged user.

``as_unprivileged``: for tests of file permissions (root ignores them). Not root: the function
runs here, as this user. Root: it runs in a spawned child (not a fork: a fork of a process that
has initialised CUDA cannot use CUDA) that imports and warms up as root, then drops to
``nobody`` (the interpreter may live where ``nobody`` cannot read). The child's return value, its
warnings and any exception come back pickled.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

NOBODY = 65534


def blocked_folder(tmp_path: Path) -> Path:
    """A cache folder that cannot be created, not even by root: its parent is a file."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    return blocker / "cache"


def home_is_a_file(tmp_path: Path, monkeypatch: Any) -> Path:
    """~ points at a file and SAEMATCH_CACHE_DIR is unset: the default cache location is unusable."""
    home = tmp_path / "home_is_a_file"
    home.write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SAEMATCH_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)  # the default is under ~ only without it
    return home


def unwritable_warning(rec: list, folder: Any) -> str:
    """The one CacheWarning of a run whose cache folder cannot be written: it names the folder
    and both ways to choose another."""
    from saematch_nb.core.cache import CacheWarning

    msgs = [str(w.message) for w in rec if issubclass(w.category, CacheWarning)]
    assert len(msgs) == 1, msgs  # once per run, not once per pair or layer
    assert str(folder) in msgs[0] and "cache_dir=" in msgs[0] and "SAEMATCH_CACHE_DIR" in msgs[0]
    return msgs[0]


def as_unprivileged(fn: Callable[..., Any], *args: Any,
                    prepare: Callable[..., Any] | None = None) -> tuple[Any, list[warnings.WarningMessage]]:
    """(fn(*args), the warnings it raised), run without root's rights. Re-raises its error.

    Not root: ``fn(*args)`` here. Root: in a spawned child (``fn``, ``prepare`` and ``args`` must
    pickle: module-level functions) that first runs ``prepare(*args)`` as root, then drops to
    nobody and runs ``fn(*args)``."""
    if os.geteuid() != 0:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            return fn(*args), list(rec)
    # spawn, never fork: a forked child of a process that has initialised CUDA cannot use it
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_unprivileged_child, args=(send, fn, args, prepare))
    proc.start()
    send.close()
    try:
        kind, value, warned = recv.recv()
    except EOFError:  # the child died before answering
        kind, value, warned = "error", "the child exited without a result", []
    finally:
        recv.close()
        proc.join(60)
    assert proc.exitcode == 0, f"the unprivileged child failed (exit code {proc.exitcode}): {value}"
    if kind == "error":
        raise AssertionError(f"as the unprivileged user: {value}")
    msgs = [warnings.WarningMessage(m, c, "<child>", 0) for c, m in warned]
    return value, msgs


def _unprivileged_child(conn: Any, fn: Callable[..., Any], args: tuple, prepare: Callable[..., Any] | None) -> None:
    try:
        if prepare is not None:
            # as root: imports and compiled kernels are in memory before the rights go (the
            # interpreter and the sources may live where nobody cannot read)
            prepare(*args)
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            out = ("ok", fn(*args), [(x.category, str(x.message)) for x in rec])
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
        out = ("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}", [])
    try:
        conn.send(out)
    except Exception as e:  # noqa: BLE001 - a result that does not pickle
        conn.send(("error", f"the child's result could not be sent back: {type(e).__name__}: {e}", []))
    conn.close()
