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
# # SAE Match on Gemma 2 2B with Gemma Scope
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/saematch_nb/blob/main/notebooks/02_gemma_scope.ipynb)
#
# The quickstart's workflow (`01_quickstart.py`) on a real model: Gemma 2 2B and the canonical
# 16k-feature Gemma Scope residual-stream SAEs (`gemma-scope-2b-pt-res-canonical`), matched over
# a run of layers, traced, checked against activations, compared with Neuronpedia's explanations
# and used for steering.
#
# **What it needs.** A GPU session (Gemma 2 2B is ~10 GB in float32, ~5 GB in bfloat16; a Colab
# T4 is enough in bfloat16), Hugging Face access to the gated `google/gemma-2-2b` weights (accept
# the licence on its hub page, then log in with a token), and ~2 GB of downloads for six 16k SAEs
# (~300 MB each). Internet access for Neuronpedia is optional.
#
# **The switch.** Set the environment variable `SAEMATCH_USE_GEMMA=1` (or edit the cell below)
# to run on Gemma. Without it, every cell runs on the bundled offline demo instead (same API, a
# 6-layer toy model), which is how this notebook is tested in CI.
#
# ### Install on Colab
#
# Install torch first (Colab has it already; elsewhere pick the wheel for your CUDA), then the
# toolkit with its notebook extras: the next cell does that on Colab (and nothing elsewhere).
# Log in to the hub first:
#
# ```python
# from huggingface_hub import login
# login()  # a token with read access, after accepting the Gemma licence
# ```
#
# and set `os.environ["SAEMATCH_USE_GEMMA"] = "1"` before that cell (or set
# `USE_GEMMA = True` in it). If pip upgrades `ipywidgets` on Colab, restart the session once
# (Runtime → Restart session); the panels switch on Colab's custom widget manager themselves.

# %%
import os
import sys

SAEMATCH_REPO = "https://github.com/OWNER/saematch_nb"  # where this notebook's repository lives
if "google.colab" in sys.modules:  # Colab: install the toolkit first (elsewhere nothing happens)
    import subprocess

    # `scale`: numba, for the solvers of 16k-and-wider SAEs; warmup compiles their kernels once, now
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q",
                           f"saematch_nb[notebook,scale] @ git+{SAEMATCH_REPO}"])
    subprocess.check_call([sys.executable, "-m", "saematch_nb", "warmup"])

import time

import numpy as np
import torch
from IPython.display import display

import saematch_nb as smn

USE_GEMMA = os.environ.get("SAEMATCH_USE_GEMMA") == "1"

if USE_GEMMA:
    LAYERS = list(range(10, 16))  # the paper finds features persist best from layer ~10 on
    DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    DTYPE = "bfloat16" if DEVICE == "cuda" else "float32"
    N_DOCS, MAX_TOKENS, CONTEXT = 48, 4096, 256
    PROMPT = "My favourite thing to do on a weekend is"
    print(f"USE_GEMMA=True: Gemma 2 2B + Gemma Scope 16k, layers {LAYERS[0]}–{LAYERS[-1]}, on {DEVICE} ({DTYPE})")
    if DEVICE == "cpu":
        print("warning: no GPU found; this will be very slow (and needs ~12 GB of RAM)")
else:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    LAYERS = list(range(6))
    DEVICE, DTYPE = "cpu", "float32"
    N_DOCS, MAX_TOKENS, CONTEXT = 24, 2048, None
    PROMPT = "HAMLET.\n"
    print("USE_GEMMA=False: running on the bundled demo model and SAEs instead of Gemma "
          "(set SAEMATCH_USE_GEMMA=1 in a GPU session with Hugging Face access for the real thing)")
T0 = time.perf_counter()

# %% [markdown]
# ## 1. Name the SAEs and load the model
#
# `load_saes` only *names* the SAEs: it returns lazy handles (release, sae id, layer, hook,
# Neuronpedia id) and downloads nothing. Weights are fetched through sae-lens when a pair is
# matched, two SAEs at a time. `load_model` loads Gemma as a sae-lens `HookedSAETransformer`
# (TransformerLens hooks `blocks.{L}.hook_resid_post`); it raises a clear error when the weights
# are gated and no token is set.

# %%
if USE_GEMMA:
    saes = smn.load_saes("gemma-scope-2b-pt-res-canonical", layers=LAYERS, width="16k")
    model = smn.load_model("gemma-2-2b", device=DEVICE, dtype=DTYPE)
else:
    bundle = smn.demo.load()
    saes, model = bundle.handles, bundle.model
saes

# %% [markdown]
# ### Gemma 3 and Gemma Scope 2, next to Gemma 2 and Gemma Scope
#
# Gemma Scope 2 (Gemma 3 270M–27B, pretrained and instruction-tuned) is chosen the same way.
# Its ids name the sparsity by label, `layer_{L}_width_{W}_l0_{small|medium|big}`, where Gemma
# Scope's give the average L0 (`layer_{L}/width_{W}/average_l0_{N}`, and the `-canonical` release
# names one per layer and width `canonical`). Gemma Scope 2 has no canonical SAEs, so `l0` is
# given (`"nearest:N"` works too, by the L0 sae-lens lists for each label).
# The `-all` releases cover every layer (widths 16k and 262k, L0 small and big); the others four
# layers at more widths, and the residual ones a second training seed (`seed=1`) of their 262k
# medium SAEs, for a seed ceiling. Naming reads sae-lens' directory only, so this cell runs
# offline in every mode; weights are downloaded when a pair is matched, and once in the Hugging
# Face cache they load offline too.

# %%
gemma_2 = smn.load_saes("gemma-scope-2b-pt-res-canonical", layers=[7, 13], width="16k")
gemma_3 = smn.load_saes("gemma-scope-2-1b-pt-res", layers=[7, 13], width="16k", l0="medium")
display(gemma_2, gemma_3)  # same layers, both with Neuronpedia ids
every_layer = smn.load_saes("gemma-scope-2-1b-pt-res-all", width="262k", l0="small")
seeds = smn.load_saes("gemma-scope-2-1b-pt-res", 13, width="262k", l0="medium", seed=1)
print(f"{len(every_layer)} residual SAEs of Gemma 3 1B, layers {every_layer.layers[0]}–{every_layer.layers[-1]};",
      f"second seed of layer 13: {seeds[0].sae_id}")

# %% [markdown]
# The other sites have their own hooks: MLP SAEs read `hook_mlp_out`; attention SAEs read
# `attn.hook_z`, before the output projection (so they live in n_heads × d_head, not d_model);
# transcoders read `hook_mlp_in` and write `hook_mlp_out` (`hook_name_out`), with `affine=True` for
# the skip transcoders. Neuronpedia ids are there where sae-lens lists one. A missing choice is an
# error that lists what exists at the layers asked:

# %%
sites = smn.load_saes("gemma-scope-2-1b-pt-mlp", 7, l0="small") + smn.load_saes(
    "gemma-scope-2-1b-pt-att", 7, l0="small") + smn.load_saes(
    "gemma-scope-2-1b-pt-transcoders", 7, l0="small", affine=True)
for h in sites:
    print(f"{h.sae_id:45s} {h.hook_name:24s} -> {h.hook_name_out or '':22s} neuronpedia: {h.neuronpedia_id}")
try:
    smn.load_saes("gemma-scope-2-1b-pt-res-all", layers=range(3), width="16k")  # no l0
except smn.SaematchError as err:
    print(f"\n{type(err).__name__}: {err}")

# %%
texts, styles, _ = smn.demo.load_texts()  # held-out Shakespeare, Milton, Bible, Jargon File
texts = texts[::max(1, len(texts) // N_DOCS)][:N_DOCS]
print(len(texts), "documents for the data checks;", type(model).__name__, model.cfg.n_layers, "layers")

# %% [markdown]
# ## 2. Match the chain
#
# Each 16384 × 16384 assignment is solved exactly (on the GPU when there is one); finished pairs
# are cached, so re-running this cell, or resuming after a disconnect, is instant for the pairs
# already done. What to look for: the accepted share per pair and the MSE median / q90 across
# depth. On Gemma Scope the paper reports low folded MSE in the middle layers and a rise towards
# the end of the network.

# %%
chain = smn.match_chain(saes, device=DEVICE if USE_GEMMA else None)
chain

# %%
from saematch_nb.display.figures import make_chain_figure, make_mse_figure, make_trace_figure

display(make_chain_figure(chain))
make_mse_figure(chain.pairs[len(chain.pairs) // 2])

# %% [markdown]
# ## 3. Trace a long-lived feature
#
# The longest-lived feature of the first layer (ties broken by the lowest matched MSE), followed
# through every layer; `chain.trace` works for any (layer, feature) you pick, e.g. one found on
# Neuronpedia.

# %%
LAYER = chain.layers[0]
first = chain.persistence().loc[LAYER]
longest = first.index[first.lifetime == first.lifetime.max()].to_numpy()
FEATURE = int(longest[np.argmin(chain.pairs[0].mse[longest])])
trace = chain.trace(LAYER, FEATURE)
trace

# %%
make_trace_figure(trace)

# %% [markdown]
# ## 4. Neuronpedia
#
# Every Gemma Scope SAE has a Neuronpedia page: the links below open each step of the trace, with
# its explanation and top activations. `fetch_feature` reads the same through Neuronpedia's API
# (cached on disk). Explanations are a good check of a trace: the same description at every step
# means the match followed one concept. Offline, `fetch_feature` raises `NeuronpediaUnavailableError`
# with a clear message, caught below. The demo's SAEs are not on Neuronpedia, so in demo mode the
# cell fetches a Gemma Scope feature instead.

# %%
from saematch_nb.sources.neuronpedia import NeuronpediaUnavailableError

info = chain.infos[chain.layers.index(LAYER)]
if info.neuronpedia_id:
    for layer, feature in zip(trace.layers, trace.features):
        if feature >= 0:
            print(f"layer {layer:2d} feature {feature:5d}: "
                  f"{chain.infos[chain.layers.index(layer)].neuronpedia_url(feature)}")
else:
    print("the demo SAEs are not on Neuronpedia; fetching a Gemma Scope feature as an example")
np_id, np_index = (info.neuronpedia_id, FEATURE) if info.neuronpedia_id else ("gemma-2-2b/12-gemmascope-res-16k", 0)
try:
    display(smn.fetch_feature(np_id, np_index, timeout=5))
except NeuronpediaUnavailableError as err:
    print(f"Neuronpedia unavailable: {err}")

# %% [markdown]
# ## 5. Activation examples from the model
#
# The same trace seen through the data: top contexts of each step's feature, on held-out text.

# %%
# the chain keeps its SAEs (lazy handles: loaded two at a time when a step needs them)
acts = smn.collect_activations(model, texts, chain.layers, max_tokens=MAX_TOKENS, context=CONTEXT,
                               progress=False)
examples = smn.collect_examples(chain, acts, progress=False)
examples.for_trace(trace)

# %% [markdown]
# ## 6. Hidden-state transfer (EV, ΔL) and co-activation
#
# Explained variance of layer *t+1*'s residual stream predicted from layer *t*'s SAE code through
# the match (higher is better), and the loss increase ΔL when it replaces the real one (lower is
# better), against the identity permutation and `skip` (x̂ = x_t). The paper reports EV up to
# ~0.8 from layer 10 on for Gemma Scope. Co-activation: how often SAE Match's partner is the
# data's best-correlated feature, for accepted pairs against all.

# %%
ev = smn.evaluate(chain, model, texts, methods=["folded+matched", "folded+accepted", "identity", "skip"],
                  max_tokens=MAX_TOKENS // 4, context=CONTEXT, progress=False)
display(ev.pivot_table(index=["layer_from", "layer_to"], columns="method",
                       values=["explained_variance", "delta_loss"]).round(3))
co = smn.coactivation(chain, acts, layer=LAYER, progress=False)
co

# %% [markdown]
# ## 7. Steering along the trace
#
# Add the traced feature's folded decoder direction at every layer of its trace and compare greedy
# generations. Try other strengths, `span="single"` (one layer) or `mode="scale"` with
# `strength=0` (remove the feature) — or use the panel below.

# %%
plan = smn.plan_steering(chain, LAYER, FEATURE, strength=4.0, span="trace")
smn.steer(plan, model, PROMPT, max_new_tokens=24)

# %% [markdown]
# ## 8. Explore interactively
#
# The explorer follows any feature through the chain with its examples; the steering panel
# follows the explorer's selection.

# %%
explorer = smn.FeatureExplorer(chain, examples, model=model, layer=LAYER, feature=FEATURE)
panel = smn.SteeringPanel(chain, model, layer=LAYER, feature=FEATURE, prompt=PROMPT,
                      max_new_tokens=20).follow(explorer)
display(explorer, panel)
print(f"{'Gemma' if USE_GEMMA else 'demo'} run: {time.perf_counter() - T0:.0f} s")
