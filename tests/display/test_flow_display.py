"""Reprs and figures of Feature Flow's results (core/flow.py): escaped, static, the same facts in
text and HTML, figures with the expected traces."""

from __future__ import annotations

import numpy as np
import pytest

from saematch_nb.core.flow import CLASSES, feature_flow
from saematch_nb.core.synthetic import planted_flow
from saematch_nb.display import text

from .conftest import HOSTILE, HOSTILE_ESCAPED, fallback_text


@pytest.fixture(scope="module")
def flow():
    pf = planted_flow(n_layers=3, n=96, d_in=48, n_heads=2, d_head=12, seed=3)
    hostile = lambda d: {L: w.with_info(sae_id=f"{w.info.sae_id}{HOSTILE}", model_name=f"gemma{HOSTILE}")  # noqa: E731
                         for L, w in d.items()}
    return feature_flow(hostile(pf.res), mlp=hostile(pf.mlp), att=hostile(pf.att), attn_out_proj=pf.attn_out_proj,
                        n_null=512), pf


def test_feature_flow_reprs_escape_and_agree(flow):
    fl, _ = flow
    t = repr(fl)
    h = fl._repr_html_()
    assert t.startswith("FeatureFlow: 2 layers (1 … 2)")
    assert HOSTILE in t  # plain text is not HTML
    assert "<script" not in h.lower() and HOSTILE_ESCAPED in h
    assert h.count("<style>") == 1
    # the same thresholds and shares in both (the text fallback of the HTML is the text repr)
    assert fallback_text(h) == t
    for lay in fl.by_layer:
        for m in "RMA":
            v = text.fmt_float(lay.thresholds[m])
            assert v in t and f">{v}<" in h
        for k, share in lay.shares().items():
            assert text.fmt_pct(share) in t
    for k in CLASSES:
        assert f"smn-cls-{k}" in h
    assert "(through W_O)" in t


def test_flow_graph_reprs(flow):
    fl, pf = flow
    j = int(np.flatnonzero(fl.layer(2).cls == 1)[0])  # a processed feature: residual and module edges
    g = fl.graph(2, j)
    t, h = repr(g), g._repr_html_()
    assert t.startswith(f"FlowGraph: feature {j} of layer 2")
    assert f"L2 #{j} *" in t  # the origin is marked
    assert "<script" not in h.lower() and fallback_text(h) == t
    n_edges = len(g.edges)
    assert n_edges >= 2 and h.count("<tr>") == n_edges + 1  # header + one row per edge
    assert "smn-flow-col" in h and 'class="smn-ok">above' in h


def test_figures_build(flow):
    go = pytest.importorskip("plotly.graph_objects")
    from saematch_nb.display.figures import make_feature_flow_figure, make_flow_graph_figure

    fl, _ = flow
    fig = make_feature_flow_figure(fl)
    assert isinstance(fig, go.Figure) and [t.name for t in fig.data] == list(CLASSES)
    assert fig.layout.barmode == "stack"
    tot = np.sum([np.asarray(t.y) for t in fig.data], axis=0)
    np.testing.assert_allclose(tot, 1.0)
    assert list(fig.data[0].x) == [1, 2]
    j = int(np.flatnonzero(fl.layer(2).cls == 1)[0])
    g = fl.graph(2, j)
    fig2 = make_flow_graph_figure(g)
    nodes = [t for t in fig2.data if t.mode == "markers+text"]
    assert sum(len(t.x) for t in nodes) == len(g.nodes)
    keys = {tuple(c) for t in nodes for c in t.customdata}
    assert {(n.kind, n.layer, n.feature) for n in g.nodes} == keys
    lines = [t for t in fig2.data if t.mode == "lines"]
    assert len(lines) == len(g.edges)
    with pytest.raises(ValueError):
        make_feature_flow_figure(object())
