"""Where the panels run: Colab detection, the figure backend, and the static snapshot of a panel.

One function decides how a panel shows its plotly figure (:func:`figure_backend`):

- ``"widget"``: a ``plotly.graph_objects.FigureWidget``, updated in place, points clickable.
  Plotly >= 6 builds it on anywidget, which JupyterLab, Notebook 7 and VS Code render.
- ``"output"``: a plain ``plotly.graph_objects.Figure`` re-drawn into an ``ipywidgets.Output`` on
  every change (no click events: the panels' buttons and lists select instead). Colab renders
  custom widgets only after ``google.colab.output.enable_custom_widget_manager()``, and plotly's
  anywidget-based FigureWidget has a history of failing there even with it, so Colab gets this
  backend unless ``figure="widget"`` is asked for. Without anywidget (plotly >= 6 needs it for the
  FigureWidget) it is the only one that works.

Nothing here runs at import of the package, and nothing global is changed but Colab's widget
manager, which is what a Colab user must switch on for any panel to show.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

__all__ = ["in_colab", "enable_colab_widgets", "figure_backend", "BACKENDS", "SnapshotMixin"]

BACKENDS = ("widget", "output")
_ENABLED: dict[int, bool] = {}  # id(google.colab module) -> enabled once (the call is per session)


def in_colab(modules: Mapping[str, Any] | None = None) -> bool:
    """Whether this kernel runs in Google Colab (its ``google.colab`` package is imported there
    before any user code)."""
    mods = sys.modules if modules is None else modules
    return "google.colab" in mods


def enable_colab_widgets(modules: Mapping[str, Any] | None = None) -> bool:
    """Switch on Colab's custom widget manager (what third-party widgets need there); True when it
    is on. Outside Colab, or on a Colab without the call, False (and nothing is changed)."""
    mods = sys.modules if modules is None else modules
    colab = mods.get("google.colab")
    if colab is None:
        return False
    key = id(colab)
    if key in _ENABLED:
        return _ENABLED[key]
    output = getattr(colab, "output", None) or mods.get("google.colab.output")
    enable = getattr(output, "enable_custom_widget_manager", None)
    ok = False
    if callable(enable):
        try:
            enable()
            ok = True
        except Exception:  # an old or a changed Colab: the panels fall back, they do not fail
            ok = False
    _ENABLED[key] = ok
    return ok


def _has_anywidget(modules: Mapping[str, Any] | None) -> bool:
    if modules is not None and "anywidget" in modules:
        return modules["anywidget"] is not None
    import importlib.util

    return importlib.util.find_spec("anywidget") is not None


def _plotly_major(version: str | None) -> int:
    if version is None:
        import plotly

        version = plotly.__version__
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def figure_backend(requested: Any = "auto", *, modules: Mapping[str, Any] | None = None,
                   plotly_version: str | None = None) -> str:
    """``"widget"`` or ``"output"`` (see the module docstring) for ``requested``: ``"auto"`` or
    True (decide), ``"widget"`` / ``"output"`` (as asked; ``"widget"`` in Colab also switches on
    the custom widget manager). ``modules`` / ``plotly_version`` stand in for ``sys.modules`` and
    plotly's version (tests)."""
    if requested is True:
        requested = "auto"
    if requested not in ("auto",) + BACKENDS:
        raise ValueError(f"figure must be 'auto', 'widget', 'output', True or False, got {requested!r}")
    colab = in_colab(modules)
    if colab:
        enable_colab_widgets(modules)  # every panel is a custom widget there, figure or not
    if requested != "auto":
        return requested
    if colab:
        return "output"
    if _plotly_major(plotly_version) >= 6 and not _has_anywidget(modules):
        return "output"
    return "widget"


class SnapshotMixin:
    """A panel's notebook output carries a static HTML snapshot (``text/html``) next to the widget
    view, so that a notebook read without the panel's kernel (GitHub, nbviewer, nbconvert, a
    renderer without the widget manager) still shows what the panel showed. Subclasses define
    :meth:`snapshot_html` (static: no script, every string escaped)."""

    def snapshot_html(self) -> str:  # pragma: no cover - every panel defines it
        raise NotImplementedError

    def snapshot(self) -> Any:
        """The panel's current state as a static HTML object: display it to keep that state in the
        notebook (the widget's own output keeps the state it was displayed in)."""
        return _Static(self.snapshot_html())

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        data = super()._repr_mimebundle_(**kwargs)  # type: ignore[misc]
        if isinstance(data, tuple):  # (data, metadata)
            data, meta = data
            data = dict(data)
            data["text/html"] = self.snapshot_html()
            return data, meta
        data = dict(data or {})
        data["text/html"] = self.snapshot_html()
        return data


class _Static:
    def __init__(self, html: str) -> None:
        self.html = html

    def _repr_html_(self) -> str:
        return self.html
