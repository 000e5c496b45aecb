"""JupyterLab on loopback, driven by Playwright with Debian's chromium: the shared harness of
``tests/test_browser.py`` (the CI test) and ``benchmarks/bench_browser.py`` (latencies).

Everything is temporary and local: a free port on 127.0.0.1, a random token, a root folder with
a copy of the notebook, JupyterLab's settings / workspaces / runtime folders and the saematch
cache in that temporary tree. Every wait is bounded; :meth:`Lab.close` stops the browser and the
server (also after a failure: use it as a context manager).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

# anywidget rejects a model whose JavaScript module takes more than a hard-coded 2 s to set up
# (AbortSignal.timeout(2000) in its runtime); a loaded 2-core machine can reach that with plotly's
# module while the widget still draws. The browser tests let a couple through, nothing else.
ANYWIDGET_SLOW_INIT = "pageerror: [anywidget] Failed to initialize model."

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
INSTALL_HINT = ("Debian's chromium is needed for the browser test: apt-get install -y chromium "
                "(.ci/run installs it); never a browser downloaded by playwright install")

# In-page probes: the time of the last real input event (capture phase, before any widget sees
# it) and, per watched element, the first and last DOM change after it.
PROBE_JS = r"""
() => {
  if (window.__smn) return;
  const S = window.__smn = {t0: null, first: {}, last: {}, observers: []};
  const mark = (e) => {
    if (e.type === 'keydown' && e.key !== 'Enter') return;
    S.t0 = performance.now(); S.first = {}; S.last = {};
  };
  for (const t of ['pointerup', 'keydown']) document.addEventListener(t, mark, true);
  S.watch = (name, el) => {
    const ob = new MutationObserver(() => {
      if (S.t0 === null) return;
      const dt = performance.now() - S.t0;
      if (!(name in S.first)) S.first[name] = dt;
      S.last[name] = dt;
    });
    ob.observe(el, {subtree: true, childList: true, characterData: true, attributes: true});
    S.observers.push(ob);
  };
}
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_browser() -> tuple[Any, str]:
    """(playwright.sync_api module, chromium path); raises RuntimeError with the install hint."""
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not path:
        raise RuntimeError(INSTALL_HINT)
    try:
        from playwright import sync_api
    except ImportError as exc:
        raise RuntimeError("the browser test needs Python Playwright: pip install -e '.[dev]' "
                           "(the browser extra)") from exc
    return sync_api, path


class Lab:
    """A JupyterLab server with one notebook, and a chromium page on it."""

    def __init__(self, tmp: Path, notebook: Path, *, timeout_s: float = 90.0) -> None:
        self.tmp = Path(tmp)
        self.root = self.tmp / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.notebook = shutil.copy(notebook, self.root / Path(notebook).name)
        self.port, self.token = free_port(), secrets.token_hex(16)
        env = dict(os.environ)
        env.update({
            "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            "SAEMATCH_CACHE_DIR": str(self.tmp / "cache"), "HF_HUB_OFFLINE": "1",
            # one intra-op thread per kernel: the demo is small and the CI machine has two cores
            "OMP_NUM_THREADS": "1",
            "JUPYTERLAB_SETTINGS_DIR": str(self.tmp / "lab-settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(self.tmp / "lab-workspaces"),
            "JUPYTER_RUNTIME_DIR": str(self.tmp / "runtime"), "IPYTHONDIR": str(self.tmp / "ipython"),
        })
        # no "Would you like to get notified about Jupyter news?" toast over the panels (and no
        # request for the news feed: CI is offline)
        note = self.tmp / "lab-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        note.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        self.log = open(self.tmp / "lab.log", "wb")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
             "--LabApp.expose_app_in_browser=True", "--ServerApp.port_retries=0",
             # CI runs as root; no extension manager (it would ask PyPI)
             "--allow-root", "--LabApp.extension_manager=readonly"],
            cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.pw = self.browser = self.page = None
        self.console_errors: list[str] = []
        self.failed_requests: list[str] = []
        self.failures: list[tuple[str, str | None]] = []  # (url, Chromium's reason)
        try:
            self._wait_server(timeout_s)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _failed(self, request: Any) -> None:
        self.failed_requests.append(request.url)
        self.failures.append((request.url, request.failure))

    def unexpected_failures(self, allowed_prefixes: tuple[str, ...] = ()) -> list[tuple[str, str | None]]:
        """Failed requests but those of JupyterLab's own REST API (``/api/terminals``, ``/api/sessions``,
        ...: Lab polls them and may abort a poll; one ``/api/terminals`` poll failed in a CI run on
        this project's machine, nothing else running) and those under ``allowed_prefixes``. What
        the package's outputs load (static assets, extension bundles, figures) is never let through."""
        api = f"{self.url}/api/"
        return [(u, why) for u, why in self.failures if not u.startswith(api) and not u.startswith(allowed_prefixes)]

    def _wait_server(self, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.server.returncode}: see {self.tmp / 'lab.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"JupyterLab did not answer on {self.url} within {timeout_s:.0f} s")

    def open(self, *, width: int = 1400, height: int = 1000) -> Any:
        sync_api, chromium = require_browser()
        self.pw = sync_api.sync_playwright().start()
        self.browser = self.pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        self.page = self.browser.new_page(viewport={"width": width, "height": height})
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.console_errors.append(f"pageerror: {e}"))
        self.page.on("requestfailed", self._failed)
        name = Path(self.notebook).name
        self.page.goto(f"{self.url}/lab/tree/{name}?token={self.token}", timeout=120_000)
        self.page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget "
                                    "&& window.jupyterapp.shell.currentWidget.sessionContext "
                                    "&& window.jupyterapp.shell.currentWidget.sessionContext.session "
                                    "&& window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                                    timeout=120_000)
        self.page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                                    ".status === 'idle'", timeout=120_000)
        self.page.evaluate(PROBE_JS)
        return self.page

    def run_all(self, timeout_s: float = 420.0) -> None:
        """Run every cell; return when the kernel is idle with every code cell executed."""
        self.page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        self.page.wait_for_function(
            """() => {
              const nb = window.jupyterapp.shell.currentWidget;
              const cells = nb.content.model.cells;
              for (let i = 0; i < cells.length; i++) {
                const c = cells.get(i);
                if (c.type === 'code' && !c.executionCount) return false;
              }
              return nb.sessionContext.session.kernel.status === 'idle';
            }""", timeout=timeout_s * 1000, polling=500)

    def cell_errors(self) -> list[dict]:
        """Error outputs of the notebook's cells (index, ename, evalue)."""
        return self.page.evaluate(
            """() => {
              const cells = window.jupyterapp.shell.currentWidget.content.model.cells, out = [];
              for (let i = 0; i < cells.length; i++) {
                const c = cells.get(i);
                if (c.type !== 'code') continue;
                for (const o of c.outputs.toJSON())
                  if (o.output_type === 'error') out.push({cell: i, ename: o.ename, evalue: o.evalue});
              }
              return out;
            }""")

    def stream_text(self) -> str:
        return self.page.evaluate(
            """() => {
              const cells = window.jupyterapp.shell.currentWidget.content.model.cells; let s = '';
              for (let i = 0; i < cells.length; i++) {
                const c = cells.get(i);
                if (c.type === 'code') for (const o of c.outputs.toJSON()) if (o.output_type === 'stream') s += o.text;
              }
              return s;
            }""")

    # -- latency probes ---------------------------------------------------------------------
    def watch(self, name: str, selector: str) -> None:
        self.page.evaluate("([n, s]) => window.__smn.watch(n, document.querySelector(s))", [name, selector])

    def reset_probe(self) -> None:
        self.page.evaluate("() => { window.__smn.t0 = null; window.__smn.first = {}; window.__smn.last = {}; }")

    def probe(self) -> dict:
        return self.page.evaluate("() => ({t0: window.__smn.t0, first: window.__smn.first, last: window.__smn.last})")

    def settle(self, names: list[str], *, quiet_ms: float = 400.0, timeout_s: float = 20.0) -> dict:
        """Wait until every watched element named has changed after the input and then stayed
        quiet for ``quiet_ms``; the probe (ms from the input to each element's first / last change)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            p = self.probe()
            if p["t0"] is not None and all(n in p["last"] for n in names):
                now = self.page.evaluate("() => performance.now()")
                if now - (p["t0"] + max(p["last"][n] for n in names)) >= quiet_ms:
                    return p
            time.sleep(0.05)
        raise TimeoutError(f"no update of {names} within {timeout_s} s after the input: {self.probe()}")

    def close(self) -> None:
        for step in (lambda: self.browser and self.browser.close(), lambda: self.pw and self.pw.stop()):
            try:
                step()
            except Exception:
                pass
        if self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(timeout=10)
        self.log.close()

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- driving the quickstart's panels -------------------------------------------------------------
EXPLORER = ".smn-explorer"


def drag_slider_to(page: Any, container: str, fraction: float) -> None:
    """Drag the noUiSlider handle inside ``container`` to ``fraction`` of its track (real mouse
    events: move, press, move in steps, release)."""
    track = page.locator(f"{container} .noUi-target").first
    handle = page.locator(f"{container} .noUi-handle").first
    handle.scroll_into_view_if_needed()
    tb, hb = track.bounding_box(), handle.bounding_box()
    x0, y = hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2
    x1 = tb["x"] + fraction * tb["width"]
    page.mouse.move(x0, y)
    page.mouse.down()
    for k in range(1, 9):
        page.mouse.move(x0 + (x1 - x0) * k / 8, y)
    page.mouse.up()


def type_feature(page: Any, value: int) -> None:
    box = page.locator(f"{EXPLORER} .smn-feature-box input").first
    box.scroll_into_view_if_needed()
    box.click()
    box.press("Control+A")
    box.type(str(value))
    box.press("Enter")


def text_of(page: Any, selector: str) -> str:
    """The element's text, whitespace collapsed (textContent: JupyterLab skips the layout of cells
    out of view, where innerText would be empty)."""
    return " ".join(page.locator(selector).first.evaluate("e => e.textContent").split())


def html_of(page: Any, selector: str) -> str:
    """The element's markup (a moved focus changes classes, not text)."""
    return page.locator(selector).first.evaluate("e => e.innerHTML")


def figure_signature(page: Any) -> str:
    """What the explorer's plotly figure draws: its data and shapes as plotly.js holds them."""
    return page.evaluate(
        f"""() => {{
          // the FigureWidget's own element carries the class (and is the plotly graph div)
          const el = document.querySelector('{EXPLORER} .smn-figure');
          const gd = el && (el.data ? el : el.querySelector('.js-plotly-plot'));
          if (!gd || !gd.data) return '';
          return JSON.stringify([gd.data.map(t => [t.name, t.x, t.y]), (gd.layout || {{}}).shapes,
                                 ((gd.layout || {{}}).title || {{}}).text]);
        }}""")


def figure_state(page: Any, root: str = EXPLORER, nth: int = 0) -> dict:
    """What plotly.js holds for the ``nth`` explorer figure under ``root`` (a notebook or a second
    view of an output): the number of traces, the title, the shapes and annotations."""
    return page.evaluate(
        """([root, nth]) => {
          const els = Array.from(document.querySelectorAll(root + ' .smn-figure'));
          const el = els[nth];
          const gd = el && (el.data ? el : el.querySelector('.js-plotly-plot'));
          if (!gd || !gd.data) return {n: -1, title: '', shapes: 0, annotations: 0};
          const lay = gd.layout || {};
          return {n: gd.data.length, title: ((lay.title || {}).text) || '', shapes: (lay.shapes || []).length,
                  annotations: (lay.annotations || []).length, focus: (lay.shapes || []).map(s => s.x0),
                  y: JSON.stringify(gd.data.map(t => t.y))};
        }""", [root, nth])


def wait_figure(page: Any, predicate: str, root: str = EXPLORER, timeout_ms: int = 60_000) -> None:
    """Wait until the first figure under ``root`` satisfies ``predicate`` (JS, of ``gd``)."""
    page.wait_for_function(
        f"""(root) => {{
          const el = document.querySelector(root + ' .smn-figure');
          const gd = el && (el.data ? el : el.querySelector('.js-plotly-plot'));
          return !!gd && !!gd.data && ({predicate});
        }}""", arg=root, timeout=timeout_ms, polling=200)


def save_notebook(page: Any) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=60_000)


def focused_column_in_view(page: Any) -> dict:
    """Where the explorer's focused example column is, against its sideways scroller and the
    window: the boxes and whether it is inside both (horizontally: the scroller's visible part)."""
    return page.evaluate(
        f"""() => {{
          const col = document.querySelector('{EXPLORER} .smn-ex-col-focus');
          const sc = document.querySelector('{EXPLORER} .smn-ex-scroller');
          if (!col || !sc) return {{found: false}};
          const c = col.getBoundingClientRect(), s = sc.getBoundingClientRect();
          return {{found: true, col: [c.left, c.top, c.right, c.bottom], scroller: [s.left, s.top, s.right, s.bottom],
                  window: [innerWidth, innerHeight],
                  inside: c.left >= s.left - 1 && c.right <= s.right + 1,
                  top_in_window: c.top >= 0 && c.top < innerHeight}};
        }}""")


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)


# -- asking the kernel (tests/test_browser_finder.py) ---------------------------------------------
def kernel_eval(page: Any, code: str, *, timeout_s: float = 60.0) -> str:
    """Run ``code`` in the open notebook's kernel (no cell, no history) and return what it printed:
    what a panel did with an input, read from the panel's own state."""
    return page.evaluate(
        """async ([code, ms]) => {
          const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
          const fut = k.requestExecute({code, silent: false, store_history: false});
          let out = '';
          fut.onIOPub = (msg) => {
            const t = msg.header.msg_type;
            if (t === 'stream') out += msg.content.text;
            if (t === 'error') out += 'ERROR ' + msg.content.ename + ': ' + msg.content.evalue;
          };
          const timer = new Promise((_, no) => setTimeout(() => no(new Error('kernel_eval timed out')), ms));
          await Promise.race([fut.done, timer]);
          return out;
        }""", [code, timeout_s * 1000])


def active_cell(page: Any) -> int:
    """The index of JupyterLab's active cell (what arrow keys move in command mode)."""
    return page.evaluate("() => window.jupyterapp.shell.currentWidget.content.activeCellIndex")
