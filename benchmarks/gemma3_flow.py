#!/usr/bin/env python
"""Feature Flow on a real Gemma: Gemma 3 270M with residual, MLP-output and attention-output SAEs.

The SAEs come from ``scripts/build_gemma3.py --flow FIRST-LAST`` (``make gemma3-flow``: the
residual stream of layers FIRST-1..LAST, ``hook_mlp_out`` and ``hook_attn_out`` of FIRST..LAST, a
second seed of one residual layer). This script runs, on held-out text the SAEs never saw:

1. weights   ``feature_flow``: s(R), s(M), s(A) per residual feature, thresholds calibrated per
             layer and module (alpha = 1 %), class shares per layer; the seed ceiling (how many
             features two seeds of one layer share) for scale.
2. labels    ``flow_labels``: which top-1 predecessors fire on the same token, per weight class,
             against the same counts with shuffled predecessors; Mann-Whitney tests (Laptev et al.
             §4.1 / their Fig. 4).
3. deact     ``deactivate``: remove the predecessor (r = 0) and measure the target's activation,
             for top-1 cosine in R, M, A, all three, SAE Match's partner and a co-active control
             (their §4.2 / Table 1).
4. steer     ``plan_flow_steering``: single-layer vs cumulative (residual path) vs cumulative with
             the module nodes, at matched strengths: the change of the log-probability of the
             origin feature's own top tokens and the KL of the next-token distribution (§4.3),
             and one greedy generation per setting.

    make gemma3-flow                          # build (about 45 min on 2 CPU cores) + this script
    python benchmarks/gemma3_flow.py --build .gemma3_flow_build --out docs/gemma3/flow
    python benchmarks/gemma3_flow.py --build /tmp/toy --out /tmp/fx --windows 4 --targets 3 --origins 1  # CI

Writes CSV tables, ``flow.npz`` (the FeatureFlow), ``labels.npz``, ``deactivation.json`` and
``results.md`` to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[gemma3_flow {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def md(df, index: bool = False) -> str:
    """A DataFrame as a GitHub markdown table (pandas' to_markdown needs tabulate)."""
    d = df.reset_index() if index else df
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(map(str, d.columns)) + " |", "|" + "---|" * len(d.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in d.itertuples(index=False)]
    return "\n".join(lines)


def load_build(build: Path):
    """{"res"|"mlp"|"att": {layer: sae-lens SAE}}, the seed-ceiling SAE (or None), the held-out windows."""
    import numpy as np

    from saematch_nb.sources.saes import load_saes

    out = {}
    for key, folder in (("res", "saes"), ("mlp", "mlp"), ("att", "attn")):
        paths = sorted((build / folder).glob("layer_*"), key=lambda p: int(p.name.split("_")[1]))
        if not paths:
            sys.exit(f"gemma3_flow: no SAEs in {build / folder}; build them with make gemma3-flow "
                     "(python scripts/build_gemma3.py --flow FIRST-LAST --out ...)")
        out[key] = {int(p.name.split("_")[1]): load_saes([str(p)])[0].load() for p in paths}
    ceiling = sorted((build / "seed_ceiling").glob("layer_*"))
    twin = (int(ceiling[0].name.split("_")[1]), load_saes([str(ceiling[0])])[0].load()) if ceiling else None
    return out, twin, np.load(build / "eval_windows.npy")


def steering_rows(model, flow, saes, origins, prompts, strengths, log_every=True):
    """Per origin, setting and strength: mean change of the log-probability of the origin's top-5
    direct-logit tokens (over the prompts' positions) and the mean KL(clean || steered)."""
    import torch

    from saematch_nb.analysis.flow_checks import plan_flow_steering
    from saematch_nb.analysis.steering import steering_hooks

    toks = model.to_tokens(prompts)
    pad = toks == model.tokenizer.pad_token_id
    keep = ~pad
    keep[:, 0] = False
    rows = []
    with torch.no_grad():
        clean = model(toks).float().log_softmax(-1)
    for L, f in origins:
        graph = flow.graph(L, f)
        w = saes["res"][L]
        d = w.W_dec[f].detach().float() * model.ln_final.w.detach().float()
        top = torch.topk(d @ model.W_U.detach().float(), 5).indices
        for setting, span, modules in (("single layer", "single", False), ("cumulative", "cumulative", False),
                                       ("cumulative + modules", "cumulative", True)):
            for s in strengths:
                plan = plan_flow_steering(graph, saes["res"], mlp=saes["mlp"], att=saes["att"], strength=s, span=span,
                                          modules=modules)
                with torch.no_grad(), model.hooks(fwd_hooks=steering_hooks(plan, model=model)):
                    lp = model(toks).float().log_softmax(-1)
                kl = (clean.exp() * (clean - lp)).sum(-1)[keep].mean().item()
                dtop = (lp[..., top] - clean[..., top]).mean(-1)[keep].mean().item()
                rows.append({"origin_layer": L, "origin_feature": f, "setting": setting, "strength": s,
                             "entries": len(plan.layers), "residual_nodes": plan.options["kinds"].count("residual"),
                             "module_nodes": len(plan.layers) - plan.options["kinds"].count("residual"),
                             "delta_logprob_top5": dtop, "kl": kl,
                             "top_tokens": " ".join(repr(model.tokenizer.decode([int(t)])) for t in top)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=str(ROOT / ".gemma3_flow_build"), help="the --out of build_gemma3.py --flow")
    ap.add_argument("--out", default=str(ROOT / "docs" / "gemma3" / "flow"))
    ap.add_argument("--windows", type=int, default=128, help="held-out windows (of 128 tokens) for the data check")
    ap.add_argument("--deact-windows", type=int, default=64, help="windows the deactivation targets are drawn from")
    ap.add_argument("--targets", type=int, default=32, help="deactivation targets per layer")
    ap.add_argument("--origins", type=int, default=6, help="steering origins (features of the last layer)")
    ap.add_argument("--prompts", type=int, default=8, help="held-out texts (first 200 characters) steered on")
    ap.add_argument("--gen-tokens", type=int, default=20, help="tokens per greedy generation")
    ap.add_argument("--strengths", default="0.5,1,2,4,8", help="steering strengths (comma-separated)")
    ap.add_argument("--steering-only", action="store_true", help="only the steering table, on --out's flow.npz")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import numpy as np
    import pandas as pd
    import torch

    import saematch_nb as smn
    from saematch_nb.analysis.flow_checks import deactivate, flow_labels

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times, t0 = {}, time.time()
    build = Path(args.build)
    saes, twin, windows = load_build(build)
    model = smn.load_model("gemma-3-270m", device=args.device, dtype=torch.float32)
    times["load"] = round(time.time() - t0, 1)
    log(f"model + SAEs: residual {sorted(saes['res'])}, mlp {sorted(saes['mlp'])}, attn {sorted(saes['att'])} "
        f"({times['load']} s)")

    if args.steering_only:  # the steering table again, on the flow saved by a full run
        flow = smn.FeatureFlow.load(out / "flow.npz")
    else:
        # 1. weights
        t = time.time()
        flow = smn.feature_flow(saes["res"], mlp=saes["mlp"], att=saes["att"], seed=args.seed)
        flow.save(out / "flow.npz")
        summ = flow.summary()
        summ.to_csv(out / "weights_classes.csv")
        chain = smn.match_chain([saes["res"][L] for L in sorted(saes["res"])], cache=False, progress=False)
        ceiling = {}
        if twin is not None:
            lm = smn.match(saes["res"][twin[0]], twin[1])
            da = torch.nn.functional.normalize(saes["res"][twin[0]].W_dec.detach().float(), dim=1)
            db = torch.nn.functional.normalize(twin[1].W_dec.detach().float(), dim=1)
            best = (da @ db.T).max(1).values
            ceiling = {"layer": twin[0], "matched_fraction": round(lm.matched_fraction, 4),
                       "best_cos_median": round(best.median().item(), 3),
                       "share_best_cos_above_0.7": round((best > 0.7).float().mean().item(), 4)}
            # what two seeds would share by sampling the same cloud of directions, untrained: two disjoint
            # samples of the layer's own (centred, unit) held-out activations, as many as the SAE's width
            hook = f"blocks.{twin[0]}.hook_resid_post"
            with torch.no_grad():
                _, cache = model.run_with_cache(torch.from_numpy(windows[-min(len(windows), 64):]).long(),
                                                names_filter=hook, stop_at_layer=twin[0] + 1)
            xs = cache[hook][:, 1:].reshape(-1, cache[hook].shape[-1]).float()
            perm = torch.randperm(len(xs), generator=torch.Generator().manual_seed(args.seed))
            xs = torch.nn.functional.normalize(xs - xs.mean(0), dim=1)[perm]
            k = min(da.shape[0], len(xs) // 2)
            cb = (xs[:k] @ xs[k:2 * k].T).max(1).values
            ceiling.update({"data_sample_size": k, "data_samples_best_cos_median": round(cb.median().item(), 3),
                            "data_samples_share_above_0.7": round((cb > 0.7).float().mean().item(), 4)})
        times["weights"] = round(time.time() - t, 1)
        log(f"weights: {times['weights']} s\n{summ.to_string()}\nseed ceiling {ceiling}")

        # 2. labels
        t = time.time()
        toks = torch.from_numpy(windows[: args.windows]).long()
        labels = flow_labels(flow, model, saes["res"], mlp=saes["mlp"], att=saes["att"], tokens=toks, seed=args.seed)
        labels.save(out / "labels.npz")
        lt, tests = labels.table(), labels.tests()
        lt.to_csv(out / "labels.csv", index=False)
        tests.to_csv(out / "labels_tests.csv", index=False)
        times["labels"] = round(time.time() - t, 1)
        log(f"labels: {times['labels']} s\n{lt[lt['layer'] == 'all'].to_string()}\n{tests.to_string()}")

        # 3. deactivation
        t = time.time()
        dtoks = torch.from_numpy(windows[args.windows: args.windows + args.deact_windows]).long()
        deact = deactivate(flow, model, saes["res"], mlp=saes["mlp"], att=saes["att"], tokens=dtoks,
                           n_targets=args.targets, chain=chain, contexts=3, seed=args.seed)
        deact.save(out / "deactivation.json")
        # the same on features the weights give a predecessor (a uniform draw is mostly "unexplained")
        linked = deactivate(flow, model, saes["res"], mlp=saes["mlp"], att=saes["att"], tokens=dtoks,
                            n_targets=args.targets, chain=chain, contexts=3, seed=args.seed,
                            classes=("translated", "processed", "newborn"))
        linked.save(out / "deactivation_linked.json")
        dl = linked.summary()
        dl_cls = linked.summary(by=("method", "class"))
        dl.to_csv(out / "deactivation_linked.csv", index=False)
        dl_cls.to_csv(out / "deactivation_linked_by_class.csv", index=False)
        ds = deact.summary()
        ds_cls = deact.summary(by=("method", "class"))
        ds_layer = deact.summary(by=("layer", "method"))
        ds.to_csv(out / "deactivation.csv", index=False)
        ds_cls.to_csv(out / "deactivation_by_class.csv", index=False)
        ds_layer.to_csv(out / "deactivation_by_layer.csv", index=False)
        times["deactivation"] = round(time.time() - t, 1)
        log(f"deactivation: {times['deactivation']} s\n{ds.to_string()}\nlinked targets:\n{dl_cls.to_string()}")

    # 4. steering along flows from the last layer: origins with the longest backward residual path
    t = time.time()
    last = flow.layers[-1]
    depth = []
    for f in range(flow.n_features(last)):
        n, L, g = 0, last, f
        while L in flow.layers:
            fl = flow.layer(L)
            if not fl.s_R[g] >= 0.5:
                break
            n, L, g = n + 1, fl.prev_layer, int(fl.i_R[g])
        depth.append(n)
    depth = np.array(depth)
    order = np.argsort(-depth, kind="stable")[: args.origins]
    origins = [(last, int(f)) for f in order]
    lines = (ROOT / "saematch_nb" / "gemma3" / "assets" / "texts.jsonl").read_text().splitlines()
    texts = [json.loads(x)["text"] for x in lines[: args.prompts]]
    prompts = [x[:200] for x in texts]
    rows = steering_rows(model, flow, saes, origins, prompts, strengths=[float(x) for x in args.strengths.split(",")])
    st = pd.DataFrame(rows)
    st.to_csv(out / "steering.csv", index=False)
    st_sum = st.groupby(["setting", "strength"], sort=False).agg(
        delta_logprob_top5=("delta_logprob_top5", "mean"), kl=("kl", "mean"), entries=("entries", "mean")).reset_index()
    st_sum.to_csv(out / "steering_summary.csv", index=False)
    gens = []
    if origins:
        from saematch_nb.analysis.flow_checks import plan_flow_steering
        from saematch_nb.analysis.steering import steer

        L, f = origins[0]
        graph = flow.graph(L, f)
        for setting, span, modules in (("single layer", "single", False), ("cumulative", "cumulative", False),
                                       ("cumulative + modules", "cumulative", True)):
            plan = plan_flow_steering(graph, saes["res"], mlp=saes["mlp"], att=saes["att"], strength=8.0, span=span,
                                      modules=modules)
            r = steer(plan, model, "The weather today is", max_new_tokens=args.gen_tokens)
            gens.append({"setting": setting, "baseline": r.baseline, "steered": r.steered})
        pd.DataFrame(gens).to_csv(out / "steering_generations.csv", index=False)
    times["steering"] = round(time.time() - t, 1)
    log(f"steering: {times['steering']} s (origins {origins}, backward residual path lengths "
        f"{depth[order].tolist()})\n{st_sum.to_string()}")
    if args.steering_only:
        return 0

    meta = {"build": str(build), "windows": int(args.windows), "deact_windows": int(args.deact_windows),
            "tokens_labels": int(labels.n_tokens), "targets_per_layer": int(args.targets),
            "seed_ceiling": ceiling, "seconds": times, "origins": origins,
            "origin_path_lengths": depth[order].tolist(),
            "build_metrics": (json.loads((build / "metrics.json").read_text())["eval"]
                              if (build / "metrics.json").exists() else None)}
    (out / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
    doc = ["# Feature Flow on Gemma 3 270M (benchmarks/gemma3_flow.py)", "",
          f"SAEs: {args.build}; held-out windows: {args.windows} for labels ({labels.n_tokens:,} tokens), "
          f"{args.deact_windows} for deactivation; seconds: {times}.", "",
          "## Seed ceiling", "", json.dumps(ceiling), "",
          "## Weight classes per layer", "", md(summ, index=True), "",
          "## Data labels (pooled over layers)", "", md(lt[lt["layer"] == "all"]), "",
          md(tests), "",
          "## Deactivation", "", "Targets drawn uniformly from the features that fire:", "", md(ds), "", md(ds_cls), "",
          "Targets with a weight-based predecessor (translated, processed, newborn):", "", md(dl), "", md(dl_cls), "",
          "## Steering along flows", "", md(st_sum), ""]
    if gens:
        doc += ["Greedy generations, strength 8, origin " + f"L{origins[0][0]} #{origins[0][1]}:", "",
               md(pd.DataFrame(gens)), ""]
    (out / "results.md").write_text("\n".join(doc))
    log(f"done: {out} (seconds {times})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
