"""Thin ipywidgets panels (ipywidgets and plotly are imported only when a panel is used).

- ``FeatureExplorer(chain, examples=None, model=None)``: follow a feature through the layers: its
  trace (clickable nodes), its figure and the examples of every step; back / forward.
- ``FeatureFinder(chain, examples, explorer)``: rank and filter features, open one in the explorer.
- ``ChainOverview(chain, explorer)``: accepted fraction and MSE per pair, the flow of the chosen
  features, clickable.
- ``SteeringPanel(chain, model)``: steer with a traced feature, compare generations, sweep.
- ``backend``: Colab detection and the figure backend (``figure_backend``).
"""

__all__ = ["FeatureExplorer", "SteeringPanel", "FeatureFinder", "ChainOverview"]
_WHERE = {"FeatureExplorer": "explorer", "SteeringPanel": "steering", "FeatureFinder": "finder",
          "ChainOverview": "overview"}


def __getattr__(name):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'saematch_nb.widgets' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
