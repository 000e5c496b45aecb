"""Immutable result values: LayerMatch (one layer pair), FeatureTrace (one feature through depth).

MatchChain lives in core/chain.py. Rich reprs are delegated to saematch_nb.display, imported
lazily so that core stays free of display code at import time.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .._atomic import atomic_write

from ..errors import SaematchError
from .weights import SAEInfo, as_weights

# 2: the null-calibrated criterion (score = direction distance, threshold per pair, calibration)
FORMAT_VERSION = 2


class ResultMismatchError(SaematchError, ValueError):
    """A saved result is being loaded against SAEs it was not computed from."""


class ResultFileError(SaematchError, ValueError):
    """A saved result cannot be used: damaged or truncated, not a saematch_nb result, or written
    by another saematch_nb version (the message names the file and says what to do)."""


class ResultVersionError(ResultFileError):
    """A saved result was written by another saematch_nb version (an older or a newer format)."""


def check_format_version(meta: Mapping[str, Any], path: Path, kind: str, version: int) -> None:
    """Refuse files of another format version, older or newer (their fields may mean other things)."""
    got = meta.get("format_version")
    if got != version:
        raise ResultVersionError(
            f"{path} was written by another saematch_nb version ({kind} format {got!r}; this version "
            f"reads format {version}): recompute it (saematch_nb.match / match_chain) and save it again"
        )


def write_result_npz(path: str | os.PathLike, meta_json: str, arrays: Mapping[str, np.ndarray]) -> Path:
    """One result ``.npz`` (``arrays`` + the JSON metadata as bytes), written atomically: a crash
    mid-write never leaves a truncated result, and no temp file is left behind."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    return atomic_write(path, lambda fh: np.savez(fh, **arrays, meta=np.frombuffer(meta_json.encode(), dtype=np.uint8)))


def read_result_npz(path: str | os.PathLike, kind: str, version: int, read: Any, redo: str) -> Any:
    """Open a result written by :func:`write_result_npz` and return ``read(z, meta, path)``:
    the file found (``.npz`` added when missing), its ``kind`` and format version checked, and any
    damage (truncated zip, bad JSON, a missing array or field) turned into a ResultFileError that
    says ``redo`` (how to get the result again)."""
    path = Path(path)
    if not path.exists() and path.with_suffix(".npz").exists():
        path = path.with_suffix(".npz")
    if not path.is_file():
        what = f"is a folder, not a saved {kind}" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{path} {what}: pass the .npz file written by {kind}.save")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            if not isinstance(meta, dict) or meta.get("kind") != kind:
                got = meta.get("kind") if isinstance(meta, dict) else type(meta).__name__
                raise ResultFileError(f"{path} holds a {got!r}, not a {kind}")
            check_format_version(meta, path, kind, version)
            return read(z, meta, path)
    except (ResultFileError, ResultMismatchError):
        raise
    except Exception as e:
        raise ResultFileError(f"{path} is not a readable {kind} file ({type(e).__name__}: {e}); it is damaged or "
                              f"truncated: {redo}") from e


def _ro(a: Any, dtype: Any) -> np.ndarray:
    """Read-only copy, so that an immutable result cannot be changed through its arrays."""
    arr = np.array(a, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class LayerMatch:
    """The match of the features of SAE A (layer t) to those of SAE B (layer t+1).

    Arrays are indexed by A-feature i (length ``n_a``):

    - ``permutation[i]``: B-feature assigned to i by the solver (a permutation for square
      bijective matching; injective for rectangular pairs; for ``method="cosine"`` a many-to-one
      top-1 mapping).
    - ``partner[i]``: the accepted partner, -1 = no partner. For the bijective default it equals
      ``permutation``; with ``allow_unmatched=True`` it is -1 where the solver chose "no partner".
    - ``mse[i]``: MSE between the (folded, unless fold=False) parameters of i and of
      ``permutation[i]`` (squared distance divided by the number of compared elements).
    - ``alt_mse[i]``: MSE to the best B-feature other than ``permutation[i]``; ``margin`` is
      ``alt_mse - mse`` (how sure the match is; negative when the assignment had to give the
      nearest feature to another row).
    - ``score[i]``: the statistic of the calibrated criterion, the direction distance of i and its
      partner (1 - mean cosine of the folded decoder row and encoder column; inf without
      partner); ``matched = score <= threshold`` (and partner != -1).
    - ``calibration``: how ``threshold`` was decided for this pair (see
      :class:`saematch_nb.core.criterion.Calibration`: alpha, null and persistence thresholds,
      the estimated share of features without partner).
    """

    permutation: np.ndarray
    partner: np.ndarray
    mse: np.ndarray
    alt_mse: np.ndarray
    score: np.ndarray
    matched: np.ndarray
    threshold: float
    n_a: int
    n_b: int
    d_in: int
    info_a: SAEInfo = field(default_factory=SAEInfo)
    info_b: SAEInfo = field(default_factory=SAEInfo)
    fingerprint_a: str = ""
    fingerprint_b: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    stats: Mapping[str, Any] = field(default_factory=dict)
    calibration: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, dt in (("permutation", np.int64), ("partner", np.int64), ("mse", np.float32),
                         ("alt_mse", np.float32), ("score", np.float32), ("matched", bool)):
            arr = _ro(getattr(self, name), dt)
            if arr.shape != (self.n_a,):
                raise ValueError(f"LayerMatch.{name} must have shape ({self.n_a},), got {arr.shape}")
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "options", dict(self.options))
        object.__setattr__(self, "stats", dict(self.stats))
        object.__setattr__(self, "calibration", dict(self.calibration))

    # -- derived ------------------------------------------------------------------------------
    @property
    def margin(self) -> np.ndarray:
        return self.alt_mse - self.mse

    @property
    def matched_fraction(self) -> float:
        return float(self.matched.mean()) if self.n_a else 0.0

    @property
    def layer_a(self) -> int | None:
        return self.info_a.layer

    @property
    def layer_b(self) -> int | None:
        return self.info_b.layer

    @property
    def expected_false_matches(self) -> float:
        """Expected number of accepted matches that are false: features without a partner that the
        rule accepts (accept_rate · pi0 · n_a, corrected for the B features that persisting ones
        claim and, bijective, for candidates the assignment gives away); NaN for an expert threshold."""
        c = self.calibration
        if c.get("expert") or c.get("alpha") is None or c.get("pi0") is None:
            return float("nan")
        if "expected_false_matches" in self.stats and c.get("version", 0) >= 3:
            # match's estimate, corrected for the columns persisting features claim (core/match.py)
            return float(self.stats["expected_false_matches"])
        from .criterion import Calibration

        return Calibration.from_dict(c).expected_false_matches(self.n_a)

    @property
    def false_match_rate(self) -> float:
        """Estimated share of the accepted matches that are false (expected false / accepted)."""
        n = int(self.matched.sum())
        e = self.expected_false_matches
        return float("nan") if not np.isfinite(e) else (min(1.0, e / n) if n else 0.0)

    def mse_quantiles(self, qs: tuple[float, ...] = (0.1, 0.5, 0.9)) -> dict[float, float]:
        if self.n_a == 0:
            return {q: float("nan") for q in qs}
        return {q: float(np.quantile(self.mse, q)) for q in qs}

    def summary(self) -> dict[str, Any]:
        """Headline numbers of the pair (one row of a chain's table)."""
        q = self.mse_quantiles((0.1, 0.5, 0.9))
        return {
            "layer_a": self.info_a.layer,
            "layer_b": self.info_b.layer,
            "sae_a": self.info_a.label,
            "sae_b": self.info_b.label,
            "n_a": self.n_a,
            "n_b": self.n_b,
            "method": self.options.get("method", "lap"),
            "fold": self.options.get("fold", True),
            "params": self.options.get("params", "encoder+decoder"),
            "matched_fraction": self.matched_fraction,
            "unpartnered": int((self.partner < 0).sum()),
            "mse_mean": float(self.mse.mean()) if self.n_a else float("nan"),
            "mse_q10": q[0.1],
            "mse_median": q[0.5],
            "mse_q90": q[0.9],
            "threshold": float(self.threshold),
            "alpha": self.calibration.get("alpha"),
            "null_threshold": self.calibration.get("null_threshold"),
            "accept_rate": self.calibration.get("accept_rate"),
            "expected_false_matches": self.expected_false_matches,
            "false_match_rate": self.false_match_rate,
        }

    def to_pandas(self):
        """One row per A-feature."""
        import pandas as pd

        return pd.DataFrame(
            {
                "feature": np.arange(self.n_a),
                "partner": self.partner,
                "permutation": self.permutation,
                "mse": self.mse,
                "alt_mse": self.alt_mse,
                "margin": self.margin,
                "score": self.score,
                "matched": self.matched,
            }
        ).set_index("feature")

    def best(self, n: int = 5) -> np.ndarray:
        """A-features of the n most certain matches (lowest MSE among matched)."""
        idx = np.flatnonzero(self.matched)
        return idx[np.argsort(self.mse[idx], kind="stable")[:n]]

    def worst(self, n: int = 5) -> np.ndarray:
        """A-features with the highest matched MSE."""
        return np.argsort(-self.mse, kind="stable")[:n]

    # -- persistence --------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "kind": "LayerMatch",
            "threshold": float(self.threshold),
            "n_a": self.n_a,
            "n_b": self.n_b,
            "d_in": self.d_in,
            "info_a": self.info_a.to_dict(),
            "info_b": self.info_b.to_dict(),
            "fingerprint_a": self.fingerprint_a,
            "fingerprint_b": self.fingerprint_b,
            "options": jsonable(self.options),
            "stats": jsonable(self.stats),
            "calibration": jsonable(self.calibration),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write to one ``.npz`` file (arrays + JSON metadata), atomically."""
        return write_result_npz(path, json.dumps(self._meta()), {
            "permutation": self.permutation, "partner": self.partner, "mse": self.mse, "alt_mse": self.alt_mse,
            "score": self.score, "matched": self.matched})

    @classmethod
    def load(cls, path: str | os.PathLike, sae_a: Any = None, sae_b: Any = None) -> "LayerMatch":
        """Read a saved match. With ``sae_a``/``sae_b``, check they are the SAEs it came from."""
        def read(z: Any, meta: dict, _path: Path) -> "LayerMatch":
            arrays = {k: z[k] for k in ("permutation", "partner", "mse", "alt_mse", "score", "matched")}
            lm = cls(
                **arrays, threshold=meta["threshold"], n_a=meta["n_a"], n_b=meta["n_b"],
                d_in=meta["d_in"], info_a=SAEInfo.from_dict(meta["info_a"]),
                info_b=SAEInfo.from_dict(meta["info_b"]), fingerprint_a=meta["fingerprint_a"],
                fingerprint_b=meta["fingerprint_b"], options=meta["options"], stats=meta["stats"],
                calibration=meta.get("calibration", {}),
            )
            _check_indices(lm)
            return lm

        path = Path(path)
        lm = read_result_npz(path, "LayerMatch", FORMAT_VERSION, read, "recompute the match and save it again")
        for side, sae, fp in (("A", sae_a, lm.fingerprint_a), ("B", sae_b, lm.fingerprint_b)):
            if sae is not None:
                got = as_weights(sae).fingerprint()
                if got != fp:
                    raise ResultMismatchError(
                        f"{path} was computed from SAE {side} with weights hash {fp}, but the SAE "
                        f"given has hash {got}: recompute the match with saematch_nb.match(...) "
                        "or pass the SAEs it was made from"
                    )
        return lm

    # -- reprs --------------------------------------------------------------------------------
    def __repr__(self) -> str:
        from ..display import text

        return text.layer_match_text(self)

    def _repr_html_(self) -> str:
        from ..display import html

        return html.layer_match_html(self)


def _check_indices(lm: LayerMatch) -> None:
    """Partner indices must address B's features (-1 = none): a forged or mixed-up file would
    otherwise fail much later, in trace or compose, or index silently wrong features."""
    for name in ("permutation", "partner"):
        a = getattr(lm, name)
        if a.size and (a.min() < -1 or a.max() >= lm.n_b):
            raise ValueError(f"{name} holds indices outside -1 .. {lm.n_b - 1} (n_b = {lm.n_b})")
    if lm.n_a < 0 or lm.n_b < 0 or lm.d_in < 0:
        raise ValueError(f"negative sizes n_a={lm.n_a}, n_b={lm.n_b}, d_in={lm.d_in}")


@dataclass(frozen=True)
class TraceStep:
    """One hop of a trace: feature ``feature`` of ``layer`` -> ``next_feature`` of ``next_layer``."""

    layer: int
    feature: int
    next_layer: int
    next_feature: int  # -1 = no partner
    mse: float
    margin: float
    matched: bool
    #: the criterion's statistic for this step (direction distance, 1 - mean cosine; NaN = unknown)
    score: float = float("nan")
    #: the pair's acceptance threshold on ``score`` (NaN = unknown)
    threshold: float = float("nan")

    @property
    def similarity(self) -> float:
        """1 - score: the mean cosine of the two features' folded decoder rows and encoder columns."""
        return 1.0 - float(self.score)


@dataclass(frozen=True, eq=False)
class FeatureTrace:
    """A feature followed backward and forward through a chain.

    ``layers[k]`` / ``features[k]``: the feature at each layer of the chain (-1 where the trace
    has no feature there). ``steps``: the hops between consecutive present layers.
    ``born_layer``: first layer where the feature exists under the criterion; ``dies_layer``:
    last layer where it still exists (None = it survives to the end of the chain).
    """

    origin_layer: int
    origin_feature: int
    layers: tuple[int, ...]
    features: tuple[int, ...]
    steps: tuple[TraceStep, ...]
    born_layer: int | None
    dies_layer: int | None
    infos: tuple[SAEInfo, ...] = ()

    def feature_at(self, layer: int) -> int:
        try:
            return self.features[self.layers.index(layer)]
        except ValueError:
            raise KeyError(f"layer {layer} is not in this trace (layers {self.layers})") from None

    @property
    def length(self) -> int:
        """Number of layers on which the feature is present."""
        return sum(1 for f in self.features if f >= 0)

    @property
    def alive_layers(self) -> tuple[int, ...]:
        """The layers of the accepted run around the origin (born_layer .. dies_layer)."""
        lo = self.layers.index(self.born_layer) if self.born_layer in self.layers else 0
        hi = self.layers.index(self.dies_layer) if self.dies_layer in self.layers else len(self.layers) - 1
        return tuple(self.layers[lo:hi + 1])

    def reaches(self, layer: int) -> bool:
        """Whether the walk reached ``layer`` (it has a feature there)."""
        return self.feature_at(layer) >= 0

    def step_from(self, layer: int) -> "TraceStep | None":
        """The step leaving ``layer`` (None when the walk did not go on from there)."""
        return next((s for s in self.steps if s.layer == layer), None)

    def to_pandas(self):
        import pandas as pd

        rows = []
        by_layer = {s.layer: s for s in self.steps}
        for layer, feat in zip(self.layers, self.features):
            s = by_layer.get(layer)
            rows.append({
                "layer": layer, "feature": feat,
                "next_feature": s.next_feature if s else None,
                "mse_to_next": s.mse if s else None,
                "margin_to_next": s.margin if s else None,
                "matched_to_next": s.matched if s else None,
            })
        df = pd.DataFrame(rows).set_index("layer")
        # the last layer has no next step: nullable dtypes keep feature ids integers and flags booleans
        return df.astype({"feature": "Int64", "next_feature": "Int64", "matched_to_next": "boolean"})

    def __repr__(self) -> str:
        from ..display import text

        return text.trace_text(self)

    def _repr_html_(self) -> str:
        from ..display import html

        return html.trace_html(self)


def jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.integer,)):
            v = int(v)
        elif isinstance(v, (np.floating,)):
            v = float(v)
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, Mapping):
            v = jsonable(v)
        elif not isinstance(v, (str, int, float, bool, type(None), list, tuple)):
            v = repr(v)
        out[str(k)] = v
    return out
