"""Fixtures for the display tests: results built directly from arrays, with hostile strings in
every identity field (labels, hook names, SAE ids, releases, model names)."""

from __future__ import annotations

import html as _html
import re

import numpy as np
import pytest

from saematch_nb.core.results import LayerMatch
from saematch_nb.core.weights import SAEInfo

HOSTILE = "<script>alert(1)</script>\"'&"
HOSTILE_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;"


def info(layer: int, *, hostile: bool = True, neuronpedia: bool = True) -> SAEInfo:
    h = HOSTILE if hostile else ""
    return SAEInfo(
        layer=layer,
        hook_name=f"blocks.{layer}.hook_resid_post{h}",
        model_name=f"gemma-2-2b{h}",
        release=f"gemma-scope{h}",
        sae_id=f"layer_{layer}/width_16k/canonical{h}",
        neuronpedia_id=f"gemma-2-2b/{layer}-gemmascope-res-16k" if neuronpedia else None,
    )


def make_layer_match(layer_a: int = 3, n: int = 120, seed: int = 0, *, score_is_mse: bool = True,
                     hostile: bool = True, stats: dict | None = None) -> LayerMatch:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    mse = rng.gamma(2.0, 0.005, n)
    mse[0] = 0.5  # one far outlier: the histogram must fold the tail into its last bin
    alt = mse + rng.normal(0.01, 0.01, n)
    partner = perm.copy()
    partner[rng.random(n) < 0.05] = -1
    thr = 0.02
    score = mse if score_is_mse else rng.random(n)
    matched = (score <= (thr if score_is_mse else 0.5)) & (partner >= 0)
    return LayerMatch(
        permutation=perm, partner=partner, mse=mse, alt_mse=alt, score=score, matched=matched,
        threshold=thr if score_is_mse else 0.5, n_a=n, n_b=n, d_in=32,
        info_a=info(layer_a, hostile=hostile), info_b=info(layer_a + 1, hostile=hostile),
        options={"method": "lap", "fold": True, "params": "encoder+decoder", "note": HOSTILE},
        stats=stats if stats is not None else {"solver": "dense", "seconds": 1.234, "gap": 0.0,
                                               "n_edges": 4321, "tag": HOSTILE},
    )


def make_chain(n_pairs: int = 4, n: int = 60):
    from saematch_nb.core.chain import MatchChain

    pairs = tuple(make_layer_match(t, n=n, seed=t) for t in range(n_pairs))
    return MatchChain(
        pairs=pairs, layers=tuple(range(n_pairs + 1)),
        infos=tuple([p.info_a for p in pairs] + [pairs[-1].info_b]),
        options={"method": "lap", "fold": True, "label": HOSTILE},
        stats={"seconds": 12.5, "cache_hits": 2, "cache_misses": n_pairs - 2,
               "peak_held_weights_bytes": 2 * 302_000_000, "cache_dir": f"/tmp/{HOSTILE}",
               "pairs": [{"cached": t < 2, "seconds": 1.0 + t} for t in range(n_pairs)]},
    )


# -- helpers shared by the tests --------------------------------------------------------------------
def rich_part(out: str) -> str:
    """The rich body of a wrapped output (after the <pre> fallback)."""
    i = out.index('<div class="smn-wrap"')
    return out[i:]


def fallback_text(out: str) -> str:
    m = re.search(r'<pre class="smn-text-repr-fallback">(.*?)</pre>', out, flags=re.S)
    assert m, "no text fallback"
    return _html.unescape(m.group(1))


def visible_text(fragment: str) -> str:
    """What a reader sees: tags removed, entities decoded, whitespace collapsed."""
    fragment = re.sub(r"<style>.*?</style>", " ", fragment, flags=re.S)
    fragment = re.sub(r"<br\s*/?>", " ", fragment)
    fragment = re.sub(r"</?(?:span|a|code|b|tspan)\b[^>]*>", "", fragment)  # inline: no gap
    return re.sub(r"\s+", " ", _html.unescape(re.sub(r"<[^>]+>", " ", fragment)))


def fact_tokens(text: str) -> list[str]:
    """Tokens of a text repr that carry a number (what must also be in the HTML)."""
    out = []
    for tok in text.split():
        t = tok.strip("()[],;:|*#")
        if any(c.isdigit() for c in t):
            out.append(t)
    return out


@pytest.fixture
def lm():
    return make_layer_match()


@pytest.fixture
def chain():
    return make_chain()
