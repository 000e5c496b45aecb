# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # saematch_nb quickstart: match, trace and steer SAE features across layers
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/saematch_nb/blob/main/notebooks/01_quickstart.ipynb)
#
# This notebook is a tour of `saematch_nb` on the **bundled demo**: a small 6-layer language model
# (trained on Shakespeare, Milton, the King James Bible and the Jargon File) with a 256-feature
# JumpReLU sparse autoencoder (SAE) on the residual stream of every layer. Everything runs offline
# on a CPU in about a minute.
#
# The method is **SAE Match** (Balagansky et al., ICLR 2025): the features of the SAE at layer *t*
# are matched to those of layer *t+1* by an exact linear assignment on their *folded* encoder and
# decoder weights — no data needed. A matched pair with a low MSE is read as "the same feature,
# carried to the next layer". Chaining the matches follows one feature through depth.
# The toolkit adds a calibrated match / no-match criterion, traces, steering along a trace, and
# checks against real activations.
#
# The same workflow on Gemma 2 2B with Gemma Scope is in `02_gemma_scope.py`.
#
# **On Colab**, the next cell installs the toolkit (elsewhere it does nothing). If pip upgrades
# `ipywidgets` there, restart the session once (Runtime → Restart session) and run the notebook
# again; the panels then switch on Colab's custom widget manager themselves.

# %%
import sys

SAEMATCH_REPO = "https://github.com/OWNER/saematch_nb"  # where this notebook's repository lives
if "google.colab" in sys.modules:
    import subprocess

    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"saematch_nb[notebook] @ git+{SAEMATCH_REPO}"])

# %%
import os
import tempfile
import time

import numpy as np
from IPython.display import display

import saematch_nb as smn

T0 = time.perf_counter()
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never needs the hub
print("saematch_nb", smn.__version__)

# %% [markdown]
# ## 1. The demo model and its SAEs
#
# `demo.load()` returns the model (a sae-lens `HookedSAETransformer`), one sae-lens SAE per layer
# (`bundle.saes`), 137 held-out documents and lazy **handles** (`bundle.handles`): a handle names
# an SAE (release / id or folder, layer, hook) without keeping its weights, so a chain of 26
# Gemma Scope SAEs costs nothing until a pair is matched.

# %%
bundle = smn.demo.load()
bundle

# %%
saes = bundle.handles  # an SAEList of SAEHandles, in layer order
saes

# %%
saes[0]  # one handle: the layer it reads, its hook point, its width, where it lives

# %% [markdown]
# ## 2. Match one pair of layers
#
# `smn.match(sae_a, sae_b)` solves the assignment for one pair and returns a `LayerMatch`. Its
# repr shows what to look at first:
#
# - **matched**: the share of features the calibrated criterion accepts as "the same feature".
#   The assignment pairs *every* feature (it is a permutation); the criterion says which of those
#   pairs are real. It is calibrated on the pair itself: a copy of layer A in which nothing
#   persists (every feature's direction scrambled, the spectrum kept) shows how close a feature
#   *without* a partner gets by chance; a pair is accepted when it is closer than 99% of those, fits
#   the pair's own persisting matches, and each feature is the other's nearest. The **criterion**
#   line says which bound set the threshold and how many false matches to expect.
# - **MSE**: the matched MSE per feature on folded parameters (lower = more similar). Its
#   histogram often shows a low-MSE group (carried-over features) next to a broad bulk.
# - **margin**: MSE to the runner-up minus MSE to the partner. A small or negative margin means
#   the partner was not a clear choice.
# - **certified gap 0** means the solver proved the assignment optimal.

# %%
LAYER_A, LAYER_B = 2, 3
lm = smn.match(saes[LAYER_A], saes[LAYER_B])
lm

# %% [markdown]
# `to_pandas()` gives one row per feature of layer A: its partner in layer B, the matched MSE, the
# runner-up MSE, the margin, the criterion's score (the direction distance: 1 − the mean cosine of
# the two features' decoder rows and encoder columns) and the accepted flag. The best-matched
# features are the natural starting points for tracing.

# %%
df = lm.to_pandas()
display(df.sort_values("mse").head(8))
print("accepted:", int(df.matched.sum()), "of", len(df), "features")

# %% [markdown]
# ### Folding and the baselines
#
# JumpReLU thresholds θ grow with the residual-stream norm, so raw weights of different layers
# live on different scales. **Folding** (paper Eq. 4) moves θ into the weights (`W_enc/θ`,
# `W_dec·θ`) without changing what the SAE computes, and puts both layers on one scale.
# Compare, all measured on folded parameters:
#
# - `fold=False`: the assignment chosen on raw weights (the paper's "matched without folding");
# - `method="identity"`: feature *i* ↔ feature *i* (the "vanilla" baseline; any real match must
#   beat it by a wide margin);
# - `method="cosine"`: Feature Flow's top-1 cosine of decoder directions (many-to-one, not a
#   permutation).
#
# Folded matching should have the lowest mean MSE of the permutations; the identity should be far
# worse. Cosine is not a permutation (several features may share a partner), so its MSE is not
# constrained the same way.

# %%
import pandas as pd

variants = {
    "folded (default)": lm,
    "unfolded": smn.match(saes[LAYER_A], saes[LAYER_B], fold=False),
    "identity": smn.match(saes[LAYER_A], saes[LAYER_B], method="identity"),
    "cosine": smn.match(saes[LAYER_A], saes[LAYER_B], method="cosine"),
}
pd.DataFrame({name: v.summary() for name, v in variants.items()}).T[
    ["method", "fold", "mse_mean", "mse_median", "mse_q90", "matched_fraction"]]

# %% [markdown]
# ### Partial matching
#
# With `allow_unmatched=True` the solver may leave a feature without partner (`partner == -1`):
# the assignment is solved on the criterion's direction distance, with the calibrated threshold as
# every feature's "no partner" cost, so that no feature is favoured for its norm. Features that
# die or are born between the two layers stay unpaired instead of being forced onto leftovers.

# %%
partial = smn.match(saes[LAYER_A], saes[LAYER_B], allow_unmatched=True)
print(partial.stats["n_unmatched"], "features without partner;",
      int(partial.matched.sum()), "accepted")
partial

# %% [markdown]
# ## 3. Match the whole chain
#
# `match_chain` matches every neighbouring pair and keeps the SAEs it was given: every later step
# (examples, evaluation, co-activation, steering, the panels) takes the chain, and no SAE is
# converted, hashed or folded twice. Finished pairs are written to a cache
# (`$SAEMATCH_CACHE_DIR`, default `~/.cache/saematch_nb`) the moment they are done: running the
# same chain again, or resuming after a crash, reads them back instead of recomputing. The chain
# table shows, per pair, the accepted share and the MSE median / q90: a rise in MSE with depth is
# typical (features change more in late layers).

# %%
chain = smn.match_chain(saes)
chain

# %%
t = time.perf_counter()
again = smn.match_chain(saes, progress=False)
print(f"second run: {again.stats['cache_hits']} of {len(again.pairs)} pairs from the cache, "
      f"{time.perf_counter() - t:.2f} s")
again.summary()[["layer_a", "layer_b", "matched_fraction", "mse_median", "mse_q90", "cached", "seconds"]]

# %% [markdown]
# ## 4. Trace a feature through depth
#
# `chain.persistence()` says, for each feature, for how many consecutive layers it keeps an
# *accepted* partner (`lifetime` forward, `age` backward). `smn.find_features` ranks every feature
# by that (or by MSE, margin, how often it fires, its top tokens…); we pick the longest-lived
# feature of layer 0 (ties broken by the lowest MSE) and trace it.

# %%
chain.persistence(by="layer")  # rows: start layer; columns: lifetime; values: number of features

# %%
print("the longest-lived features of layer 0 (persistence: layers of the accepted run):")
found = smn.find_features(chain, layer=chain.layers[0], n=6)
display(found)
pers = chain.persistence()
first = pers.loc[chain.layers[0]]
longest = first.index[first.lifetime == first.lifetime.max()].to_numpy()
FEATURE = int(found.feature.iloc[0])
LAYER = chain.layers[0]
print(f"feature {FEATURE} of layer {LAYER} keeps an accepted partner for {first.lifetime.max()} layers")

# %% [markdown]
# A `FeatureTrace` lists the feature's index at every layer, each step's MSE and margin, and where
# the accepted run starts (**first seen**) and ends (**last seen**: the next step is rejected). A
# trace is worth trusting when every step has a low MSE and a clearly positive margin.

# %%
trace = chain.trace(LAYER, FEATURE)
trace

# %%
trace.to_pandas()

# %% [markdown]
# ## 5. Composition against direct matching
#
# The paper approximates the map from layer A to layer C by composing the pair maps,
# P(A→C) ≈ P(B→C)·P(A→B). `check_composition` matches A→C directly and reports how often the
# composed map agrees with it: over features with an accepted path (default), and over all
# features on the raw permutations (`raw=True`). Agreement drops with distance; high agreement on
# accepted paths means the chain is consistent.

# %%
for a, c in [(1, 3), (1, 4)]:
    acc = chain.check_composition(a, c)
    raw = chain.check_composition(a, c, raw=True)
    print(f"layers {a}→{c}: agreement on accepted paths {acc:.2f}, raw permutations {raw:.3f}")

# %% [markdown]
# ## 6. Figures
#
# `saematch_nb.display.figures` builds plotly figures from the same objects:
#
# - `make_mse_figure`: the matched-MSE histogram, accepted and rejected stacked;
# - `make_margin_figure`: MSE against margin — accepted matches sit at low MSE and positive margin;
# - `make_chain_figure`: accepted share and MSE band across depth (pass `{name: chain}` to overlay
#   runs, e.g. folded vs unfolded);
# - `make_trace_figure`: one feature across layers: each step's direction similarity against the
#   acceptance bound, its MSE and margin (and, given `correlations=`, how its activations
#   correlate with the origin's);
# - `make_flow_figure`: a Sankey of a few features through depth (merges share a node).
#
# The colours are Okabe & Ito's colour-blind-safe palette; `figures.set_theme("dark")` (or
# `theme="dark"`) draws them for a dark notebook theme.

# %%
from saematch_nb.display.figures import (FigureExportError, make_chain_figure, make_flow_figure,
                                         make_margin_figure, make_mse_figure, make_trace_figure)

make_mse_figure(lm)

# %%
make_margin_figure(lm)

# %%
chain_fig = make_chain_figure(chain)
chain_fig

# %%
make_trace_figure(trace)

# %%
make_flow_figure(chain, LAYER, [int(f) for f in longest[:4]])

# %% [markdown]
# `save_figure` writes by extension: `.html` is a self-contained page (plotly.js embedded, opens
# offline); `.png` / `.pdf` / `.svg` go through kaleido, which needs a Chrome/Chromium browser —
# without one it raises `FigureExportError` with the install hint. For a paper, `preset="single"`
# (one column, 3.25 in, 8 pt) or `"double"` (6.75 in, 9 pt) gives the physical size: PDF and SVG
# come out exactly that big, PNG at `dpi=`.

# %%
with tempfile.TemporaryDirectory() as tmp:
    for name, kw in (("chain.html", {}), ("chain.pdf", {"preset": "single"}), ("chain.png", {"preset": "double", "dpi": 200})):
        try:
            p = smn.save_figure(chain_fig, os.path.join(tmp, name), **kw)
            print(f"wrote {p.name} {kw}: {p.stat().st_size / 1024:.0f} KiB")
        except FigureExportError as err:
            print(f"{name}: not written ({err})")

# %% [markdown]
# ## 7. Saving and loading results
#
# A `LayerMatch` saves to one `.npz`, a `MatchChain` to a folder; loading gives back the same
# arrays and reprs (and the SAEs' weight hashes, so a result is never applied to other SAEs by
# mistake).

# %%
with tempfile.TemporaryDirectory() as tmp:
    chain.save(os.path.join(tmp, "chain"))
    lm.save(os.path.join(tmp, "pair_2_3.npz"))
    chain2 = smn.MatchChain.load(os.path.join(tmp, "chain"))
    lm2 = smn.LayerMatch.load(os.path.join(tmp, "pair_2_3.npz"))
print("chain round trip:", all(np.array_equal(p.permutation, q.permutation) for p, q in zip(chain.pairs, chain2.pairs)))
print("pair round trip: ", np.array_equal(lm.partner, lm2.partner) and np.array_equal(lm.mse, lm2.mse))

# %% [markdown]
# ## 8. What do the features respond to? Activation examples
#
# SAE Match is data-free; activation examples show whether a trace follows one concept. We run the
# model over a quarter of the held-out documents (all four styles), store the residual streams
# (streamed to disk and cached) and keep, for every feature, its top contexts and samples from
# lower activation bins. A good trace shows similar contexts at every layer.

# %%
texts = list(bundle.texts[::4])
acts = smn.collect_activations(bundle.model, texts, chain.layers, progress=False)
examples = smn.collect_examples(chain, acts, progress=False)
acts

# %%
examples[LAYER][FEATURE]

# %%
examples.for_trace(trace)  # every step of the trace side by side (scroll sideways on long chains)

# %% [markdown]
# ## 9. Does the match transfer the hidden state? (EV and ΔL)
#
# `evaluate` checks the paper's Eq. 5 on real text: layer *t*'s SAE code is moved through the match
# and decoded with layer *t+1*'s decoder. **Explained variance** (EV) of the real *x₍t+1₎*
# (higher is better) and **ΔL**, the rise in next-token loss when layer *t+1*'s residual stream is
# replaced by that estimate (lower is better). Baselines: `identity`, `cosine` (Feature Flow),
# `skip` (x̂ = x_t) and `recon_current` (the SAE's own reconstruction: the ceiling). Other methods:
# `unfolded+matched`, `recon_previous`, `quantile=0.9` for the pruned variant.
#
# `folded+accepted` moves only the features the criterion accepts and decodes the others with
# layer *t*'s own decoder rows. Here on 8 short documents, to stay fast (pass more text for stable
# numbers). What to expect on this demo (docs/DEMO.md, all 17k held-out tokens): `folded+accepted`
# about 0.6 on every pair, the best of the data-free transfers; `folded+matched` lower where many
# features die (the forced bijection moves their codes onto leftovers); identity far below; `skip`
# above them all (a 6-layer stream changes little per layer). On Gemma Scope the paper reports EV
# up to ~0.8 from layer 10 on.

# %%
small = list(bundle.texts[::17])[:8]
ev = smn.evaluate(chain, bundle.model, small, max_tokens=512, progress=False,
                  methods=["folded+matched", "folded+accepted", "identity", "cosine", "skip", "recon_current"])
display(ev.pivot_table(index=["layer_from", "layer_to"], columns="method", values="explained_variance").round(3))
ev.pivot_table(index=["layer_from", "layer_to"], columns="method", values="delta_loss").round(3)

# %% [markdown]
# ## 10. Agreement with the data: co-activation
#
# `coactivation` compares SAE Match's partners with the activations: **agreement** is how often
# the partner is the layer-*t+1* feature whose activations correlate best with the layer-*t*
# feature; **matching score** is P(both fire | either fires). Each comes with a random-pair
# chance level. Look at the accepted pairs: they should agree with the data far above chance.

# %%
co = smn.coactivation(chain, acts, layer=LAYER_A, progress=False)
co

# %%
feats = co.features[0]  # one row per layer-A feature
feats.groupby("matched")[["agrees", "matching_score", "pearson"]].mean().round(3)

# %% [markdown]
# ## 11. Steering along a trace
#
# A traced feature gives one feature per layer. `plan_steering` turns it into an intervention:
# `mode="add"` adds `strength × (folded decoder row)` to the residual stream at every traced layer
# (`span="trace"`; `"single"` steers one layer, `"cumulative"` the layers up to it), with a
# `constant`, `linear` or `exponential` schedule across depth. `mode="scale"` multiplies the
# feature's own contribution instead (`strength=0` removes it). `steer` generates from the same
# prompt with and without the hooks (greedy, same seed); the hooks are removed afterwards.

# %%
from saematch_nb.analysis.steering import feature_logit_effect

plan = smn.plan_steering(chain, LAYER, FEATURE, strength=4.0, span="trace")
print(plan)
result = smn.steer(plan, bundle.model, "HAMLET.\n", max_new_tokens=24)
result

# %% [markdown]
# Which tokens does the steered feature promote? The average change of log-probability over a
# prompt's positions:

# %%
feature_logit_effect(plan, bundle.model, "To be, or not to be, that is the question", k=8)

# %% [markdown]
# ## 12. Interactive panels
#
# `FeatureExplorer` follows a feature through the network: moving the layer slider shows the
# traced partner at that layer (and says where the trace stops); typing a feature starts a new
# trace; a click on a node or on a figure point selects that feature; ◀ / ▶ walk back and forth
# through the features visited. Under the nodes: the examples of every step side by side (the row
# starts next to the layer in focus), each feature's activation histogram and top logit effects
# (hover a node for its facts), then the figure.
# `FeatureFinder` ranks and filters features and opens one in the explorer; `ChainOverview` shows
# the whole chain and the flow of the features visited (click a node). `SteeringPanel` steers with
# the selected feature; `follow` keeps it in step with the explorer. A saved notebook keeps a
# snapshot of each panel as last seen, for readers without its kernel.

# %%
explorer = smn.FeatureExplorer(chain, examples, model=bundle.model, layer=LAYER, feature=FEATURE)
explorer

# %%
finder = smn.FeatureFinder(chain, examples, explorer, n=20)
finder

# %%
overview = smn.ChainOverview(chain, explorer)
overview

# %%
panel = smn.SteeringPanel(chain, bundle.model, layer=LAYER, feature=FEATURE,
                          prompt="HAMLET.\n", max_new_tokens=20).follow(explorer)
panel

# %%
print(f"notebook ran in {time.perf_counter() - T0:.0f} s")
