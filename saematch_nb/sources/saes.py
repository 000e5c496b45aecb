"""Loading SAEs: sae-lens releases (Gemma Scope 1 and 2 first), local folders, lazy handles.

``load_saes`` only *names* SAEs: it reads sae-lens' directory of pretrained releases (the YAML file
shipped inside the package, parsed here without importing sae-lens, which takes seconds) and
returns :class:`SAEHandle` objects. Nothing is downloaded until ``handle.load()`` or
``handle.to_weights()``; then sae-lens' own loaders run (``SAE.from_pretrained`` for releases,
``SAE.load_from_disk`` for folders), so its converters, configs and name folding apply.

Selecting Gemma Scope SAEs (Gemma 2; release ``gemma-scope-2b-pt-res-canonical`` or ``gemma-scope-2b-pt-res``):

- ``layers``: ``None`` (all layers the release has at that width), an int, or an iterable of ints.
- ``width``: ``"16k"``, ``"65k"``, ``"1m"``, ... or the int 16384 etc.
- ``l0``:
    * ``"canonical"`` (default): the ``layer_{L}/width_{W}/canonical`` ids of the canonical
      release. On ``gemma-scope-2b-pt-res`` it is an error (that release has no canonical ids;
      use the ``-canonical`` release, which points at the same files).
    * an int ``N``: exactly ``layer_{L}/width_{W}/average_l0_{N}`` (error listing the L0s
      available at that layer otherwise).
    * ``"nearest:N"``: per layer, the available L0 closest to N (ties go to the smaller L0);
      useful because each layer has its own set of L0 values.
    * ``None``: the only SAE at that layer and width; an error listing the choices if several.
- ``sae_ids``: explicit ids of any sae-lens release (then ``layers``/``width``/``l0`` are unused).

Selecting Gemma Scope 2 SAEs (Gemma 3; releases ``gemma-scope-2-{270m,1b,4b,12b,27b}-{pt,it}-{res,mlp,
att,transcoders}``, each also with ``-all``; ids ``layer_{L}_width_{W}_l0_{small|medium|big}``):

- ``layers`` and ``width`` as above. The ``-all`` releases have every layer at widths 16k and
  262k with L0 small and big; the others have 4 layers, widths 16k/65k/262k (and 1m for some).
- ``l0``: the label ``"small"``, ``"medium"`` or ``"big"``; ``"nearest:N"`` (by the L0 that
  sae-lens lists for each id); ``None`` (the only one). There is no default: Gemma Scope 2 has no
  canonical SAEs, so the default ``l0="canonical"`` raises an error that lists the labels (and
  their L0s) at the layers asked. Neuronpedia hosts the ``"medium"`` residual SAEs.
- ``seed``: 0 (default) or 1: ``_seed_1`` ids, a second training run of the same SAE (residual,
  width 262k, L0 medium), for a seed ceiling: how well two runs of one SAE match each other.
- ``affine``: transcoder releases have plain (``jumprelu_transcoder``) and skip
  (``jumprelu_skip_transcoder``, ``_affine`` ids) transcoders; ``None``/``False`` picks the plain
  ones, ``True`` the skip ones. Other releases: ``True`` is an error.
- Hooks (as sae-lens names them): res ``blocks.L.hook_resid_post``; mlp ``blocks.L.hook_mlp_out``;
  att ``blocks.L.attn.hook_z``, before the output projection, so those SAEs live in
  n_heads × d_head, not d_model; transcoders read ``blocks.L.hook_mlp_in`` (``hook_name``) and
  write ``blocks.L.hook_mlp_out`` (``hook_name_out``). A transcoder's decoder rows are directions
  in the MLP output, and the skip connection of ``_affine`` ones is not part of any feature:
  ``to_weights()`` keeps the features and says so in a warning.
- Loading goes through sae-lens' ``gemma_3`` loader, which asks the hub for each file's tensor
  shapes (HTTP range requests) even when the file is cached. So when the hub is out of reach, or
  huggingface_hub is offline (``HF_HUB_OFFLINE=1``), and ``params.safetensors`` is in the HF cache,
  ``load()`` / ``to_weights()`` read the cached ``params.safetensors`` (+ ``config.json``; without
  it, the config sae-lens infers from the folder name) with a converter that mirrors sae-lens'
  (same keys, W_skip transposed, dtype cast, no scaling) and hand it to ``SAE.from_pretrained``:
  the same SAE and SAEWeights as online. Not cached: the usual offline error.

Other sae-lens releases: pass ``sae_ids``, or ``layers`` when the release has one SAE per layer.
Local SAEs: ``release`` is a folder (or a list of folders) holding ``cfg.json`` +
``sae_weights.safetensors`` (sae-lens), ``params.npz`` (Gemma Scope) or ``params.safetensors`` +
``config.json`` (Gemma Scope 2, as on the hub: layer and hooks from config.json's
``hf_hook_point_in``/``_out``, else from the hub's folder names; ``to_weights()`` needs no
sae-lens). A folder that contains several such folders (e.g. a downloaded Gemma Scope snapshot, or
one Gemma Scope 2 kind such as ``resid_post_all/``, also with ``seed``/``affine``) is searched and
filtered with ``layers``/``width``/``l0`` like a release; a folder with Gemma Scope 2 SAEs of
several kinds (the repo root) is an error naming them.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..core.weights import (
    SAEInfo,
    SAEWeights,
    _gemma_scope_2_hooks,
    _gemma_scope_2_model_name,
    _read_gemma_scope_2,
    _read_json,
    as_weights,
)
from ..errors import SaematchError

__all__ = [
    "SAEHandle",
    "SAEList",
    "load_saes",
    "list_releases",
    "SourceError",
    "SAELoadError",
    "UnknownReleaseError",
    "UnknownSAEIdError",
    "LayerOutOfRangeError",
    "HubUnavailableError",
    "SAEHubUnavailableError",
]


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
class SourceError(SaematchError, ValueError):
    """Base of every error raised by saematch_nb.sources when something cannot be loaded."""


class HubUnavailableError(SourceError):
    """The Hugging Face hub cannot be reached (offline mode or no connection) and the files
    are not in the local cache."""


class SAELoadError(SourceError):
    """An SAE could not be named or loaded."""


class UnknownReleaseError(SAELoadError):
    pass


class UnknownSAEIdError(SAELoadError):
    pass


class LayerOutOfRangeError(SAELoadError):
    pass


class SAEHubUnavailableError(SAELoadError, HubUnavailableError):
    pass


OFFLINE_HELP = (
    "Options: (1) load SAEs you already have on disk with saematch_nb.load_saes(path) "
    "(a folder with cfg.json + sae_weights.safetensors, a Gemma Scope params.npz folder, or a "
    "Gemma Scope 2 params.safetensors + config.json folder); "
    "(2) use the bundled demo, saematch_nb.demo.load(), which needs no network; "
    "(3) point HF_HOME at a Hugging Face cache that already holds these files "
    "(current HF_HOME: {hf_home}), or connect and unset HF_HUB_OFFLINE."
)


def hf_home() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HOME)
    except ImportError:  # pragma: no cover
        return os.environ.get("HF_HOME") or str(Path("~/.cache/huggingface").expanduser())


def _offline_message(what: str, cause: BaseException | None = None) -> str:
    why = f" ({type(cause).__name__}: {str(cause).splitlines()[0][:200]})" if cause else ""
    return (
        f"The Hugging Face hub is unreachable, so {what} cannot be downloaded, and it is not in "
        f"the local cache{why}. " + OFFLINE_HELP.format(hf_home=hf_home())
    )


def is_hub_unreachable(exc: BaseException) -> bool:
    """True for the errors huggingface_hub / requests / httpx raise when the hub cannot be reached."""
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
    except ImportError:  # pragma: no cover - huggingface_hub always comes with sae-lens
        LocalEntryNotFoundError = OfflineModeIsEnabled = ()  # type: ignore[assignment]
    unreachable: tuple = (ConnectionError, TimeoutError)
    if LocalEntryNotFoundError:
        unreachable += (LocalEntryNotFoundError, OfflineModeIsEnabled)
    for mod, names in (("requests.exceptions", ("ConnectionError", "Timeout")),
                       ("httpx", ("ConnectError", "TimeoutException", "NetworkError"))):
        try:
            m = importlib.import_module(mod)
            unreachable += tuple(getattr(m, n) for n in names if hasattr(m, n))
        except ImportError:
            pass
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # the hub error is often wrapped (OSError from ...)
        if isinstance(e, unreachable):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


# --------------------------------------------------------------------------------------------
# sae-lens' directory of pretrained SAEs, read without importing sae-lens
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Release:
    name: str
    repo_id: str
    model: str
    conversion_func: str | None
    saes: dict  # sae_id -> path (folder in the repo)
    neuronpedia: dict  # sae_id -> neuronpedia id or None
    l0: dict  # sae_id -> expected L0 (0.0 when sae-lens does not list it)


@functools.lru_cache(maxsize=1)
def _directory() -> dict[str, _Release]:
    """sae-lens' ``pretrained_saes.yaml`` parsed like ``get_pretrained_saes_directory`` does.

    Why not call that function: importing sae_lens costs ~7 s; the YAML alone parses in < 1 s.
    tests/sources/test_saes.py checks that both agree.
    """
    import yaml

    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        raise SAELoadError("sae-lens is not installed: pip install sae-lens")
    yaml_path = Path(list(spec.submodule_search_locations)[0]) / "pretrained_saes.yaml"
    with open(yaml_path) as f:
        data = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    out = {}
    for name, value in data.items():
        saes, npid, l0 = {}, {}, {}
        for entry in value.get("saes", []):
            sid = entry["id"]
            p = entry["path"]
            saes[sid] = str(p) if isinstance(p, int) else p
            npid[sid] = entry.get("neuronpedia")
            l0[sid] = entry.get("l0", 0.0)
        out[name] = _Release(name, value["repo_id"], value["model"], value.get("conversion_func"),
                             saes, npid, l0)
    return out


def list_releases() -> list[str]:
    """Names of every sae-lens pretrained release (offline)."""
    return sorted(_directory())


# --------------------------------------------------------------------------------------------
# the lazy handle
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SAEHandle:
    """A named SAE that is not loaded yet.

    ``load()`` returns a fresh sae-lens SAE each call (the handle keeps no weights, so a list of
    26 handles costs nothing); ``to_weights()`` returns :class:`SAEWeights` for the core.
    Hub SAEs have ``release``/``sae_id``; local ones have ``path``.
    """

    release: str | None
    sae_id: str | None
    layer: int | None
    hook_name: str | None
    model_name: str | None
    neuronpedia_id: str | None = None
    path: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    width: int | None = None  # d_sae when the name tells it (Gemma Scope); None otherwise
    l0: float | None = None  # average L0 listed by sae-lens / in the Gemma Scope folder name
    repo_id: str | None = None
    folder: str | None = None  # folder inside repo_id
    conversion_func: str | None = None
    hook_name_out: str | None = None  # transcoders: where the decoder writes (hook_name: what W_enc reads)

    # -- identity ------------------------------------------------------------------------------
    @property
    def info(self) -> SAEInfo:
        return SAEInfo(
            layer=self.layer, hook_name=self.hook_name, model_name=self.model_name,
            release=self.release, sae_id=self.sae_id, neuronpedia_id=self.neuronpedia_id,
            path=self.path,
        )

    @property
    def label(self) -> str:
        return self.info.label

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def cache_key(self) -> str:
        """Stable identity without loading: hub SAEs by release|sae_id|repo folder@revision (the
        sae-lens releases are not pinned to commits, so the revision is ``main``); local SAEs by
        absolute path + size and mtime of the weights file, so an edited file is a new key."""
        if self.path is None:
            return f"hub|{self.release}|{self.sae_id}|{self.repo_id}/{self.folder}@main"
        f = _weights_file(Path(self.path))
        st = f.stat()
        return f"path|{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"

    @property
    def cached(self) -> bool | None:
        """For hub SAEs: whether the weights are already in the local HF cache (None if unknown)."""
        if self.path is not None:
            return True
        fname = _hub_weight_filename(self)
        if fname is None:
            return None
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(self.repo_id, f"{self.folder}/{fname}")
        return isinstance(hit, str)

    # -- loading -------------------------------------------------------------------------------
    def load(self) -> Any:
        """The sae-lens SAE (downloaded on first use; nothing is kept by the handle)."""
        import warnings

        from sae_lens import SAE

        if self.path is not None:
            p = Path(self.path)
            if (p / "sae_weights.safetensors").exists():
                return SAE.load_from_disk(p, device=self.device, dtype=self.dtype)
            if (p / "params.npz").exists():
                return SAE.load_from_disk(
                    p, device=self.device, dtype=self.dtype,
                    converter=functools.partial(_npz_disk_loader, handle=self),
                )
            return SAE.load_from_disk(
                p, device=self.device, dtype=self.dtype,
                converter=functools.partial(_gemma_3_disk_loader, handle=self),
            )
        if self.conversion_func == "gemma_3" and _hub_offline():
            # sae-lens would fail at its HTTP shape request; the cached files are all it needs
            files = _gemma_3_cached_files(self)
            if files is not None:
                return self._load_gemma_3_cached(files)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*repo_id.*directly.*")
                return SAE.from_pretrained(self.release, self.sae_id, device=self.device, dtype=self.dtype)
        except Exception as exc:
            if isinstance(exc, SourceError):
                raise
            if is_hub_unreachable(exc):
                files = _gemma_3_cached_files(self) if self.conversion_func == "gemma_3" else None
                if files is not None:
                    return self._load_gemma_3_cached(files)
                what = f"SAE {self.release!r} / {self.sae_id!r}"
                raise SAEHubUnavailableError(_offline_message(what, exc)) from exc
            if type(exc).__name__ == "GatedRepoError":
                raise SAELoadError(
                    f"{self.repo_id} is gated on the Hugging Face hub: accept its licence there and "
                    "log in with `huggingface-cli login` (or set HF_TOKEN)."
                ) from exc
            raise

    def _load_gemma_3_cached(self, files: tuple[str, str | None]) -> Any:
        """sae-lens' own from_pretrained, with the gemma_3 converter swapped for one that reads the
        cached files: everything else (directory overrides, SAE class, dtype) stays sae-lens'."""
        import warnings

        from sae_lens import SAE

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*repo_id.*directly.*")
            return SAE.from_pretrained(self.release, self.sae_id, device=self.device, dtype=self.dtype,
                                       converter=functools.partial(_gemma_3_cache_loader, files=files))

    def to_weights(self) -> SAEWeights:
        """SAEWeights (float32, CPU) with this handle's identity attached."""
        if self.path is not None and (Path(self.path) / "sae_weights.safetensors").exists():
            w = as_weights(self.path)  # no sae-lens import needed for its own folder format
        elif self.path is not None and (Path(self.path) / "params.npz").exists():
            w = SAEWeights.from_npz(Path(self.path) / "params.npz")
        elif self.path is not None:  # Gemma Scope 2 folder, read without sae-lens
            try:
                w = as_weights(self.path)
            except KeyError as exc:  # not the Gemma Scope 2 keys
                raise SAELoadError(exc.args[0]) from None
        else:
            w = as_weights(self.load())
        return w.with_info(**{k: v for k, v in self.info.to_dict().items() if v is not None})

    # -- display -------------------------------------------------------------------------------
    def _repr_html_(self) -> str:
        from ..display.html import handle_html

        return handle_html(self)

    def __repr__(self) -> str:
        from ..display.text import handle_text

        return handle_text(self)


class SAEList(list):
    """A list of :class:`SAEHandle` (one per layer, in load order) with a notebook repr."""

    @property
    def layers(self) -> list[int | None]:
        return [h.layer for h in self]

    def by_layer(self, layer: int) -> SAEHandle:
        for h in self:
            if h.layer == layer:
                return h
        raise KeyError(f"no SAE at layer {layer}; layers here: {self.layers}")

    def to_weights(self) -> list[SAEWeights]:
        """Load every SAE as SAEWeights, one after the other, and keep them all (26 Gemma Scope 16k
        SAEs are ~7.9 GB in float32; chains should take the handles and load lazily instead)."""
        from tqdm.auto import tqdm

        return [h.to_weights() for h in tqdm(self, desc="loading SAEs", disable=len(self) < 3)]

    def __getitem__(self, i):  # slices stay SAELists
        r = super().__getitem__(i)
        return SAEList(r) if isinstance(i, slice) else r

    def _repr_html_(self) -> str:
        from ..display.html import saes_html

        return saes_html(self)

    def __repr__(self) -> str:
        from ..display.text import saes_text

        return saes_text(self)


# --------------------------------------------------------------------------------------------
# naming helpers
# --------------------------------------------------------------------------------------------
_GEMMA_ID = re.compile(r"^layer_(\d+)/width_(\w+?)/(canonical|average_l0_(\d+))$")
# Gemma Scope 2 (Gemma 3): layer, width, L0 label, optional second training seed, optional affine
# skip connection (transcoders); the non-"-all" transcoder releases prefix "transcoder/".
_GEMMA2_ID = re.compile(
    r"^(?:transcoder/)?layer_(\d+)_width_(\w+?)_l0_(small|medium|big)(?:_seed_(\d+))?(_affine)?$")
_L0_LABELS = ("small", "medium", "big")
_WIDTHS = {"4k": 4096, "16k": 16384, "32k": 32768, "65k": 65536, "131k": 131072,
           "262k": 262144, "524k": 524288, "1m": 1048576}


def _norm_width(width: Any) -> str | None:
    if width is None:
        return None
    if isinstance(width, int):
        for k, v in _WIDTHS.items():
            if v == width:
                return k
        raise SAELoadError(f"unknown SAE width {width}; Gemma Scope widths: {sorted(_WIDTHS.values())}")
    w = str(width).lower().removeprefix("width_")
    if w not in _WIDTHS:
        raise SAELoadError(f"unknown SAE width {width!r}; expected one of {list(_WIDTHS)}")
    return w


def _gemma_2_hook(repo_id: str, folder: str) -> tuple[int | None, str | None]:
    """Layer and hook as sae-lens' ``get_gemma_2_config_from_hf`` names them (pure string logic,
    mirrored here so that naming needs no sae-lens import; a test checks they agree)."""
    m = re.search(r"layer_(\d+)", folder)
    layer = int(m.group(1)) if m else (0 if "embedding" in folder else None)
    if "res" in repo_id and "embedding" not in folder:
        hook = f"blocks.{layer}.hook_resid_post"
    elif "res" in repo_id:
        hook = "hook_embed"
    elif "mlp" in repo_id:
        hook = f"blocks.{layer}.hook_mlp_out"
    elif "att" in repo_id:
        hook = f"blocks.{layer}.attn.hook_z"
    else:
        hook = None
    return layer, hook


def _gemma_3_hook(folder: str) -> tuple[int | None, str | None, str | None]:
    """Layer, hook and output hook as sae-lens' ``get_gemma_3_config_from_hf`` names them from the
    folder (same order of tests; mirrored so that naming needs no sae-lens import; a test checks
    they agree). Attention SAEs read ``attn.hook_z``, before the output projection: their inputs
    are n_heads × d_head wide, not d_model. Transcoders read ``hook_mlp_in``, write ``hook_mlp_out``."""
    return _gemma_scope_2_hooks(folder)


def _parse_layer(text: str) -> int | None:
    for pat in (r"blocks\.(\d+)\.", r"layer[_s]?\.?(\d+)", r"(?:^|[/_.-])l(\d+)(?:[/_.-]|$)",
                r"(?:^|[/_.-])(\d+)(?:[/_.-]|$)"):
        m = re.search(pat, text, flags=re.IGNORECASE)
        if m:
            return int(m.group(1))
    return None


def _hook_from_id(sae_id: str) -> str | None:
    return sae_id if re.fullmatch(r"blocks\.\d+\.[\w.]*hook_\w+", sae_id) else None


def _hub_weight_filename(h: SAEHandle) -> str | None:
    if h.conversion_func == "gemma_2":
        return "params.npz"
    if h.conversion_func == "gemma_3":
        return "params.safetensors"
    if h.conversion_func is None:
        return "sae_weights.safetensors"
    return None


def _cached_cfg(repo_id: str, folder: str) -> dict | None:
    """The sae-lens cfg.json of a hub SAE if it is already in the local HF cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, f"{folder}/cfg.json")
        if isinstance(hit, str):
            return json.loads(Path(hit).read_text())
    except Exception:  # a broken cache entry only costs us the metadata
        return None
    return None


def _handle_for(rel: _Release, sae_id: str, device: str, dtype: str) -> SAEHandle:
    folder = rel.saes[sae_id]
    npid = rel.neuronpedia.get(sae_id)
    width = l0 = hook_out = None
    g3 = _gemma_3_hook(folder) if rel.conversion_func == "gemma_3" else (None, None, None)
    if g3[1] is not None:  # Gemma Scope 2: names from the folder; L0 as sae-lens lists it
        layer, hook, hook_out = g3
        m = _GEMMA2_ID.match(sae_id)
        width = _WIDTHS.get(m.group(2)) if m else None
        l0 = float(rel.l0.get(sae_id) or 0) or None
    elif rel.conversion_func == "gemma_2":
        layer, hook = _gemma_2_hook(rel.repo_id, folder)
        m = re.search(r"width_(\w+?)/", folder + "/")
        width = _WIDTHS.get(m.group(1)) if m else None
        m = re.search(r"average_l0_(\d+)", folder)
        l0 = float(m.group(1)) if m else None
        if npid is None:
            npid = _canonical_neuronpedia(rel, folder)
    else:
        hook = _hook_from_id(sae_id)
        cfg = _cached_cfg(rel.repo_id, folder) if hook is None else None
        if cfg:
            hook = (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name")
        layer = _parse_layer(hook) if hook else _parse_layer(sae_id)
        l0 = float(rel.l0.get(sae_id) or 0) or None
    return SAEHandle(
        release=rel.name, sae_id=sae_id, layer=layer, hook_name=hook, model_name=rel.model,
        neuronpedia_id=npid, device=device, dtype=dtype, width=width, l0=l0,
        repo_id=rel.repo_id, folder=folder, conversion_func=rel.conversion_func, hook_name_out=hook_out,
    )


def _canonical_neuronpedia(rel: _Release, folder: str) -> str | None:
    """A non-canonical Gemma Scope id whose folder *is* the canonical SAE gets its Neuronpedia id
    (Neuronpedia hosts the canonical ones; the -canonical release points at the same folders)."""
    for other in _directory().values():
        if other.repo_id == rel.repo_id and other.name != rel.name:
            for sid, f in other.saes.items():
                if f == folder and other.neuronpedia.get(sid):
                    return other.neuronpedia[sid]
    return None


# --------------------------------------------------------------------------------------------
# load_saes
# --------------------------------------------------------------------------------------------
def load_saes(
    release: str | os.PathLike | Sequence[str | os.PathLike],
    layers: int | Iterable[int] | None = None,
    *,
    width: str | int = "16k",
    l0: str | int | None = "canonical",
    seed: int = 0,
    affine: bool | None = None,
    sae_ids: Sequence[str] | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> SAEList:
    """Name SAEs of a sae-lens release or on disk; returns lazy :class:`SAEHandle` s in layer order.

    Examples: ``load_saes("gemma-scope-2b-pt-res-canonical", layers=range(10, 15))``;
    ``load_saes("gemma-scope-2-1b-pt-res-all", layers=range(3), width="16k", l0="small")``.
    See the module docstring for the meaning of ``width``, ``l0``, ``seed``, ``affine`` and
    ``sae_ids``. Nothing is downloaded here; ``handle.to_weights()`` / ``handle.load()`` fetch
    through sae-lens (Gemma Scope 2 weights already in the HF cache load without the hub).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SAELoadError(f"seed must be an int >= 0 (0: the first training seed), got {seed!r}")
    if affine is not None and not isinstance(affine, bool):
        raise SAELoadError(f"affine must be True, False or None, got {affine!r}")
    if isinstance(release, (list, tuple)) or _looks_like_path(release):
        paths = [release] if not isinstance(release, (list, tuple)) else list(release)
        return _load_local(paths, layers, width=width, l0=l0, seed=seed, affine=affine, device=device, dtype=dtype)
    release = str(release)
    directory = _directory()
    if release not in directory:
        close = difflib.get_close_matches(release, directory, n=8, cutoff=0.4)
        rest = sorted(r for r in directory if r not in close)
        shown = close + rest[: max(0, 20 - len(close))]
        raise UnknownReleaseError(
            f"unknown SAE release {release!r}. "
            + (f"Did you mean: {', '.join(close)}? " if close else "")
            + f"Valid releases ({len(directory)}; closest first): {', '.join(shown)}"
            + (", ..." if len(directory) > len(shown) else "")
            + ". saematch_nb.sources.saes.list_releases() lists them all; a local folder works too."
        )
    rel = directory[release]
    if sae_ids is not None:
        if layers is not None:
            raise SAELoadError("give either sae_ids or layers, not both (sae_ids already fix the layers)")
        _no_gemma_2_variants(seed, affine, "sae_ids (the ids already name the seed and the skip connection)")
        ids = [sae_ids] if isinstance(sae_ids, str) else list(sae_ids)
        for sid in ids:
            _check_id(rel, sid)
    elif _is_gemma_scope_2(rel):
        ids = _select_gemma_2(rel, layers, width, l0, seed, affine)
    else:
        _no_gemma_2_variants(seed, affine, f"release {rel.name!r}")
        if rel.conversion_func == "gemma_2" and any(_GEMMA_ID.match(s) for s in rel.saes):
            ids = _select_gemma(rel, layers, width, l0)
        else:
            ids = _select_generic(rel, layers)
    handles = [_handle_for(rel, sid, device, dtype) for sid in ids]
    return SAEList(_sorted(handles))


def _no_gemma_2_variants(seed: int, affine: bool | None, where: str) -> None:
    if seed != 0 or affine is not None:
        raise SAELoadError(
            f"seed= and affine= choose among Gemma Scope 2 ids (`_seed_1`: a second training seed; "
            f"`_affine`: skip transcoders); they do not apply to {where}")


def _sorted(handles: list[SAEHandle]) -> list[SAEHandle]:
    return sorted(handles, key=lambda h: (h.layer is None, -1 if h.layer is None else h.layer))


def _check_id(rel: _Release, sid: str) -> None:
    if sid in rel.saes:
        return
    L = _id_layer(sid)
    at_layer = [s for s in rel.saes if L is not None and _id_layer(s) == L]
    choices = at_layer or difflib.get_close_matches(sid, rel.saes, n=10, cutoff=0.3) or list(rel.saes)[:10]
    raise UnknownSAEIdError(
        f"SAE id {sid!r} is not in release {rel.name!r} ({len(rel.saes)} ids). "
        + (f"Ids at that layer: {', '.join(sorted(choices))}" if at_layer
           else f"Closest valid ids: {', '.join(choices)}")
    )


def _id_layer(sid: str) -> int | None:
    """The layer of a Gemma Scope 1 or 2 id, also of a misspelt one ("layer_7_width_16k_l0_tiny")."""
    m = re.match(r"^(?:transcoder/)?layer_(\d+)[/_]", sid)
    return int(m.group(1)) if m else None


def _gemma_table(rel: _Release) -> dict[tuple[int, str], dict[str, str]]:
    """(layer, width) -> {"canonical" or "<L0>": sae_id}"""
    table: dict[tuple[int, str], dict[str, str]] = {}
    for sid in rel.saes:
        m = _GEMMA_ID.match(sid)
        if m:
            key = "canonical" if m.group(3) == "canonical" else m.group(4)
            table.setdefault((int(m.group(1)), m.group(2)), {})[key] = sid
    return table


def _select_gemma(rel: _Release, layers: Any, width: Any, l0: Any) -> list[str]:
    return _select_by_table(_gemma_table(rel), rel.name, layers, width, l0,
                            canonical_hint=not rel.name.endswith("canonical"))


def _select_by_table(table, where: str, layers, width, l0, canonical_hint=False, choose=None) -> list[str]:
    """Layers and width from ``table`` ((layer, width) -> options); then, per layer, ``choose(L, w,
    options)`` (default: Gemma Scope's L0 rules, ``_choose_gemma_1``) names the SAE."""
    w = _norm_width(width)
    avail_layers = sorted({L for (L, ww) in table if ww == w})
    if not avail_layers:
        widths = sorted({ww for (_, ww) in table}, key=lambda x: _WIDTHS.get(x, 0))
        raise UnknownSAEIdError(f"{where} has no SAEs of width {w!r}; widths available: {widths}")
    wanted = avail_layers if layers is None else _layer_list(layers)
    bad = [L for L in wanted if L not in avail_layers]
    if bad:
        valid = _span(avail_layers)
        elsewhere = sorted({ww for (L, ww) in table if L in bad}, key=lambda x: _WIDTHS.get(x, 0))
        raise LayerOutOfRangeError(
            f"layer(s) {bad} out of range for {where} at width {w}: valid layers are {valid}"
            + (f" (widths at layer(s) {bad}: {elsewhere})" if elsewhere else "")
        )
    if choose is None:
        choose = functools.partial(_choose_gemma_1, where=where, l0=l0, canonical_hint=canonical_hint)
    return [choose(L, w, table[(L, w)]) for L in wanted]


def _choose_gemma_1(L: int, w: str, opts: dict[str, str], *, where: str, l0: Any, canonical_hint: bool) -> str:
    l0s = sorted(int(k) for k in opts if k != "canonical")
    listing = f"L0s available at layer {L}, width {w}: {l0s}" + (
        " (and 'canonical')" if "canonical" in opts else "")
    if l0 == "canonical":
        if "canonical" not in opts:
            hint = (" Use release 'gemma-scope-2b-pt-res-canonical' (same files), or pick "
                    "l0=<int> or l0='nearest:<N>'." if canonical_hint else "")
            raise UnknownSAEIdError(f"{where} has no canonical SAE at layer {L}, width {w}.{hint} {listing}")
        return opts["canonical"]
    if l0 is None:
        if len(opts) != 1:
            raise UnknownSAEIdError(
                f"l0=None needs exactly one SAE per layer, but layer {L} width {w} has "
                f"{len(opts)}: choose l0=<int> or l0='nearest:<N>'. {listing}")
        return next(iter(opts.values()))
    if isinstance(l0, str) and l0.startswith("nearest:"):
        target = _nearest_target(l0)
        if not l0s:
            return opts["canonical"]
        best = min(l0s, key=lambda v: (abs(v - target), v))
        return opts[str(best)]
    if isinstance(l0, (int, float)) and not isinstance(l0, bool) or (isinstance(l0, str) and l0.isdigit()):
        key = str(int(l0))
        if key not in opts:
            raise UnknownSAEIdError(f"no SAE with average L0 {key} in {where}. {listing}")
        return opts[key]
    raise SAELoadError(
        f"l0={l0!r} not understood: use 'canonical', an int, 'nearest:<N>' or None")


def _nearest_target(l0: str) -> float:
    try:
        return float(l0.split(":", 1)[1])
    except ValueError:
        raise SAELoadError(f"l0={l0!r}: expected 'nearest:<number>', e.g. 'nearest:80'") from None


# -- Gemma Scope 2 -----------------------------------------------------------------------------
def _is_gemma_scope_2(rel: _Release) -> bool:
    return rel.conversion_func == "gemma_3" and any(_GEMMA2_ID.match(s) for s in rel.saes)


def _gemma_2_table(rel: _Release) -> dict[tuple[int, str], dict[tuple[str, int, bool], str]]:
    """(layer, width) -> {(L0 label, seed, affine): sae_id}; ids without ``_seed_`` are seed 0."""
    table: dict[tuple[int, str], dict[tuple[str, int, bool], str]] = {}
    for sid in rel.saes:
        m = _GEMMA2_ID.match(sid)
        if m:
            key = (m.group(3), int(m.group(4) or 0), bool(m.group(5)))
            table.setdefault((int(m.group(1)), m.group(2)), {})[key] = sid
    return table


def _select_gemma_2(rel: _Release, layers: Any, width: Any, l0: Any, seed: int, affine: bool | None) -> list[str]:
    table = _gemma_2_table(rel)
    transcoders = any(a for opts in table.values() for (_, _, a) in opts)
    if affine and not transcoders:
        raise SAELoadError(
            f"affine=True picks skip transcoders (`_affine` ids); {rel.name} has none. Releases with "
            "them: gemma-scope-2-<size>-<pt|it>-transcoders and -transcoders-all")
    variant = (seed, bool(affine))
    name = _variant_name(seed, bool(affine), transcoders)
    if l0 == "canonical" or l0 is not None and not isinstance(l0, str) or (
            isinstance(l0, str) and l0 not in _L0_LABELS and not l0.startswith("nearest:")):
        # say what exists at the layers asked (layers and width checked first, so it is valid)
        _select_by_table(table, rel.name, layers, width, None, choose=lambda L, w, opts: "")
        w = _norm_width(width)
        asked = sorted({L for (L, ww) in table if ww == w}) if layers is None else _layer_list(layers)
        why = ("none of its SAEs is canonical (that is Gemma Scope 1's naming)" if l0 == "canonical" else
               f"l0={l0!r} is not one of its L0 labels")
        folder = os.sep in rel.name  # a local folder of them: its L0s come from config.json
        raise UnknownSAEIdError(
            f"{rel.name} is a Gemma Scope 2 {'folder' if folder else 'release'}, which names each SAE's "
            f"sparsity by label: pass l0='small', 'medium' or 'big', or l0='nearest:<N>' (by the L0 "
            f"{'in each config.json' if folder else 'sae-lens lists'}); {why}. "
            f"{_gemma_2_listing(rel, table, asked, w)}")

    def choose(L: int, w: str, opts: dict) -> str:
        labels = {k[0]: sid for k, sid in opts.items() if k[1:] == variant}
        if not labels:
            there = sorted({ww for (LL, ww), o in table.items() if LL == L and any(k[1:] == variant for k in o)},
                           key=lambda x: _WIDTHS.get(x, 0))
            raise UnknownSAEIdError(
                f"{rel.name} has no {name + ' ' if name else ''}SAE at layer {L}, width {w}"
                + (f" (it has {name} SAEs at layer {L} at width(s) {there})" if there else "") + ". "
                + _gemma_2_listing(rel, table, [L], w))
        if l0 is None:
            if len(labels) != 1:
                raise UnknownSAEIdError(
                    f"l0=None needs exactly one SAE per layer, but {rel.name} has {len(labels)} at "
                    f"layer {L}, width {w}: choose l0='small', 'medium' or 'big'. "
                    f"{_gemma_2_listing(rel, table, [L], w)}")
            return next(iter(labels.values()))
        if l0.startswith("nearest:"):
            target = _nearest_target(l0)
            return min(labels.values(), key=lambda sid: (abs(rel.l0.get(sid, 0) - target), rel.l0.get(sid, 0)))
        if l0 not in labels:
            raise UnknownSAEIdError(
                f"{rel.name} has no l0={l0!r} {name + ' ' if name else ''}SAE at layer {L}, width {w}. "
                f"{_gemma_2_listing(rel, table, [L], w)}")
        return labels[l0]

    return _select_by_table(table, rel.name, layers, width, l0, choose=choose)


def _variant_name(seed: int, affine: bool, transcoders: bool) -> str:
    """How errors and listings name a variant: "" for the plain SAEs, else "seed=1", "affine=True"..."""
    parts = ([f"seed={seed}"] if seed else []) + ([f"affine={affine}"] if transcoders else [])
    return ", ".join(parts)


def _gemma_2_listing(rel: _Release, table: dict, layers: list[int], w: str) -> str:
    """What exists at ``layers`` and width ``w``, e.g. "At layer 7, width 262k: small (L0 18),
    medium (L0 54), big (L0 132); seed=1: medium (L0 54)." Layers with the same choices are
    listed once."""
    transcoders = any(a for opts in table.values() for (_, _, a) in opts)
    groups: dict[str, list[int]] = {}
    for L in layers:
        by_variant: dict[tuple[int, bool], list[str]] = {}
        for (label, seed, affine), sid in sorted(table.get((L, w), {}).items(),
                                                 key=lambda kv: (kv[0][1], kv[0][2], _L0_LABELS.index(kv[0][0]))):
            by_variant.setdefault((seed, affine), []).append(f"{label} (L0 {rel.l0.get(sid, 0):g})")
        parts = [(f"{_variant_name(*v, transcoders)}: " if _variant_name(*v, transcoders) else "")
                 + ", ".join(labels) for v, labels in sorted(by_variant.items())]
        groups.setdefault("; ".join(parts) or "nothing", []).append(L)
    out = []
    for i, (text, Ls) in enumerate(groups.items()):
        if i == 6:  # keep the message readable: name the other layers only
            rest = sorted(L for Ls_ in list(groups.values())[6:] for L in Ls_)
            out.append(f"(Layers {_span(rest)} not shown; pass layers=[...] to see them.)")
            break
        where = f"layer {Ls[0]}" if len(Ls) == 1 else f"layers {_span(Ls)}"
        out.append(f"At {where}, width {w}: {text}.")
    return " ".join(out)


def _span(Ls: list[int]) -> str:
    """[0, 1, ..., 25] -> "0..25"; a short or gapped list as it is."""
    return f"{Ls[0]}..{Ls[-1]}" if len(Ls) > 2 and Ls == list(range(Ls[0], Ls[-1] + 1)) else str(Ls)


def _layer_list(layers: Any) -> list[int]:
    if isinstance(layers, bool):
        raise SAELoadError("layers must be an int or an iterable of ints")
    if isinstance(layers, int):
        return [layers]
    try:
        out = [int(x) for x in layers]
    except (TypeError, ValueError):
        raise SAELoadError(f"layers must be an int or an iterable of ints, got {layers!r}") from None
    return out


def _select_generic(rel: _Release, layers: Any) -> list[str]:
    by_layer: dict[int | None, list[str]] = {}
    for sid in rel.saes:
        hook = _hook_from_id(sid)
        by_layer.setdefault(_parse_layer(hook or sid), []).append(sid)
    known = sorted(L for L in by_layer if L is not None)
    if layers is None:
        if len(by_layer) == len(rel.saes) and None not in by_layer:
            return list(rel.saes)
        raise SAELoadError(
            f"release {rel.name!r} does not have exactly one SAE per layer; pass sae_ids=[...]. "
            f"Its ids: {', '.join(list(rel.saes)[:20])}{', ...' if len(rel.saes) > 20 else ''}")
    out = []
    for L in _layer_list(layers):
        if L not in by_layer:
            raise LayerOutOfRangeError(
                f"release {rel.name!r} has no SAE at layer {L}: layers available are {known}")
        if len(by_layer[L]) > 1:
            raise SAELoadError(
                f"release {rel.name!r} has {len(by_layer[L])} SAEs at layer {L}: pass sae_ids=[...] "
                f"with one of {by_layer[L]}")
        out.append(by_layer[L][0])
    return out


# --------------------------------------------------------------------------------------------
# local folders
# --------------------------------------------------------------------------------------------
def _looks_like_path(x: Any) -> bool:
    if isinstance(x, os.PathLike):
        return True
    s = str(x)
    return os.path.exists(os.path.expanduser(s)) or s.startswith(("/", "./", "../", "~"))


# the weights file of each folder format: sae-lens, Gemma Scope (Gemma 2), Gemma Scope 2 (Gemma 3)
_WEIGHT_FILES = ("sae_weights.safetensors", "params.npz", "params.safetensors")
_FORMATS = ("cfg.json + sae_weights.safetensors (sae-lens), params.npz (Gemma Scope) or "
            "params.safetensors + config.json (Gemma Scope 2)")


def _is_sae_folder(p: Path) -> bool:
    return any((p / name).exists() for name in _WEIGHT_FILES)


def _weights_file(p: Path) -> Path:
    for name in _WEIGHT_FILES:
        if (p / name).exists():
            return p / name
    raise SAELoadError(f"{p} is not an SAE folder: it holds none of {_FORMATS}")


def _load_local(paths, layers, *, width, l0, seed, affine, device, dtype) -> SAEList:
    direct: list[Path] = []  # SAE folders given as such: `layers` filters them
    chosen: list[Path] = []  # picked inside a folder of many SAEs: `layers` already applied
    for raw in paths:
        p = Path(os.path.expanduser(str(raw)))
        if p.is_file() and p.name in (*_WEIGHT_FILES, "cfg.json", "config.json"):
            p = p.parent
        if not p.exists():
            raise SAELoadError(f"{p} does not exist. Give a folder with {_FORMATS}, or a sae-lens release name.")
        if _is_sae_folder(p):
            _no_gemma_2_variants(seed, affine, f"an SAE folder given as such ({p.name}: its name fixes them)")
            direct.append(p)
            continue
        if not p.is_dir():
            raise SAELoadError(f"{p} is a file, not an SAE folder: give the folder that holds {_FORMATS}.")
        found = sorted({q.parent for pat in _WEIGHT_FILES
                        for q in p.rglob(pat) if len(q.relative_to(p).parts) <= 6})
        if not found:
            raise SAELoadError(f"no SAE found in or under {p}: an SAE folder holds {_FORMATS}.")
        chosen.extend(_select_in_snapshot(p, found, layers, width, l0, seed, affine))
    handles = [_local_handle(f, device, dtype) for f in chosen]
    direct_handles = [_local_handle(f, device, dtype) for f in direct]
    if layers is not None:
        wanted = set(_layer_list(layers))
        have = sorted({h.layer for h in handles + direct_handles if h.layer is not None})
        bad = sorted(wanted - set(have))
        if bad:
            raise LayerOutOfRangeError(f"layer(s) {bad} not among the given SAEs: their layers are {have}")
        direct_handles = [h for h in direct_handles if h.layer in wanted]
        handles = [h for h in handles if h.layer in wanted]
    return SAEList(_sorted(handles + direct_handles))


def _select_in_snapshot(root: Path, found: list[Path], layers, width, l0, seed, affine) -> list[Path]:
    """A folder holding many SAEs (e.g. a Gemma Scope snapshot): choose like a release."""
    rels = {f: "/".join(f.relative_to(root).parts) for f in found}
    gs2 = {f: r for f, r in rels.items() if (f / "params.safetensors").exists() and _GEMMA2_ID.match(f.name)}
    if gs2:
        return _select_in_gemma_2_snapshot(root, gs2, layers, width, l0, seed, affine)
    _no_gemma_2_variants(seed, affine, f"{root} (not a folder of Gemma Scope 2 SAEs)")
    table: dict[tuple[int, str], dict[str, str]] = {}
    canonical = _canonical_folders()
    for f, r in rels.items():
        m = re.search(r"layer_(\d+)/width_(\w+?)/average_l0_(\d+)$", r)
        if m:
            opts = table.setdefault((int(m.group(1)), m.group(2)), {})
            opts[m.group(3)] = r
            if r in canonical:
                opts["canonical"] = r
    if not table:  # not Gemma-Scope shaped: everything, filtered by layers later
        return found
    chosen = set(_select_by_table(table, str(root), layers, width, l0))
    return [f for f, r in rels.items() if r in chosen]


def _select_in_gemma_2_snapshot(root: Path, rels: dict[Path, str], layers, width, l0, seed, affine) -> list[Path]:
    """Gemma Scope 2 folders under ``root``: chosen like a release (the folder names are the ids;
    L0s from each config.json). One kind per call: the hub repo keeps residual, MLP, attention and
    transcoder SAEs side by side, with the same ids in each."""
    sites = sorted({str(Path(r).parent) for r in rels.values()})
    if len(sites) > 1:
        raise SAELoadError(
            f"{root} holds Gemma Scope 2 SAEs of {len(sites)} kinds ({', '.join(sites)}), with the same "
            f"ids in each: give the folder of one kind, e.g. load_saes({str(root / sites[0])!r}, ...)")
    by_id = {f.name: f for f in rels}
    l0s = {}
    for name, f in by_id.items():
        try:
            l0s[name] = float(_read_json(f / "config.json").get("l0") or 0)
        except (ValueError, TypeError, OSError):  # an unreadable config only loses the listed L0
            l0s[name] = 0.0
    rel = _Release(str(root), "", "", "gemma_3", {n: n for n in by_id}, {}, l0s)
    return [by_id[n] for n in _select_gemma_2(rel, layers, width, l0, seed, affine)]


@functools.lru_cache(maxsize=1)
def _canonical_folders() -> frozenset[str]:
    out = set()
    for rel in _directory().values():
        if rel.conversion_func == "gemma_2":
            out.update(f for sid, f in rel.saes.items() if sid.endswith("/canonical"))
    return frozenset(out)


def _local_handle(p: Path, device: str, dtype: str) -> SAEHandle:
    p = p.resolve()
    if (p / "sae_weights.safetensors").exists():
        cfg = json.loads((p / "cfg.json").read_text()) if (p / "cfg.json").exists() else {}
        meta = cfg.get("metadata") or {}
        hook = meta.get("hook_name") or cfg.get("hook_name")
        return SAEHandle(
            release=meta.get("release"), sae_id=meta.get("sae_id"),
            layer=_parse_layer(hook) if hook else _parse_layer(p.name),
            hook_name=hook, model_name=meta.get("model_name") or cfg.get("model_name"),
            neuronpedia_id=meta.get("neuronpedia_id") or cfg.get("neuronpedia_id"),
            path=str(p), device=device, dtype=dtype, width=cfg.get("d_sae"),
        )
    if not (p / "params.npz").exists():
        return _local_gemma_2_handle(p, device, dtype)
    # Gemma Scope params.npz: the name is all we have; read it the way sae-lens' gemma_2 loader does
    repo = _repo_from_path(p)
    parts = p.parts
    folder = "/".join(parts[-3:]) if len(parts) >= 3 else p.name
    layer, hook = _gemma_2_hook(repo or "res", folder)  # no repo in the path: assume residual
    m = re.search(r"width_(\w+?)/", folder + "/")
    l0m = re.search(r"average_l0_(\d+)", folder)
    npid = None
    if repo:
        for rel in _directory().values():
            if rel.repo_id == repo:
                npid = npid or _canonical_neuronpedia(rel, folder)
    model = _model_from_repo(repo) if repo else None
    return SAEHandle(
        release=None, sae_id=folder if _GEMMA_ID.match(folder) else None,
        layer=layer, hook_name=hook, model_name=model, neuronpedia_id=npid, path=str(p),
        device=device, dtype=dtype, width=_WIDTHS.get(m.group(1)) if m else None,
        l0=float(l0m.group(1)) if l0m else None, repo_id=repo, folder=folder,
        conversion_func="gemma_2",
    )


def _local_gemma_2_handle(p: Path, device: str, dtype: str) -> SAEHandle:
    """A Gemma Scope 2 folder: hooks from its config.json (else from the hub's folder names); id,
    L0 and Neuronpedia id from sae-lens' directory when the path is the hub's layout."""
    try:
        cfg = _read_json(p / "config.json")
    except ValueError as exc:
        raise SAELoadError(f"{p / 'config.json'} is not valid JSON ({exc}); take it from the hub again") from None
    folder = "/".join(p.parts[-2:])
    layer, hook, hook_out = _gemma_scope_2_hooks(folder, cfg)
    if hook is None:
        raise SAELoadError(
            f"{p} holds a params.safetensors, but neither a config.json naming its hook point "
            "(hf_hook_point_in) nor the hub's folder names (resid_post/, attn_out/, mlp_out/, transcoder/ "
            "... + layer_<L>_width_...) say which hook it reads. Put the folder's config.json from the hub "
            "next to it, or keep the hub's folder layout.")
    repo = _repo_from_path(p)
    sid = npid = l0 = None
    for rel in _directory().values() if repo is not None else ():
        if rel.repo_id == repo and rel.conversion_func == "gemma_3":
            for s, f in rel.saes.items():
                if f == folder:
                    sid, npid, l0 = s, rel.neuronpedia.get(s), float(rel.l0.get(s) or 0) or None
    m = _GEMMA2_ID.match(p.name)
    if l0 is None and isinstance(cfg.get("l0"), (int, float)):
        l0 = float(cfg["l0"]) or None
    model = _gemma_scope_2_model_name(cfg.get("model_name")) or (_model_from_repo(repo) if repo else None)
    return SAEHandle(
        release=None, sae_id=sid or (p.name if m else None), layer=layer, hook_name=hook, model_name=model,
        neuronpedia_id=npid, path=str(p), device=device, dtype=dtype,
        width=_WIDTHS.get(m.group(2)) if m else None, l0=l0, repo_id=repo, folder=folder,
        conversion_func="gemma_3", hook_name_out=hook_out,
    )


def _repo_from_path(p: Path) -> str | None:
    """HF cache paths look like .../models--google--gemma-scope-2b-pt-res/snapshots/<sha>/layer_..."""
    for part in p.parts:
        if part.startswith("models--"):
            return part[len("models--"):].replace("--", "/")
    for part in p.parts:
        if part.startswith("gemma-scope-"):
            return f"google/{part}"
    return None


def _model_from_repo(repo: str) -> str | None:
    for rel in _directory().values():
        if rel.repo_id == repo:
            return rel.model
    return None


def _npz_disk_loader(path, device, cfg_overrides=None, *, handle: SAEHandle):
    """sae-lens disk converter for a Gemma Scope ``params.npz`` folder: the config sae-lens'
    gemma_2 loader would build, with sizes read from the file instead of the width name."""
    import numpy as np
    import torch

    with np.load(Path(path) / "params.npz") as z:
        sd = {("W_" + k[2:] if k.startswith("w_") else k): torch.tensor(z[k], dtype=torch.float32)
              for k in z.files}
    if "scaling_factor" in sd and bool(torch.all(sd["scaling_factor"] == 1)):
        del sd["scaling_factor"]  # as sae-lens' gemma_2 loader: a unit scale is no scale
    d_in, d_sae = sd["W_enc"].shape
    cfg = {
        "architecture": "jumprelu", "d_in": int(d_in), "d_sae": int(d_sae), "dtype": "float32",
        "device": device or "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
        "metadata": {"hook_name": handle.hook_name, "model_name": handle.model_name,
                     "neuronpedia_id": handle.neuronpedia_id, "sae_lens_version": "6.0.0",
                     "prepend_bos": True, "context_size": 1024},
    }
    if cfg_overrides:
        cfg.update(cfg_overrides)
    return cfg, {k: v.to(device or "cpu") for k, v in sd.items()}


# -- Gemma Scope 2 without the hub -------------------------------------------------------------
# sae-lens' gemma_3 loader (get_gemma_3_config_from_hf + gemma_3_sae_huggingface_loader) reads the
# tensor shapes over HTTP even for a cached file. The converters below build the same config and
# state dict from files on disk: same key renames (w_enc -> W_enc ...), W_skip the transposed
# affine_skip_connection, tensors cast to the config's dtype, nothing rescaled. A test compares
# both paths on the same files.
def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _gemma_3_cached_files(h: SAEHandle) -> tuple[str, str | None] | None:
    """(params.safetensors, config.json or None) of a hub handle from the local HF cache, without
    network; None when the weights are not cached (or for CLT files, which sae-lens reads otherwise)."""
    if h.repo_id is None or h.folder is None or "clt" in h.folder:
        return None
    from huggingface_hub import try_to_load_from_cache

    params = try_to_load_from_cache(h.repo_id, f"{h.folder}/params.safetensors")
    if not isinstance(params, str):
        return None
    cfg = try_to_load_from_cache(h.repo_id, f"{h.folder}/config.json")
    return params, cfg if isinstance(cfg, str) else None


def _gemma_3_cache_loader(repo_id, folder_name, device="cpu", force_download=False, cfg_overrides=None,
                          *, files: tuple[str, str | None]):
    """sae-lens converter (the gemma_3 one's signature) reading the cached files."""
    params, cfg_file = files
    if cfg_file is not None:
        raw_cfg = json.loads(Path(cfg_file).read_text())
    else:  # what sae-lens does when the repo has no config.json for the folder
        from sae_lens.loading.pretrained_sae_loaders import _infer_gemma_3_raw_cfg_dict

        raw_cfg = _infer_gemma_3_raw_cfg_dict(repo_id, folder_name)
    return (*_gemma_3_convert(Path(params), raw_cfg, _gemma_3_hook(folder_name), device, cfg_overrides,
                              where=f"{repo_id}/{folder_name}"), None)


def _gemma_3_disk_loader(path, device, cfg_overrides=None, *, handle: SAEHandle):
    """sae-lens disk converter for a Gemma Scope 2 folder; hooks as the handle read them from
    config.json (or the folder name)."""
    path = Path(path)
    raw_cfg = _read_json(path / "config.json")
    if not raw_cfg:  # no config.json: the architecture is known, the model from the handle
        raw_cfg = {"architecture": "jump_relu", "model_name": handle.model_name}
    overrides = {"neuronpedia_id": handle.neuronpedia_id} if handle.neuronpedia_id else {}
    overrides.update(cfg_overrides or {})
    return _gemma_3_convert(path / "params.safetensors", raw_cfg,
                            (handle.layer, handle.hook_name, handle.hook_name_out), device, overrides, where=str(path))


def _gemma_3_convert(params: Path, raw_cfg: dict, hooks: tuple, device, cfg_overrides, *, where: str):
    """(config dict, state dict) as sae-lens' gemma_3 loader builds them, from a local file."""
    import torch

    if raw_cfg.get("architecture") != "jump_relu":
        raise SAELoadError(f"{where}: config.json says architecture {raw_cfg.get('architecture')!r}; "
                           "Gemma Scope 2 SAEs are 'jump_relu' (is this a Gemma Scope 2 folder?)")
    _, hook, hook_out = hooks
    if hook is None:
        raise SAELoadError(f"{where}: cannot tell which hook this Gemma Scope 2 SAE reads")
    model_name = _gemma_scope_2_model_name(raw_cfg.get("model_name"))
    architecture, d_out = "jumprelu", None
    dtype = str({"dtype": "float32", **(cfg_overrides or {})}["dtype"]).removeprefix("torch.")
    try:
        raw = _read_gemma_scope_2(params, dtype=getattr(torch, dtype))
    except KeyError as exc:
        raise SAELoadError(exc.args[0]) from None
    d_in, d_sae = (int(n) for n in raw["w_enc"].shape)
    if hook_out is not None:
        # sae-lens reads affine_connection (default False); without the key, the file decides
        skip = raw_cfg.get("affine_connection", "affine_skip_connection" in raw)
        architecture = "jumprelu_skip_transcoder" if skip else "jumprelu_transcoder"
        d_out = int(raw["w_dec"].shape[-1])
    cfg = {
        "architecture": architecture, "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
        "model_name": model_name, "hook_name": hook, "hook_head_index": None,
        "finetuning_scaling_factor": False, "sae_lens_training_version": None, "prepend_bos": True,
        "dataset_path": "monology/pile-uncopyrighted", "context_size": 1024,
        "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
        "hf_hook_name": raw_cfg.get("hf_hook_point_in"),
    }
    if hook_out is not None:
        cfg["hook_name_out"] = hook_out
        cfg["hf_hook_name_out"] = raw_cfg.get("hf_hook_point_out")
    if d_out is not None:
        cfg["d_out"] = d_out
    if device is not None:
        cfg["device"] = device
    cfg.update(cfg_overrides or {})
    dev = device or "cpu"
    state = {"W_enc": raw["w_enc"], "W_dec": raw["w_dec"], "b_enc": raw["b_enc"], "b_dec": raw["b_dec"],
             "threshold": raw["threshold"]}
    if "affine_skip_connection" in raw:  # stored [d_in, d_out]; sae-lens' W_skip is [d_out, d_in]
        state["W_skip"] = raw["affine_skip_connection"].T.contiguous()
    return cfg, {k: v.to(dev) for k, v in state.items()}
