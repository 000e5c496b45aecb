"""Shared helpers of the display layer: escaping, number formats, the output wrapper, tokens.

Everything here returns plain strings (no IPython, no plotly) so that core reprs, widgets and
the report can all use it. ``escape`` is the one door through which any string that came from a
user, a model, a file or an SAE id enters HTML.
"""

from __future__ import annotations

import functools
import html as _html
import math
import re
from importlib import resources
from typing import Any, Iterable, Mapping, Sequence

__all__ = [
    "escape", "attr", "link", "fmt_num", "fmt_int", "fmt_float", "fmt_pct", "fmt_seconds",
    "fmt_bytes", "fmt_value", "css", "wrap_output", "token_html", "tokens_html", "check_no_script",
    "safe_url", "DASH",
]

DASH = "—"  # shown for a missing value, in text and HTML alike


# -- escaping -------------------------------------------------------------------------------------
def escape(value: Any) -> str:
    """HTML-escape ``str(value)`` (quotes included, so it is also safe inside attributes).

    ``None`` becomes the empty string. Use it for every string that did not come from this module.
    """
    if value is None:
        return ""
    return _html.escape(str(value), quote=True)


def attr(value: Any) -> str:
    """A double-quoted, escaped attribute value: ``f'title={attr(x)}'``."""
    return f'"{escape(value)}"'


_SAFE_URL = re.compile(r"^https?://[^\s<>\"']+$", re.IGNORECASE)


def safe_url(url: Any) -> str | None:
    """``url`` if it is a plain http(s) URL, else None: no ``javascript:`` or data links."""
    if not url or not isinstance(url, str) or not _SAFE_URL.match(url):
        return None
    return url


def link(url: Any, text: Any, *, title: Any = None) -> str:
    """``<a>`` to ``url`` showing escaped ``text``; just the escaped text when the URL is unsafe."""
    u = safe_url(url)
    body = escape(text)
    if u is None:
        return body
    t = f" title={attr(title)}" if title else ""
    return (f'<a class="smn-link" href={attr(u)} target="_blank" rel="noopener noreferrer"{t}>'
            f"{body}</a>")


_SCRIPT = re.compile(r"<\s*script", re.IGNORECASE)


def check_no_script(fragment: str, where: str = "HTML fragment") -> str:
    """Refuse markup that carries a script tag (the display layer never emits one)."""
    if _SCRIPT.search(fragment):
        raise ValueError(
            f"{where} contains a <script> tag; saematch_nb's HTML is static: pass HTML made by "
            "saematch_nb.display functions, or escape the text with saematch_nb.display.escape"
        )
    return fragment


# -- numbers (text and HTML share these, so both show the very same strings) ----------------------
def _is_nan(x: Any) -> bool:
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return False


def fmt_int(n: Any) -> str:
    if n is None:
        return DASH
    return f"{int(n):,}"


def fmt_float(x: Any, digits: int = 4) -> str:
    if x is None:
        return DASH
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def fmt_num(x: Any) -> str:
    """int-like -> thousands separators; float -> 4 significant digits."""
    if x is None:
        return DASH
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int) or (hasattr(x, "dtype") and getattr(x.dtype, "kind", "") in "iu"):
        return fmt_int(x)
    return fmt_float(x)


def fmt_pct(frac: Any) -> str:
    if frac is None or _is_nan(frac):
        return DASH
    return f"{100.0 * float(frac):.1f}%"


def fmt_seconds(s: Any) -> str:
    if s is None or _is_nan(s):
        return DASH
    s = float(s)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.2f} s"
    m, sec = divmod(s, 60)
    if m < 60:
        return f"{int(m)} min {sec:.0f} s"
    h, m = divmod(m, 60)
    return f"{int(h)} h {int(m)} min"


def fmt_bytes(n: Any) -> str:
    if n is None or _is_nan(n):
        return DASH
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def fmt_value(v: Any) -> str:
    """Any option/stat value as a short string (same in text and HTML before escaping)."""
    if v is None:
        return DASH
    if isinstance(v, bool) or getattr(getattr(v, "dtype", None), "kind", "") == "b":
        return str(bool(v)) if getattr(v, "ndim", 0) == 0 else str(v)
    if isinstance(v, (int, float)) or hasattr(v, "dtype"):
        try:
            return fmt_num(v.item() if hasattr(v, "item") and getattr(v, "ndim", 0) == 0 else v)
        except (TypeError, ValueError):
            pass
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={fmt_value(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        s = ", ".join(fmt_value(x) for x in v[:8])
        return f"[{s}{', …' if len(v) > 8 else ''}]"
    s = str(v)
    return s if len(s) <= 120 else s[:117] + "..."


# -- CSS and the output wrapper -------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def css() -> str:
    """The stylesheet shipped as package data (display/static/saematch.css)."""
    return resources.files("saematch_nb.display").joinpath("static/saematch.css").read_text("utf-8")


def wrap_output(body: str, text: str, *, kind: str = "") -> str:
    """One notebook output: the CSS once, a <pre> text fallback, and the rich body.

    Where a renderer drops <style> (GitHub, some viewers), the inline ``display:none`` keeps the
    rich body hidden and the plain-text <pre> shows; with the CSS, the rule flips them (the same
    trick as xarray's formatting_html).
    """
    k = f" smn-out-{kind}" if kind else ""
    return (
        f'<div class="smn-output{k}"><style>{css()}</style>'
        f'<pre class="smn-text-repr-fallback">{escape(text)}</pre>'
        f'<div class="smn-wrap" style="display:none">{body}</div></div>'
    )


# -- tokens (shared with display/examples.py) -----------------------------------------------------
_WS = {"\n": "↵", "\t": "⇥", "\r": "␍"}


def _visible(tok: str) -> str:
    return "".join(_WS.get(c, c) for c in tok)


def token_html(token: Any, value: float | None = None, max_value: float | None = None, *,
               title: Any = None, highlight: bool = False) -> str:
    """One token as an escaped ``<span class="smn-tok">`` whose background shows ``value/max``.

    Whitespace is made visible (newline ↵, tab ⇥); the hover title holds the token and value.
    """
    tok = "" if token is None else str(token)
    alpha = 0.0
    if value is not None and max_value and not _is_nan(value) and float(max_value) > 0:
        alpha = max(0.0, min(1.0, float(value) / float(max_value)))
    style = f' style="background-color: rgba(255, 127, 14, {alpha:.3f})"' if alpha > 0 else ""
    tip = title if title is not None else (
        f"{tok!r}" + (f" = {fmt_float(value)}" if value is not None else ""))
    cls = "smn-tok smn-tok-hl" if highlight else "smn-tok"
    return f'<span class="{cls}"{style} title={attr(tip)}>{escape(_visible(tok))}</span>'


def tokens_html(tokens: Sequence[Any], values: Iterable[float] | None = None,
                max_value: float | None = None, *, highlight: int | None = None) -> str:
    """A run of tokens (``token_html`` each) in a ``<span class="smn-toks">``."""
    toks = list(tokens)
    vals = [None] * len(toks) if values is None else [None if v is None else float(v) for v in values]
    if len(vals) != len(toks):
        raise ValueError(f"tokens_html got {len(toks)} tokens but {len(vals)} values")
    if max_value is None:
        finite = [v for v in vals if v is not None and not _is_nan(v)]
        max_value = max(finite) if finite else None
    spans = "".join(token_html(t, v, max_value, highlight=(i == highlight))
                    for i, (t, v) in enumerate(zip(toks, vals)))
    return f'<span class="smn-toks">{spans}</span>'


# -- what "accepted" rests on, and when a margin is too thin to add confidence ---------------------
#: A step is *accepted* by the calibrated criterion alone (core/criterion.py: direction distance
#: within the pair's threshold and mutual best); the margin (runner-up MSE − partner MSE) is a
#: separate signal, shown beside it. A margin at or below this share of the step's own MSE (every
#: negative margin included) is "not clearly positive": the display marks it as uncertain. It
#: changes nothing in the decision.
UNCERTAIN_MARGIN = 0.1


def margin_uncertain(mse: Any, margin: Any) -> bool:
    """True when ``margin`` is not clearly positive: at most ``UNCERTAIN_MARGIN`` × ``mse``, or not
    a finite number."""
    try:
        m, g = float(mse), float(margin)
    except (TypeError, ValueError):
        return True
    if not (math.isfinite(m) and math.isfinite(g)):
        return True
    return g <= UNCERTAIN_MARGIN * max(m, 0.0)
