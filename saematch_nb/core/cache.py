"""saematch_nb's disk caches: one root, one folder per kind, and the store of finished layer matches.

Root: the ``cache_dir`` argument of the call, else ``$SAEMATCH_CACHE_DIR``, else
``~/.cache/saematch_nb`` (:func:`cache_root`). :func:`cache_folder` gives each kind's folder; a
``cache_dir=`` passed to a function is that kind's folder itself, used as given.

======================  ==============================  ====================================================
kind (who writes it)    folder under the root           entry and key
======================  ==============================  ====================================================
matches                 the root itself                 ``<key>.npz``, a ``LayerMatch.save`` file; key = sha256
(``match_chain``,                                       of both SAEs' identities (below), the match options
``MatchCache``)                                         with defaults filled in, ``CACHE_VERSION`` and the
                                                        package version (first 32 hex)
activations             ``activations/``                ``<key>/`` with ``meta.json`` and one ``.npy`` memmap
(``collect_activations``)                               per layer; key = sha256 of the model's identity, the
                                                        token ids, document lengths and options (first 20 hex)
examples                ``examples/``                   ``<key>.npz`` per layer; key = sha256 of the
(``collect_examples``)                                  activations' key, the layer, the SAE's weights hash
                                                        and the sampling options (first 20 hex)
neuronpedia             ``neuronpedia/``                ``<model>/<source>/<index>.json``, the API's answer as
(``fetch_feature``)                                     fetched (a feature's page does not change)
======================  ==============================  ====================================================

Matches stay at the root, where every earlier version put them, so existing caches keep being
found. Every writer writes a temporary file (or folder) and renames it into place, so a killed
run never leaves a half-written entry; an entry that cannot be read is recomputed (a
:class:`CacheWarning` for matches). A folder that cannot be written is one
:func:`warn_unwritable` warning per call, and the run goes on uncached.

Identity of an SAE in a match key, cheapest first:

- a lazy handle's ``cache_key`` (release/sae_id or path+size+mtime; no weights are loaded);
- a path to a ``params.npz`` / sae-lens folder: resolved weights file + size + mtime;
- anything else (SAEWeights, sae-lens SAE, mapping): the sha256 fingerprint of its weights.

Importing this module is light (stdlib and numpy): sources use it for their folders without
loading torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .._version import __version__
from ..errors import SaematchWarning

if TYPE_CHECKING:
    from .results import LayerMatch

from ._paths import ENV_VAR, default_cache_root
# 2: results of the null-calibrated criterion; 3: the leave-one-out null (criterion version 3);
# 4: the scipy path on float64 costs, zero features never matched (issue #22: an all-zero SAE's
# cached "100% matched" must not be read again). Older entries are never read: other keys.
CACHE_VERSION = 4

class CacheWarning(SaematchWarning):
    """A cache entry was unreadable or stale and is being recomputed, or the cache folder cannot
    be written (the run goes on; its results are kept in memory only)."""


def warn_unwritable(folder: str | os.PathLike, exc: BaseException, what: str = "results") -> None:
    """The one warning for a cache folder that cannot be written (sources use it too)."""
    warnings.warn(
        f"saematch_nb cannot write its cache folder {folder} ({type(exc).__name__}: {exc}); the run "
        f"goes on and its {what} are kept in memory only (a re-run recomputes them). Choose a writable "
        f"folder with cache_dir=... or the environment variable {ENV_VAR}, or pass cache=False.",
        CacheWarning, stacklevel=3,
    )


# kind -> its folder under the root ("" = the root itself, see the module docstring)
KINDS: dict[str, str] = {"matches": "", "activations": "activations", "examples": "examples",
                         "neuronpedia": "neuronpedia", "models": "models"}


def cache_root() -> Path:
    """The root of every cache: ``$SAEMATCH_CACHE_DIR``, else the user cache folder
    (``platformdirs``: ``~/.cache/saematch_nb`` on Linux, ``$XDG_CACHE_HOME/saematch_nb`` when set)."""
    return default_cache_root()


def cache_folder(kind: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder of one kind of cache entry: ``cache_dir`` when given (used as is), else its place
    under :func:`cache_root`. ``kind`` is one of :data:`KINDS`."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; expected one of {sorted(KINDS)}")
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    sub = KINDS[kind]
    return cache_root() / sub if sub else cache_root()


# -- identity ---------------------------------------------------------------------------------
def is_lazy(obj: Any) -> bool:
    """True for things whose identity is known without loading weights (handles, paths)."""
    return _handle_key(obj) is not None or isinstance(obj, (str, os.PathLike))


def _handle_key(obj: Any) -> str | None:
    from .weights import SAEWeights

    if isinstance(obj, SAEWeights) or not hasattr(obj, "to_weights"):
        return None
    try:
        key = getattr(obj, "cache_key", None)
    except OSError:  # a local handle whose file vanished: fall back to the weights
        return None
    return key if isinstance(key, str) and key else None


def _path_key(p: Path) -> str:
    if p.is_dir():
        for name in ("params.npz", "sae_weights.safetensors"):
            if (p / name).exists():
                p = p / name
                break
    if not p.exists():
        raise FileNotFoundError(
            f"{p} does not exist: pass a params.npz file, a sae-lens folder or a loaded SAE"
        )
    st = p.stat()
    return f"path|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def identity(obj: Any) -> str:
    """Stable identity string of one SAE (see module docstring). Loads weights only for
    objects that are already in memory (SAEWeights, sae-lens SAEs, mappings)."""
    key = _handle_key(obj)
    if key is not None:
        return f"key|{key}"
    if isinstance(obj, (str, os.PathLike)):
        return _path_key(Path(obj))
    from .weights import as_weights

    w = as_weights(obj)
    # The info goes in too: the cached result carries info_a/info_b, which must be the caller's.
    return f"fp|{w.fingerprint()}|{json.dumps(w.info.to_dict(), sort_keys=True)}"


def _canon(v: Any) -> Any:
    """JSON-able canonical form (arrays by content hash)."""
    if isinstance(v, Mapping):
        return {str(k): _canon(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, (list, tuple)):
        return [_canon(x) for x in v]
    if hasattr(v, "detach") and hasattr(v, "cpu"):  # torch tensor, without importing torch here
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        a = np.ascontiguousarray(v)
        return {"ndarray": hashlib.sha256(a.tobytes()).hexdigest()[:16], "shape": list(a.shape),
                "dtype": str(a.dtype)}
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return repr(v)


def pair_key(id_a: str, id_b: str, options: Mapping[str, Any]) -> str:
    """The cache key of a pair: both SAEs' identities and the options the result depends on
    (``MatchOptions.key()``)."""
    payload = json.dumps(
        {"a": id_a, "b": id_b, "options": _canon(dict(options)), "cache": CACHE_VERSION,
         "saematch_nb": __version__},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


# -- the store --------------------------------------------------------------------------------
class MatchCache:
    """A folder of cached LayerMatch files, one per key."""

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.dir = cache_folder("matches", cache_dir)
        self.rejected = 0  # entries found but unusable (unreadable, other key, stale)
        self.write_failures = 0  # results that could not be written (kept in memory only)

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.npz"

    def _reject(self, p: Path, why: str) -> None:
        warnings.warn(f"ignoring saematch_nb cache file {p}: {why}; the pair is recomputed and the "
                      "file rewritten", CacheWarning, stacklevel=4)
        self.rejected += 1

    def get(self, key: str, expect: Mapping[str, Any] | None = None) -> LayerMatch | None:
        """The cached match for ``key``, or None (missing, unreadable, written for another key or
        by another saematch_nb version, or not fitting ``expect``).

        ``expect``: what is known of the SAEs at hand without loading them, checked against the
        file (a key only names them): ``n_a`` / ``n_b`` (widths), ``fingerprint_a`` /
        ``fingerprint_b`` (weights hashes); None values are not checked."""
        from .results import LayerMatch, ResultVersionError

        p = self.path(key)
        try:
            if not (p.exists() or p.is_symlink()):
                return None
        except OSError:  # an unreadable folder: nothing can be read from it
            return None
        try:
            lm = LayerMatch.load(p)
        except ResultVersionError as e:  # stale: written by another saematch_nb version
            self._reject(p, f"it is stale ({e})")
            return None
        except Exception as e:  # truncated zip, bad JSON, a folder: all mean "recompute"
            self._reject(p, f"it is unreadable ({type(e).__name__}: {e})")
            return None
        if lm.stats.get("cache_key") != key:
            self._reject(p, "it was written for another key")
            return None
        for name, want in (expect or {}).items():
            have = getattr(lm, name)
            if want is not None and have != want:
                self._reject(p, f"its {name} is {have!r} but the SAE at hand has {want!r}")
                return None
        return lm

    def put(self, key: str, lm: LayerMatch) -> LayerMatch:
        """Store (atomically) and return the match stamped with its key. A folder that cannot
        be written is a warning, not an error: the match is returned all the same."""
        from dataclasses import replace

        if lm.stats.get("cache_key") != key:
            lm = replace(lm, stats={**lm.stats, "cache_key": key})
        p = self.path(key)
        try:
            if p.is_dir():  # os.replace cannot put a file there; never delete a user's folder
                raise IsADirectoryError(f"{p} is a folder, not a cache file: remove it")
            lm.save(p)
        except OSError as e:  # permissions, read-only or full disk, a folder in the way
            if not self.write_failures:
                warn_unwritable(self.dir, e, "matches")
            self.write_failures += 1
        return lm

    def clear(self) -> int:
        """Delete every cached match in this folder, and temp files a killed run left behind;
        returns how many files were removed."""
        n = 0
        if self.dir.is_dir():
            for pattern in ("*.npz", ".*.npz.*.tmp"):
                for p in self.dir.glob(pattern):
                    if p.is_file() or p.is_symlink():
                        p.unlink(missing_ok=True)
                        n += 1
        return n

    def __repr__(self) -> str:
        return f"MatchCache({str(self.dir)!r})"
