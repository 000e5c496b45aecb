"""The bundled demo: a small language model with a JumpReLU SAE on every layer, fully offline.

``saematch_nb.demo.load()`` returns a :class:`DemoBundle` with a TransformerLens model (a
sae-lens ``HookedSAETransformer`` by default), one sae-lens SAE per layer, held-out documents in
four styles (Shakespeare, Milton, King James Bible, Jargon File) and lazy handles. The assets
ship in ``saematch_nb/demo/assets`` and are built by ``scripts/build_demo.py`` (docs/DEMO.md).

Importing this module is light: torch, transformers and sae-lens load only inside ``load()``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parent / "assets"
MODEL_NAME = "saematch-demo"

__all__ = ["ASSETS", "DemoBundle", "MissingAssetsError", "assets_dir", "available", "load", "load_texts",
           "sae_paths", "metrics", "seed_ceiling_path"]


class MissingAssetsError(FileNotFoundError):
    """The demo's assets are not where they should be."""


def assets_dir(path: str | os.PathLike | None = None) -> Path:
    """The assets folder (``path``, or the shipped one), checked to hold every file the demo needs."""
    root = Path(path) if path is not None else ASSETS
    need = ["model.safetensors", "model_cfg.json", "tokenizer/tokenizer.json", "texts.jsonl"]
    missing = [n for n in need if not (root / n).exists()]
    if not missing and not sorted(root.glob("saes/layer_*/sae_weights.safetensors")):
        missing.append("saes/layer_*/")
    if missing:
        raise MissingAssetsError(
            f"demo assets missing in {root}: {', '.join(missing)}. Build them with\n"
            f"    python scripts/build_demo.py --out .demo_build --assets {ASSETS}\n"
            "(add --device cuda on a GPU machine; docs/DEMO.md says what to install first).")
    return root


def available(path: str | os.PathLike | None = None) -> bool:
    """True when the demo's assets are present."""
    try:
        assets_dir(path)
        return True
    except MissingAssetsError:
        return False


def sae_paths(path: str | os.PathLike | None = None) -> list[Path]:
    """The SAE folders (sae-lens on-disk format), in layer order."""
    root = assets_dir(path)
    return sorted(root.glob("saes/layer_*"), key=lambda p: int(p.name.split("_")[1]))


def metrics(path: str | os.PathLike | None = None) -> dict:
    """What the build measured (held-out loss, per-SAE quality, samples); {} if not recorded."""
    f = assets_dir(path) / "metrics.json"
    return json.loads(f.read_text()) if f.exists() else {}


def load_texts(path: str | os.PathLike | None = None) -> tuple[list[str], list[str], list[str]]:
    """Held-out documents: (texts, styles, ids). Needs no torch."""
    rows = [json.loads(line) for line in (assets_dir(path) / "texts.jsonl").read_text().splitlines()
            if line.strip()]
    return [r["text"] for r in rows], [r["style"] for r in rows], [r["id"] for r in rows]


@dataclass(frozen=True, repr=False)
class DemoBundle:
    """What :func:`load` returns. ``saes[L]`` is the SAE on ``blocks.{L}.hook_resid_post``."""

    model: Any
    saes: tuple
    texts: tuple
    styles: tuple
    ids: tuple
    handles: Any = None
    path: Path = ASSETS
    metrics: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.saes)

    @property
    def hook_names(self) -> list[str]:
        return [s.cfg.metadata.hook_name for s in self.saes]

    def texts_by_style(self, style: str) -> list[str]:
        return [t for t, s in zip(self.texts, self.styles) if s == style]

    def __repr__(self) -> str:
        d_sae = self.saes[0].cfg.d_sae if self.saes else 0
        styles = sorted(set(self.styles))
        return (f"DemoBundle(model={type(self.model).__name__} {self.n_layers} layers "
                f"d_model={getattr(self.model.cfg, 'd_model', '?')}, saes={len(self.saes)}× JumpReLU "
                f"d_sae={d_sae}, texts={len(self.texts)} ({', '.join(styles)}), path={self.path})")


def load(path: str | os.PathLike | None = None, *, sae_transformer: bool = True, device: str = "cpu",
         handles: bool = True) -> DemoBundle:
    """Load the demo model, its SAEs and the held-out texts, fully offline.

    ``sae_transformer``: build the model as sae-lens' ``HookedSAETransformer`` (``add_sae``,
    ``run_with_cache_with_saes``); False gives a plain TransformerLens ``HookedTransformer``.
    ``handles``: also return lazy ``saematch_nb.SAEHandle`` s for the same folders (None if the
    sources layer is unavailable).
    """
    root = assets_dir(path)
    # Everything is a local file, loaded with local-only options (local_files_only, a config
    # instead of a hub name, load_from_disk). The process environment is left alone: setting
    # HF_HUB_OFFLINE here would turn every later hub load in the kernel into "unreachable".
    import warnings

    from safetensors.torch import load_file
    from transformers import PreTrainedTokenizerFast

    # a saved PreTrainedTokenizerFast folder: an in-memory tokenizer with a BOS token would make
    # TransformerLens reload it from the hub (docs/METHOD.md §7)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    cfg_dict = json.loads((root / "model_cfg.json").read_text())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=DeprecationWarning)
        from transformer_lens import HookedTransformerConfig

        cfg = HookedTransformerConfig(**{**cfg_dict, "device": device})
        if sae_transformer:
            from sae_lens import HookedSAETransformer as cls
        else:
            from transformer_lens import HookedTransformer as cls
        model = cls(cfg, tokenizer=tokenizer)
    state = load_file(str(root / "model.safetensors"), device=device)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith((".IGNORE", ".mask"))]
    if missing or unexpected:
        raise MissingAssetsError(f"{root / 'model.safetensors'} does not fit model_cfg.json: missing "
                                 f"{missing[:5]}, unexpected {unexpected[:5]}; rebuild the assets")
    model.eval()

    from sae_lens import SAE

    paths = sae_paths(root)
    saes = tuple(SAE.load_from_disk(str(p), device=device) for p in paths)
    texts, styles, ids = load_texts(root)
    hs = None
    if handles:
        try:
            from ..sources.saes import load_saes

            hs = load_saes([str(p) for p in paths], device=device)
        except ImportError:
            hs = None
    return DemoBundle(model=model, saes=saes, texts=tuple(texts), styles=tuple(styles), ids=tuple(ids),
                      handles=hs, path=root, metrics=metrics(root))


def seed_ceiling_path(path: str | os.PathLike | None = None) -> Path | None:
    """The seed-ceiling SAE: a second SAE of one middle layer, trained with another seed (sae-lens
    folder; None in builds without one). Matching it against that layer's chain SAE measures how
    far two SAEs of the *same* layer agree, the ceiling for adjacent-layer agreement (docs/DEMO.md)."""
    found = sorted(assets_dir(path).glob("seed_ceiling/layer_*"))
    return found[0] if found else None
