"""Argument checks shared across layers (standard library only: cheap to import anywhere)."""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

from ..errors import ArgumentTypeError, InvalidArgumentError


def as_index(value: Any, name: str) -> int:
    """``value`` as a Python int: ints and numpy integers pass, anything else is a TypeError
    (``int(1.9)`` would silently mean layer 1)."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise ArgumentTypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")


def as_indices(values: Any, name: str) -> tuple[int, ...]:
    """A sequence of indices (layers, features) as Python ints, each checked by :func:`as_index`;
    a string is refused as a whole (``tuple(int(c) for c in "12")`` would mean layers 1 and 2)."""
    if isinstance(values, (str, bytes)):
        raise ArgumentTypeError(f"{name} must be integers (e.g. [0, 1]), got the string {values!r}")
    try:
        items = list(values)
    except TypeError:
        raise ArgumentTypeError(f"{name} must be a list of integers, got {values!r} "
                                f"({type(values).__name__})") from None
    return tuple(as_index(v, f"each of {name}") for v in items)


def positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum`` (default 1): a count such as ``n`` or ``max_tokens``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    v = as_index(value, name)
    if v < minimum:
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {v}")
    return v


def finite_number(value: Any, name: str, *, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite float (bools and strings refused); ``positive``: > 0, ``minimum``:
    >= it. NaN and ±inf never pass (they would make a comparison silently false)."""
    # real numbers, numpy scalars and 0-d tensors (anything float() takes) but not bools or text
    is_bool = isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b"
    if is_bool or isinstance(value, (str, bytes, complex)) or not (
            isinstance(value, numbers.Real) or hasattr(value, "__float__")):
        raise ArgumentTypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    try:
        v = float(value)
    except (TypeError, ValueError):  # e.g. a tensor of several values
        raise ArgumentTypeError(f"{name} must be a single number, got {value!r}") from None
    if not math.isfinite(v):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
    if positive and not v > 0:
        raise InvalidArgumentError(f"{name} must be positive, got {value!r}")
    if minimum is not None and v < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum:g}, got {value!r}")
    return v
