"""Issue #23 point 2: every figure lays out at every paper preset, checked on the rendered figure.

Each ``make_*_figure`` is drawn at each of :data:`PAPER_PRESETS` in Debian's chromium with
plotly.js (what kaleido does for ``save_figure``), and the rendered geometry is asserted: no two
texts overlap, every text lies within the page, titles / axis titles / the legend stay off the plot
areas, the legend takes at most a quarter of the figure and no plot area is crushed. The data have
realistic feature ids (four and five digits) and six layers, as a 16k SAE chain has.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("plotly.graph_objects")

from saematch_nb.display import figures as F  # noqa: E402

from ._render import Renderer, layout_problems  # noqa: E402
from .conftest import make_layer_match  # noqa: E402

N = 16384  # a 16k SAE: five-digit feature ids in labels


def _chain(n_pairs: int = 5, n: int = N, seed0: int = 0):
    from saematch_nb.core.chain import MatchChain

    pairs = tuple(make_layer_match(t, n=n, seed=seed0 + t, hostile=False) for t in range(n_pairs))
    return MatchChain(pairs=pairs, layers=tuple(range(n_pairs + 1)),
                      infos=tuple([p.info_a for p in pairs] + [pairs[-1].info_b]))


def build_data() -> dict:
    from saematch_nb.core.flow import feature_flow
    from saematch_nb.core.synthetic import planted_flow

    ch = _chain()
    lm = make_layer_match(3, n=4096, hostile=False)
    # a feature with a long accepted run, and a few that meet it
    tr = max((ch.trace(0, f) for f in range(200)), key=lambda t: (len(t.alive_layers), -t.origin_feature))
    feats = [tr.origin_feature] + [f for f in range(12000, 16384, 617)][:5]
    corr = {int(L): float(r) for L, r in zip(tr.layers, np.linspace(1.0, 0.35, len(tr.layers)))}
    pf = planted_flow(n_layers=4, n=96, d_in=48, n_heads=2, d_head=12, seed=3)
    fl = feature_flow(pf.res, mlp=pf.mlp, att=pf.att, attn_out_proj=pf.attn_out_proj, n_null=512)
    j = int(np.flatnonzero(fl.layer(3).cls == 1)[0])
    return dict(ch=ch, lm=lm, tr=tr, feats=feats, corr=corr, fl=fl, graph=fl.graph(3, j),
                runs={"folded": ch, "unfolded": _chain(seed0=10), "identity": _chain(seed0=20)})


@pytest.fixture(scope="module")
def data():
    return build_data()


FIGURES = {
    "mse": lambda d: F.make_mse_figure(d["lm"]),
    "mse-score-log": lambda d: F.make_mse_figure(d["lm"], x="score", log_y=True),
    "margin": lambda d: F.make_margin_figure(d["lm"]),
    "chain": lambda d: F.make_chain_figure(d["ch"]),
    "chain-overlay": lambda d: F.make_chain_figure(d["runs"]),
    "trace": lambda d: F.make_trace_figure(d["tr"]),
    "trace-correlations": lambda d: F.make_trace_figure(d["tr"], correlations=d["corr"], focus=2),
    "flow": lambda d: F.make_flow_figure(d["ch"], 0, d["feats"]),
    "feature-flow": lambda d: F.make_feature_flow_figure(d["fl"]),
    "flow-graph": lambda d: F.make_flow_graph_figure(d["graph"]),
}


@pytest.fixture(scope="module")
def renderer():
    try:
        r = Renderer()
    except RuntimeError as err:  # no chromium / no Playwright: a failure with the install hint
        pytest.fail(str(err))
    yield r
    r.close()


def test_every_make_figure_function_is_checked():
    made = {n for n in F.__all__ if n.startswith("make_") and n.endswith("_figure")}
    covered = {"make_mse_figure", "make_margin_figure", "make_chain_figure", "make_trace_figure",
               "make_flow_figure", "make_feature_flow_figure", "make_flow_graph_figure"}
    assert made == covered, f"add the new figure to FIGURES: {made - covered}"


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(F.PAPER_PRESETS) + ["live-700", "live-900"])
def test_figures_lay_out_at_every_preset(renderer, data, preset):
    """Each paper preset, and the figures as a notebook shows them (plotly's 700 px default width;
    900 px, the explorer's narrowest)."""
    problems = {}
    for name, make in FIGURES.items():
        if preset.startswith("live"):
            fig = make(data)
            fig.update_layout(width=int(preset.split("-")[1]), height=fig.layout.height or 450)
        else:
            fig = F.paper_layout(make(data), preset)
        r = renderer.render(fig)
        assert (r.width, r.height) == (fig.layout.width, fig.layout.height)
        bad = layout_problems(r)
        if bad:
            problems[name] = bad[:6] + ([f"... {len(bad) - 6} more"] if len(bad) > 6 else [])
    assert not problems, "\n".join(f"{preset} {n}:\n  " + "\n  ".join(b) for n, b in problems.items())


@pytest.mark.slow
def test_the_checker_sees_a_broken_layout(renderer, data):
    """The check can fail: a legend over the plots, a title too long for the page, a label cut off
    at the plot's edge and the old layouts (issue #23: plotly's own placement at a column's width)
    are reported."""
    fig = F.paper_layout(F.make_chain_figure(data["runs"]), "single")
    fig.update_layout(legend=dict(x=0.3, y=0.6, xref="paper", yref="paper", orientation="v"))
    assert "the legend" in " ".join(layout_problems(renderer.render(fig)))
    fig = F.paper_layout(F.make_chain_figure(data["ch"]), "single")
    fig.update_layout(title=dict(text="a title far too long to fit on one column of a two-column paper",
                                 automargin=False))
    assert "leaves the 312x230 page" in " ".join(layout_problems(renderer.render(fig)))
    fig = F.paper_layout(F.make_flow_graph_figure(data["graph"]), "single")
    fig.update_yaxes(range=[-1, 1])
    assert "sticks out of its plot area" in " ".join(layout_problems(renderer.render(fig)))
    old = F.make_trace_figure(data["tr"], correlations=data["corr"])
    old.update_layout(width=312, height=230, font_size=10.7, showlegend=True)
    assert len(layout_problems(renderer.render(old))) > 5
