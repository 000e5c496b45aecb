"""The quickstart in a real browser (issues #13, #23): JupyterLab on loopback, Debian's chromium
driven by Python Playwright. All cells run with no error output and no console error; the panels
answer real input events (a dragged layer slider, a typed feature, a clicked trace node, the
Generate button); the saved notebook's live snapshots show the panels as last seen; in a 1000 px
window the focused example column is in view at the last layers; a bad feature leaves no title or
focus line in the figure; the overview's node list and the finder announce what they open in the
explorer (the same node twice too); after a page reload (kernel running) the figures come back
whole and keep updating, and a second view of the explorer's output draws its figure too. A
screenshot of each panel is written to a temporary folder, or to docs/screenshots/ when
SAEMATCH_SCREENSHOTS=1 (retaking the README's pictures on purpose: a test run leaves the checkout
as it was).

A missing chromium or Playwright is a failure with the install hint, never a skip: .ci/run
installs chromium and the dev extra brings Playwright.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from tests import _lab

ROOT = Path(__file__).resolve().parents[1]
DOC_SHOTS = ROOT / "docs" / "screenshots"
# Requests allowed to fail: the Colab badge's image is remote and CI is offline (chromium logs
# each failed load as a console error "Failed to load resource"). Nothing else may fail.
OFFLINE_OK_HOSTS = ("https://colab.research.google.com/",)
ANYWIDGET_SLOW_INIT = _lab.ANYWIDGET_SLOW_INIT


@pytest.mark.slow
def test_quickstart_runs_and_the_panels_answer_real_input(tmp_path):
    t_start = time.monotonic()
    try:
        _lab.require_browser()
    except RuntimeError as err:
        pytest.fail(str(err))
    retake = os.environ.get("SAEMATCH_SCREENSHOTS") == "1"
    SHOTS = DOC_SHOTS if retake else tmp_path / "screenshots"
    SHOTS.mkdir(parents=True, exist_ok=True)
    # unless asked for, the checkout's pictures are left as they are (make test leaves git clean)
    docs_before = {p.name: p.stat().st_mtime_ns for p in DOC_SHOTS.glob("*.png")}
    with _lab.Lab(tmp_path, ROOT / "notebooks" / "01_quickstart.ipynb") as lab:
        page = lab.open()
        lab.run_all()
        assert lab.cell_errors() == [], lab.cell_errors()
        assert "Traceback" not in lab.stream_text()
        assert "notebook ran in" in lab.stream_text()
        ex = _lab.EXPLORER
        page.locator(f"{ex} .smn-node-button").first.wait_for(timeout=60_000)
        for name, sel in (("trace", f"{ex} .smn-trace-head"), ("figure", f"{ex} .smn-figure"),
                          ("examples", f"{ex} .smn-examples-box"), ("steer", ".smn-steering .smn-steer-output")):
            lab.watch(name, sel)
        head0 = _lab.text_of(page, f"{ex} .smn-trace-head")
        fig0 = _lab.figure_signature(page)
        exs0 = _lab.html_of(page, f"{ex} .smn-examples-box")
        assert "feature 27 of layer 0" in head0 and "layer 0: feature 27, the origin" in head0

        # 1. drag the layer slider to the last layer: the explorer follows the trace
        lab.reset_probe()
        _lab.drag_slider_to(page, f"{ex} .smn-layer-slider", 1.0)
        lab.settle(["trace", "figure", "examples"])
        head1 = _lab.text_of(page, f"{ex} .smn-trace-head")
        assert "feature 27 of layer 0" in head1  # same origin
        assert re.search(r"layer 5: feature \d+, the traced partner", head1), head1
        assert _lab.figure_signature(page) != fig0
        assert _lab.html_of(page, f"{ex} .smn-examples-box") != exs0

        # 2. type a feature: a new trace from it
        fig1, exs1 = _lab.figure_signature(page), _lab.html_of(page, f"{ex} .smn-examples-box")
        lab.reset_probe()
        _lab.type_feature(page, 120)
        lab.settle(["trace", "figure", "examples"])
        head2 = _lab.text_of(page, f"{ex} .smn-trace-head")
        assert "feature 120 of layer 5" in head2, head2
        assert _lab.figure_signature(page) != fig1 and _lab.html_of(page, f"{ex} .smn-examples-box") != exs1

        # 3. click a node of the trace: the focus moves there, the origin stays
        lab.reset_probe()
        node = page.locator(f"{ex} .smn-node-button").nth(2)
        node.scroll_into_view_if_needed()
        node.click()
        lab.settle(["trace"])
        head3 = _lab.text_of(page, f"{ex} .smn-trace-head")
        assert "feature 120 of layer 5" in head3 and re.search(r"layer 2: feature \d+", head3), head3
        # a tall window for the screenshots: an element taller than the notebook's view is clipped
        page.set_viewport_size({"width": 1400, "height": 3000})
        page.wait_for_timeout(800)
        page.locator(f"{ex}").first.screenshot(path=str(SHOTS / "explorer.png"))
        page.locator(".smn-finder").first.screenshot(path=str(SHOTS / "finder.png"))
        page.locator(".smn-overview").first.screenshot(path=str(SHOTS / "overview.png"))

        # 4. Generate: the steering panel shows both generations
        steer = page.locator(".smn-steering").first
        steer.scroll_into_view_if_needed()
        lab.reset_probe()
        steer.locator(".smn-generate").first.click()
        page.wait_for_function("() => (document.querySelector('.smn-steering .smn-steer-output') || {})"
                               ".textContent.includes('SteeringResult')", timeout=90_000)
        out = _lab.text_of(page, ".smn-steering .smn-steer-output")
        assert "baseline" in out and "steered" in out
        assert "differ from the baseline" in out or "same as the baseline" in out
        steer.screenshot(path=str(SHOTS / "steering.png"))
        page.set_viewport_size({"width": 1400, "height": 1000})

        # 5. the saved notebook shows the panels as last seen (issue #23.6): the live snapshots,
        # hidden where the live panel is drawn
        hidden = page.evaluate("() => Array.from(document.querySelectorAll('.smn-live-snapshot'))"
                               ".map(e => e.offsetParent === null)")
        assert len(hidden) >= 4 and all(hidden), hidden
        page.wait_for_timeout(2500)  # the snapshots are re-sent ~1 s after the last change
        _lab.save_notebook(page)
        saved = json.loads(Path(lab.notebook).read_text("utf-8"))
        htmls = ["".join(o.get("data", {}).get("text/html", "")) for c in saved["cells"] for o in c.get("outputs", [])]
        snaps = [h for h in htmls if h.startswith('<div class="smn-live-snapshot">')]
        ex_snap = next(h for h in snaps if "FeatureExplorer" in h)
        assert "feature 120 of layer 5" in ex_snap and re.search(r"layer 2: feature \d+", ex_snap)
        assert "<svg" in ex_snap and "<script" not in ex_snap.lower()
        st_snap = next(h for h in snaps if "SteeringPanel" in h)
        assert "SteeringResult" in st_snap and "baseline" in st_snap and "steered" in st_snap

        # 6. in a 1000 px window, at layer 4, the focused example column is in view (#23.3)
        lab.reset_probe()
        _lab.drag_slider_to(page, f"{ex} .smn-layer-slider", 0.8)
        lab.settle(["trace", "examples"])
        page.locator(f"{ex} .smn-trace-head").first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(500)
        where = _lab.focused_column_in_view(page)
        assert where["found"] and where["inside"] and where["top_in_window"], where
        # the feature box shows the traced partner; Enter on that same number starts a trace there
        shown = page.locator(f"{ex} .smn-feature-box input").first.input_value()
        head = _lab.text_of(page, f"{ex} .smn-trace-head")
        assert f"layer 4: feature {shown}" in head and f"feature {shown} of layer 4" not in head, head
        _lab.type_feature(page, int(shown))
        page.wait_for_function(f"() => document.querySelector('{ex} .smn-trace-head').textContent"
                               f".includes('feature {shown} of layer 4')", timeout=30_000)

        # 7. a bad feature: the error, and nothing of the previous feature in the figure (#23.7)
        _lab.type_feature(page, 99999)
        page.wait_for_function(f"() => document.querySelector('{ex} .smn-error')", timeout=30_000)
        try:  # the traces go first, then the layout keys the empty figure lacks
            _lab.wait_figure(page, "gd.data.length === 0 && !((gd.layout || {}).title || {}).text", timeout_ms=20_000)
        except Exception:
            pass  # the assertion below says what is left
        st = _lab.figure_state(page)
        assert st["title"] == "" and st["shapes"] == 0 and st["annotations"] == 0, st

        # 8. the overview's node list opens a node, says so in the explorer, and opens it twice (#23.4)
        ov_select = page.locator(".smn-overview .smn-open-node select").first
        ov_select.scroll_into_view_if_needed()
        label = ov_select.evaluate("s => s.options[2].text")
        m = re.match(r"L(\d+)\s*#(\d+)", label)  # the list shows spaces as no-break spaces
        for _ in range(2):
            ov_select.select_option(label=label)
            page.wait_for_function(f"() => (document.querySelector('{ex} .smn-notice') || {{}}).textContent"
                                   f"?.includes('feature {m[2]} from the overview')", timeout=30_000)
            assert f"layer {m[1]}: feature {m[2]}" in _lab.text_of(page, f"{ex} .smn-trace-head")
            assert ov_select.evaluate("s => s.value") != label  # back to "—": the same node opens again
            _lab.type_feature(page, 27)  # elsewhere: the notice goes
            page.wait_for_function(f"() => !document.querySelector('{ex} .smn-notice')", timeout=30_000)
        rows = page.locator(".smn-finder .smn-finder-row select").first
        rows.scroll_into_view_if_needed()
        first = re.search(r"L(\d+)\s*#(\d+)", rows.evaluate("s => s.options[0].text"))
        rows.select_option(index=0)
        page.wait_for_function(f"() => (document.querySelector('{ex} .smn-notice') || {{}}).textContent"
                               "?.includes('from the finder')", timeout=30_000)
        assert f"layer {first[1]} · feature {first[2]} from the finder" in _lab.text_of(page, f"{ex} .smn-notice")

        # 9. reload the page, the kernel running: the figures come back whole and keep updating (#23.1)
        fig_before = _lab.figure_state(page)
        page.wait_for_timeout(2500)  # the live snapshots settle first: the saved notebook is clean
        _lab.save_notebook(page)
        page.on("dialog", lambda d: d.accept())  # "leave the page?" if an output changed since
        page.reload()
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                               "&& window.jupyterapp.shell.currentWidget.sessionContext "
                               "&& window.jupyterapp.shell.currentWidget.sessionContext.session", timeout=120_000)
        page.evaluate(_lab.PROBE_JS)
        page.locator(f"{ex} .smn-node-button").first.wait_for(timeout=120_000)
        _lab.wait_figure(page, "gd.data.length > 0", timeout_ms=120_000)
        after = _lab.figure_state(page)
        assert after["n"] == fig_before["n"] > 0 and after["title"] == fig_before["title"] and after["shapes"] > 0
        for name, sel in (("trace", f"{ex} .smn-trace-head"), ("figure", f"{ex} .smn-figure")):
            lab.watch(name, sel)
        lab.reset_probe()
        _lab.drag_slider_to(page, f"{ex} .smn-layer-slider", 0.0)
        lab.settle(["trace", "figure"], timeout_s=60)
        moved = _lab.figure_state(page)
        assert moved["n"] > 0 and moved != after
        lab.reset_probe()
        _lab.type_feature(page, 120)
        lab.settle(["trace", "figure"], timeout_s=60)
        typed = _lab.figure_state(page)
        assert typed["n"] > 0 and "120" in typed["title"] and typed["y"] != moved["y"]
        for gd_n in page.evaluate("() => Array.from(document.querySelectorAll('.smn-overview .js-plotly-plot'))"
                                  ".map(g => (g.data || []).length)"):
            assert gd_n > 0  # the overview's figures too

        # 10. a second view of the explorer's output draws the figure and follows it
        page.evaluate(f"""() => {{
          const nb = window.jupyterapp.shell.currentWidget.content;
          nb.activeCellIndex = nb.widgets.findIndex(c => c.node.querySelector('{ex}'));
          return window.jupyterapp.commands.execute('notebook:create-output-view');
        }}""")
        view = ".jp-LinkedOutputView"
        page.locator(f"{view} {ex} .smn-node-button").first.wait_for(timeout=60_000)
        _lab.wait_figure(page, "gd.data.length > 0", root=view)
        assert _lab.figure_state(page, view)["y"] == typed["y"]
        _lab.type_feature(page, 27)
        _lab.wait_figure(page, "(gd.layout.title || {}).text.includes('feature 27')", root=view)
        assert _lab.figure_state(page, view)["y"] == _lab.figure_state(page)["y"]
        failed = lab.unexpected_failures(OFFLINE_OK_HOSTS)
        assert failed == [], (failed, lab.failures)
        allowed = len(lab.failed_requests)  # one "Failed to load resource" per allowed failure
        loads = [e for e in lab.console_errors if e.startswith("Failed to load resource")]
        # anywidget's 2 s init limit (tests/_lab.py): every figure above was asserted drawn and
        # following; anything else logged still fails the test
        slow_init = [e for e in lab.console_errors if e == ANYWIDGET_SLOW_INIT]
        errors = [e for e in lab.console_errors if not e.startswith("Failed to load resource")
                  and e != ANYWIDGET_SLOW_INIT]
        assert errors == [] and len(loads) <= allowed, (lab.console_errors, lab.failed_requests)
        assert len(slow_init) <= 2, lab.console_errors  # a few slow inits, not a widget that never loads
    for f in ("explorer", "finder", "overview", "steering"):
        assert (SHOTS / f"{f}.png").stat().st_size > 5_000
    if not retake:
        assert {p.name: p.stat().st_mtime_ns for p in DOC_SHOTS.glob("*.png")} == docs_before
    assert time.monotonic() - t_start < 600
