"""Display layer: pure functions from results to static HTML strings, text reprs and plotly figures.

- ``display.text``: ``layer_match_text``, ``chain_text``, ``trace_text``, ``handle_text``,
  ``saes_text``, ``weights_text`` (plain text; the reprs).
- ``display.html``: the same names with ``_html`` (static HTML: no script, CSS inlined once per
  output, a <pre> text fallback), ``error_html``, ``report_html`` (a stand-alone page).
- ``display.figures``: plotly figures (plotly is imported inside the functions) and
  ``save_figure``.
- Public helpers, exported here: ``escape`` (the one HTML-escaping door), ``link``,
  ``token_html`` / ``tokens_html`` (activation-coloured tokens), ``wrap_output`` (one notebook
  output: CSS once, text fallback, body), ``css`` and the number formats. Result classes outside
  display that build a small repr themselves (``analysis.evaluate.Coactivation``, the fallback of
  ``sources.neuronpedia.NeuronpediaFeature``) import them from here; ``display._util`` is private
  to this package.

Display is the ground floor: it imports nothing from core, sources, widgets or demo (results are
read by duck typing), so core's result classes call it lazily, inside ``__repr__`` /
``_repr_html_``, as xarray's data classes call ``formatting_html``. Importing this package is
cheap (stdlib + numpy). docs/ARCHITECTURE.md has the map; tests/test_architecture.py checks it.
"""

from __future__ import annotations

from ._util import (
    check_no_script, css, escape, fmt_float, fmt_int, fmt_pct, link, safe_url, token_html,
    tokens_html, wrap_output,
)

__all__ = [
    "escape", "link", "safe_url", "css", "wrap_output", "token_html", "tokens_html",
    "check_no_script", "fmt_float", "fmt_int", "fmt_pct",
]
