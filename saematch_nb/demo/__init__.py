"""The bundled demo: a small language model with a JumpReLU SAE on every layer, fully offline.

``saematch_nb.demo.load()`` returns a :class:`DemoBundle` with a TransformerLens model (a
sae-lens ``HookedSAETransformer`` by default), one sae-lens SAE per layer, held-out documents in
four styles (Shakespeare, Milton, King James Bible, Jargon File) and lazy handles. The assets
ship in ``saematch_nb/demo/assets`` and are built by ``scripts/build_demo.py`` (docs/DEMO.md).

Importing this module is light: torch, transformers and sae-lens load only inside ``load()``, through
saematch_nb.sources (the demo sits above sources; it never imports sae-lens or TransformerLens itself).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the files and their checks live below sources.models (load_model("demo") reads them too)
from ..sources.demo_assets import (ASSETS, REBUILD as _REBUILD, BrokenAssetsError, MissingAssetsError, assets_dir,
                                   available, load_texts, metrics, read_json as _read_json, sae_paths)

MODEL_NAME = "saematch-demo"

__all__ = ["ASSETS", "DemoBundle", "MissingAssetsError", "BrokenAssetsError", "assets_dir", "available", "load",
           "load_texts", "sae_paths", "metrics", "seed_ceiling_path"]

def _load_sae(h: Any, folder: Path) -> Any:
    """One SAE of the demo through its handle, or a BrokenAssetsError naming the file at fault."""
    try:
        return h.load()
    except Exception as e:  # sae-lens / safetensors errors do not say which file they read
        name = "sae_weights.safetensors" if "safetensor" in f"{type(e).__name__} {e}".lower() else "cfg.json"
        raise BrokenAssetsError(f"demo SAE {folder / name} cannot be loaded ({type(e).__name__}: {e}); "
                                f"{_REBUILD}") from e


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
    ``handles``: also return lazy ``saematch_nb.SAEHandle`` s for the same folders (else None).
    The model and the SAEs are built by the sources layer (``sources.models.load_saved_model``,
    ``sources.saes.load_saes``): this package imports neither sae-lens nor TransformerLens itself.
    """
    from ..sources.models import ModelLoadError, load_saved_model
    from ..sources.saes import load_saes

    root = assets_dir(path)
    # Local files only, read by the sources layer with local-only options; the process
    # environment is left alone (tests/demo/test_demo_environment.py).
    try:
        model = load_saved_model(root, device=device, sae_transformer=sae_transformer)
    except ModelLoadError as e:
        raise BrokenAssetsError(f"{e}; rebuild the assets (docs/DEMO.md)") from e
    paths = sae_paths(root)
    if len(paths) != model.cfg.n_layers:  # one SAE per layer, no more (assets_dir named the missing)
        raise BrokenAssetsError(f"demo assets in {root}: {len(paths)} SAE folders (saes/layer_*) for a model of "
                                f"{model.cfg.n_layers} layers; {_REBUILD}")
    for p in paths:  # a garbage config is named as such (the handles read them first)
        _read_json(p / "cfg.json")
    try:
        hs = load_saes([str(p) for p in paths], device=device)
    except Exception as e:
        raise BrokenAssetsError(f"demo SAEs in {root / 'saes'} cannot be read ({type(e).__name__}: {e}); "
                                f"{_REBUILD}") from e
    # sae-lens' SAE.load_from_disk, through the handles
    saes = tuple(_load_sae(h, p) for h, p in zip(hs, paths))
    texts, styles, ids = load_texts(root)
    if not handles:
        hs = None
    return DemoBundle(model=model, saes=saes, texts=tuple(texts), styles=tuple(styles), ids=tuple(ids),
                      handles=hs, path=root, metrics=metrics(root))


def seed_ceiling_path(path: str | os.PathLike | None = None) -> Path | None:
    """The seed-ceiling SAE: a second SAE of one middle layer, trained with another seed (sae-lens
    folder; None in builds without one). Matching it against that layer's chain SAE measures how
    far two SAEs of the *same* layer agree, the ceiling for adjacent-layer agreement (docs/DEMO.md)."""
    found = sorted(assets_dir(path).glob("seed_ceiling/layer_*"))
    return found[0] if found else None
