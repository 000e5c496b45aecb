"""The top-level package: light import, every public name resolves to the object it names."""

from __future__ import annotations

import subprocess
import sys


def test_import_is_light_and_lazy():
    code = ("import sys, time; t = time.perf_counter(); import saematch_nb; dt = time.perf_counter() - t; "
            "heavy = [m for m in ('torch', 'sae_lens', 'transformer_lens', 'plotly', 'ipywidgets', 'IPython') "
            "if m in sys.modules]; print(dt); print(','.join(heavy) or '-')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    # no timing assertion (project rule): "light" means none of the heavy packages is imported
    assert out[1] == "-", f"import saematch_nb pulled in heavy modules: {out[1]}"


def test_every_public_name_resolves():
    import saematch_nb as smn

    for name in smn.__all__:
        obj = getattr(smn, name)
        assert obj is not None, name
    assert smn.match.__module__ == "saematch_nb.core.match"
    assert smn.FeatureExplorer.__module__ == "saematch_nb.widgets.explorer"
    assert smn.steer.__module__ == "saematch_nb.analysis.steering"


def test_unknown_name_is_an_attribute_error():
    import pytest

    import saematch_nb as smn

    with pytest.raises(AttributeError, match="no attribute 'matchh'"):
        smn.matchh  # noqa: B018
