"""Argument checks shared across layers (standard library only: cheap to import anywhere)."""

from __future__ import annotations

import operator
from typing import Any


def as_index(value: Any, name: str) -> int:
    """``value`` as a Python int: ints and numpy integers pass, anything else is a TypeError
    (``int(1.9)`` would silently mean layer 1)."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
