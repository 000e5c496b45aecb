"""Run a function as an unprivileged user, for tests of file permissions (root ignores them).

Not root: the function runs here, as this user. Root: it runs in a forked child that drops to
``nobody`` first (a fork, not a new interpreter: the interpreter may live where ``nobody`` cannot
read, and everything the function needs is imported before the fork). The child's return value,
its warnings and any exception come back pickled; the child never returns into pytest.
"""

from __future__ import annotations

import os
import pickle
import traceback
import warnings
from typing import Any, Callable

NOBODY = 65534


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
