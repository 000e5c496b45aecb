"""Neuronpedia features: explanations and top activations of an SAE feature, fetched from
``GET https://www.neuronpedia.org/api/feature/{model}/{source}/{index}`` with a short timeout and
cached on disk (a fetched feature does not change; the cache makes notebooks re-run offline).

Only the fields saematch_nb shows are kept: the explanations' ``description``, the activation
records' ``tokens`` / ``values`` / ``maxValue`` / ``maxValueTokenIndex``, and the feature's
``maxActApprox`` and ``frac_nonzero``.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_json
from ..core._checks import as_index
from ..core.cache import cache_folder, warn_unwritable
from ..errors import SaematchError

API = "https://www.neuronpedia.org/api/feature"
PAGE = "https://neuronpedia.org"


class NeuronpediaUnavailableError(SaematchError, RuntimeError):
    """Neuronpedia could not be reached (offline, timeout, HTTP error) and nothing is cached."""


@dataclass(frozen=True)
class NeuronpediaActivation:
    tokens: tuple[str, ...]
    values: tuple[float, ...]
    max_value: float
    max_index: int


@dataclass(frozen=True, eq=False)
class NeuronpediaFeature:
    model_id: str
    source: str
    index: int
    explanations: tuple[str, ...]
    activations: tuple[NeuronpediaActivation, ...]
    max_value: float
    frac_nonzero: float | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return f"{PAGE}/{self.model_id}/{self.source}/{self.index}"

    @property
    def neuronpedia_id(self) -> str:
        return f"{self.model_id}/{self.source}"

    def __repr__(self) -> str:
        try:
            from ..display.examples import neuronpedia_feature_text

            return neuronpedia_feature_text(self)
        except Exception:  # a repr never raises
            return f"NeuronpediaFeature({self.model_id}/{self.source}/{self.index})"

    def _repr_html_(self) -> str:
        try:
            from ..display.examples import neuronpedia_feature_html

            return neuronpedia_feature_html(self)
        except Exception:
            from ..display import escape

            return f"<pre>{escape(repr(self))}</pre>"


# Neuronpedia's model and source ids are slugs. Both parts become folder names of the cache
# and segments of the URL, so nothing else is let through ("..", separators, "?", "#", ...).
_ID_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def split_id(neuronpedia_id: str) -> tuple[str, str]:
    """"gemma-2-2b/12-gemmascope-res-16k" -> ("gemma-2-2b", "12-gemmascope-res-16k")."""
    parts = str(neuronpedia_id).strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"a Neuronpedia id is 'model/source', e.g. 'gemma-2-2b/12-gemmascope-res-16k'; "
                         f"got {neuronpedia_id!r}")
    bad = [p for p in parts if not _ID_PART.fullmatch(p)]
    if bad:
        raise ValueError(f"Neuronpedia id {neuronpedia_id!r}: {bad[0]!r} is not a Neuronpedia model or source "
                         "id (letters, digits and . _ + - only, starting with a letter or digit), e.g. "
                         "'gemma-2-2b/12-gemmascope-res-16k'")
    return parts[0], parts[1]


def parse_feature(data: dict, model_id: str | None = None, source: str | None = None,
                  index: int | None = None) -> NeuronpediaFeature:
    """A NeuronpediaFeature from the API's JSON (the Neuron record with activations and explanations)."""
    if not isinstance(data, dict):
        raise ValueError(f"unexpected Neuronpedia response: {type(data).__name__}, expected a JSON object")
    if data.get("error"):
        raise ValueError(f"Neuronpedia answered an error: {data['error']}")
    acts = []
    for a in data.get("activations") or []:
        toks = tuple(str(t) for t in a.get("tokens") or [])
        vals = tuple(float(v) for v in a.get("values") or [])
        if len(vals) != len(toks):
            vals = (vals + (0.0,) * len(toks))[: len(toks)]
        mv = a.get("maxValue")
        mv = float(mv) if mv is not None else (max(vals) if vals else 0.0)
        mi = a.get("maxValueTokenIndex")
        mi = int(mi) if mi is not None else (vals.index(max(vals)) if vals else 0)
        acts.append(NeuronpediaActivation(toks, vals, mv, mi))
    acts.sort(key=lambda a: -a.max_value)
    expl = tuple(str(e.get("description", "")).strip() for e in data.get("explanations") or []
                 if isinstance(e, dict) and e.get("description"))
    mx = data.get("maxActApprox")
    mx = float(mx) if mx is not None else (acts[0].max_value if acts else 0.0)
    fnz = data.get("frac_nonzero")
    return NeuronpediaFeature(
        model_id=str(data.get("modelId") or model_id), source=str(data.get("layer") or source),
        index=int(data.get("index") if data.get("index") is not None else index), explanations=expl,
        activations=tuple(acts), max_value=mx, frac_nonzero=None if fnz is None else float(fnz), raw=data,
    )


def _get_json(url: str, timeout: float) -> Any:
    req = urllib.request.Request(url, headers={"User-Agent": "saematch_nb", "Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def fetch_feature(neuronpedia_id: Any, index: int, *, timeout: float = 5, cache: bool = True,
                  cache_dir: str | os.PathLike | None = None) -> NeuronpediaFeature:
    """Explanations and top activations of feature ``index`` of the SAE ``neuronpedia_id``
    (``SAEInfo.neuronpedia_id``, e.g. "gemma-2-2b/12-gemmascope-res-16k"; an SAEInfo, SAEWeights
    or handle carrying one is accepted too).

    Raises :class:`NeuronpediaUnavailableError` when the site cannot be reached in ``timeout`` seconds
    and no cached copy exists.
    """
    if not isinstance(neuronpedia_id, str):
        obj = neuronpedia_id
        info = obj if hasattr(obj, "neuronpedia_url") else getattr(obj, "info", None)
        neuronpedia_id = getattr(info, "neuronpedia_id", None)
        if not neuronpedia_id:
            raise ValueError(f"{type(obj).__name__} has no Neuronpedia id (info.neuronpedia_id is empty): "
                             "pass the id as 'model/source', e.g. 'gemma-2-2b/12-gemmascope-res-16k'")
    model_id, source = split_id(neuronpedia_id)  # checked before any file or network access
    index = as_index(index, "feature index")
    if index < 0:
        raise ValueError(f"feature index must be >= 0, got {index}")
    root = cache_folder("neuronpedia", cache_dir)
    path = root / model_id / source / f"{index}.json"
    if cache and _is_file(path):
        try:
            return parse_feature(json.loads(path.read_text("utf-8")), model_id, source, index)
        except (ValueError, json.JSONDecodeError):
            _unlink(path)  # a damaged entry is fetched again
        except OSError:  # unreadable: fetch again (and try to overwrite it)
            pass
    url = f"{API}/{model_id}/{source}/{index}"
    try:
        data = _get_json(url, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise KeyError(f"Neuronpedia has no feature {model_id}/{source}/{index} (HTTP 404): check the "
                           "id and that the index is below the SAE's width") from None
        raise NeuronpediaUnavailableError(f"Neuronpedia answered HTTP {e.code} for {url}; try again later") from None
    except (urllib.error.URLError, TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise NeuronpediaUnavailableError(
            f"cannot reach Neuronpedia ({reason}) for {model_id}/{source}/{index}, and it is not cached. "
            f"Open {PAGE}/{model_id}/{source}/{index} in a browser when online, or run without "
            "Neuronpedia (explanations are optional)") from None
    feat = parse_feature(data, model_id, source, index)  # parse before caching: never cache garbage
    if cache:
        try:
            atomic_write_json(path, data)
        except OSError as e:  # the feature was fetched: a cache that cannot be written is no error
            warn_unwritable(root, e, "Neuronpedia features")
    return feat


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:
        return False


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def cached_explanations(neuronpedia_id: Any, *, cache_dir: str | os.PathLike | None = None) -> dict[int, str]:
    """The explanations of the features of one SAE already fetched with :func:`fetch_feature`
    (``{index: "explanation; ..."}``), read from the cache only: no network, nothing fetched.
    ``neuronpedia_id``: "model/source", or an SAEInfo / handle carrying one; {} without one."""
    if not isinstance(neuronpedia_id, str):
        info = neuronpedia_id if hasattr(neuronpedia_id, "neuronpedia_url") else getattr(neuronpedia_id, "info", None)
        neuronpedia_id = getattr(info, "neuronpedia_id", None)
        if not neuronpedia_id:
            return {}
    model_id, source = split_id(neuronpedia_id)
    folder = cache_folder("neuronpedia", cache_dir) / model_id / source
    out: dict[int, str] = {}
    try:
        files = list(folder.glob("*.json"))
    except OSError:
        return out
    for p in files:
        if not p.stem.isdigit():
            continue
        try:
            feat = parse_feature(json.loads(p.read_text("utf-8")), model_id, source, int(p.stem))
        except (OSError, ValueError):
            continue  # a damaged entry is skipped here (fetch_feature fetches it again)
        if feat.explanations:
            out[int(p.stem)] = "; ".join(feat.explanations)
    return out
