"""Helpers of the finder tests (tests/analysis/test_finder*.py, tests/widgets/test_finder.py): the
(layer, feature) sets their assertions compare. Their chains are fixtures of tests/conftest.py
(``finder_setup``, ``demo_examples``)."""

from __future__ import annotations


def rows_where(exs, chain, pred):
    """The (layer, feature) pairs with a top token for which ``pred`` holds."""
    return {(L, f) for L in chain.layers for f, toks in enumerate(exs[L].top_tokens()) if any(pred(t) for t in toks)}


def rows_of(df):
    """The (layer, feature) pairs of a finder table."""
    return set(zip(df["layer"].tolist(), df["feature"].tolist()))
