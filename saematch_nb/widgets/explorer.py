"""Thin ipywidgets panels over a MatchChain: state in traitlets, observers call core + display.

Nothing is computed only here: traces come from ``MatchChain.trace``, HTML from
``saematch_nb.display.html``, figures from ``saematch_nb.display.figures``, steering from
``saematch_nb.sources.steering``.
"""

from __future__ import annotations

from typing import Any

import ipywidgets as W
import traitlets


class FeatureExplorer(W.VBox):
    """Pick a feature, slide across layers, see its trace, matched MSE and activation examples.

    ``examples``: optional mapping layer -> FeatureExamples-like object with
    ``feature_html(feature)`` (from ``saematch_nb.sources.examples``), shown for the selected
    feature at the selected layer and along its trace.
    """

    layer = traitlets.Int(0)
    feature = traitlets.Int(0)

    def __init__(self, chain: Any, *, examples: Any = None, layer: int | None = None,
                 feature: int = 0, figure: bool = True, **kw: Any) -> None:
        self.chain = chain
        self.examples = examples
        layers = list(chain.layers)
        self._layer_slider = W.SelectionSlider(options=layers, value=layers[0] if layer is None else layer,
                                               description="layer", continuous_update=False)
        n_max = max(p.n_a for p in chain.pairs) if chain.pairs else 1
        self._feature_box = W.BoundedIntText(value=feature, min=0, max=max(n_max - 1, 0), description="feature")
        self._trace_html = W.HTML()
        self._examples_html = W.HTML()
        self._status = W.HTML()
        self._fig = None
        children = [W.HBox([self._layer_slider, self._feature_box]), self._status, self._trace_html]
        if figure:
            from ..display.figures import make_trace_figure

            self._make_trace_figure = make_trace_figure
            self._fig_out = W.Output()
            children.append(self._fig_out)
        children.append(self._examples_html)
        super().__init__(children=children, **kw)
        # two-way link: traitlets are the state; the controls only mirror them
        W.link((self._layer_slider, "value"), (self, "layer"))
        W.link((self._feature_box, "value"), (self, "feature"))
        self.layer = self._layer_slider.value
        self.feature = feature
        self._refresh()

    @traitlets.observe("layer", "feature")
    def _on_change(self, change: Any) -> None:
        if hasattr(self, "_trace_html"):
            self._refresh()

    def current_trace(self):
        return self.chain.trace(self.layer, self.feature)

    def _refresh(self) -> None:
        from ..display import html

        try:
            tr = self.current_trace()
        except (IndexError, KeyError, ValueError) as err:
            self._status.value = html.error_html(str(err))
            return
        self._status.value = ""
        self._trace_html.value = html.trace_html(tr)
        if getattr(self, "_fig_out", None) is not None:
            self._fig_out.clear_output(wait=True)
            with self._fig_out:
                from IPython.display import display

                display(self._make_trace_figure(tr))
        if self.examples is not None:
            ex = self.examples.get(self.layer) if hasattr(self.examples, "get") else None
            self._examples_html.value = ex.feature_html(self.feature) if ex is not None else ""


class SteeringPanel(W.VBox):
    """Steer the model with a traced feature: strength, span, schedule, prompt -> two generations."""

    strength = traitlets.Float(4.0)

    def __init__(self, model: Any, saes: Any, chain: Any, *, layer: int = 0, feature: int = 0,
                 prompt: str = "The", **kw: Any) -> None:
        self.model, self.saes, self.chain = model, saes, chain
        self._layer = W.Dropdown(options=list(chain.layers), value=layer, description="layer")
        self._feature = W.BoundedIntText(value=feature, min=0, max=10**9, description="feature")
        self._strength = W.FloatSlider(value=4.0, min=-20, max=20, step=0.5, description="strength")
        self._span = W.Dropdown(options=["single", "trace", "cumulative"], value="trace", description="span")
        self._schedule = W.Dropdown(options=["constant", "linear", "exponential"], value="constant",
                                    description="schedule")
        self._mode = W.Dropdown(options=["add", "scale"], value="add", description="mode")
        self._prompt = W.Text(value=prompt, description="prompt")
        self._tokens = W.IntSlider(value=30, min=5, max=200, description="tokens")
        self._go = W.Button(description="Generate", button_style="primary")
        self._out = W.HTML()
        self._go.on_click(lambda _b: self.run())
        W.link((self._strength, "value"), (self, "strength"))
        super().__init__(children=[
            W.HBox([self._layer, self._feature]), W.HBox([self._strength, self._span]),
            W.HBox([self._schedule, self._mode]), W.HBox([self._prompt, self._tokens]), self._go, self._out,
        ], **kw)

    def plan(self):
        from ..sources.steering import plan_steering

        return plan_steering(self.chain, self._layer.value, self._feature.value, strength=self.strength,
                             span=self._span.value, schedule=self._schedule.value, mode=self._mode.value)

    def run(self):
        from ..display import html
        from ..sources.steering import steer

        try:
            res = steer(self.model, self.saes, self.plan(), self._prompt.value,
                        max_new_tokens=self._tokens.value)
        except Exception as err:  # shown in the panel; the hooks are already gone (model.hooks)
            self._out.value = html.error_html(f"{type(err).__name__}: {err}")
            return None
        self._out.value = res._repr_html_()
        return res
