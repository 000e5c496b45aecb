"""Helpers for fault tests: caches that cannot be written, and running as an unprivileged user.

``as_unprivileged``: for tests of file permissions (root ignores them). Not root: the function runs here, as this user. Root: it runs in a forked child that drops to
``nobody`` first (a fork, not a new interpreter: the interpreter may live where ``nobody`` cannot
read, and everything the function needs is imported before the fork). The child's return value,
its warnings and any exception come back pickled; the child never returns into pytest.
"""

from __future__ import annotations

import os
import pickle
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
    return home


def unwritable_warning(rec: list, folder: Any) -> str:
    """The one CacheWarning of a run whose cache folder cannot be written: it names the folder
    and both ways to choose another."""
    from saematch_nb.core.cache import CacheWarning

    msgs = [str(w.message) for w in rec if issubclass(w.category, CacheWarning)]
    assert len(msgs) == 1, msgs  # once per run, not once per pair or layer
    assert str(folder) in msgs[0] and "cache_dir=" in msgs[0] and "SAEMATCH_CACHE_DIR" in msgs[0]
    return msgs[0]


def as_unprivileged(fn: Callable[[], Any]) -> tuple[Any, list[warnings.WarningMessage]]:
    """(fn's result, the warnings it raised), run without root's rights. Re-raises its error."""
    if os.geteuid() != 0:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            return fn(), list(rec)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never leave this branch except through os._exit
        code = 0
        try:
            os.close(r)
            import torch

            torch.set_num_threads(1)  # no thread pool across a fork
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                out = ("ok", fn(), [(x.category, str(x.message)) for x in rec])
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            out = ("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}", [])
        try:
            data = pickle.dumps(out)
            while data:
                data = data[os.write(w, data):]
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as fh:
        while True:
            b = fh.read(1 << 16)
            if not b:
                break
            chunks.append(b)
    _, status = os.waitpid(pid, 0)
    assert status == 0 and chunks, f"the unprivileged child failed (wait status {status})"
    kind, value, warned = pickle.loads(b"".join(chunks))
    if kind == "error":
        raise AssertionError(f"as the unprivileged user: {value}")
    msgs = [warnings.WarningMessage(m, c, "<child>", 0) for c, m in warned]
    return value, msgs
