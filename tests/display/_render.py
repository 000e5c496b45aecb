"""Render plotly figures in Debian's chromium (Playwright) and read their text geometry.

kaleido renders a figure the same way (plotly.js in a chromium page, the same fonts), so what is
measured here is what ``save_figure`` writes. Each figure is drawn with ``Plotly.newPlot`` into one
page (one browser for the whole test), then every visible ``<text>`` is measured with
``getBoundingClientRect`` relative to the figure's top-left corner, along with the plot areas of
the cartesian subplots and the legend's box.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests._lab import require_browser

_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<style>body{margin:0;padding:0;background:#fff}</style></head>
<body><div id="gd"></div></body></html>"""

_MEASURE_JS = r"""
async (fig) => {
  const gd = document.getElementById('gd');
  Plotly.purge(gd);
  await Plotly.newPlot(gd, fig.data, fig.layout, {staticPlot: true, displayModeBar: false});
  const page = gd.querySelector('.main-svg').getBoundingClientRect();
  const box = (r) => [r.left - page.left, r.top - page.top, r.right - page.left, r.bottom - page.top];
  const hidden = (el) => {
    for (let e = el; e && e !== gd; e = e.parentElement) {
      const cs = getComputedStyle(e);
      if (cs.display === 'none' || cs.visibility === 'hidden' || parseFloat(cs.opacity) === 0) return true;
      if (e.getAttribute && e.getAttribute('opacity') === '0') return true;
    }
    return false;
  };
  const kind = (t) => {
    const c = (sel) => t.closest(sel) !== null;
    if (t.classList.contains('gtitle')) return 'title';
    if (/^[xy]\d*title$/.test(t.getAttribute('class') || '')) return 'axis-title';
    if (c('.legend')) return 'legend';
    if (c('.annotation')) {
      const i = +t.closest('.annotation').getAttribute('data-index');
      const a = gd._fullLayout.annotations[i] || {};
      return (a.xref === 'paper' && a.yref === 'paper') ? 'paper-annotation' : 'data-annotation';
    }
    if (c('.xtick') || c('.ytick') || c('.x2tick')
        || /tick/.test(t.parentElement.getAttribute('class') || '')) return 'tick';
    if (t.classList.contains('node-label')) return 'sankey-label';
    if (c('.textpoint')) return 'point-label';
    return 'other';
  };
  const texts = [];
  for (const t of gd.querySelectorAll('text')) {
    if (!t.textContent.trim() || hidden(t)) continue;
    const r = t.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    texts.push({text: t.textContent, kind: kind(t), box: box(r)});
  }
  const fl = gd._fullLayout;
  const plots = [];
  for (const sp of (fl._subplots.cartesian || [])) {
    const m = /^(x\d*)(y\d*)$/.exec(sp);
    const xa = fl[m[1].replace('x', 'xaxis')], ya = fl[m[2].replace('y', 'yaxis')];
    plots.push([xa._offset, ya._offset, xa._offset + xa._length, ya._offset + ya._length]);
  }
  const leg = gd.querySelector('.legend');
  return {width: fl.width, height: fl.height, page: [page.width, page.height], texts, plots,
          legend: leg && !hidden(leg) ? box(leg.getBoundingClientRect()) : null};
}
"""


@dataclass
class Rendered:
    width: float
    height: float
    texts: list[dict]
    plots: list[list[float]]
    legend: list[float] | None


class Renderer:
    """One chromium page with plotly.js; :meth:`render` draws a figure and measures it."""

    def __init__(self) -> None:
        sync_api, chromium = require_browser()  # RuntimeError with the install hint
        import plotly

        js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
        self._pw = sync_api.sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            self.page = self._browser.new_page()
            self.page.set_default_timeout(120_000)
            self.page.set_content(_PAGE)
            self.page.add_script_tag(path=str(js))
        except BaseException:
            self._pw.stop()
            raise

    def render(self, fig: Any) -> Rendered:
        d = json.loads(fig.to_json())
        out = self.page.evaluate(_MEASURE_JS, d)
        return Rendered(out["width"], out["height"], out["texts"], out["plots"], out["legend"])

    def close(self) -> None:
        try:
            self._browser.close()
        finally:
            self._pw.stop()


# -- the checks --------------------------------------------------------------------------------------
def _overlap(a: list[float], b: list[float], tol: float) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > tol and min(a[3], b[3]) - max(a[1], b[1]) > tol


# text that explains the figure: it must stay off the plots (tick labels, point labels and labels
# on lines are part of the plot)
_OFF_PLOT = ("title", "axis-title", "legend", "paper-annotation")


def layout_problems(r: Rendered, *, tol: float = 1.0, max_legend_share: float = 0.25,
                    min_plot_px: tuple[float, float] = (60.0, 32.0)) -> list[str]:
    """What is wrong with a rendered figure's layout, as sentences (empty: nothing)."""
    bad: list[str] = []
    W, H = r.width, r.height
    for t in r.texts:
        x0, y0, x1, y1 = t["box"]
        if x0 < -tol or y0 < -tol or x1 > W + tol or y1 > H + tol:
            bad.append(f"{t['kind']} {t['text']!r} leaves the {W:g}x{H:g} page: box {_fmt(t['box'])}")
    ts = r.texts
    for i in range(len(ts)):
        for j in range(i + 1, len(ts)):
            if _overlap(ts[i]["box"], ts[j]["box"], tol):
                bad.append(f"{ts[i]['kind']} {ts[i]['text']!r} overlaps {ts[j]['kind']} {ts[j]['text']!r}")
    for t in ts:
        if t["kind"] in _OFF_PLOT:
            for p in r.plots:
                if _overlap(t["box"], p, tol):
                    bad.append(f"{t['kind']} {t['text']!r} lies on a plot area {_fmt(p)}")
                    break
    for t in ts:
        # labels on points are clipped to their plot area: one that sticks out is cut off
        if t["kind"] == "point-label" and r.plots and not any(_inside(t["box"], p, tol) for p in r.plots):
            bad.append(f"point label {t['text']!r} sticks out of its plot area (cut off): box {_fmt(t['box'])}")
    if r.legend is not None:
        x0, y0, x1, y1 = r.legend
        share = max(0.0, x1 - x0) * max(0.0, y1 - y0) / (W * H)
        if share > max_legend_share:
            bad.append(f"the legend takes {share:.0%} of the figure (at most {max_legend_share:.0%})")
        for p in r.plots:
            if _overlap(r.legend, p, tol):
                bad.append(f"the legend {_fmt(r.legend)} covers a plot area {_fmt(p)}")
                break
    for p in r.plots:
        if p[2] - p[0] < min_plot_px[0] or p[3] - p[1] < min_plot_px[1]:
            bad.append(f"a plot area is crushed to {p[2] - p[0]:.0f}x{p[3] - p[1]:.0f} px")
    return bad


def _inside(a: list[float], p: list[float], tol: float) -> bool:
    return a[0] >= p[0] - tol and a[1] >= p[1] - tol and a[2] <= p[2] + tol and a[3] <= p[3] + tol


def _fmt(b: list[float]) -> str:
    return "[" + ", ".join(f"{v:.0f}" for v in b) + "]"
