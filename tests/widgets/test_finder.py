"""FeatureFinder (issue #22 item 4): its top-token box filters by the tokens themselves; a newline,
which a text box cannot hold, is typed as the list shows it (\\n)."""

from __future__ import annotations

import pytest

from saematch_nb.widgets import FeatureFinder
from saematch_nb.widgets.finder import box_token
from tests.sources.test_finder import _got, _want, setup  # noqa: F401  (the module fixture)


def test_box_token_reads_the_escapes_the_list_shows():
    assert box_token("") is None
    assert box_token("'") == "'" and box_token("' '") == "' '"
    assert box_token("\\n") == "\n" and box_token("a\\tb\\r") == "a\tb\r"
    assert box_token("\\\\n") == "\\n"  # a backslash and an n
    assert box_token("\\x") == "\\x"  # other backslashes are kept as typed


def test_issue22_finder_box_filters_by_tokens(setup):  # noqa: F811
    chain, exs, _ = setup
    finder = FeatureFinder(chain, exs, n=500)
    finder.token_box.value = "\\n"
    newline = _want(exs, chain, lambda t: "\n" in t)
    assert newline and _got(finder.table) == newline
    finder.token_box.value = "'"
    assert _got(finder.table) == _want(exs, chain, lambda t: "'" in t)
    finder.token_box.value = "' '"
    assert _got(finder.table) == _want(exs, chain, lambda t: "' '" in t)
    with pytest.raises(ValueError, match="n .*integer >= 1"):
        FeatureFinder(chain, exs, n=0)
