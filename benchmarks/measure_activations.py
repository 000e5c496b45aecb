#!/usr/bin/env python
"""Check SAE Match against real activations on the bundled demo, and print the tables.

1. Time and peak memory of collecting the residual stream of every demo layer on the held-out
   texts (streamed to disk) and of the top-k / quantile examples of every feature of every layer.
2. Hidden-state approximation (SAE Match Eq. 5): explained variance and ΔL of every adjacent pair,
   all methods side by side (folded+matched, unfolded+matched, identity, cosine, skip,
   recon_current, recon_previous, pruned@q).
3. Does the data-free match agree with the data? Per pair: the rate at which SAE Match's partner is
   the best-Pearson partner on the activations, and matched vs random-pair co-activation.

    python benchmarks/measure_activations.py            # the demo (saematch_nb.demo.load())
    python benchmarks/measure_activations.py --toy      # a tiny random model: checks the script only

Peak memory is the rise of this process's peak resident set (VmHWM, reset before each stage via
/proc/self/clear_refs where allowed), next to the size of what was written to disk.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_now() -> int:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _peak() -> int:
    from saematch_nb.core._memory import peak_rss_bytes

    return peak_rss_bytes() or 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def _stage(fn):
    _reset_peak()
    base = _rss_now()
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0, max(0, _peak() - base)


def _toy():
    import torch

    from saematch_nb.core.weights import SAEInfo, SAEWeights
    from tests import _saelens_doubles as fx

    model = fx.tiny_gemma2_model(seed=0, n_layers=3, d_model=32)
    eye = torch.eye(32)
    g = torch.Generator().manual_seed(0)
    saes = []
    for L in range(3):
        perm = torch.randperm(64, generator=g)
        W_enc, W_dec = torch.cat([eye, -eye], 1)[:, perm], torch.cat([eye, -eye], 0)[perm]
        saes.append(SAEWeights(W_enc=W_enc.contiguous(), b_enc=torch.zeros(64), W_dec=W_dec.contiguous(),
                               b_dec=torch.zeros(32), threshold=torch.full((64,), 0.05),
                               info=SAEInfo(layer=L, hook_name=f"blocks.{L}.hook_resid_post")))
    texts = [f"Document {i}: the quick brown fox jumps over the lazy dog {i * 7}." for i in range(12)]
    return model, saes, texts, "toy (random tiny Gemma-2 architecture, ±e_k SAEs)"


def _from_assets(folder: Path):
    """A demo assets folder (scripts/build_demo.py output) loaded directly, for when the packaged
    loader is not there yet."""
    import importlib.util
    import json

    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location("build_demo",
                                                  Path(__file__).resolve().parents[1] / "scripts" / "build_demo.py")
    bd = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bd)
    tok = bd.load_tokenizer(folder / "tokenizer")
    model = bd.build_model(json.loads((folder / "model_cfg.json").read_text()), tok, "cpu")
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    model.eval()
    saes = [str(p) for p in sorted((folder / "saes").iterdir(), key=lambda p: int(p.name.split("_")[-1]))]
    rows = [json.loads(l) for l in (folder / "texts.jsonl").read_text().splitlines() if l.strip()]
    return model, saes, [r["text"] for r in rows], f"demo assets at {folder}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--toy", action="store_true", help="tiny random model instead of the demo")
    ap.add_argument("--assets", default=None, help="a build_demo.py assets folder instead of saematch_nb.demo")
    ap.add_argument("--k", type=int, default=10, help="top-k examples per feature")
    ap.add_argument("--quantile", type=float, default=0.9, help="q of the pruned@q method")
    ap.add_argument("--max-tokens", type=int, default=None, help="tokens for evaluate (default: all)")
    ap.add_argument("--max-docs", type=int, default=None)
    ap.add_argument("--stages", default="costs,evaluate,coactivation",
                    help="comma-separated subset of costs,evaluate,coactivation")
    args = ap.parse_args()

    import pandas as pd
    import torch

    import saematch_nb
    from saematch_nb.core.weights import as_weights
    from saematch_nb.sources.activations import collect_activations
    from saematch_nb.analysis.evaluate import coactivation, evaluate
    from saematch_nb.analysis.examples import collect_examples

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if args.toy:
        model, saes, texts, what = _toy()
    elif args.assets:
        model, saes, texts, what = _from_assets(Path(args.assets))
    else:
        try:
            bundle = saematch_nb.demo.load()
        except Exception as exc:
            sys.exit(f"the demo is not available ({exc}); build it (scripts/build_demo.py) or run with --toy")
        model, saes, texts, what = bundle.model, list(bundle.saes), list(bundle.texts), "bundled demo"
    if args.max_docs:
        texts = texts[: args.max_docs]
    ws = [as_weights(s) for s in saes]
    # The demo's saes[L] reads blocks.{L}.hook_resid_post; say so where the loaded SAE lost its hook.
    ws = [w if w.info.layer is not None else w.with_info(layer=i, hook_name=f"blocks.{i}.hook_resid_post")
          for i, w in enumerate(ws)]
    layers = [w.info.layer for w in ws]
    print(f"# {what}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, SAEs on layers {layers} "
          f"({ws[0].d_sae} features each), {len(texts)} held-out documents\n")

    chain, t_match, _ = _stage(lambda: saematch_nb.match_chain(ws, cache=False, progress=False))
    with tempfile.TemporaryDirectory() as tmp:
        acts, t_acts, m_acts = _stage(lambda: collect_activations(
            model, texts, layers, cache_dir=tmp, progress=False))
        exs, t_ex, m_ex = _stage(lambda: collect_examples(chain, acts, k=args.k, cache=False, progress=False))
        disk = acts.nbytes()
        n_feat = sum(w.d_sae for w in ws)
        print("## Cost of collecting activations and examples (held-out text, all layers)")
        cost = pd.DataFrame([
            {"stage": "match_chain (all pairs)", "seconds": t_match, "peak_rss_rise_MiB": float("nan")},
            {"stage": f"collect_activations ({acts.n_tokens} tokens × {len(layers)} layers)", "seconds": t_acts,
             "peak_rss_rise_MiB": m_acts / 2**20},
            {"stage": f"collect_examples (top-{args.k} + quantiles, {n_feat} features)", "seconds": t_ex,
             "peak_rss_rise_MiB": m_ex / 2**20},
        ])
        print(cost.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print(f"activations on disk: {disk / 2**20:.1f} MiB ({acts.dtype})\n")

        stages = set(args.stages.split(","))
        if "evaluate" not in stages:
            ev = None
        else:
            ev, t_ev, _ = _stage(lambda: evaluate(chain, model, texts, quantile=args.quantile, progress=False,
                                                  max_tokens=args.max_tokens))
        if ev is not None:
            order = list(dict.fromkeys(ev.method))
            ev["pair"] = ev.layer_from.astype(str) + "→" + ev.layer_to.astype(str)
            print(f"## Explained variance of x_(t+1) (Eq. 5), residual mean removed (1 - Var(x̂ - x) / Var(x)), "
                  f"{int(ev.n_tokens.iloc[0])} tokens, BOS excluded")
            print(ev.pivot(index="pair", columns="method", values="explained_variance")[order]
                  .to_string(float_format=lambda v: f"{v:.3f}"))
            print("\n## The same with the residual's mean kept (1 - E|x̂ - x|² / Var(x): a constant offset "
                  "counts as error)")
            print(ev.pivot(index="pair", columns="method", values="explained_variance_mean_kept")[order]
                  .to_string(float_format=lambda v: f"{v:.3f}"))
            print(f"\n## ΔL (nats/token; clean loss {ev.clean_loss.iloc[0]:.3f})")
            print(ev.pivot(index="pair", columns="method", values="delta_loss")[order]
                  .to_string(float_format=lambda v: f"{v:+.3f}"))
            print(f"(evaluate: {t_ev:.1f} s)\n")
        if "coactivation" not in stages:
            return

        chains = {"folded": chain,
                  "unfolded": saematch_nb.match_chain(ws, cache=False, progress=False, fold=False),
                  "top-1 cosine": saematch_nb.match_chain(ws, cache=False, progress=False, method="cosine")}
        summary = []
        for name, ch in chains.items():
            co, t_co, m_co = _stage(lambda ch=ch: coactivation(ch, acts, progress=False))
            df = co.to_pandas()
            df["pair"] = df.layer_from.astype(str) + "→" + df.layer_to.astype(str)
            df.insert(0, "matching", name)
            summary.append(df)
            print(f"(coactivation of the {name} chain: {t_co:.1f} s, peak RSS rise {m_co / 2**20:.0f} MiB)")
        df = pd.concat(summary, ignore_index=True)
        cols = ["matching", "pair", "n_active", "n_accepted", "agreement", "agreement_accepted",
                "pearson_accepted", "pearson", "pearson_random", "matching_score_accepted", "matching_score_random"]
        print("\n## Data-free match vs the data: agreement = the partner is the data's best-Pearson partner "
              "(over active features / over accepted ones); mean Pearson of accepted partners, of all "
              "partners and of random pairs")
        print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))

        # persistence: accepted steps of the chain next to the activations' own (read-off) persistence
        from saematch_nb.analysis.evaluate import read_off_persistence

        ro, t_ro, _ = _stage(lambda: read_off_persistence(chain, acts, progress=False))
        life = chain.persistence()
        T = len(layers)
        rows = []
        for k in range(1, T):
            r = {"k (layers later)": k}
            for s_, L in enumerate(layers[: T - k]):
                n_l = int((life.loc[L].lifetime >= k).sum())
                r[f"L{L} chain"] = n_l
                r[f"L{L} read-off"] = int(ro.loc[(L, k), "persisting"])
                r[f"L{L} median r"] = round(float(ro.loc[(L, k), "median_pearson"]), 3)
            rows.append(r)
        print(f"\n## Persistence: features of layer L with an accepted partner for k consecutive layers (chain), "
              f"and features still readable k layers later in the residual stream (read-off: Pearson of "
              f"f_i(x_L) and f_i(x_(L+k)) above the null's 99% quantile at every step); {t_ro:.1f} s")
        print(pd.DataFrame(rows).set_index("k (layers later)").to_string(na_rep="-"))
        del exs
        acts = None  # the memmaps released before the temp folder goes (not del: the lambdas read it)


if __name__ == "__main__":
    main()
