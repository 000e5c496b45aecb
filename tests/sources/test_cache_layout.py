"""One cache root: matches, activations, examples and Neuronpedia features all land under
$SAEMATCH_CACHE_DIR, each kind in its folder (core/cache.py), and no other module decides where."""

from __future__ import annotations

import ast
import io
import urllib.request
from pathlib import Path

import saematch_nb
from saematch_nb.core import cache as cache_mod
from saematch_nb.core.synthetic import planted_chain
from saematch_nb.core.weights import SAEInfo, SAEWeights
from tests import _saelens_doubles as fx

RECORDED = Path(__file__).resolve().parents[1] / "data" / "neuronpedia" / "gemma-2-2b__12-gemmascope-res-16k__1234.json"
PACKAGE = Path(saematch_nb.__file__).resolve().parent


class _Resp(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def test_every_kind_lands_in_its_folder_under_the_root(tmp_path, monkeypatch):
    root = tmp_path / "root"
    monkeypatch.setenv(cache_mod.ENV_VAR, str(root))
    monkeypatch.setattr(urllib.request, "urlopen", lambda req, timeout=None: _Resp(RECORDED.read_bytes()))
    model = fx.tiny_gemma2_model(seed=0, n_layers=2, d_model=16)
    acts = saematch_nb.collect_activations(model, ["one short text", "and another one"], [0, 1], progress=False)
    saes = [SAEWeights.from_arrays(fx.jumprelu_arrays(16, 32, seed=s), info=SAEInfo(layer=s)) for s in (0, 1)]
    saematch_nb.collect_examples(saes, acts, k=2, progress=False)
    saematch_nb.fetch_feature("gemma-2-2b/12-gemmascope-res-16k", 1234)
    saematch_nb.match_chain(planted_chain(n_layers=2, n=32, d_in=16, seed=0).saes, progress=False)

    assert acts.path == root / "activations" / acts.key and (acts.path / "meta.json").is_file()
    assert len(list((root / "examples").glob("*.npz"))) == 2  # one per layer
    assert (root / "neuronpedia" / "gemma-2-2b" / "12-gemmascope-res-16k" / "1234.json").is_file()
    assert len(list(root.glob("*.npz"))) == 1  # matches stay at the root (where they always were)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["activations", "examples", "neuronpedia"]
    assert {cache_mod.cache_folder(k) for k in cache_mod.KINDS} == {
        root, root / "activations", root / "examples", root / "neuronpedia", root / "models"}


def test_only_the_cache_module_knows_the_root():
    """No other module (but core/_paths.py, cache.py's helper) reads $SAEMATCH_CACHE_DIR or defines
    its own default folder."""
    offenders = []
    for f in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(f.read_text(), str(f))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in ("SAEMATCH_CACHE_DIR", ".cache"):
                offenders.append(f"{f.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.FunctionDef) and node.name in ("default_cache_dir", "_cache_dir"):
                offenders.append(f"{f.relative_to(PACKAGE)}:{node.lineno} def {node.name}")
    # core/_paths.py is the root's default (platformdirs), read by core/cache.py's cache_root()
    offenders = [o for o in offenders if not o.startswith(("core/cache.py", "core/_paths.py"))]
    assert not offenders, offenders
