"""The options of SAE Match, as one frozen value: what ``match`` takes, what ``match_chain`` passes
to every pair, what the cache key is made of and what a ``LayerMatch`` records.

``MatchOptions()`` holds the defaults; ``MatchOptions.of(options, **keywords)`` is how the public
calls build it (``match(a, b, fold=False)``, ``match_chain(saes, solver="sparse")`` or
``match_chain(saes, options=MatchOptions(...))``): an unknown name is a ``TypeError`` that lists
the options, a bad value the ``ValueError`` of its check, before any SAE is loaded.

The fields split in two: those that decide the result (``key()``, the cache key: two calls whose
keys agree may share a cached pair) and those that only decide where and how fast it is computed
(``device``, ``memory_budget``: :data:`HOW`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from . import criterion as crit
from .cost import check_params, parse_device

METHODS = ("lap", "identity", "cosine")
BAD_THRESHOLD_CHOICES = ("raise", "skip")
#: fields that change where or how fast a pair is computed, never its result (not in the cache key)
HOW = ("device", "memory_budget")


@dataclass(frozen=True)
class MatchOptions:
    """What :func:`saematch_nb.match` does with a pair (its docstring explains each option)."""

    fold: bool = True
    params: str = "encoder+decoder"
    method: str = "lap"
    allow_unmatched: bool = False
    solver: str = "auto"
    alpha: float = crit.DEFAULT_ALPHA
    calibration: Any = None
    n_null: int = crit.DEFAULT_NULL_ROWS
    seed: int = 0
    bad_threshold: str = "raise"
    device: Any = None
    memory_budget: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        check_params(self.params)
        if self.allow_unmatched and self.method != "lap":
            raise ValueError(f"allow_unmatched=True needs method='lap' (got method={self.method!r})")
        crit._check_alpha(self.alpha)
        crit.check_n_null(self.n_null)
        if self.bad_threshold not in BAD_THRESHOLD_CHOICES:
            raise ValueError(f"bad_threshold must be one of {BAD_THRESHOLD_CHOICES}, got {self.bad_threshold!r}")
        if self.device is not None:  # a name torch does not know; whether this machine has it: match / match_chain
            parse_device(self.device)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def of(cls, options: "MatchOptions | Mapping[str, Any] | None" = None, /, **keywords: Any) -> "MatchOptions":
        """``options`` (a MatchOptions, a mapping such as a saved chain's ``options``, or None for
        the defaults) with ``keywords`` on top. An unknown name is a TypeError that lists the options."""
        if options is None:
            base: dict[str, Any] = {}
        elif isinstance(options, MatchOptions):
            base = options.kwargs()
        elif isinstance(options, Mapping):
            base = dict(options)
        else:
            raise TypeError("options must be a MatchOptions (or a mapping of its fields), got "
                            f"{type(options).__name__}")
        base.update(keywords)
        unknown = sorted(set(base) - set(cls.names()))
        if unknown:
            raise TypeError(f"unknown match option(s) {unknown}; the options are {', '.join(cls.names())}")
        return cls(**base)

    def replace(self, **changes: Any) -> "MatchOptions":
        return MatchOptions.of(self, **changes)

    def kwargs(self) -> dict[str, Any]:
        """Every field, as ``match`` keywords."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def key(self) -> dict[str, Any]:
        """What the result depends on: the cache key's options (every field but :data:`HOW`)."""
        return {k: v for k, v in self.kwargs().items() if k not in HOW}

    def record(self, calibration: str) -> dict[str, Any]:
        """What a :class:`~saematch_nb.core.results.LayerMatch` records of how it was made
        (``calibration``: "auto", "given" or "expert", what the criterion used)."""
        return {"fold": bool(self.fold), "params": self.params, "method": self.method,
                "allow_unmatched": bool(self.allow_unmatched), "solver": self.solver, "mse_on": "folded",
                "criterion": "direction distance", "alpha": float(self.alpha), "calibration": calibration,
                "n_null": int(self.n_null), "seed": int(self.seed), "bad_threshold": self.bad_threshold}


__all__ = ["MatchOptions", "METHODS", "HOW"]
