"""The project's own SAE weights type and the conversion of whatever the user has in hand into it.

Pure torch/numpy: sae-lens SAE objects and lazy handles are recognised by duck typing, so this
module never imports sae-lens.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import SaematchWarning
from . import architectures

ARCHITECTURES = tuple(architectures.ARCHITECTURES)


class TranscoderWarning(SaematchWarning):
    """A transcoder was converted to SAEWeights: its decoder writes another hook than its encoder reads."""


@dataclass(frozen=True)
class SAEInfo:
    """Identity of an SAE: where it came from and where it reads the model."""

    layer: int | None = None
    hook_name: str | None = None
    model_name: str | None = None
    release: str | None = None
    sae_id: str | None = None
    neuronpedia_id: str | None = None  # e.g. "gemma-2-2b/12-gemmascope-res-16k"
    path: str | None = None

    @property
    def label(self) -> str:
        """Short human label: the sae id, else the hook, else the layer."""
        if self.sae_id:
            return self.sae_id
        if self.hook_name:
            return self.hook_name
        if self.layer is not None:
            return f"layer {self.layer}"
        return "SAE"

    def neuronpedia_url(self, feature: int | None = None) -> str | None:
        """Feature page (or SAE page when feature is None) on Neuronpedia, if the id is known."""
        if not self.neuronpedia_id:
            return None
        base = f"https://neuronpedia.org/{self.neuronpedia_id}"
        return base if feature is None else f"{base}/{int(feature)}"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SAEInfo":
        d = dict(d or {})
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


@dataclass(frozen=True, eq=False)
class SAEWeights:
    """Weights of one SAE in the sae-lens layout (float32, CPU unless moved).

    W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], threshold [d_sae]
    (JumpReLU only; None for ReLU / TopK). ``folded`` records whether :func:`fold` produced it.
    """

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor | None = None
    architecture: str = "jumprelu"
    k: int | None = None  # TopK only
    apply_b_dec_to_input: bool = False
    info: SAEInfo = field(default_factory=SAEInfo)
    folded: bool = False
    # memo (the fingerprint): never passed on by dataclasses.replace, whose result is another SAE
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown SAE architecture {self.architecture!r}; expected one of {ARCHITECTURES}"
            )
        check_float(f"SAE weights ({self.info.label})", W_enc=self.W_enc, b_enc=self.b_enc, W_dec=self.W_dec,
                     b_dec=self.b_dec, threshold=self.threshold)
        d_in, d_sae = self.W_enc.shape if self.W_enc.ndim == 2 else (None, None)
        problems = []
        if self.W_enc.ndim != 2:
            problems.append(f"W_enc must be 2-D [d_in, d_sae], got shape {tuple(self.W_enc.shape)}")
        else:
            if tuple(self.W_dec.shape) != (d_sae, d_in):
                problems.append(
                    f"W_dec must be [d_sae, d_in] = [{d_sae}, {d_in}], got {tuple(self.W_dec.shape)}"
                )
            if tuple(self.b_enc.shape) != (d_sae,):
                problems.append(f"b_enc must be [{d_sae}], got {tuple(self.b_enc.shape)}")
            if tuple(self.b_dec.shape) != (d_in,):
                problems.append(f"b_dec must be [{d_in}], got {tuple(self.b_dec.shape)}")
            if self.threshold is not None and tuple(self.threshold.shape) != (d_sae,):
                problems.append(f"threshold must be [{d_sae}], got {tuple(self.threshold.shape)}")
            if d_sae == 0 or d_in == 0:  # fails much later otherwise, deep inside the criterion
                problems.append(f"it is empty (d_in={d_in}, d_sae={d_sae}): an SAE needs at least one "
                                "feature and one input dimension; check the weights that were loaded")
        if self.arch.needs_threshold and self.threshold is None:
            problems.append(f"a {self.arch.label} SAE needs a threshold")
        if self.arch.needs_k and not self.k:
            problems.append(f"a {self.arch.label} SAE needs k")
        if problems:
            raise ValueError(f"inconsistent SAE weights ({self.info.label}): " + "; ".join(problems))

    # -- shapes -------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    # -- the SAE function ---------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    @property
    def arch(self) -> architectures.Architecture:
        """The :class:`~saematch_nb.core.architectures.Architecture` object (encode, fold, one
        feature's activation)."""
        return architectures.get(self.architecture)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.arch.encode(self, self.pre_acts(x))

    def feature_activation(self, x: torch.Tensor, feature: int) -> torch.Tensor:
        """Activation of one feature on inputs ``x`` [..., d_in] (exact for every architecture)."""
        return self.arch.feature_activation(self, x, int(feature))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    __call__ = forward

    # -- identity -----------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 of the raw weights (hex, first 16 chars): identifies the SAE a result came from."""
        fp = self._cache.get("fingerprint")
        if fp is None:
            fp = _hash_weights(self)
            self._cache["fingerprint"] = fp
        return fp

    def with_info(self, **kw: Any) -> "SAEWeights":
        return replace(self, info=replace(self.info, **kw))

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "SAEWeights":
        conv = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        moved = replace(
            self,
            W_enc=conv(self.W_enc), b_enc=conv(self.b_enc), W_dec=conv(self.W_dec),
            b_dec=conv(self.b_dec), threshold=conv(self.threshold),
        )
        if dtype is None or dtype == self.W_enc.dtype:  # the same numbers elsewhere: the same hash
            moved._cache.update(self._cache)
        return moved

    def state_dict(self) -> dict[str, torch.Tensor]:
        d = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.threshold is not None:
            d["threshold"] = self.threshold
        return d

    def __repr__(self) -> str:
        return (
            f"SAEWeights({self.info.label}, {self.architecture}, d_in={self.d_in}, "
            f"d_sae={self.d_sae}{', folded' if self.folded else ''})"
        )

    def _repr_html_(self) -> str:
        from ..display import html  # lazy: core does not depend on display at import time

        return html.weights_html(self)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, Any],
        *,
        architecture: str | None = None,
        info: SAEInfo | None = None,
        **kw: Any,
    ) -> "SAEWeights":
        """From a mapping with keys W_enc, b_enc, W_dec, b_dec and optionally threshold."""
        missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in arrays]
        if missing:
            raise KeyError(
                f"SAE weights are missing {missing}; expected keys W_enc, b_enc, W_dec, b_dec "
                f"(and threshold for JumpReLU), got {sorted(arrays)}"
            )
        t = {k: _as_f32(arrays[k], k) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
        thr = arrays.get("threshold")
        if thr is None and "log_threshold" in arrays:
            thr = torch.exp(_as_f32(arrays["log_threshold"], "log_threshold"))
        thr = None if thr is None else _as_f32(thr, "threshold")
        arch = architecture or ("jumprelu" if thr is not None else "relu")
        return cls(threshold=thr, architecture=arch, info=info or SAEInfo(), **t, **kw)

    @classmethod
    def from_npz(cls, path: str | os.PathLike, *, info: SAEInfo | None = None) -> "SAEWeights":
        """Gemma Scope's ``params.npz`` (keys W_enc, W_dec, b_enc, b_dec, threshold)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no params.npz at {path}")
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        return cls.from_arrays(arrays, info=info or SAEInfo(path=str(path)))


def _hash_weights(w: SAEWeights) -> str:
    """The full-weight sha256 behind ``SAEWeights.fingerprint`` (one pass over every parameter)."""
    h = hashlib.sha256()
    for t in (w.W_enc, w.b_enc, w.W_dec, w.b_dec, w.threshold):
        if t is None:
            h.update(b"none")
            continue
        a = t.detach().to("cpu", torch.float32).contiguous().numpy()
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    h.update(f"{w.architecture}|{w.k}|{w.apply_b_dec_to_input}".encode())
    return h.hexdigest()[:16]


_FLOAT_HINT = ("SAE weights must be floating point (float32, float16, bfloat16 or float64); integer, bool "
               "or complex weights are not an SAE's (a cast such as .to(torch.int64) truncates them, and "
               "folding would truncate again). Load or keep the weights as floats (e.g. .float(), "
               "np.asarray(w, np.float32)) and check where the other dtype came from")


def _not_float(name: str, dtype: Any) -> TypeError:
    return TypeError(f"{name} has dtype {str(dtype).replace('torch.', '')}: {_FLOAT_HINT}")


def check_float(label: str, **tensors: Any) -> None:
    """Every parameter a torch float tensor: an int SAE folded by θ = 2 is truncated to zeros, a
    bool one matches everything; both silently, so they are refused where SAEWeights are made."""
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{label}: {name} must be a torch.Tensor, got "
                            f"{type(t).__name__} (SAEWeights.from_arrays / saematch_nb.as_weights convert arrays)")
        if not t.is_floating_point():
            raise _not_float(f"{label}: {name}", t.dtype)


def _as_f32(a: Any, name: str = "a weight") -> torch.Tensor:
    # refused before the float32 cast, which would hide where integers came from
    if isinstance(a, torch.Tensor):
        if not a.is_floating_point():
            raise _not_float(name, a.dtype)
        return a.detach().to(torch.float32).cpu()
    arr = np.asarray(a)
    if arr.dtype.kind != "f":
        raise _not_float(name, arr.dtype)
    return torch.as_tensor(arr, dtype=torch.float32)


def as_weights(obj: Any) -> SAEWeights:
    """Convert what a user has in hand into :class:`SAEWeights`.

    Accepts: SAEWeights; a lazy handle (anything with ``to_weights()``, e.g. sources' SAEHandle);
    a path to a Gemma Scope ``params.npz``, a sae-lens folder (``cfg.json`` +
    ``sae_weights.safetensors``) or a Gemma Scope 2 folder (``params.safetensors`` + ``config.json``);
    a mapping of arrays; or a sae-lens SAE object (recognised by its W_enc/W_dec/b_enc/b_dec
    attributes and ``cfg``).
    """
    if isinstance(obj, SAEWeights):
        return obj
    if hasattr(obj, "to_weights") and callable(obj.to_weights):
        return obj.to_weights()
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        if p.is_dir() and (p / "params.npz").exists():
            p = p / "params.npz"
        if p.suffix == ".npz":
            return SAEWeights.from_npz(p)
        if p.is_dir() and (p / "sae_weights.safetensors").exists():
            return _from_saelens_folder(p)
        if p.name == "params.safetensors" and p.is_file():
            p = p.parent
        if p.is_dir() and (p / "params.safetensors").exists():
            return _from_gemma_scope_2_folder(p)
        raise FileNotFoundError(
            f"{p} is neither a params.npz file nor a sae-lens folder (cfg.json + sae_weights.safetensors) "
            "nor a Gemma Scope 2 folder (params.safetensors + config.json)"
        )
    if isinstance(obj, Mapping):
        return SAEWeights.from_arrays(obj)
    if all(hasattr(obj, a) for a in ("W_enc", "W_dec", "b_enc", "b_dec")):
        return _from_saelens_object(obj)
    raise TypeError(
        f"cannot use {type(obj).__name__} as an SAE: pass a sae-lens SAE, a handle from "
        "saematch_nb.load_saes, SAEWeights, a params.npz path or a sae-lens folder"
    )


def _cfg_get(cfg: Any, name: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _from_saelens_object(sae: Any) -> SAEWeights:
    cfg = getattr(sae, "cfg", None)
    thr = getattr(sae, "threshold", None)
    if thr is None and hasattr(sae, "log_threshold"):
        thr = torch.exp(sae.log_threshold)
    arch = architectures.from_saelens(sae).name
    meta = _cfg_get(cfg, "metadata")
    hook = _cfg_get(meta, "hook_name") or _cfg_get(cfg, "hook_name")
    info = SAEInfo(
        layer=layer_from_hook(hook),
        hook_name=hook,
        model_name=_cfg_get(meta, "model_name") or _cfg_get(cfg, "model_name"),
        release=_cfg_get(meta, "release"),
        sae_id=_cfg_get(meta, "sae_id"),
        neuronpedia_id=_cfg_get(meta, "neuronpedia_id"),
    )
    k = _cfg_get(cfg, "k")
    arch_name = _cfg_get(cfg, "architecture")
    arch_name = str(arch_name() if callable(arch_name) else arch_name or "")
    if "transcoder" in arch_name:
        _warn_transcoder(arch_name, hook, _cfg_get(meta, "hook_name_out") or _cfg_get(cfg, "hook_name_out"),
                         getattr(sae, "W_skip", None) is not None)
    return SAEWeights(
        W_enc=_as_f32(sae.W_enc, "W_enc"), b_enc=_as_f32(sae.b_enc, "b_enc"), W_dec=_as_f32(sae.W_dec, "W_dec"),
        b_dec=_as_f32(sae.b_dec, "b_dec"),
        threshold=None if (thr is None or arch != "jumprelu") else _as_f32(thr, "threshold"),
        architecture=arch, k=int(k) if (arch == "topk" and k) else None,
        apply_b_dec_to_input=bool(_cfg_get(cfg, "apply_b_dec_to_input", False)), info=info,
    )


def _warn_transcoder(arch: str, hook_in: str | None, hook_out: str | None, skip: bool) -> None:
    """A transcoder fits SAEWeights (encoder, threshold, decoder, biases), but it is not an SAE of one
    activation: say what its vectors are, once per conversion."""
    import warnings

    warnings.warn(
        f"{arch} ({hook_in or 'its input hook'} -> {hook_out or 'its output hook'}) converted to SAEWeights: "
        f"W_enc reads {hook_in or 'the input hook'} and the decoder rows W_dec, the feature vectors "
        f"that matching compares, are directions written to {hook_out or 'the output hook'}, not "
        "reconstructions of the input; b_dec is the output's bias. "
        + ("The affine skip connection W_skip (input -> output, outside the features) is left out. "
           if skip else "")
        + "Measures that decode back into the input (explained variance of the input, splicing the "
        "reconstruction in at one hook) do not apply to it as they do to an SAE.",
        TranscoderWarning, stacklevel=3,
    )


def _from_saelens_folder(path: Path) -> SAEWeights:
    import json

    from safetensors.torch import load_file

    cfg = json.loads((path / "cfg.json").read_text()) if (path / "cfg.json").exists() else {}
    arrays = load_file(str(path / "sae_weights.safetensors"))
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name")
    arch = str(cfg.get("architecture", "")).lower() or None
    arch = {"batchtopk": "topk", "standard": "relu", "gated": "relu"}.get(arch, arch)
    info = SAEInfo(
        layer=layer_from_hook(hook), hook_name=hook,
        model_name=meta.get("model_name") or cfg.get("model_name"),
        release=meta.get("release"), sae_id=meta.get("sae_id"),
        neuronpedia_id=meta.get("neuronpedia_id"), path=str(path),
    )
    k = cfg.get("k")
    return SAEWeights.from_arrays(
        arrays, architecture=arch if arch in ARCHITECTURES else None, info=info,
        k=int(k) if k else None, apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", False)),
    )


# -- Gemma Scope 2 (Gemma 3) folders: params.safetensors + config.json, as the hub lays them out ----
# sae-lens' gemma_3 loader is the reference (sources/saes.py mirrors it for the sae-lens object);
# this reads the same file without sae-lens: same key renames, no transposes, no scaling.
_GEMMA_SCOPE_2_KEYS = {"w_enc": "W_enc", "w_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec",
                       "threshold": "threshold"}


def _gemma_scope_2_hooks(folder: str, cfg: Mapping[str, Any] | None = None
                         ) -> tuple[int | None, str | None, str | None]:
    """Layer, hook and output hook (transcoders) of a Gemma Scope 2 SAE, in TransformerLens names.

    From ``cfg`` (the folder's config.json: ``hf_hook_point_in`` / ``hf_hook_point_out``, Hugging
    Face module names) when it names a known hook point, else from ``folder`` (``site/id``) with
    sae-lens' ``get_gemma_3_config_from_hf`` rules (same order of tests)."""
    cfg = cfg or {}
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", str(cfg.get("hf_hook_point_in") or ""))
    if m:
        L, point = int(m.group(1)), m.group(2)
        transcoder = "affine_connection" in cfg or bool(cfg.get("hf_hook_point_out"))
        hook = {"output": f"blocks.{L}.hook_resid_post",
                "self_attn.o_proj.input": f"blocks.{L}.attn.hook_z",
                "post_feedforward_layernorm.output": f"blocks.{L}.hook_mlp_out",
                "pre_feedforward_layernorm.output": f"blocks.{L}.hook_mlp_in"}.get(point)
        if transcoder and point == "pre_feedforward_layernorm.output":
            return L, hook, f"blocks.{L}.hook_mlp_out"
        if hook is not None and not transcoder:
            return L, hook, None
    m = re.search(r"layer_(\d+)", folder)
    if m is None:
        return None, None, None
    L = int(m.group(1))
    if "resid_post" in folder:
        return L, f"blocks.{L}.hook_resid_post", None
    if "attn_out" in folder:
        return L, f"blocks.{L}.attn.hook_z", None
    if "mlp_out" in folder:
        return L, f"blocks.{L}.hook_mlp_out", None
    if "transcoder" in folder or "clt" in folder:
        return L, f"blocks.{L}.hook_mlp_in", f"blocks.{L}.hook_mlp_out"
    return L, None, None


def _gemma_scope_2_model_name(raw: str | None) -> str | None:
    """config.json's model_name as sae-lens' gemma_3 loader rewrites it (google/ prefix, -v3 -> -3,
    and the 270m model, which has no -pt suffix on the hub)."""
    if not raw:
        return None
    name = raw if "google" in raw else "google/" + raw
    name = name.replace("-v3", "-3")
    return name.replace("-pt", "") if "270m" in name else name


def _read_gemma_scope_2(params: Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a Gemma Scope 2 params.safetensors under their own names, cast to ``dtype``
    as sae-lens' ``load_safetensors_weights`` does (None: as stored)."""
    from safetensors.torch import load_file

    raw = load_file(str(params))
    if dtype is not None:
        raw = {k: v.to(dtype=dtype) for k, v in raw.items()}
    missing = [k for k in _GEMMA_SCOPE_2_KEYS if k not in raw]
    if missing:
        raise KeyError(
            f"{params} is not a Gemma Scope 2 file: it lacks {missing} (it has {sorted(raw)}); "
            "expected w_enc, w_dec, b_enc, b_dec, threshold"
        )
    return raw


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text()) if path.exists() else {}


def _from_gemma_scope_2_folder(path: Path) -> SAEWeights:
    """SAEWeights of a Gemma Scope 2 folder, read without sae-lens. Transcoders get the same
    TranscoderWarning as through sae-lens; their affine skip connection is left out."""
    path = Path(path)
    cfg = _read_json(path / "config.json")
    raw = _read_gemma_scope_2(path / "params.safetensors")
    layer, hook, hook_out = _gemma_scope_2_hooks("/".join(path.parts[-2:]), cfg)
    if hook_out is not None:
        # as sae-lens: the skip class comes from config.json (the file's keys when there is none)
        skip = bool(cfg["affine_connection"]) if "affine_connection" in cfg else "affine_skip_connection" in raw
        _warn_transcoder("jumprelu_skip_transcoder" if skip else "jumprelu_transcoder", hook, hook_out, skip)
    info = SAEInfo(layer=layer, hook_name=hook, model_name=_gemma_scope_2_model_name(cfg.get("model_name")),
                   path=str(path))
    return SAEWeights.from_arrays({ours: raw[theirs] for theirs, ours in _GEMMA_SCOPE_2_KEYS.items()},
                                  architecture="jumprelu", info=info)


def layer_from_hook(hook: str | None) -> int | None:
    """blocks.{L}.hook_resid_post -> L"""
    if not hook:
        return None
    parts = str(hook).split(".")
    if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1])
    return None
