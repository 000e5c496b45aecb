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
from typing import Any, Callable, Mapping

__all__ = ["in_colab", "enable_colab_widgets", "figure_backend", "BACKENDS", "SnapshotMixin", "figure_widget",
           "replace_figure", "clear_figure", "panel_layout", "later"]

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


_FIGURE_WIDGET: list[Any] = []  # the FigureWidget subclass, made on first use (plotly is heavy)


def _figure_widget_class() -> Any:
    if not _FIGURE_WIDGET:
        from copy import deepcopy

        import plotly.graph_objects as go

        class FigureWidget(go.FigureWidget):
            """A plotly FigureWidget whose kernel-side state is the figure it shows.

            plotly's FigureWidget sends its figure to the browser once (the synced traits
            ``_widget_data`` / ``_widget_layout``, set at construction) and every later change as
            a diff (restyle / relayout / addTraces messages) that only the views open at that time
            apply. A view made later (a reloaded page, a reconnect, a second view of the output)
            starts from the kernel's state, i.e. the figure as constructed (empty here), and the
            next diff names traces it does not have ("indices must be valid indices for gd.data").
            This subclass refreshes those two traits from the figure whenever the kernel's state
            is read (a new view asks for it with ``request_state``), in place so that nothing more
            is sent to the views already open.
            """

            def get_state(self, key: Any = None, drop_defaults: bool = False) -> Any:
                keys = None if key is None else ([key] if isinstance(key, str) else list(key))
                data = getattr(self, "_data", None)
                if data is not None and (keys is None or "_widget_data" in keys or "_widget_layout" in keys):
                    self._widget_data[:] = deepcopy(data)
                    layout = self._widget_layout
                    layout.clear()
                    layout.update(deepcopy(self._layout))
                return super().get_state(key=key, drop_defaults=drop_defaults)

        _FIGURE_WIDGET.append(FigureWidget)
    return _FIGURE_WIDGET[0]


def figure_widget() -> Any:
    """An empty plotly FigureWidget for a panel, whose figure a view opened later (page reload,
    reconnect, second view) gets whole (see ``_figure_widget_class``)."""
    return _figure_widget_class()()


# layout keys that hold lists: relayout empties them ([]), the others are reset (None)
_LIST_KEYS = ("shapes", "annotations", "images", "sliders", "updatemenus", "selections")
_KEEP_KEYS = ("template", "width", "height", "autosize")


def replace_figure(widget: Any, fig: Any, extra_layout: Any = None) -> None:
    """Show plotly figure ``fig`` in FigureWidget ``widget``: its traces and its whole layout
    (then ``extra_layout``, e.g. :func:`panel_layout`, in the same message; ``fig`` is unchanged).

    Assigning ``widget.layout`` sends the new layout as one relayout, which *merges* into the
    browser's: a title, shapes or annotations the new layout lacks stayed on screen (the previous
    feature's title and focus lines under an error). The keys the old layout had and the new one
    lacks are therefore reset in the browser too."""
    new = fig.layout.to_plotly_json()
    # the size stays (plotly.js cannot reset width / height to null: its relayout throws)
    gone = [k for k in widget._layout if k not in new and k not in _KEEP_KEYS]
    with widget.batch_update():
        widget.data = ()
        if len(fig.data):
            widget.add_traces(fig.data)
        widget.layout = fig.layout
        if extra_layout:
            widget.layout.update(extra_layout)
    if gone:  # the Python side no longer has them; only the browser must forget them
        widget._send_relayout_msg({k: ([] if k in _LIST_KEYS else None) for k in gone})


def clear_figure(widget: Any) -> None:
    """Empty a FigureWidget in the kernel and in every view: no trace, title, shape or annotation."""
    import plotly.graph_objects as go

    replace_figure(widget, go.Figure())


def panel_layout(theme: str | None) -> dict:
    """What a panel's live figure adds to its layout to read on any notebook background: with no
    theme asked for (``theme`` None) transparent paper and plot backgrounds, so that a dark
    notebook does not show a white block (the packaged CSS then turns the figure's dark ink light
    under a dark JupyterLab / VS Code theme: the widget carries the class ``smn-figure-auto``).
    An explicit theme ("light" / "dark") is left as drawn. The figures a panel keeps for saving
    (``last_figure``) are not changed."""
    return {"paper_bgcolor": "rgba(0,0,0,0)", "plot_bgcolor": "rgba(0,0,0,0)"} if theme is None else {}


class SnapshotMixin:
    """A panel's notebook output carries a static HTML snapshot (``text/html``) next to the widget
    view, so that a notebook read without the panel's kernel (GitHub, nbviewer, nbconvert, a
    renderer without the widget manager) still shows what the panel showed. Subclasses define
    :meth:`snapshot_html` (static: no script, every string escaped).

    Displayed on its own (a cell's value, ``display(panel)``), a panel adds a second output: its
    *live* snapshot, which follows the panel (replaced through its display id a moment after each
    change, :meth:`_snapshot_changed`), so that a saved notebook shows the panel as it was last
    seen, not as first displayed. Where the widget shows, the packaged CSS hides that output
    (``:has()``: the same facts are on screen); where it cannot show, the snapshot is what is read.
    """

    #: seconds of quiet after a change before the live snapshot is re-sent (a drag or a run of
    #: clicks sends it once; it is up to ~0.3 MB with the examples)
    snapshot_delay_s = 1.0

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

    def _live_snapshot(self) -> dict:
        return {"text/html": '<div class="smn-live-snapshot">' + self.snapshot_html() + "</div>",
                "text/plain": f"{type(self).__name__}: a snapshot of the panel as last seen"}

    def _ipython_display_(self) -> None:
        from IPython.display import display

        bundle = self._repr_mimebundle_()
        data, meta = bundle if isinstance(bundle, tuple) else (bundle, {})
        display(data, metadata=meta, raw=True)
        handle = display(self._live_snapshot(), raw=True, display_id=True)
        if handle is not None:
            self.__dict__.setdefault("_snapshot_handles", []).append(handle)
            self._watch_values()

    def _watch_values(self) -> None:
        """Any value shown in the panel (its HTML parts, lists, boxes) changing is a change of the
        panel: each is observed once (the panels that know better call _snapshot_changed too)."""
        if self.__dict__.get("_watching"):
            return
        self.__dict__["_watching"] = True
        todo = list(getattr(self, "children", ()))
        while todo:
            w = todo.pop()
            todo.extend(getattr(w, "children", ()) or ())
            if hasattr(w, "has_trait") and w.has_trait("value"):
                w.observe(lambda _c: self._snapshot_changed(), names="value")

    def _snapshot_changed(self) -> None:
        """The panel changed: re-send its live snapshot(s) after :attr:`snapshot_delay_s` of quiet
        (at once where no event loop runs)."""
        if not self.__dict__.get("_snapshot_handles"):
            return
        self.__dict__["_snapshot_due"] = True
        if self.__dict__.get("_snapshot_timer"):
            return  # one is scheduled: it sends the state of its time
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._send_snapshot()
            return
        self.__dict__["_snapshot_timer"] = True
        loop.call_later(self.snapshot_delay_s, self._send_snapshot)

    def _send_snapshot(self) -> None:
        self.__dict__["_snapshot_timer"] = False
        if not self.__dict__.pop("_snapshot_due", False):
            return
        try:
            data = self._live_snapshot()
        except Exception:  # never break the panel for its snapshot
            return
        for h in self.__dict__.get("_snapshot_handles", []):
            h.update(data, raw=True)


class _Static:
    def __init__(self, html: str) -> None:
        self.html = html

    def _repr_html_(self) -> str:
        return self.html


def later(fn: Callable[[], None], delay_s: float = 0.25) -> None:
    """Run ``fn`` after the messages the browser sent with the current one (the kernel's event
    loop); at once where no loop runs (a script, a test)."""
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        fn()
        return
    loop.call_later(delay_s, fn)
