"""find_features (issue #22): the token filter reads the tokens themselves, bad arguments are
clear errors, and examples of other SAEs than the chain's are refused."""

from __future__ import annotations

import numpy as np
import pytest

from saematch_nb.core.weights import SAEInfo, SAEWeights
from saematch_nb.analysis.examples import collect_examples
from saematch_nb.analysis.finder import find_features
from tests import _saelens_doubles as fx
from tests._finder import rows_of, rows_where


def test_issue22_token_filter_reads_the_tokens_not_their_reprs(finder_setup):
    """Item 4: ``token="'"`` kept every row (the column's reprs are quoted), ``"' '"`` rows where no
    token has it, and a real newline none (the reprs spell it \\n)."""
    chain, exs, _ = finder_setup
    newline = rows_where(exs, chain, lambda t: "\n" in t)
    quote = rows_where(exs, chain, lambda t: "'" in t)
    everything = {(L, f) for L in chain.layers for f in range(chain.n_features(L))}
    assert newline and quote and quote != everything  # the texts make both kinds of token
    assert rows_of(find_features(chain, exs, token="\n", n=None)) == newline
    assert rows_of(find_features(chain, exs, token="'", n=None)) == quote
    assert rows_of(find_features(chain, exs, token="' '", n=None)) == rows_where(exs, chain, lambda t: "' '" in t)
    assert rows_of(find_features(chain, exs, token="\\n", n=None)) == rows_where(exs, chain, lambda t: "\\n" in t)
    assert rows_of(find_features(chain, exs, token="IT", n=None)) == rows_where(exs, chain, lambda t: "it" in t.lower())
    # the column still shows the tokens as literals (a newline as '\n', so that it can be seen)
    df = find_features(chain, exs, token="\n", n=None)
    assert all("\\n" in s for s in df["top_tokens"])


def test_issue22_bad_n_density_and_explanations_are_explained(finder_setup):
    """Item 6: n=-1 kept all but the last row, n=2.7 two rows, n=inf an OverflowError,
    min_density=NaN no row, bad explanations= keys a raw int() error."""
    chain, exs, _ = finder_setup
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


def test_issue22_examples_of_other_saes_are_refused(finder_setup):
    """Item 6: examples collected with other SAEs (same widths) described other features silently."""
    chain, _, acts = finder_setup
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


def test_issue22_layer_must_be_an_integer(finder_setup):
    """Item 9: layer=1.9 was layer 1."""
    chain, exs, _ = finder_setup
    for bad in (1.9, True, "1"):
        with pytest.raises(TypeError, match="layer must be an integer"):
            find_features(chain, layer=bad)
    assert set(find_features(chain, layer=np.int64(1), n=None)["layer"]) == {1}
