"""Thin ipywidgets panels (import ipywidgets only when used)."""


def __getattr__(name):
    if name in ("FeatureExplorer", "SteeringPanel"):
        from . import explorer

        return getattr(explorer, name)
    raise AttributeError(name)
