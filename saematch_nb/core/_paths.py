"""Where the caches live by default: the platform's user cache folder, found by ``platformdirs``.

``$SAEMATCH_CACHE_DIR`` (``~`` expanded; set but empty counts as unset) comes first. Otherwise
``platformdirs.user_cache_dir("saematch_nb")``: on Linux ``$XDG_CACHE_HOME/saematch_nb`` when
``XDG_CACHE_HOME`` is set, else ``~/.cache/saematch_nb`` (where every earlier version put it, so
existing caches are found); on macOS ``~/Library/Caches/saematch_nb``; on Windows
``%LOCALAPPDATA%\\saematch_nb\\Cache``.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SAEMATCH_CACHE_DIR"
APP_NAME = "saematch_nb"


def default_cache_root() -> Path:
    """The root of every cache when no ``cache_dir=`` is passed (see the module docstring)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    import platformdirs  # small, but only needed here

    # appauthor=False: no vendor folder on Windows (%LOCALAPPDATA%\saematch_nb\Cache)
    return Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))
