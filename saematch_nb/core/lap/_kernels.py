"""The one import of the solvers' numba kernel modules (``_jv``, ``_numba``), private to core/lap.

Below the solvers (``jv.py``, ``sparse.py`` through ``_shared.py``) and the warm-up, which runs the
solvers: neither imports the other for it. numba decorates the kernels with ``cache=True`` at
import, which fails where no cache folder can be written; :func:`load_kernels` turns that into
:class:`NumbaCacheError`, which says to set ``NUMBA_CACHE_DIR`` (the package never sets it).
"""

from __future__ import annotations

from ...errors import SaematchError

__all__ = ["load_kernels", "NumbaCacheError"]


class NumbaCacheError(SaematchError, RuntimeError):
    """numba has no writable folder for the solvers' compiled kernels (the message says what to set)."""


def _cache_hint(detail: str) -> str:
    return (
        "numba cannot cache the solver kernels: it found no writable cache folder (the installed package "
        "folder is read-only and numba's per-user cache folder cannot be written either). Set the "
        "environment variable NUMBA_CACHE_DIR to a writable folder before Python starts (e.g. "
        "export NUMBA_CACHE_DIR=/tmp/$USER/numba_cache; in a notebook, os.environ['NUMBA_CACHE_DIR'] = ... "
        "before the first match), then run python -m saematch_nb warmup once; or use solver='dense' "
        f"(scipy, no numba). numba said: {detail}")


def _no_locator(e: BaseException) -> bool:
    return isinstance(e, RuntimeError) and "no locator available" in str(e)


def load_kernels(*names: str) -> tuple:
    """Import the kernel modules ``names`` of this package (e.g. "_jv", "_numba"). numba decorates
    them with ``cache=True`` at import, which fails without a writable cache folder: then numba's
    settings are read again (a NUMBA_CACHE_DIR set since numba was imported then counts) and the
    import is tried once more, else :class:`NumbaCacheError`. ImportError (numba missing) passes."""
    import importlib

    def imp():
        return tuple(importlib.import_module(f"{__package__}.{n}") for n in names)

    try:
        return imp()
    except RuntimeError as e:
        if not _no_locator(e):
            raise
        first = e
    from numba.core import config

    config.reload_config()  # numba reads its environment at import; the user may have set it since
    try:
        return imp()
    except RuntimeError as e:
        if not _no_locator(e):
            raise
        raise NumbaCacheError(_cache_hint(str(e))) from first
