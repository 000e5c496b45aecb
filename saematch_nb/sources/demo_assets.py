"""The bundled demo's files: where they are, that they are all there, and the ones read without
torch (texts, metrics, SAE folders). Below the demo and ``sources.models`` alike, so that
``load_model("demo")`` loads the demo's model without importing the demo (which sits above sources
and builds its bundle with ``load_saved_model``): no circle. ``saematch_nb.demo`` re-exports these
names as its own API."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import SaematchError

__all__ = ["ASSETS", "MissingAssetsError", "BrokenAssetsError", "assets_dir", "available", "load_texts",
           "sae_paths", "metrics", "read_json", "REBUILD"]

# the folder shipped in the package (package data of saematch_nb.demo; a path, not an import)
ASSETS = Path(__file__).resolve().parent.parent / "demo" / "assets"

REBUILD = "rebuild the assets (docs/DEMO.md: python scripts/build_demo.py)"


class MissingAssetsError(SaematchError, FileNotFoundError):
    """The demo's assets are not where they should be."""


class BrokenAssetsError(MissingAssetsError):
    """A demo asset is there but cannot be read (truncated, not JSON, ...); the message names the
    file. A MissingAssetsError, so code that handles missing assets handles these too."""


def read_json(f: Path) -> Any:
    """A JSON asset, or a BrokenAssetsError naming the file (not a bare JSONDecodeError)."""
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise BrokenAssetsError(f"demo asset {f} is not valid JSON ({e}); {REBUILD}") from None


def _sae_layer(p: Path) -> int | None:
    tail = p.name.split("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def assets_dir(path: str | os.PathLike | None = None) -> Path:
    """The assets folder (``path``, or the shipped one), checked to hold every file the demo needs:
    the model, its config, the tokenizer, the texts, and one SAE folder ``saes/layer_{L}`` (cfg.json
    + sae_weights.safetensors) for every layer of the model: a missing layer is named, never
    skipped (the next SAE would be taken for it)."""
    root = Path(path) if path is not None else ASSETS
    need = ["model.safetensors", "model_cfg.json", "tokenizer/tokenizer.json", "texts.jsonl"]
    missing = [n for n in need if not (root / n).exists()]
    if not missing and not sorted(root.glob("saes/layer_*/sae_weights.safetensors")):
        missing.append("saes/layer_*/")
    if not missing:
        cfg = read_json(root / "model_cfg.json")
        n_layers = cfg.get("n_layers") if isinstance(cfg, dict) else None
        if not isinstance(n_layers, int) or isinstance(n_layers, bool) or n_layers < 1:
            raise BrokenAssetsError(f"demo asset {root / 'model_cfg.json'} has no positive n_layers "
                                    f"(got {n_layers!r}); {REBUILD}")
        missing = [f"saes/layer_{L}/{n}" for L in range(n_layers) for n in ("cfg.json", "sae_weights.safetensors")
                   if not (root / "saes" / f"layer_{L}" / n).exists()]
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
    """The SAE folders (sae-lens on-disk format), in layer order: ``saes/layer_0`` .. one per
    layer of the model (:func:`assets_dir` checks that none is missing); other names are ignored."""
    root = assets_dir(path)
    found = [(L, p) for p in root.glob("saes/layer_*") if (L := _sae_layer(p)) is not None]
    return [p for _, p in sorted(found)]


def metrics(path: str | os.PathLike | None = None) -> dict:
    """What the build measured (held-out loss, per-SAE quality, samples); {} if not recorded."""
    f = assets_dir(path) / "metrics.json"
    return read_json(f) if f.exists() else {}


def load_texts(path: str | os.PathLike | None = None) -> tuple[list[str], list[str], list[str]]:
    """Held-out documents: (texts, styles, ids). Needs no torch."""
    f = assets_dir(path) / "texts.jsonl"
    rows = []
    for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            rows.append((str(r["text"]), str(r["style"]), str(r["id"])))
        except (ValueError, KeyError, TypeError) as e:  # the line is named: a bare KeyError says nothing
            raise BrokenAssetsError(f"demo asset {f}, line {i}, is not a text record "
                                    f'{{"text", "style", "id"}} ({type(e).__name__}: {e}); {REBUILD}') from None
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


