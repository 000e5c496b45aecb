"""core/_paths.py: the default cache root ($SAEMATCH_CACHE_DIR, else platformdirs' user cache folder)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from saematch_nb.core import _paths
from saematch_nb.core import cache as cache_mod


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(_paths.ENV_VAR, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    return tmp_path / "home"


def test_the_environment_variable_comes_first(home, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # never consulted when it is set
    monkeypatch.setenv(_paths.ENV_VAR, str(tmp_path / "env"))
    assert _paths.default_cache_root() == tmp_path / "env"
    monkeypatch.setenv(_paths.ENV_VAR, "~/elsewhere")
    assert _paths.default_cache_root() == home / "elsewhere"
    assert _paths.ENV_VAR == cache_mod.ENV_VAR


def test_default_is_the_platform_cache_folder(home, monkeypatch, tmp_path):
    import platformdirs

    if not sys.platform.startswith("linux"):  # macOS, Windows: platformdirs' folder, as documented
        assert _paths.default_cache_root() == Path(platformdirs.user_cache_dir("saematch_nb", appauthor=False))
        return
    # Linux: where every earlier version put it, so existing caches are found
    assert _paths.default_cache_root() == home / ".cache" / "saematch_nb"
    monkeypatch.setenv(_paths.ENV_VAR, "")  # set but empty: no choice at all
    assert _paths.default_cache_root() == home / ".cache" / "saematch_nb"
    assert cache_mod.cache_root() == _paths.default_cache_root()
    # platformdirs honours XDG_CACHE_HOME (documented in core/_paths.py and docs/ARCHITECTURE.md)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _paths.default_cache_root() == tmp_path / "xdg" / "saematch_nb"
