"""find_features (issue #22): the token filter reads the tokens themselves, bad arguments are
clear errors, and examples of other SAEs than the chain's are refused."""

from __future__ import annotations

import numpy as np
import pytest

import saematch_nb as smn
from saematch_nb.core.weights import SAEInfo, SAEWeights
from saematch_nb.sources.activations import collect_activations
from saematch_nb.analysis.examples import collect_examples
from saematch_nb.analysis.finder import find_features
from tests import _saelens_doubles as fx

TEXTS = ["It's the cat's mat.\nAnd then:\n'quoted' words, \"double\" too.\n\n",
         "Line one\nline two\n  indented 'x' and y'all\n", "plain words without any breaks at all here",
         "x = 'a' + '\\n'\nprint(x)\n"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model = fx.tiny_gemma2_model(seed=0, n_layers=2, d_model=16)
    acts = collect_activations(model, TEXTS, [0, 1], cache=False, progress=False)
    saes = [SAEWeights.from_arrays(fx.jumprelu_arrays(16, 64, seed=s),
                                   info=SAEInfo(hook_name=f"blocks.{s}.hook_resid_post")) for s in (0, 1)]
    chain = smn.match_chain(saes, cache=False, progress=False)
    exs = collect_examples(chain, acts, k=6, cache=False, progress=False)
    return chain, exs, acts


def _want(exs, chain, pred):
    return {(L, f) for L in chain.layers for f, toks in enumerate(exs[L].top_tokens()) if any(pred(t) for t in toks)}


def _got(df):
    return set(zip(df["layer"].tolist(), df["feature"].tolist()))


def test_issue22_token_filter_reads_the_tokens_not_their_reprs(setup):
    """Item 4: ``token="'"`` kept every row (the column's reprs are quoted), ``"' '"`` rows where no
    token has it, and a real newline none (the reprs spell it \\n)."""
    chain, exs, _ = setup
    newline = _want(exs, chain, lambda t: "\n" in t)
    quote = _want(exs, chain, lambda t: "'" in t)
    everything = {(L, f) for L in chain.layers for f in range(chain.n_features(L))}
    assert newline and quote and quote != everything  # the texts make both kinds of token
    assert _got(find_features(chain, exs, token="\n", n=None)) == newline
    assert _got(find_features(chain, exs, token="'", n=None)) == quote
    assert _got(find_features(chain, exs, token="' '", n=None)) == _want(exs, chain, lambda t: "' '" in t)
    assert _got(find_features(chain, exs, token="\\n", n=None)) == _want(exs, chain, lambda t: "\\n" in t)
    assert _got(find_features(chain, exs, token="IT", n=None)) == _want(exs, chain, lambda t: "it" in t.lower())
    # the column still shows the tokens as literals (a newline as '\n', so that it can be seen)
    df = find_features(chain, exs, token="\n", n=None)
    assert all("\\n" in s for s in df["top_tokens"])


def test_issue22_bad_n_density_and_explanations_are_explained(setup):
    """Item 6: n=-1 kept all but the last row, n=2.7 two rows, n=inf an OverflowError,
    min_density=NaN no row, bad explanations= keys a raw int() error."""
    chain, exs, _ = setup
    for bad in (-1, 0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="n .*integer >= 1"):
            find_features(chain, n=bad)
    for bad in (2.7, True, "3"):
        with pytest.raises(TypeError, match="n .*must be an integer"):
            find_features(chain, n=bad)
    for bad in (float("nan"), float("inf"), -0.1, 1.5):
        with pytest.raises(ValueError, match="min_density"):
            find_features(chain, exs, min_density=bad)
    for bad in ({"1,3": "x"}, {(1, "3"): "x"}, {(1, 2.5): "x"}, {(1, 3, 4): "x"}, {(1, 3): 7}, [((1, 3), "x")]):
        with pytest.raises(TypeError, match="explanations"):
            find_features(chain, explanations=bad)
    with pytest.raises(TypeError, match="token must be a string"):
        find_features(chain, exs, token=3)
    assert len(find_features(chain, n=3)) == 3 and len(find_features(chain, n=np.int64(2))) == 2


def test_issue22_examples_of_other_saes_are_refused(setup):
    """Item 6: examples collected with other SAEs (same widths) described other features silently."""
    chain, _, acts = setup
    other = [SAEWeights.from_arrays(fx.jumprelu_arrays(16, 64, seed=s + 10),
                                    info=SAEInfo(hook_name=f"blocks.{s}.hook_resid_post")) for s in (0, 1)]
    wrong = collect_examples(other, acts, k=2, cache=False, progress=False)
    with pytest.raises(ValueError, match="examples of layer 0 were collected with another SAE"):
        find_features(chain, wrong)
    narrow = [SAEWeights.from_arrays(fx.jumprelu_arrays(16, 32, seed=s),
                                     info=SAEInfo(hook_name=f"blocks.{s}.hook_resid_post")) for s in (0, 1)]
    with pytest.raises(ValueError, match="32 features, the chain's has 64"):
        find_features(chain, collect_examples(narrow, acts, k=2, cache=False, progress=False), layer=1)
    # the chain's own SAEs given as a list (another stack, the same weights) are accepted
    same = [chain.stack.weights(L) for L in chain.layers]
    assert len(find_features(chain, collect_examples(same, acts, k=2, cache=False, progress=False), n=None)) == 128


def test_issue22_layer_must_be_an_integer(setup):
    """Item 9: layer=1.9 was layer 1."""
    chain, exs, _ = setup
    for bad in (1.9, True, "1"):
        with pytest.raises(TypeError, match="layer must be an integer"):
            find_features(chain, layer=bad)
    assert set(find_features(chain, layer=np.int64(1), n=None)["layer"]) == {1}
