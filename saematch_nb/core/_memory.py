"""This process's peak resident memory, read one way everywhere (the runner's stats, the solvers'
``peak_bytes``, workers' reports)."""

from __future__ import annotations

import sys


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far, in bytes (0 where the platform cannot say).

    Linux: the address space's own high-water mark (``VmHWM``; ``ru_maxrss`` also counts the
    parent's at exec). Elsewhere ``getrusage``'s ``ru_maxrss``: bytes on macOS, KiB on the other
    Unixes. ``resource`` is imported here, not at module level: Windows has none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return 0
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)
