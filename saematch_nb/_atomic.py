"""Atomic file writes: the one place the package writes a file whole or not at all.

A leaf (standard library only), so that every layer, display included, may use it. The content goes
to a temp file in the same folder (``os.replace`` is atomic only within one file system), is flushed
and fsynced, then renamed over the target: a reader sees the old file or the new one, never half of
one, and a crash, a full disk or Ctrl-C leaves the old file as it was and no temp file behind.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Callable, Union

__all__ = ["atomic_write", "atomic_write_json", "temp_name"]

Content = Union[bytes, str, Callable[[IO[Any]], Any]]


def temp_name(path: Path) -> Path:
    """The temp file next to ``path``: hidden, ``.{name}.{pid}.{random}.tmp``. The pid says which
    process left one behind; the random part keeps two threads of one process apart."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: str | os.PathLike, content: Content, *, text: bool | None = None,
                 encoding: str = "utf-8") -> Path:
    """Write ``path`` atomically and return it (as a Path); its parent folders are created.

    ``content`` is the bytes or str to write, or a function called with the open temp file (binary,
    or text when ``text=True``) that writes into it. A str is written as text in ``encoding``.
    Whatever the function raises propagates, and the old file (if any) is left untouched.
    """
    path = Path(path)
    if text is None:
        text = isinstance(content, str)
    if isinstance(content, str) and not text:
        raise TypeError("atomic_write: str content needs text=True (or leave text unset)")
    if isinstance(content, (bytes, bytearray, memoryview)) and text:
        raise TypeError("atomic_write: bytes content cannot be written with text=True")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        # "x": never write through a file someone else created under that name (or a link there)
        with (open(tmp, "x", encoding=encoding) if text else open(tmp, "xb")) as fh:
            if callable(content):
                content(fh)
            else:
                fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:  # a full disk, a folder in the way, the writer's own error, Ctrl-C
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    _sync_folder(path.parent)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps: Any) -> Path:
    """``json.dumps(obj, **dumps)`` written atomically (UTF-8); the JSON is built before the file
    is opened, so an object that cannot be serialised leaves nothing behind."""
    return atomic_write(path, json.dumps(obj, **dumps), text=True)


def _sync_folder(folder: Path) -> None:
    # the rename itself survives a power cut only once the folder is synced (POSIX); best effort
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
