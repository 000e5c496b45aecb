"""Thin ipywidgets panels over a MatchChain: state in traitlets, observers call core + display.

Nothing is computed only here: traces come from ``MatchChain.trace``, HTML from
``saematch_nb.display.html`` / ``display.examples``, figures from ``saematch_nb.display.figures``,
steering from ``saematch_nb.sources.steering``. Everything a panel shows can be had without it.
"""

from __future__ import annotations

import time
from typing import Any

import ipywidgets as W
import traitlets

__all__ = ["FeatureExplorer", "SteeringPanel"]


class FeatureExplorer(W.VBox):
    """Pick a feature, slide across layers, see its trace (matched MSE and margin of every step),
    its figure and, with ``examples``, its activation examples at the selected layer.

    ``chain``: a MatchChain. ``examples``: optional ``examples[layer][feature]`` -> FeatureExamples
    (what ``saematch_nb.sources.examples.collect_examples`` returns). ``figure=False`` leaves out
    the plotly figure (a ``plotly.graph_objects.FigureWidget``, updated in place).

    The state is the ``layer`` and ``feature`` traitlets (linked both ways to the slider and the
    feature box): set them from code, or ``ipywidgets.link`` them to another panel. A feature
    that does not exist at the selected layer shows an error in the panel instead of raising.
    """

    layer = traitlets.Int(0)
    feature = traitlets.Int(0)

    def __init__(self, chain: Any, examples: Any = None, *, layer: int | None = None, feature: int = 0,
                 figure: bool = True, accepted_only: bool = False, **kw: Any) -> None:
        self.chain = chain
        self.examples = examples
        self.accepted_only = accepted_only
        self.trace = None  # the trace on display (None while an error is shown)
        layers = list(chain.layers)
        start = layers[0] if layer is None else int(layer)
        if start not in layers:
            raise KeyError(f"layer {start} is not in the chain (layers {tuple(layers)})")
        self._ready = False
        self.layer_slider = W.SelectionSlider(options=layers, value=start, description="layer",
                                              continuous_update=False)
        # IntText, not BoundedIntText: layers may differ in width, and a clamped value would
        # silently show another feature than the one asked for
        self.feature_box = W.IntText(value=int(feature), description="feature")
        self.status = W.HTML()
        self.trace_html = W.HTML()
        self.examples_html = W.HTML()
        self.figure = None
        if figure:
            import plotly.graph_objects as go

            self.figure = go.FigureWidget()
        children = [W.HBox([self.layer_slider, self.feature_box]), self.status, self.trace_html]
        if self.figure is not None:
            children.append(self.figure)
        children.append(self.examples_html)
        super().__init__(children=children, **kw)
        self.layer, self.feature = start, int(feature)
        W.link((self.layer_slider, "value"), (self, "layer"))
        W.link((self.feature_box, "value"), (self, "feature"))
        self._ready = True
        self.refresh()

    @traitlets.validate("layer")
    def _valid_layer(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if value not in self.chain.layers:
            raise traitlets.TraitError(f"layer {value} is not in the chain (layers {tuple(self.chain.layers)})")
        return value

    @traitlets.observe("layer", "feature")
    def _on_change(self, change: Any) -> None:
        if self._ready:
            self.refresh()

    def current_trace(self):
        return self.chain.trace(self.layer, self.feature, accepted_only=self.accepted_only)

    def refresh(self) -> None:
        """Redraw from the current ``layer`` / ``feature``."""
        from ..display import html

        try:
            tr = self.current_trace()
        except (IndexError, KeyError, ValueError) as err:
            self.trace = None
            self.status.value = html.error_html(err.args[0] if err.args else err)
            self.trace_html.value = ""
            self.examples_html.value = ""
            if self.figure is not None:  # nothing of the previous feature, its title included
                with self.figure.batch_update():
                    self.figure.data = ()
                    self.figure.layout = {}
            return
        self.trace = tr
        self.status.value = ""
        self.trace_html.value = html.trace_html(tr)
        if self.figure is not None:
            self._draw(tr)
        self.examples_html.value = self._examples_html()

    def _draw(self, tr: Any) -> None:
        from ..display.figures import make_trace_figure

        fig = make_trace_figure(tr)
        with self.figure.batch_update():
            self.figure.data = ()
            self.figure.add_traces(fig.data)
            self.figure.layout = fig.layout

    def _examples_html(self) -> str:
        if self.examples is None:
            return ""
        from ..display.examples import feature_examples_html
        from ..display.html import error_html

        try:
            fx = self.examples[self.layer][self.feature]
        except (KeyError, IndexError) as err:
            return error_html(f"no activation examples: {err.args[0] if err.args else err}")
        return feature_examples_html(fx)


class SteeringPanel(W.VBox):
    """Steer the model with a traced feature: layer, feature, strength, span, schedule, mode and a
    prompt -> baseline and steered generations side by side (``saematch_nb.sources.steering``).

    ``strength`` is s in add mode (units of the feature's threshold activation) and r in scale mode
    (0 removes the feature, 1 does nothing). :meth:`plan` is the plan the controls describe;
    :meth:`run` (the Generate button) generates and shows the result, or the error; either way
    no hook stays on the model. ``layer`` / ``feature`` / ``strength`` are traitlets: link them to
    a FeatureExplorer with :meth:`follow`.
    """

    layer = traitlets.Int(0)
    feature = traitlets.Int(0)
    strength = traitlets.Float(4.0)
    # A click that reaches the kernel this soon after a click's run ended was queued during that
    # run (a double click, or a click on the not-yet-disabled button): it is dropped.
    click_debounce_s = 0.3

    def __init__(self, model: Any, chain: Any, *args: Any, saes: Any = None, layer: int | None = None,
                 feature: int = 0, strength: float = 4.0, span: str = "trace", schedule: str = "constant",
                 mode: str = "add", prompt: str = "The", max_new_tokens: int = 30, **kw: Any) -> None:
        from ..sources.steering import MODES, SCHEDULES, SPANS

        if args:  # the older form SteeringPanel(model, saes, chain)
            if len(args) != 1 or not hasattr(args[0], "pairs"):
                raise TypeError("SteeringPanel(model, chain) takes the MatchChain (its SAEs come with it); "
                                "the older form SteeringPanel(model, saes, chain) is accepted too")
            saes, chain = chain, args[0]
        if not hasattr(chain, "pairs"):
            raise TypeError(f"SteeringPanel(model, chain) needs a MatchChain, got {type(chain).__name__}")
        # None: the chain's own SAEs (given ones are checked against the chain when steering)
        self.model, self.saes, self.chain = model, saes, chain
        self.result = None
        layers = list(chain.layers)
        self.layer_box = W.Dropdown(options=layers, value=layers[0] if layer is None else int(layer),
                                    description="layer")
        self.feature_box = W.IntText(value=int(feature), description="feature")
        self.strength_slider = W.FloatSlider(value=float(strength), min=-20.0, max=20.0, step=0.25,
                                             description="strength")
        self.span_box = W.Dropdown(options=list(SPANS), value=span, description="span")
        self.schedule_box = W.Dropdown(options=list(SCHEDULES), value=schedule, description="schedule")
        self.mode_box = W.Dropdown(options=list(MODES), value=mode, description="mode")
        self.prompt_box = W.Text(value=prompt, description="prompt")
        # at most what fits the model's context after a one-token prompt (steer checks the rest)
        n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
        top = 200 if not isinstance(n_ctx, int) else max(1, min(200, n_ctx))
        if not 1 <= int(max_new_tokens) <= top:
            raise ValueError(f"max_new_tokens must be between 1 and {top} (the model's context is {n_ctx} "
                             f"tokens), got {max_new_tokens}")
        self.tokens_slider = W.IntSlider(value=int(max_new_tokens), min=1, max=top, description="tokens")
        self.button = W.Button(description="Generate", button_style="primary")
        self.output = W.HTML()
        self._running = False
        self._ended = float("-inf")
        self.button.on_click(self._on_click)
        self.layer, self.feature, self.strength = self.layer_box.value, int(feature), float(strength)
        W.link((self.layer_box, "value"), (self, "layer"))
        W.link((self.feature_box, "value"), (self, "feature"))
        W.link((self.strength_slider, "value"), (self, "strength"))
        super().__init__(children=[
            W.HBox([self.layer_box, self.feature_box]), W.HBox([self.strength_slider, self.mode_box]),
            W.HBox([self.span_box, self.schedule_box]), W.HBox([self.prompt_box, self.tokens_slider]),
            self.button, self.output,
        ], **kw)

    def follow(self, explorer: FeatureExplorer) -> "SteeringPanel":
        """Keep this panel's layer and feature in step with a FeatureExplorer's (both ways)."""
        W.link((explorer, "layer"), (self, "layer"))
        W.link((explorer, "feature"), (self, "feature"))
        return self

    def plan(self):
        """The SteeringPlan the controls describe (raises on a bad layer / feature)."""
        from ..sources.steering import plan_steering

        return plan_steering(self.chain, self.layer, self.feature, strength=self.strength,
                             span=self.span_box.value, schedule=self.schedule_box.value, mode=self.mode_box.value)

    def _on_click(self, _button: Any) -> None:
        if self._running or time.monotonic() - self._ended < self.click_debounce_s:
            return
        try:
            self.run()
        finally:
            self._ended = time.monotonic()

    def run(self):
        """Generate baseline and steered text; show it (or the error) in the panel. Returns the
        SteeringResult, or None after an error. An interrupt (Ctrl-C, the kernel's stop button)
        is shown as such and raised again."""
        from ..display import html
        from ..sources.steering import steer

        self.button.disabled = True
        self._running = True
        self.output.value = '<span class="smn-muted">generating…</span>'
        try:
            self.result = steer(self.model, self.plan(), self.prompt_box.value, saes=self.saes,
                                max_new_tokens=self.tokens_slider.value)
        except Exception as err:  # shown, not raised: a panel callback has nowhere to raise to
            self.result = None
            self.output.value = html.error_html(f"{type(err).__name__}: {err.args[0] if err.args else err}")
            return None
        except BaseException:  # KeyboardInterrupt & co.: never leave "generating…" on screen
            self.result = None
            self.output.value = html.error_html("interrupted: nothing was generated")
            raise
        finally:
            self.button.disabled = False
            self._running = False
        self.output.value = html.steering_html(self.result)
        return self.result
