"""The finder in a real browser (issue #23 items 4 and 5): JupyterLab on loopback, Debian's
chromium driven by Playwright (tests/_lab.py). The list is in the code font with its column
headers on the same grid; choosing a row says what was opened; the same row opens again once the
explorer has moved elsewhere; the keyboard steps through the rows (the slider at the list's
right) and JupyterLab's active cell stays where it was.

A missing chromium or Playwright is a failure with the install hint, never a skip.
"""

from __future__ import annotations

import re
import time

import nbformat
import pytest

from tests import _lab

SETUP = """\
import saematch_nb as smn
bundle = smn.demo.load()
chain = smn.match_chain(bundle.handles, progress=False)
acts = smn.collect_activations(bundle.model, list(bundle.texts[::16]), chain.layers, progress=False)
examples = smn.collect_examples(chain, acts, progress=False)
explorer = smn.FeatureExplorer(chain, examples, figure=False)
explorer
"""
FINDER = "finder = smn.FeatureFinder(chain, examples, explorer, n=20)\nfinder"
SEL = ".smn-finder .smn-finder-row select"


def _notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(SETUP), nbformat.v4.new_code_cell(FINDER),
                nbformat.v4.new_markdown_cell("a cell below the finder"), nbformat.v4.new_code_cell("1 + 1")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def _state(page) -> tuple:
    """(explorer origin, explorer layer and feature) from the kernel."""
    out = _lab.kernel_eval(page, "print(tuple(explorer.origin), explorer.layer, explorer.feature)")
    m = re.fullmatch(r"\((\d+), (\d+)\) (\d+) (\d+)\s*", out)
    assert m, out
    return (int(m[1]), int(m[2])), (int(m[3]), int(m[4]))


def _row_key(page, index: int) -> tuple[int, int]:
    """(layer, feature) of the list's row ``index``: its first two columns."""
    text = page.locator(f"{SEL} option").nth(index).evaluate("o => o.textContent")
    layer, feature = text.split()[:2]  # "L2", "#170"
    return int(layer.lstrip("L")), int(feature.lstrip("#"))


def _selected_index(page) -> int:
    return page.locator(SEL).first.evaluate("s => s.selectedIndex")


def _wait(pred, what: str, timeout_s: float = 30.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise TimeoutError(f"{what} within {timeout_s} s")


@pytest.mark.slow
def test_finder_list_reads_and_answers_mouse_and_keys(tmp_path):
    try:
        _lab.require_browser()
    except RuntimeError as err:
        pytest.fail(str(err))
    src = tmp_path / "src"
    src.mkdir()
    with _lab.Lab(tmp_path / "lab", _notebook(src / "finder.ipynb")) as lab:
        page = lab.open()
        lab.run_all()
        assert lab.cell_errors() == [], lab.cell_errors()
        page.locator(f"{SEL} option").nth(5).wait_for(state="attached", timeout=60_000)

        # item 5: the list and its header line share the code font (not the widgets' Arial) and
        # start at the same x, so the columns of text line up
        fonts = page.evaluate(f"""() => [getComputedStyle(document.querySelector('{SEL}')).fontFamily,
            getComputedStyle(document.querySelector('.smn-finder .smn-finder-cols')).fontFamily]""")
        assert fonts[0] == fonts[1] and "mono" in fonts[0].lower() and "arial" not in fonts[0].lower(), fonts
        x = page.evaluate(f"""() => {{
            const s = document.querySelector('{SEL}'), o = s.options[0];
            const h = document.querySelector('.smn-finder .smn-finder-cols');
            const cs = getComputedStyle(s), os = getComputedStyle(o), hs = getComputedStyle(h);
            return [s.getBoundingClientRect().left + parseFloat(cs.borderLeftWidth) + parseFloat(cs.paddingLeft)
                    + parseFloat(os.paddingLeft), h.getBoundingClientRect().left + parseFloat(hs.paddingLeft)];
        }}""")
        assert abs(x[0] - x[1]) <= 1.0, x
        head = _lab.text_of(page, ".smn-finder .smn-finder-cols")
        assert head.startswith("layer feature persists ↓") and "margin" in head and "max act" in head, head
        assert "showing 20 of 1,536 features" in _lab.text_of(page, ".smn-finder .smn-header")
        layer_box = page.locator(".smn-finder select").first  # the layer dropdown shows "all"
        assert layer_box.evaluate("s => s.options[s.selectedIndex].textContent") == "all"
        finder = page.locator(".smn-finder").first
        page.set_viewport_size({"width": 1400, "height": 2000})  # the whole panel in view
        finder.scroll_into_view_if_needed()
        page.wait_for_timeout(500)
        finder.screenshot(path=str(tmp_path / "finder.png"))

        # item 4: a clicked row opens in the explorer, and the finder says so
        key2 = _row_key(page, 2)
        page.locator(f"{SEL} option").nth(2).click()
        want = f"opened layer {key2[0]} · #{key2[1]} in the explorer above"
        _wait(lambda: want in _lab.text_of(page, ".smn-finder .smn-finder-notice"), f"the notice {want!r}")
        assert _state(page) == (key2, key2)

        # the explorer moves elsewhere: the highlight goes, and the same row opens again
        _lab.kernel_eval(page, "explorer.trace_from(5, 3)")
        _wait(lambda: _selected_index(page) == -1, "the row's highlight cleared")
        page.locator(f"{SEL} option").nth(2).click()
        _wait(lambda: _state(page) == (key2, key2), "the same row opened again")
        assert _selected_index(page) == 2

        # the keyboard: the slider at the list's right steps through the rows; JupyterLab's
        # active cell stays (arrow keys in a focused list would move it)
        handle = page.locator(".smn-finder .smn-finder-keys .noUi-handle").first
        handle.click()
        page.wait_for_timeout(500)
        start = _selected_index(page)
        assert start == 2, start  # a click on the handle keeps its row
        cell0 = _lab.active_cell(page)
        assert cell0 == 1  # the finder's cell
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowDown")
        key4 = _row_key(page, 4)
        _wait(lambda: _selected_index(page) == 4 and _state(page) == (key4, key4), "two rows down by keys")
        page.keyboard.press("ArrowUp")
        key3 = _row_key(page, 3)
        _wait(lambda: _selected_index(page) == 3 and _state(page) == (key3, key3), "one row up by keys")
        assert _lab.active_cell(page) == cell0
        assert f"opened layer {key3[0]} · #{key3[1]}" in _lab.text_of(page, ".smn-finder .smn-finder-notice")
        finder.screenshot(path=str(tmp_path / "finder-keys.png"))
        errors = [e for e in lab.console_errors if not e.startswith("Failed to load resource")
                  and e != _lab.ANYWIDGET_SLOW_INIT]  # anywidget's 2 s init limit under load (tests/_lab.py)
        assert errors == [], lab.console_errors
        assert lab.console_errors.count(_lab.ANYWIDGET_SLOW_INIT) <= 2, lab.console_errors
