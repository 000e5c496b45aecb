"""Display layer: pure functions from results to static HTML strings, text reprs and plotly figures.

- ``display.text``: ``layer_match_text``, ``chain_text``, ``trace_text``, ``handle_text``,
  ``saes_text``, ``weights_text`` (plain text; the reprs).
- ``display.html``: the same names with ``_html`` (static HTML: no script, CSS inlined once per
  output, a <pre> text fallback), ``error_html``, ``report_html`` (a stand-alone page).
- ``display.figures``: plotly figures (plotly is imported inside the functions) and
  ``save_figure``.
- Shared helpers for other display modules: ``escape`` (the one HTML-escaping door),
  ``link``, ``token_html`` / ``tokens_html`` (activation-coloured tokens), ``wrap_output``, ``css``.

Importing this package is cheap (stdlib + numpy), so core reprs can use it freely.
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
