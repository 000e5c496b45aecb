"""The stylesheet as package data, the shared token/escape helpers, and the stand-alone report."""

from __future__ import annotations

import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib
from importlib import resources
from pathlib import Path

import pytest

from saematch_nb import display
from saematch_nb.display import html
from saematch_nb.display._util import check_no_script, css, escape, link, safe_url, token_html, tokens_html

from .conftest import HOSTILE, HOSTILE_ESCAPED, make_chain, make_layer_match, visible_text

ROOT = Path(__file__).resolve().parents[2]


def test_css_ships_as_package_data_and_is_smn_prefixed():
    f = resources.files("saematch_nb.display").joinpath("static/saematch.css")
    assert f.is_file()
    text = f.read_text("utf-8")
    assert text == css()
    # setuptools packs it: the pattern in pyproject matches the file
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "display/static/*.css" in data["saematch_nb"]
    # every class selector is ours, except the host theme flags we read
    body = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    classes = set(re.findall(r"\.(-?[_a-zA-Z][\w-]*)", body))
    assert {c for c in classes if not c.startswith("smn-")} <= {"vscode-dark", "vscode-high-contrast"}
    custom_props = set(re.findall(r"(--[\w-]+)\s*:", body))
    assert custom_props and all(p.startswith("--smn-") for p in custom_props)
    assert "<script" not in text.lower() and "url(" not in text and "@import" not in text


def test_css_follows_the_notebook_theme():
    text = css()
    assert "var(--jp-content-font-color0" in text and "var(--vscode-editor-foreground" in text
    for sel in ('html[theme="dark"]', 'body[data-jp-theme-light="false"]', "body.vscode-dark",
                "prefers-color-scheme: dark"):
        assert sel in text
    # the fallback trick: rich body forced visible, <pre> hidden, only when the CSS is applied
    assert re.search(r"\.smn-wrap\s*\{[^}]*display:\s*block\s*!important", text)
    assert re.search(r"\.smn-text-repr-fallback\s*\{\s*display:\s*none", text)


def test_escape_and_links():
    assert escape(HOSTILE) == HOSTILE_ESCAPED
    assert escape(None) == ""
    assert escape(3) == "3"
    assert link("https://neuronpedia.org/a/b/1", HOSTILE).startswith('<a class="smn-link" href="https://neuronpedia.org/a/b/1"')
    assert HOSTILE_ESCAPED in link("https://neuronpedia.org/a/b/1", HOSTILE)
    for bad in ("javascript:alert(1)", 'https://x.org/"onmouseover="alert(1)', "data:text/html,x", None, ""):
        assert safe_url(bad) is None
        assert "<a" not in link(bad, "x")
    with pytest.raises(ValueError, match="script"):
        check_no_script("<div><SCRIPT src=x></div>")
    assert display.escape is escape and display.token_html is token_html


def test_token_helpers_escape_and_colour():
    out = tokens_html(["<b>", " the", "\n", HOSTILE], [0.0, 2.0, None, 4.0], highlight=1)
    assert "<script" not in out and "<b>" not in out
    assert "&lt;b&gt;" in out and "↵" in out
    assert len(re.findall(r'class="smn-tok[ "]', out)) == 4 and "smn-tok-hl" in out
    assert "rgba(255, 127, 14, 0.500)" in out and "rgba(255, 127, 14, 1.000)" in out  # value / max
    assert 'style=' not in token_html("a", 0.0, 4.0)  # zero activation: no background
    with pytest.raises(ValueError, match="2 tokens but 1 values"):
        tokens_html(["a", "b"], [1.0])


def test_report_is_a_static_self_contained_page():
    ch = make_chain(n_pairs=3, n=40)
    traces = [ch.trace(1, 3), ch.trace(2, 4)]
    page = html.report_html(ch, traces, title=f"report {HOSTILE}", intro=f"intro {HOSTILE}",
                            sections=[("one pair", html.layer_match_html(make_layer_match()))])
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page.lower()
    assert f"<title>report {HOSTILE_ESCAPED}</title>" in page
    # nothing is fetched: no external stylesheet, script, image or font
    assert not re.search(r"<link\b|\bsrc=|@import|url\(", page)
    assert page.count("<style>") == 2  # the page's own + the embedded section output (allowed)
    seen = visible_text(page)
    assert "Layer pairs" in seen and "Feature traces" in seen and "one pair" in seen
    assert seen.count("FeatureTrace") == 2
    for t in traces:
        assert f"feature {t.origin_feature} of layer {t.origin_layer}" in seen
    # a single LayerMatch works too
    assert "LayerMatch" in html.report_html(make_layer_match(), title="x")


def test_report_refuses_script_sections():
    with pytest.raises(ValueError, match="script"):
        html.report_html(make_chain(n_pairs=1, n=10), sections=[("bad", "<p>hi</p><script>alert(1)</script>")])


def test_number_formats_shared_by_text_and_html():
    import numpy as np

    from saematch_nb.display._util import fmt_bytes, fmt_float, fmt_pct, fmt_seconds, fmt_value
    from saematch_nb.display.text import format_stat

    assert fmt_float(0.000123456) == "0.0001235" and fmt_float(0) == "0" and fmt_float(float("nan")) == "nan"
    assert fmt_pct(0.9312) == "93.1%" and fmt_pct(None) == "—"
    assert fmt_seconds(0.25) == "250 ms" and fmt_seconds(12.5) == "12.50 s" and fmt_seconds(125) == "2 min 5 s"
    assert fmt_bytes(302 * 1024**2) == "302.0 MB" and fmt_bytes(512) == "512 B"
    assert fmt_value(np.bool_(True)) == "True" and fmt_value(np.int64(16384)) == "16,384"
    assert format_stat("seconds", 3.0) == "3.00 s" and format_stat("peak_held_weights_bytes", 2048) == "2.0 KB"
    assert format_stat("cache_hits", 3) == "3"
