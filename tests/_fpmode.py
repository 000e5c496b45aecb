"""Denormal flushing of this CPU thread, for tests whose arithmetic reaches the denormal range.

Whether denormals are flushed depends on the CPU (AMX flushes in its bfloat16 products; AVX2
keeps them) and on the thread's mode (``torch.set_flush_denormal``). Tests that depend on it set
the mode with :func:`denormal_mode` and restore it, and decide what to expect from what the CPU
actually did, never from the CPU model.
"""

from __future__ import annotations

import contextlib

import torch


def flushing() -> bool:
    """True when this thread flushes denormal results to zero (FTZ), as after
    ``torch.set_flush_denormal(True)``."""
    return torch.tensor([2.0 ** -140], dtype=torch.float32).mul(1.0).item() == 0.0


@contextlib.contextmanager
def denormal_mode(flush: bool):
    """Run the block with denormal flushing on or off, on one thread, then restore both.

    torch's intra-op threads keep the mode they were created with, so the block runs
    single-threaded (the only thread whose mode is set), and flushing is switched off again
    before the thread count is restored (threads created later start without it)."""
    was, threads = flushing(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ok = torch.set_flush_denormal(flush)
        assert ok or not flush, "torch cannot flush denormals on this CPU"
        assert flushing() == flush
        yield
    finally:
        torch.set_flush_denormal(was)
        torch.set_num_threads(threads)
