"""Panels under faults (issue #11): the token slider stays within the model's context, an
interrupt does not leave "generating…" on screen, a double click runs once, and the explorer's
error state shows nothing of the previous feature."""

from __future__ import annotations

import signal

import pytest

from saematch_nb.widgets import FeatureExplorer, SteeringPanel

from .conftest import n_hooks


def test_token_slider_is_bounded_by_the_context(model, planted, chain):
    panel = SteeringPanel(chain, model, saes=planted.saes)
    assert panel.tokens_slider.max == model.cfg.n_ctx == 128
    with pytest.raises(ValueError, match="between 1 and 128"):
        SteeringPanel(chain, model, saes=planted.saes, max_new_tokens=200)
    panel.tokens_slider.value = 128
    panel.prompt_box.value = "The quick brown fox"
    assert panel.run() is None  # too long with this prompt: a clear message, not an IndexError
    assert "context of 128" in panel.output.value and "IndexError" not in panel.output.value
    assert n_hooks(model) == 0


def test_an_interrupt_is_shown_and_raised(model, planted, chain, monkeypatch):
    panel = SteeringPanel(chain, model, saes=planted.saes, feature=3, prompt="The", max_new_tokens=3)
    real = model.generate
    calls = []

    def interrupted(*a, **kw):
        calls.append(n_hooks(model))
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        return real(*a, **kw)

    monkeypatch.setattr(model, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        panel.run()
    assert calls[1] > 0 and n_hooks(model) == 0
    assert "generating" not in panel.output.value and "interrupted" in panel.output.value
    assert not panel.button.disabled and panel.result is None


def test_a_double_click_runs_once(model, planted, chain, monkeypatch):
    panel = SteeringPanel(chain, model, saes=planted.saes, feature=3, prompt="The", max_new_tokens=2)
    runs = []
    real = panel.run
    monkeypatch.setattr(panel, "run", lambda: runs.append(1) or real())
    panel.button.click()
    panel.button.click()  # queued while the first ran: dropped
    assert len(runs) == 1 and panel.result is not None
    panel.click_debounce_s = 0.0  # a later, deliberate click runs again
    panel.button.click()
    assert len(runs) == 2


def test_explorer_error_state_keeps_nothing_of_the_previous_feature(chain):
    ex = FeatureExplorer(chain, layer=0, feature=3)
    title = ex.figure.layout.title.text
    assert title and "3" in title and ex.figure.data
    ex.feature = 500
    assert "out of range" in ex.status.value
    assert not ex.figure.data and not ex.figure.layout.title.text


def test_panel_html_escapes_hostile_strings(model, planted, chain):
    """Held (issue #11): every string a user or a file controls reaches the panels escaped."""
    from tests.display.conftest import HOSTILE, HOSTILE_ESCAPED, make_chain

    ex = FeatureExplorer(make_chain(n_pairs=2, n=20), layer=1, feature=2)
    out = ex.trace_html.value + ex.status.value
    assert HOSTILE_ESCAPED in out and "<script" not in out.lower()
    panel = SteeringPanel(chain, model, saes=planted.saes, feature=3, prompt=f"The {HOSTILE}", max_new_tokens=2)
    assert panel.run() is not None
    # the prompt is shown as its repr (quotes change), the tag escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in panel.output.value
    assert "<script" not in panel.output.value.lower()
    panel.feature = 10 ** 6
    assert panel.run() is None and "<script" not in panel.output.value.lower()
