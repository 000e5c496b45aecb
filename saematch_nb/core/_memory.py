"""Memory read one way everywhere: this process's peak (solver stats, the chain runner, benchmarks)
and what a new allocation can take now (the sparse solver's list lengths). No module-level
``import resource``: that module does not exist on Windows."""

from __future__ import annotations

import os
import sys


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process so far, in bytes; None where it cannot be read
    (Windows: no ``resource`` module and no /proc).

    Linux: VmHWM of /proc/self/status, the address space's own high-water mark (``ru_maxrss``
    would also count the parent's peak, folded into a spawned child at exec). Elsewhere
    ``ru_maxrss``: bytes on macOS, KiB on the other Unixes."""
    peak = _proc_kib_as_bytes("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # Windows
        return None
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def available_bytes() -> int | None:
    """Memory a new allocation can take now (Linux MemAvailable; elsewhere free physical pages);
    None when unknown."""
    available = _proc_kib_as_bytes("/proc/meminfo", "MemAvailable")
    if available is not None:
        return available
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _proc_kib_as_bytes(path: str, key: str) -> int | None:
    """The "key:  N kB" line of a /proc file, in bytes; None without /proc (macOS, Windows) or the line."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
