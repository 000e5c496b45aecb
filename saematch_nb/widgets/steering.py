"""The steering panel: steer the model with a traced feature, compare generations, sweep the
strength (``saematch_nb.analysis.steering`` does the work; this panel only shows it)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import traitlets

from ..core._checks import as_index, finite_number
from .backend import SnapshotMixin, later

if TYPE_CHECKING:
    from .explorer import FeatureExplorer

__all__ = ["SteeringPanel"]


class SteeringPanel(SnapshotMixin, W.VBox):
    """Steer the model with a traced feature: layer, feature, strength, span, schedule, mode and a
    (multi-line) prompt -> baseline and steered generations as text, the differing tokens marked
    (``saematch_nb.analysis.steering``), and a strength sweep.

    ``strength`` is s in add mode (s times the feature's folded decoder row is added: s = 1 is what
    the feature writes when it fires at its threshold) and r in scale mode (0 removes the feature,
    1 does nothing); the panel says so under the slider. :meth:`plan` is the plan the controls
    describe; :meth:`run` (the Generate button, one run per click) generates and shows the result,
    or the error; either way no hook stays on the model. :meth:`sweep` (the Sweep button) tabulates
    and plots how far the next-token predictions move with the strength. A result whose controls
    have changed since is marked stale. ``layer`` / ``feature`` / ``strength`` are traitlets: link
    them to a FeatureExplorer with :meth:`follow`.

    Arguments are checked when the panel is made: ``layer`` one of the chain's layers and
    ``feature`` an integer (a KeyError / TypeError, not a bare TraitError or a truncated 1.9),
    ``strength`` a finite number; the slider spans ±20 and reaches further to hold a larger
    ``strength`` given (it is never clamped).
    """

    layer = traitlets.Int(0)
    feature = traitlets.Int(0)
    strength = traitlets.Float(4.0)
    # A click that reaches the kernel this soon after a click's run ended was queued during that
    # run (a double click, or a click on the not-yet-disabled button): it is dropped.
    click_debounce_s = 0.3

    def __init__(self, chain: Any, model: Any, *, saes: Any = None, layer: int | None = None,
                 feature: int = 0, strength: float = 4.0, span: str = "trace", schedule: str = "constant",
                 mode: str = "add", prompt: str = "The", max_new_tokens: int = 30,
                 sweep_strengths: Any = (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0), **kw: Any) -> None:
        from ..analysis.steering import MODES, SCHEDULES, SPANS

        from ..errors import ArgumentTypeError

        if not hasattr(chain, "pairs"):
            first = ("the chain comes first: SteeringPanel(chain, model)" if hasattr(model, "pairs") else
                     f"got {type(chain).__name__}")
            raise ArgumentTypeError(f"SteeringPanel(chain, model) needs a MatchChain first (its SAEs come with it); "
                                    f"{first}")
        # None: the chain's own SAEs (given ones are checked against the chain when steering)
        self.model, self.saes, self.chain = model, saes, chain
        self.result = None
        self.sweep_result = None
        self.sweep_strengths = tuple(finite_number(x, "each of sweep_strengths") for x in sweep_strengths)
        layers = list(chain.layers)
        # checked here: int(1.9) would be layer 1, and a layer not in the chain a bare TraitError
        layer = layers[0] if layer is None else as_index(layer, "layer")
        if layer not in layers:
            raise KeyError(f"layer {layer} is not in the chain (layers {tuple(layers)}); pick one of them")
        feature = as_index(feature, "feature")
        strength = finite_number(strength, "strength")
        for name, value, choices in (("span", span, SPANS), ("schedule", schedule, SCHEDULES), ("mode", mode, MODES)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of {choices}")
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        max_new_tokens = as_index(max_new_tokens, "max_new_tokens")
        self.layer_box = W.Dropdown(options=layers, value=layer, description="layer")
        self.feature_box = W.IntText(value=feature, description="feature")
        # the range reaches a strength given outside ±20 (a slider would clamp it silently)
        self.strength_slider = W.FloatSlider(value=strength, min=min(-20.0, strength), max=max(20.0, strength),
                                             step=0.25, description="strength")
        self.units_html = W.HTML()
        self.span_box = W.Dropdown(options=list(SPANS), value=span, description="span")
        self.schedule_box = W.Dropdown(options=list(SCHEDULES), value=schedule, description="schedule")
        self.mode_box = W.Dropdown(options=list(MODES), value=mode, description="mode")
        # multi-line: a prompt such as "HAMLET.\n" keeps its newline
        self.prompt_box = W.Textarea(value=prompt, description="prompt", rows=3,
                                     layout=W.Layout(width="60%"))
        # at most what fits the model's context after a one-token prompt (steer checks the rest)
        n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
        top = 200 if not isinstance(n_ctx, int) else max(1, min(200, n_ctx))
        if not 1 <= max_new_tokens <= top:
            raise ValueError(f"max_new_tokens must be between 1 and {top} (the model's context is {n_ctx} "
                             f"tokens), got {max_new_tokens}")
        self.tokens_slider = W.IntSlider(value=max_new_tokens, min=1, max=top, description="tokens")
        self.button = W.Button(description="Generate", button_style="primary")
        self.sweep_button = W.Button(description="Sweep strength", tooltip=(
            "next-token change (KL) and a target token's log-probability against the strength"))
        self.stale_html = W.HTML()
        self.output = W.HTML(layout=W.Layout(width="100%"))
        # the sweep's target token: one of the feature's own top raised tokens (its logit effects,
        # refreshed when the feature changes), or one typed here
        self.target_box = W.Dropdown(options=[("(the feature's top raised token)", None)], value=None,
                                     description="target", layout=W.Layout(width="auto"))
        self.target_text = W.Text(value="", placeholder="or type a token", layout=W.Layout(width="160px"))
        self.sweep_tokens = 12  # tokens generated per strength by the sweep
        # two generations per strength: off where a large model makes that slow
        self.sweep_text_box = W.Checkbox(value=True, description="text per strength", indent=False,
                                         layout=W.Layout(width="auto"))
        self.sweep_stale_html = W.HTML()
        self.sweep_html = W.HTML(layout=W.Layout(width="100%"))
        self._running = False
        self._ended = float("-inf")
        self._shown_for = None  # the controls the shown result was made with
        self._swept_for = None  # the controls the shown sweep was made with
        self._targets_for: Any = None  # the (layer, feature) the target options are of
        self._targets_due = False
        self._syncing = False
        self.button.on_click(self._on_click)
        self.sweep_button.on_click(self._on_sweep_click)
        self.layer, self.feature, self.strength = self.layer_box.value, feature, strength
        W.link((self.layer_box, "value"), (self, "layer"))
        W.link((self.feature_box, "value"), (self, "feature"))
        W.link((self.strength_slider, "value"), (self, "strength"))
        for w in (self.span_box, self.schedule_box, self.mode_box, self.prompt_box, self.tokens_slider):
            w.observe(self._on_control, names="value")
        kw.setdefault("layout", W.Layout(width="100%"))
        super().__init__(children=[
            W.HBox([self.layer_box, self.feature_box]), W.HBox([self.strength_slider, self.mode_box]),
            self.units_html, W.HBox([self.span_box, self.schedule_box]), W.HBox([self.prompt_box, self.tokens_slider]),
            W.HBox([self.button, self.sweep_button, self.target_box, self.target_text, self.sweep_text_box],
                   layout=W.Layout(flex_flow="row wrap", align_items="center")),
            self.stale_html, self.output, self.sweep_stale_html, self.sweep_html,
        ], **kw)
        self.add_class("smn-panel")
        self.add_class("smn-steering")
        for w, c in ((self.button, "smn-generate"), (self.output, "smn-steer-output"),
                     (self.prompt_box, "smn-prompt"), (self.sweep_button, "smn-sweep-button")):
            w.add_class(c)
        self._units()
        self._refresh_targets()

    def follow(self, explorer: FeatureExplorer) -> "SteeringPanel":
        """Keep this panel's layer and feature in step with a FeatureExplorer's (both ways).

        The explorer leads: its layer and feature are this panel's. A feature typed here (or a
        layer chosen here) is *selected* in the explorer (:meth:`FeatureExplorer.select`): one on
        the explorer's trace moves its focus there and keeps the trace; only a feature off the
        trace starts a new one there (the explorer cannot show it otherwise)."""

        def from_explorer(_change: Any = None) -> None:
            if self._syncing:
                return
            self._syncing = True
            try:
                self.layer, self.feature = int(explorer.layer), int(explorer.feature)
            finally:
                self._syncing = False

        def to_explorer(change: Any) -> None:
            if self._syncing:
                return
            self._syncing = True
            try:
                if change["name"] == "layer":
                    explorer.layer = int(self.layer)  # the explorer follows its trace there
                elif (int(self.feature) >= 0
                      and (int(self.layer), int(self.feature)) != (explorer.layer, explorer.feature)):
                    explorer.select(int(self.layer), int(self.feature), source="the steering panel")
                self.layer, self.feature = int(explorer.layer), int(explorer.feature)
            finally:
                self._syncing = False

        explorer.observe(from_explorer, names=["layer", "feature"])
        self.observe(to_explorer, names=["layer", "feature"])
        from_explorer()
        return self

    # -- controls -------------------------------------------------------------------------------
    def _controls(self) -> tuple:
        return (self.layer, self.feature, float(self.strength), self.span_box.value, self.schedule_box.value,
                self.mode_box.value, self.prompt_box.value, int(self.tokens_slider.value))

    def _sweep_controls(self) -> tuple:
        # what a sweep depends on (it runs its own strengths)
        return (self.layer, self.feature, self.span_box.value, self.schedule_box.value, self.mode_box.value,
                self.prompt_box.value)

    @traitlets.observe("layer", "feature", "strength")
    def _on_trait(self, change: Any) -> None:
        self._on_control(change)
        name = change["name"] if isinstance(change, dict) else getattr(change, "name", "")
        if name in ("layer", "feature") and hasattr(self, "target_box"):
            if not self._targets_due:  # once the controls are quiet (an explorer drag moves them often)
                self._targets_due = True

                later(self._refresh_targets, 0.4)

    def _refresh_targets(self) -> None:
        """The target choices: the tokens the feature's decoder row raises most through the
        unembedding (``direct_logit_effect``); none where the model or chain cannot say."""
        self._targets_due = False
        key = (int(self.layer), int(self.feature))
        if key == self._targets_for:
            return
        self._targets_for = key
        up: list = []
        if key[1] >= 0 and getattr(self.chain, "stack", None) is not None:
            from ..analysis.steering import direct_logit_effect

            try:
                up = list(direct_logit_effect(self.chain, self.model, key[0], key[1], k=8)[0])
            except Exception:  # a model without an unembedding: the sweep's own rule then
                up = []
        from ..display import fmt_float

        opts = [(f"{tok!r}  (+{fmt_float(v, 2)} logit)", tok) for tok, v in up]
        opts = opts or [("(the token the strongest setting raises most)", None)]
        self.target_box.options = opts
        self.target_box.value = opts[0][1]

    def _on_control(self, change: Any) -> None:
        if not hasattr(self, "stale_html"):
            return  # still being built
        owner = change.get("owner") if isinstance(change, dict) else getattr(change, "owner", None)
        if owner is self.mode_box:
            self._units()
        self._mark_stale()

    def _units(self) -> None:
        from ..display import escape
        from ..display.text import strength_units

        self.units_html.value = f'<span class="smn-muted">{escape(strength_units(self.mode_box.value))}</span>'

    def _mark_stale(self) -> None:
        from ..display import escape

        self._mark_sweep_stale()
        if self._shown_for is None:
            self.stale_html.value = ""
            return
        if self._controls() == self._shown_for:
            self.stale_html.value = ""
            self.output.remove_class("smn-stale")
            return
        L, f, s = self._shown_for[:3]
        self.stale_html.value = (f'<span class="smn-stale-note">stale: the result below was made with L{escape(L)} '
                                 f'#{escape(f)}, strength {escape(s)}; the controls have changed since — press '
                                 "Generate</span>")
        self.output.add_class("smn-stale")

    def _mark_sweep_stale(self) -> None:
        from ..display import escape

        if not hasattr(self, "sweep_stale_html"):
            return
        if self._swept_for is None or self._sweep_controls() == self._swept_for:
            self.sweep_stale_html.value = ""
            self.sweep_html.remove_class("smn-stale")
            return
        L, f = self._swept_for[:2]
        self.sweep_stale_html.value = (f'<span class="smn-stale-note">stale: the sweep below was made with '
                                       f"L{escape(L)} #{escape(f)}; the controls have changed since — press "
                                       "Sweep strength</span>")
        self.sweep_html.add_class("smn-stale")

    def plan(self):
        """The SteeringPlan the controls describe (raises on a bad layer / feature)."""
        from ..analysis.steering import plan_steering

        if self.feature < 0:
            raise ValueError(f"no feature at layer {self.layer}: the trace followed does not reach it; "
                             "pick a feature")
        return plan_steering(self.chain, self.layer, self.feature, strength=self.strength,
                             span=self.span_box.value, schedule=self.schedule_box.value, mode=self.mode_box.value)

    def _on_click(self, _button: Any) -> None:
        if self._running or time.monotonic() - self._ended < self.click_debounce_s:
            return
        try:
            self.run()
        finally:
            self._ended = time.monotonic()

    def _on_sweep_click(self, _button: Any) -> None:
        if self._running or time.monotonic() - self._ended < self.click_debounce_s:
            return
        try:
            self.sweep(generate=bool(self.sweep_text_box.value))
        finally:
            self._ended = time.monotonic()

    def _busy(self, on: bool) -> None:
        self.button.disabled = self.sweep_button.disabled = on
        self._running = on

    def run(self):
        """Generate baseline and steered text; show it (or the error) in the panel. Returns the
        SteeringResult, or None after an error. An interrupt (Ctrl-C, the kernel's stop button)
        is shown as such and raised again."""
        from ..display import html
        from ..analysis.steering import steer

        self._busy(True)
        controls = self._controls()
        self.output.value = '<span class="smn-muted">generating…</span>'
        try:
            self.result = steer(self.plan(), self.model, self.prompt_box.value, saes=self.saes,
                                max_new_tokens=self.tokens_slider.value)
        except Exception as err:  # shown, not raised: a panel callback has nowhere to raise to
            self.result = None
            self._shown_for = None
            self.output.value = html.error_html(f"{type(err).__name__}: {err.args[0] if err.args else err}")
            self._mark_stale()
            return None
        except BaseException:  # KeyboardInterrupt & co.: never leave "generating…" on screen
            self.result = None
            self._shown_for = None
            self.output.value = html.error_html("interrupted: nothing was generated")
            self._mark_stale()
            raise
        finally:
            self._busy(False)
        self.output.value = html.steering_html(self.result)
        self._shown_for = controls
        self._mark_stale()
        self._snapshot_changed()
        return self.result

    def target(self) -> str | None:
        """The sweep's target token: the one typed, else the one chosen among the feature's top
        raised tokens (None: the sweep's own rule)."""
        typed = self.target_text.value
        return typed if typed else self.target_box.value

    def sweep(self, strengths: Any = None, *, generate: bool = True):
        """Next-token change against the strength (``analysis.steering.strength_sweep``) for the
        controls' feature, span, schedule and mode, following :meth:`target` (by default the token
        the feature itself raises most, not whatever the strongest setting happens to raise), and
        with ``generate`` the text generated at each strength (``sweep_tokens`` tokens, greedy):
        shown as two charts (each its own unit) and a table; returns the DataFrame, with a
        ``text`` column when generated (None after an error)."""
        from ..display import html
        from ..analysis.steering import plan_steering, steer, strength_sweep

        values = self.sweep_strengths if strengths is None else tuple(float(x) for x in strengths)
        if self.mode_box.value == "scale" and strengths is None:
            values = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 4.0)  # r: 1 is the no-op
        self._refresh_targets()  # the choices of the feature swept (not of one seen before)
        controls = self._sweep_controls()
        self._busy(True)
        self.sweep_html.value = '<span class="smn-muted">sweeping…</span>'
        try:
            if self.feature < 0:
                raise ValueError(f"no feature at layer {self.layer}: the trace followed does not reach it")
            target = self.target()
            df = strength_sweep(self.chain, self.model, self.layer, self.feature, self.prompt_box.value,
                                strengths=values, span=self.span_box.value, schedule=self.schedule_box.value,
                                mode=self.mode_box.value, target=target)
            if generate:
                n = max(1, min(int(self.sweep_tokens), int(self.tokens_slider.value)))
                texts = []
                for x in values:
                    plan = plan_steering(self.chain, self.layer, self.feature, strength=x, span=self.span_box.value,
                                         schedule=self.schedule_box.value, mode=self.mode_box.value)
                    res = steer(plan, self.model, self.prompt_box.value, saes=self.saes, max_new_tokens=n)
                    texts.append(res.steered[len(self.prompt_box.value):] if res.steered.startswith(
                        self.prompt_box.value) else res.steered)
                df = df.assign(text=texts)
        except Exception as err:
            self.sweep_result = None
            self._swept_for = None
            self.sweep_html.value = html.error_html(f"{type(err).__name__}: {err.args[0] if err.args else err}")
            self._mark_sweep_stale()
            return None
        finally:
            self._busy(False)
        self.sweep_result = df
        self._swept_for = controls
        target_from = ("typed" if self.target_text.value else "the strongest setting's top raised token"
                       if target is None else "the feature's own top raised tokens (direct logit effect)")
        self.sweep_html.value = html.sweep_html(df, mode=self.mode_box.value, origin=(self.layer, self.feature),
                                                target_from=target_from)
        self._mark_sweep_stale()
        self._snapshot_changed()
        return df

    def snapshot_html(self) -> str:
        from ..display import html

        from ..display import escape

        controls = (f'<div class="smn-sub">layer {escape(self.layer)} · feature {escape(self.feature)} · strength '
                    f"{escape(self.strength)} · {escape(self.mode_box.value)} mode · span "
                    f"{escape(self.span_box.value)} · schedule {escape(self.schedule_box.value)}</div>")
        return html.panel_snapshot_html("SteeringPanel", [controls, self.units_html.value, self.stale_html.value,
                                                          self.output.value, self.sweep_stale_html.value,
                                                          self.sweep_html.value])
