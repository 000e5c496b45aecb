"""The explorer's read-only Feature Flow section (``FeatureExplorer(..., flow=)``)."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")

import saematch_nb as smn  # noqa: E402


@pytest.fixture(scope="module")
def flow(chain):
    return smn.feature_flow(chain, n_null=256)  # the chain's own SAEs: residual only, layers 1 and 2


def test_explorer_shows_the_module_predecessors(chain, flow):
    ex = smn.FeatureExplorer(chain, figure=False, flow=flow)
    assert ex.flow_html in ex.children
    assert "no flow scores" in ex.flow_html.value  # layer 0 has no layer before it
    f = 3
    ex.select(1, f)
    pred = flow.predecessors(1, f)["R"]
    v = ex.flow_html.value
    assert "residual (layer before)" in v and f"L0 #{pred['feature']}" in v
    assert str(flow.layer(1).classes[f]) in v and "<script" not in v.lower()
    assert ("above" if pred["high"] else "below") in v
    assert v in ex.snapshot_html()
    ex.layer = 2  # follows the trace: the section follows the focus
    g = ex.feature
    if g >= 0:
        assert f"L2 #{g}" in ex.flow_html.value


def test_explorer_without_flow_has_no_section(chain):
    ex = smn.FeatureExplorer(chain, figure=False)
    assert ex.flow_html not in ex.children and ex.flow_html.value == ""
