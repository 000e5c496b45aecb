"""Text and HTML reprs: escaping, no script, same facts in both, structure of the output."""

from __future__ import annotations

import html as _html
import re

import numpy as np
import pytest
import torch

from saematch_nb.core.results import FeatureTrace, LayerMatch, TraceStep
from saematch_nb.core.weights import SAEWeights
from saematch_nb.display import html, text
from saematch_nb.display._util import css

from .conftest import (
    HOSTILE, HOSTILE_ESCAPED, fact_tokens, fallback_text, info, make_chain, make_layer_match,
    rich_part, visible_text,
)


def _handles():
    from saematch_nb.sources.saes import SAEHandle, SAEList

    hs = [SAEHandle(release=f"rel{HOSTILE}", sae_id=f"layer_{L}/width_16k/canonical{HOSTILE}", layer=L,
                    hook_name=f"blocks.{L}.hook_resid_post{HOSTILE}", model_name=f"gemma{HOSTILE}",
                    neuronpedia_id=f"gemma-2-2b/{L}-gemmascope-res-16k", width=16384, l0=71.0)
          for L in (4, 5)]
    hs.append(SAEHandle(release=None, sae_id=None, layer=6, hook_name=None, model_name=None,
                        neuronpedia_id='x"><script>alert(2)</script>', path=f"/data/{HOSTILE}/sae"))
    return SAEList(hs)


def _weights():
    rng = np.random.default_rng(0)
    d_in, d_sae = 8, 12
    return SAEWeights(
        W_enc=torch.tensor(rng.normal(size=(d_in, d_sae)), dtype=torch.float32),
        b_enc=torch.zeros(d_sae), W_dec=torch.tensor(rng.normal(size=(d_sae, d_in)), dtype=torch.float32),
        b_dec=torch.zeros(d_in), threshold=torch.full((d_sae,), 0.25), info=info(7),
    )


def _trace(lm_infos=True):
    infos = tuple(info(L) for L in (2, 3, 4, 5)) if lm_infos else ()
    steps = (TraceStep(2, 7, 3, 5, 0.0125, 0.0311, True), TraceStep(3, 5, 4, 9, 0.0533, -0.0042, False),
             TraceStep(4, 9, 5, -1, 0.0811, 0.0007, False))
    return FeatureTrace(origin_layer=3, origin_feature=5, layers=(2, 3, 4, 5), features=(7, 5, 9, -1),
                        steps=steps, born_layer=None, dies_layer=3, infos=infos)


def _steering():
    from saematch_nb.analysis.steering import SteeringPlan, SteeringResult

    plan = SteeringPlan(layers=(3, 4), features=(5, 9), hook_names=(f"blocks.3.hook_resid_post{HOSTILE}",
                        "blocks.4.hook_resid_post"), strengths=(4.0, 3.8), mode="add", origin=(3, 5))
    return SteeringResult(prompt=f"The {HOSTILE}", baseline=" cat sat\n on", steered=f" dog {HOSTILE}",
                          plan=plan, options={"max_new_tokens": 12, "seed": 0})


def _all_outputs():
    """(name, text, html) for every repr the display layer makes."""
    lm = make_layer_match()
    ch = make_chain()
    tr = _trace()
    hs = _handles()
    w = _weights()
    st = _steering()
    return [
        ("layer_match", text.layer_match_text(lm), html.layer_match_html(lm)),
        ("chain", text.chain_text(ch), html.chain_html(ch)),
        ("trace", text.trace_text(tr), html.trace_html(tr)),
        ("handle", text.handle_text(hs[0]), html.handle_html(hs[0])),
        ("handle_local", text.handle_text(hs[2]), html.handle_html(hs[2])),
        ("saes", text.saes_text(hs), html.saes_html(hs)),
        ("weights", text.weights_text(w), html.weights_html(w)),
        ("error", f"error: {HOSTILE}", html.error_html(HOSTILE)),
        ("steering", text.steering_text(st), html.steering_html(st)),
    ]


OUTPUTS = _all_outputs()
IDS = [o[0] for o in OUTPUTS]


@pytest.mark.parametrize("name,txt,out", OUTPUTS, ids=IDS)
def test_no_script_and_hostile_strings_escaped(name, txt, out):
    assert "<script" not in out.lower()
    assert "javascript:" not in out.lower()
    if name != "handle_local":  # the local handle has the hostile string only in its path
        assert HOSTILE_ESCAPED in out, f"{name}: hostile string not shown escaped"
    else:
        assert _html.escape(f"/data/{HOSTILE}/sae", quote=True) in out


@pytest.mark.parametrize("name,txt,out", OUTPUTS, ids=IDS)
def test_text_facts_appear_in_rich_html(name, txt, out):
    seen = visible_text(rich_part(out))
    missing = [t for t in fact_tokens(txt) if t not in seen]
    assert not missing, f"{name}: in the text repr but not in the HTML: {missing[:10]}"


@pytest.mark.parametrize("name,txt,out", OUTPUTS, ids=IDS)
def test_output_structure(name, txt, out):
    # one stylesheet per output, the text fallback, and the rich body hidden unless CSS applies
    assert out.count("<style>") == 1
    assert css() in out
    assert fallback_text(out) == txt
    assert '<div class="smn-wrap" style="display:none">' in out
    assert out.index("smn-text-repr-fallback") < out.index('class="smn-wrap"')


@pytest.mark.parametrize("name,txt,out", OUTPUTS, ids=IDS)
def test_every_class_is_prefixed_and_styled(name, txt, out):
    defined = set(re.findall(r"\.(smn-[\w-]+)", css()))
    classes = {c for attr in re.findall(r'class="([^"]*)"', out) for c in attr.split()}
    assert classes, "no classes at all"
    assert all(c.startswith("smn-") for c in classes), sorted(c for c in classes if not c.startswith("smn-"))
    kinds = {c for c in classes if re.search(r'class="smn-output ' + re.escape(c) + '"', out)}
    assert classes - defined - kinds == set(), f"classes used but not in the CSS: {classes - defined - kinds}"


def test_layer_match_repr_uses_display_and_shows_the_numbers(lm):
    seen = visible_text(rich_part(lm._repr_html_()))
    q = np.quantile(lm.mse, [0.1, 0.5, 0.9])
    for v in q:  # the same numbers in the text repr and the rich one
        assert f"{v:.4g}" in seen and f"{v:.4g}" in repr(lm)
    pct = f"{100 * lm.matched_fraction:.1f}%"
    assert pct in seen and pct in repr(lm)
    assert repr(lm).startswith("LayerMatch: ") and f"{lm.n_a:,}" in repr(lm)
    assert f"{100 * lm.matched.mean():.1f}%" in seen
    assert f"{int((lm.partner < 0).sum())} without partner" in seen
    assert "d_in 32" in seen and "certified gap 0 (proven optimal)" in seen and "1.23 s" in seen
    assert "n_edges=4,321" in seen


def test_layer_match_best_worst_and_neuronpedia_links(lm):
    out = html.layer_match_html(lm)
    best = lm.best(5)
    assert len(best) == 5
    for a in best:
        b = int(lm.permutation[a])
        assert f'href="https://neuronpedia.org/gemma-2-2b/3-gemmascope-res-16k/{a}"' in out
        assert f'href="https://neuronpedia.org/gemma-2-2b/4-gemmascope-res-16k/{b}"' in out
    worst = int(lm.worst(1)[0])
    assert worst == 0  # the planted outlier
    assert "0.5" in visible_text(rich_part(out))
    # without a Neuronpedia id there are no links, just the numbers
    lm2 = LayerMatch(**{**{k: getattr(lm, k) for k in ("permutation", "partner", "mse", "alt_mse", "score",
                                                      "matched", "threshold", "n_a", "n_b", "d_in")},
                        "info_a": info(3, neuronpedia=False), "info_b": info(4, neuronpedia=False)})
    assert "neuronpedia.org" not in html.layer_match_html(lm2)


def test_histogram_counts_every_feature_and_folds_the_tail(lm):
    f = text.layer_match_facts(lm)
    h = f["hist"]
    assert sum(h["matched"]) + sum(h["unmatched"]) == lm.n_a
    assert sum(h["matched"]) == int(lm.matched.sum())
    assert h["overflow"] and h["hi"] < 0.5  # the 0.5 outlier is in the last bin, not the scale
    out = html.layer_match_html(lm)
    assert out.count('class="smn-hist-col"') == text.N_BINS
    assert "counted in the last bin" in out


def test_empty_and_nan_layer_match_do_not_break():
    empty = LayerMatch(permutation=[], partner=[], mse=[], alt_mse=[], score=[], matched=[], threshold=0.1,
                       n_a=0, n_b=0, d_in=4)
    assert "nan" in text.layer_match_text(empty) and "(none)" in text.layer_match_text(empty)
    assert "<script" not in html.layer_match_html(empty)
    lm = make_layer_match(n=20)
    mse = lm.mse.copy()
    mse[3] = np.nan
    lm2 = LayerMatch(**{**{k: getattr(lm, k) for k in ("permutation", "partner", "alt_mse", "score", "matched",
                                                      "threshold", "n_a", "n_b", "d_in")}, "mse": mse})
    assert "LayerMatch" in html.layer_match_html(lm2)


def test_score_threshold_and_unmatched_status():
    lm = make_layer_match(score_is_mse=False)
    t = text.layer_match_text(lm)
    assert "threshold 0.5" in t
    statuses = {r["status"] for r in text.layer_match_facts(lm)["worst"]} | {
        r["status"] for r in text.layer_match_facts(lm)["best"]}
    # one word per idea (issue #13): the criterion accepts or rejects the assigned partner
    assert statuses <= {"accepted", "rejected", "no partner"}


def test_chain_html_table_stats_and_pairs(chain):
    out = chain._repr_html_()
    seen = visible_text(rich_part(out))
    for t, lm in enumerate(chain.pairs):
        s = lm.summary()
        assert f"{100 * s['matched_fraction']:.1f}%" in seen
        assert f"{100 * s['matched_fraction']:.1f}%" in repr(chain)  # the same facts as text
        assert f"{s['mse_median']:.4g}" in seen and f"{s['mse_q90']:.4g}" in seen
        assert f"{t} → {t + 1}" in seen
    assert "12.50 s" in seen and "cache_hits=2" in seen and "576.0 MB" in seen
    # per-pair details nest the LayerMatch body without another stylesheet
    assert out.count("<details") >= 1 + 3 * len(chain.pairs)
    assert out.count("<style>") == 1
    # the matched-fraction bars are CSS widths, the depth charts inline SVG without script
    assert out.count('class="smn-bar-fill"') >= len(chain.pairs)
    assert out.count("<svg") == 2 and "<polyline" in out


def test_chain_with_duck_typed_stand_in():
    class Chain:  # what the display layer relies on, nothing more
        pairs = (make_layer_match(0, n=30, seed=1, hostile=False), make_layer_match(1, n=30, seed=2, hostile=False))
        layers = (10, 11, 12)
        infos = ()
        options = {}
        stats = {}

    t = text.chain_text(Chain())
    assert "10 → 11" in t and "11 → 12" in t  # the chain's layers win over the SAE infos'
    assert "10 → 11" in visible_text(rich_part(html.chain_html(Chain())))


def test_trace_repr_marks_and_links():
    tr = _trace()
    assert "last seen at layer 3" in repr(tr) and all(str(f) in repr(tr) for f in tr.features if f >= 0)
    out = tr._repr_html_()
    seen = visible_text(rich_part(out))
    # issue #13's wording: where the accepted run starts and ends, never "dies at" its only layer
    assert "present at layer 2, the chain's first" in seen and "last seen at layer 3" in seen
    assert "the same feature on layers 2–3 (2 of 4 layers)" in seen
    f = text.trace_facts(tr)
    span = text.trace_span(f)
    assert span in seen and span in repr(tr)  # the same facts in text and HTML
    assert int(f["alive"]) < int(f["n_layers"])  # it dies before the last layer
    assert 'class="smn-badge smn-dies"' in out and "smn-node-origin" in out
    assert "smn-node-absent" in out  # layer 5 was not reached
    assert "smn-node-gone" in out  # layer 4 is reached but after the death
    assert 'href="https://neuronpedia.org/gemma-2-2b/4-gemmascope-res-16k/9"' in out
    assert "smn-edge-ok" in out and "smn-edge-no" in out
    for s in tr.steps:
        assert f"{s.mse:.4g}" in seen and f"{s.margin:.4g}" in seen
    # born mark when born inside the chain; no links without infos
    tr2 = FeatureTrace(origin_layer=3, origin_feature=5, layers=(2, 3), features=(7, 5),
                       steps=(TraceStep(2, 7, 3, 5, 0.01, 0.02, True),), born_layer=3, dies_layer=None)
    out2 = html.trace_html(tr2)
    assert "smn-born" in out2 and "neuronpedia" not in out2
    assert "still present at layer 3, the chain's last" in text.trace_text(tr2)
    assert "first seen at layer 3" in text.trace_text(tr2)


def test_handles_and_list(tmp_path):
    hs = _handles()
    # sources' handle and list are shown by display: the hook, the width, the Neuronpedia link
    assert hs[0].hook_name in repr(hs[0]) and "SAEHandle" in repr(hs[0])
    out = hs._repr_html_()
    assert 'href="https://neuronpedia.org/gemma-2-2b/4-gemmascope-res-16k"' in out
    # an unsafe neuronpedia id never becomes a link
    assert "alert(2)" not in re.sub(r"&lt;script&gt;alert\(2\)", "", out)
    assert 'href="https://neuronpedia.org/x' not in out
    assert "16,384" in visible_text(rich_part(out)) and "not loaded" in html.handle_html(hs[0])


def test_weights_repr_html_is_added_to_core_type():
    w = _weights()
    seen = visible_text(rich_part(w._repr_html_()))
    assert "jumprelu" in seen and "mean 0.25" in seen and "d_sae" in seen
    assert "fingerprint" not in seen  # never hashes the weights just to display them
    w.fingerprint()
    assert w.fingerprint() in html.weights_html(w)


def test_display_import_stays_light():
    import subprocess
    import sys

    code = ("import sys, saematch_nb.display.html, saematch_nb.display.text, saematch_nb.display.figures;"
            "print(sorted(m for m in ('plotly', 'IPython', 'ipywidgets', 'sae_lens', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_steering_result_repr_html_uses_display():
    st = _steering()
    out = st._repr_html_()
    assert "SteeringResult" in out and "smn-output" in out
    seen = visible_text(rich_part(out))
    assert "L3 #5" in seen and "L4 #9" in seen and "3.8" in seen and "max_new_tokens=12" in seen
    # generations as text (issue #13: not as Python reprs), newlines visible as ↵, differing tokens marked
    assert "dog " + HOSTILE in seen and "cat sat" in seen and "↵" in seen and repr(" dog ") not in seen
    assert 'class="smn-diff smn-diff-add"' in out and "differ from the baseline" in seen
    assert "adds what the feature writes" in seen  # the strength's units are explained
