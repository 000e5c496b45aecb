"""FeatureFinder (issue #22 item 4): its top-token box filters by the tokens themselves; a newline,
which a text box cannot hold, is typed as the list shows it (\\n)."""

from __future__ import annotations

import html
import re

import pytest

from saematch_nb.widgets import FeatureFinder
from saematch_nb.widgets.finder import box_token
from tests._finder import rows_of, rows_where


def test_box_token_reads_the_escapes_the_list_shows():
    assert box_token("") is None
    assert box_token("'") == "'" and box_token("' '") == "' '"
    assert box_token("\\n") == "\n" and box_token("a\\tb\\r") == "a\tb\r"
    assert box_token("\\\\n") == "\\n"  # a backslash and an n
    assert box_token("\\x") == "\\x"  # other backslashes are kept as typed


def test_issue22_finder_box_filters_by_tokens(finder_setup):
    chain, exs, _ = finder_setup
    finder = FeatureFinder(chain, exs, n=500)
    finder.token_box.value = "\\n"
    newline = rows_where(exs, chain, lambda t: "\n" in t)
    assert newline and rows_of(finder.table) == newline
    finder.token_box.value = "'"
    assert rows_of(finder.table) == rows_where(exs, chain, lambda t: "'" in t)
    finder.token_box.value = "' '"
    assert rows_of(finder.table) == rows_where(exs, chain, lambda t: "' '" in t)
    with pytest.raises(ValueError, match="n .*integer >= 1"):
        FeatureFinder(chain, exs, n=0)


# -- issue #23 items 4 and 5, on the demo chain ----------------------------------------------------
NBSP = "\u00a0"


def _text(html_value: str) -> str:
    """An HTML widget's words (its text fallback, without the CSS)."""
    m = re.search(r'<pre class="smn-text-repr-fallback">(.*?)</pre>', html_value, re.S)
    return html.unescape(m.group(1)) if m else ""


def _cols(finder):
    """The header line and the rows' lines, no-break spaces as spaces."""
    m = re.search(r'<div class="smn-finder-cols">(.*?)</div>', finder.header.value, re.S)
    return html.unescape(m.group(1)), [lbl.replace(NBSP, " ") for lbl, _ in finder.rows.options]


def _column_end(header: str, name: str) -> int:
    return header.index(name) + len(name)


def test_issue23_list_has_aligned_columns_with_the_sorted_value(demo_examples):
    chain, exs = demo_examples
    finder = FeatureFinder(chain, exs, n=20)
    header, lines = _cols(finder)
    assert header.split()[:4] == ["layer", "feature", "persists", "↓"]
    for name in ("age", "lifetime", "mse", "margin", "accepted", "fires", "max act", "top tokens"):
        assert name in header
    # no plain space in an option: a browser collapses runs of them (the columns would drift)
    assert all(" " not in lbl for lbl, _ in finder.rows.options)
    assert all(lbl.startswith("L") for lbl, _ in finder.rows.options)
    for name, key in (("mse", "mse"), ("margin", "margin"), ("max act", "max_activation"), ("lifetime", "lifetime")):
        end = _column_end(header, name)  # right-aligned numbers end under their header's end
        for line in lines:
            assert line[end - 1] != " " and line[end] == " ", (name, header, line)
    for sort, name in (("margin", "margin"), ("max_activation", "max act"), ("lifetime", "lifetime"),
                       ("density", "fires"), ("mse", "mse")):
        finder.sort_box.value = sort
        header, lines = _cols(finder)
        mark = "↑" if sort == "mse" else "↓"
        assert f"{name} {mark}" in header, header
        assert finder.order_box.value is (sort != "mse")  # a new sort starts in its natural direction
        end = _column_end(header, f"{name} {mark}")
        shown = [line[:end].split()[-1] for line in lines]  # the sorted value, as the row shows it
        want = finder.table[sort].tolist()
        assert len(shown) == len(want) == 20
        for got, value in zip(shown, want):  # the column under the marked header is the sort key
            number = float(got[:-1]) / 100 if got.endswith("%") else float(got)
            assert number == pytest.approx(value, rel=0.01, abs=0.0006), (sort, got, value)
    finder.sort_box.value = "margin"
    finder.order_box.value = False  # the other direction
    header, lines = _cols(finder)
    assert "margin ↑" in header and "smallest first" in _text(finder.header.value)
    margins = finder.table["margin"].dropna().tolist()
    assert margins == sorted(margins) and finder.table["margin"].iloc[0] < 0


def test_issue23_layer_box_says_all_and_the_count_is_of_n(demo_examples):
    chain, exs = demo_examples
    finder = FeatureFinder(chain, exs, n=20)
    assert finder.layer_box.label == "all" and finder.query()["layer"] is None
    total = sum(chain.n_features(L) for L in chain.layers)
    assert f"showing 20 of {total:,} features" in _text(finder.header.value)
    finder.layer_box.value = 2
    assert finder.layer_box.label == "2" and set(finder.table["layer"]) == {2}
    assert f"showing 20 of {chain.n_features(2):,} features" in _text(finder.header.value)
    whole = FeatureFinder(chain, exs, n=5000)  # a cap above the count: the list is whole
    assert len(whole.table) == total and f"FeatureFinder: {total:,} features" in _text(whole.header.value)
    assert "showing" not in _text(whole.header.value)


def test_issue23_short_lived_newborn_and_dying_controls(demo_examples):
    from saematch_nb.analysis.finder import find_features

    chain, exs = demo_examples
    finder = FeatureFinder(chain, exs, n=500)
    finder.max_box.value = 2
    assert finder.query()["max_persistence"] == 2 and finder.table["persistence"].max() <= 2
    assert "persisting on ≤ 2 layers (short-lived)" in _text(finder.header.value)
    finder.max_box.value = len(chain.layers)
    assert finder.query()["max_persistence"] is None
    finder.layer_box.value = 3
    finder.newborn_box.value = True
    want = find_features(chain, exs, layer=3, newborn=True, n=500)
    assert finder.table.equals(want) and len(want) and (want["age"] == 0).all()
    assert "newborn" in _text(finder.header.value)
    finder.newborn_box.value = False
    finder.dying_box.value = True
    assert finder.table.equals(find_features(chain, exs, layer=3, dying=True, n=500))
    finder.accepted_box.value = True  # contradicts dying: the error says so, the list empties
    assert "together they list nothing" in finder.status.value and finder.rows.options == ()
    assert finder.table is None and finder.row_slider.min == 0
    finder.accepted_box.value = False
    assert finder.status.value == "" and len(finder.rows.options)
    finder.dying_box.value = False
    finder.layer_box.value = chain.layers[0]
    finder.newborn_box.value = True  # nothing is born at the first layer
    assert "newborn=True at layer 0, the chain's first" in _text(finder.status.value)


def test_issue23_a_chosen_row_is_announced_and_opens_again(demo_examples):
    from saematch_nb.widgets import FeatureExplorer

    chain, exs = demo_examples
    ex = FeatureExplorer(chain, exs, figure=False)
    finder = FeatureFinder(chain, exs, ex, n=20)
    assert finder.notice.value == "" and finder.row_slider.min == -20
    key = finder.rows.options[3][1]
    finder.rows.value = key  # a click on the row
    assert ex.origin == key and (ex.layer, ex.feature) == key
    assert f"opened layer {key[0]} · #{key[1]} in the explorer above" in _text(finder.notice.value)
    assert finder.rows.value == key and finder.row_slider.value == -4  # the row stays marked
    # the explorer moves on (its own controls, the overview): the mark goes, so that a click on
    # the same row is a change of the list's value again and opens it again
    ex.trace_from(5, 3)
    assert finder.rows.value is None and finder.row_slider.value == 0
    finder.rows.value = key
    assert ex.origin == key and (ex.layer, ex.feature) == key and finder.rows.value == key
    ex.layer = key[0] + 1 if key[0] + 1 in chain.layers else key[0] - 1  # along the same trace
    assert finder.rows.value is None
    finder.rows.value = key
    assert (ex.layer, ex.feature) == key
    # a refresh keeps the mark while the explorer shows the row
    finder.token_box.value = ""
    finder.min_box.value = 1
    finder.order_box.value = not finder.order_box.value
    finder.order_box.value = not finder.order_box.value
    assert finder.rows.value == key
    snap = finder.snapshot_html()
    assert "opened layer" in snap and "<script" not in snap.lower()


def test_issue23_the_row_slider_steps_through_the_list(demo_examples):
    from saematch_nb.widgets import FeatureExplorer

    chain, exs = demo_examples
    ex = FeatureExplorer(chain, exs, figure=False)
    finder = FeatureFinder(chain, exs, ex, n=20)
    keys = [v for _l, v in finder.rows.options]
    finder.row_slider.value = -1  # one step down from the top: the first row
    assert finder.rows.value == keys[0] and ex.origin == keys[0]
    finder.row_slider.value = -2
    assert finder.rows.value == keys[1] and ex.origin == keys[1] and finder.selected == keys[1]
    assert f"#{keys[1][1]}" in _text(finder.notice.value)
    finder.rows.value = keys[7]  # a click moves the slider with it
    assert finder.row_slider.value == -8 and ex.origin == keys[7]
    finder.row_slider.value = 0  # the top is no row: nothing opens
    assert finder.rows.value is None and ex.origin == keys[7]
    finder.layer_box.value = 4  # a new list: the slider spans it
    assert finder.row_slider.min == -len(finder.rows.options) and finder.row_slider.value == 0


def test_issue23_without_an_explorer_the_choice_is_kept_and_said(demo_examples):
    chain, _ = demo_examples
    finder = FeatureFinder(chain, n=5)
    key = finder.rows.options[1][1]
    finder.choose(*key)
    assert finder.selected == key and finder.rows.value == key
    assert "pass explorer= to open it in a FeatureExplorer" in _text(finder.notice.value)
    assert [c for c in finder.sort_box.options] == ["persistence", "lifetime", "mse", "margin"]
