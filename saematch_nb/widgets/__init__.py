"""Thin ipywidgets panels (ipywidgets and plotly are imported only when a panel is used).

- ``FeatureExplorer(chain, examples=None)``: a feature's trace across layers, with its figure and
  activation examples; state in the ``layer`` / ``feature`` traitlets.
- ``SteeringPanel(model, saes, chain)``: steer with a traced feature and compare generations.
"""

__all__ = ["FeatureExplorer", "SteeringPanel"]


def __getattr__(name):
    if name in __all__:
        from . import explorer

        return getattr(explorer, name)
    raise AttributeError(f"module 'saematch_nb.widgets' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
