#!/usr/bin/env python
"""The paper's experiments on a real Gemma: Gemma 3 270M (Q4_K_M, offline) and its 18 SAEs.

Writes tables (CSV + one markdown file) and figures (PNG through kaleido, HTML otherwise) to --out
(default docs/gemma3/), summarised in docs/GEMMA3.md:

1. fig3      matched MSE per adjacent pair, all on the folded parameters: the permutation found on
             folded parameters, the one found on unfolded parameters, and the identity ("vanilla")
             (the paper's Fig. 3); and the SAEs' threshold scale per layer (why folding matters).
2. criterion accepted fraction, threshold, expected false matches and partner decoder cosine
             under the calibrated criterion, folded and unfolded; the seed ceiling row.
3. agreement the data-free partner vs the data's best-Pearson partner on held-out activations,
             for folded, unfolded and top-1-cosine matching, over active and over accepted
             features; the seed ceiling's agreement (two seeds of one layer).
4. eq5       explained variance and ΔL of x_(t+1) approximated from x_t (SAE Match Eq. 5) for every
             method and baseline (skip, reconstruction of the current / previous layer).
5. persist   persistence from the chain (accepted steps) next to the activations' read-off.
6. compose   composition vs direct matches (hypothesis 3): P(t→t+k) vs P(t+k-1→t+k)···P(t→t+1).
7. contrast  early (pairs from layers 0-8) vs late (9-16) means of the above.

    python benchmarks/gemma3_experiments.py                       # about an hour on 2 CPU cores
    python benchmarks/gemma3_experiments.py --assets .gemma3_build --out /tmp/g3x --tokens 4096 --eval-tokens 256
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EARLY_LAST = 8  # pairs starting at layers 0..8 are "early", 9..16 "late" (the paper's layers 0-9 contrast)


def log(msg: str) -> None:
    print(f"[gemma3_experiments {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def folded_params(w):
    """Per feature: (W_enc column / θ, W_dec row · θ) as [F, d] tensors (the paper's folding)."""
    import torch

    th = w.threshold.float() if w.threshold is not None else torch.ones(w.W_dec.shape[0])
    return (w.W_enc.float() / th).T.contiguous(), w.W_dec.float() * th[:, None]


def perm_mse(fa, fb, perm) -> float:
    """Mean over features of the MSE between feature i's parameters and those of perm[i]."""
    import numpy as np
    import torch

    p = torch.as_tensor(np.array(perm), dtype=torch.long)
    ok = p >= 0
    ea, da = fa
    eb, db = fb
    d = ea.shape[1]
    err = (ea[ok] - eb[p[ok]]).pow(2).sum(1) + (da[ok] - db[p[ok]]).pow(2).sum(1)
    return float((err / (2 * d)).mean())


def dec_cos(wa, wb, partner):
    import numpy as np
    import torch

    da = torch.nn.functional.normalize(wa.W_dec.float(), dim=1)
    db = torch.nn.functional.normalize(wb.W_dec.float(), dim=1)
    p = np.asarray(partner)
    out = np.full(p.size, np.nan)
    ok = p >= 0
    out[ok] = (da[torch.as_tensor(np.flatnonzero(ok))] * db[torch.as_tensor(p[ok])]).sum(1).numpy()
    return out


def markdown(df, fmt: str) -> str:
    """A pandas frame as a GitHub markdown table (no tabulate dependency)."""
    import numpy as np

    d = df.reset_index() if (df.index.name or any(df.index.names)) else df

    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "–" if np.isnan(v) else fmt.format(v)
        return str(v)

    lines = ["| " + " | ".join(map(str, d.columns)) + " |", "|" + "---|" * len(d.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in d.itertuples(index=False)]
    return "\n".join(lines)


def group(layer_from: int) -> str:
    return "early (0-8)" if layer_from <= EARLY_LAST else "late (9-16)"


def save_fig(fig, out: Path, name: str) -> str:
    from saematch_nb.display.figures import save_figure

    try:
        save_figure(fig, out / f"{name}.png", width=900, height=420)
        return f"{name}.png"
    except Exception as e:  # no chromium: keep the interactive figure
        log(f"PNG export failed ({type(e).__name__}: {e}); writing HTML")
        fig.write_html(out / f"{name}.html", include_plotlyjs="cdn")
        return f"{name}.html"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", default=None, help="SAE assets (default: saematch_nb/gemma3/assets)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "gemma3"))
    ap.add_argument("--tokens", type=int, default=32768, help="held-out tokens for agreement / read-off")
    ap.add_argument("--eval-tokens", type=int, default=1024, help="tokens per (pair, method) of Eq. 5 / ΔL")
    ap.add_argument("--stages", default="fig3,criterion,agreement,eq5,persist,compose,contrast")
    args = ap.parse_args(argv)
    stages = set(args.stages.split(","))

    import numpy as np
    import pandas as pd
    import plotly.graph_objects as go
    import torch

    import saematch_nb as smn
    from saematch_nb import gemma3
    from saematch_nb.core.match import match
    from saematch_nb.core.metrics import agreement_rate, best_pearson_partner
    from saematch_nb.core.weights import as_weights

    torch.set_num_threads(max(1, min(16, os.cpu_count() or 1)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md: list[str] = []
    timings: dict[str, float] = {}

    def table(name: str, df: pd.DataFrame, title: str, fmt: str = "{:.3f}") -> None:
        df.to_csv(out / f"{name}.csv")
        md.append(f"### {title}\n\n" + markdown(df, fmt) + "\n")
        print(f"\n## {title}\n{df.to_string(float_format=lambda v: fmt.format(v))}", flush=True)

    t0 = time.time()
    bundle = gemma3.load(args.assets, device="cpu")
    ws = [as_weights(s) for s in bundle.saes]
    layers = [w.info.layer for w in ws]
    T = len(layers)
    log(f"{bundle!r} in {time.time() - t0:.1f}s")
    md.append(f"Model: Gemma 3 270M (community Q4_K_M GGUF, de-quantized, float32, CPU); SAEs: {T} × "
              f"JumpReLU width {ws[0].d_sae} on blocks.L.hook_resid_post; {len(bundle.texts)} held-out documents.\n")

    def timed(name, fn):
        t = time.time()
        r = fn()
        timings[name] = round(time.time() - t, 1)
        return r

    chains = {
        "folded": timed("match_chain folded", lambda: smn.match_chain(ws, cache=False, progress=False)),
        "unfolded": timed("match_chain unfolded", lambda: smn.match_chain(ws, cache=False, progress=False, fold=False)),
        "top-1 cosine": timed("match_chain cosine", lambda: smn.match_chain(ws, cache=False, progress=False,
                                                                             method="cosine")),
    }
    chain = chains["folded"]
    log(f"chains: {timings}")
    cp = gemma3.seed_ceiling_path(args.assets)
    wc = as_weights(str(cp)) if cp is not None else None
    cl = wc.info.layer if wc is not None else None
    ceiling = timed("match seed ceiling", lambda: match(ws[layers.index(cl)], wc)) if wc is not None else None
    pair_names = [f"{layers[t]}→{layers[t + 1]}" for t in range(T - 1)]

    # -- 1. Fig. 3 analogue -----------------------------------------------------------------------
    if "fig3" in stages:
        fp = [folded_params(w) for w in ws]
        up = [(w.W_enc.float().T.contiguous(), w.W_dec.float()) for w in ws]
        rows = []
        for t in range(T - 1):
            ident = np.arange(ws[t].d_sae)
            pf, pu = chains["folded"].pairs[t].permutation, chains["unfolded"].pairs[t].permutation
            rows.append({"pair": pair_names[t],
                         "folded": perm_mse(fp[t], fp[t + 1], pf), "unfolded": perm_mse(fp[t], fp[t + 1], pu),
                         "vanilla (identity)": perm_mse(fp[t], fp[t + 1], ident),
                         "raw: folded perm": perm_mse(up[t], up[t + 1], pf),
                         "raw: unfolded perm": perm_mse(up[t], up[t + 1], pu),
                         "same permutation": float((pf == pu).mean())})
        df = pd.DataFrame(rows).set_index("pair")
        table("fig3_mse", df, "Matched MSE per pair on folded parameters (the paper's Fig. 3), and on raw "
              "parameters; share of features both permutations send to the same partner", "{:.4g}")
        th = pd.DataFrame([{"layer": L, "theta_median": float(w.threshold.median()),
                            "theta_q90_over_q10": float(w.threshold.quantile(0.9) / w.threshold.quantile(0.1)),
                            "W_enc_col_norm_median": float(w.W_enc.norm(dim=0).median())}
                           for L, w in zip(layers, ws)]).set_index("layer")
        table("thresholds", th, "Thresholds per layer (raw scale): they carry the residual stream's growth", "{:.4g}")
        fig = go.Figure()
        for c in ("folded", "unfolded", "vanilla (identity)"):
            fig.add_scatter(x=df.index, y=df[c], mode="lines+markers", name=c)
        fig.update_layout(title="Gemma 3 270M: matched MSE on folded parameters", yaxis_type="log",
                          xaxis_title="pair", yaxis_title="MSE (folded)", template="plotly_white")
        md.append(f"![fig3]({save_fig(fig, out, 'fig3_mse')})\n")

    # -- 2. criterion -----------------------------------------------------------------------------
    if "criterion" in stages:
        rows = []
        for name in ("folded", "unfolded"):
            for t, lm in enumerate(chains[name].pairs):
                cos = dec_cos(ws[t], ws[t + 1], lm.partner)
                rows.append({"matching": name, "pair": pair_names[t], "accepted": lm.matched_fraction,
                             "expected_false": lm.expected_false_matches, "threshold": lm.threshold,
                             "partner_cos_median": float(np.nanmedian(cos)),
                             "accepted_cos_median": (float(np.nanmedian(cos[lm.matched])) if lm.matched.any()
                                                     else np.nan)})
        if ceiling is not None:
            cos = dec_cos(ws[layers.index(cl)], wc, ceiling.partner)
            rows.append({"matching": "folded", "pair": f"{cl}≡{cl} (2 seeds)", "accepted": ceiling.matched_fraction,
                         "expected_false": ceiling.expected_false_matches, "threshold": ceiling.threshold,
                         "partner_cos_median": float(np.nanmedian(cos)),
                         "accepted_cos_median": float(np.nanmedian(cos[ceiling.matched]))})
        table("criterion", pd.DataFrame(rows).set_index(["matching", "pair"]),
              "Calibrated criterion per pair: accepted fraction, expected false matches, decoder cosine of partners")

    acts = None
    tmp = tempfile.TemporaryDirectory()
    if stages & {"agreement", "persist", "contrast"}:
        acts = timed("collect_activations", lambda: smn.collect_activations(
            bundle.model, list(bundle.texts), layers, cache_dir=tmp.name, progress=False, max_tokens=args.tokens))
        log(f"activations: {acts.n_tokens} tokens x {T} layers in {timings['collect_activations']}s")

    # -- 3. agreement with the data ----------------------------------------------------------------
    agree = None
    if "agreement" in stages:
        parts = []
        for name, ch in chains.items():
            co = timed(f"coactivation {name}", lambda ch=ch: smn.coactivation(ch, acts, progress=False))
            df = co.to_pandas()
            df["pair"] = df.layer_from.astype(str) + "→" + df.layer_to.astype(str)
            df.insert(0, "matching", name)
            parts.append(df)
        agree = pd.concat(parts, ignore_index=True)
        cols = ["matching", "pair", "n_active", "n_accepted", "agreement", "agreement_accepted", "pearson_accepted",
                "pearson_random"]
        table("agreement", agree[cols].set_index(["matching", "pair"]),
              "Data-free partner = the data's best-Pearson partner (over active / over accepted features)")
        wide = agree.pivot(index="pair", columns="matching", values="agreement").reindex(pair_names)
        fig = go.Figure()
        for c in wide.columns:
            fig.add_scatter(x=wide.index, y=wide[c], mode="lines+markers", name=c)
        fig.update_layout(title="Agreement with the data's best-Pearson partner (active features)",
                          xaxis_title="pair", yaxis_title="agreement", template="plotly_white", yaxis_range=[0, 1])
        md.append(f"![agreement]({save_fig(fig, out, 'agreement')})\n")
        if ceiling is not None:
            i = layers.index(cl)
            x = torch.cat([b for b in acts.batches(cl, 8192)], 0).float()
            fa = torch.cat([as_weights(ws[i]).encode(x[j:j + 4096]) for j in range(0, len(x), 4096)])
            fb = torch.cat([wc.encode(x[j:j + 4096]) for j in range(0, len(x), 4096)])
            data_partner, _ = best_pearson_partner(fa, fb)
            active = (fa > 0).any(0).numpy() & (fb > 0).any(0).numpy()[np.clip(ceiling.partner, 0, None)]
            sc = {"pair": f"{cl}≡{cl} (2 seeds)",
                  "agreement": agreement_rate(ceiling.partner, data_partner, mask=active),
                  "agreement_accepted": agreement_rate(ceiling.partner, data_partner, mask=active & ceiling.matched),
                  "n_active": int(active.sum()), "n_accepted": int((active & ceiling.matched).sum())}
            table("seed_ceiling", pd.DataFrame([sc]).set_index("pair"),
                  "Seed ceiling: two SAEs of one layer (different seeds), folded matching vs the data")

    # -- 4. Eq. 5 -----------------------------------------------------------------------------------
    if "eq5" in stages:
        ev = timed("evaluate", lambda: smn.evaluate(chain, bundle.model, list(bundle.texts), progress=True,
                                                   max_tokens=args.eval_tokens))
        order = list(dict.fromkeys(ev.method))
        ev["pair"] = ev.layer_from.astype(str) + "→" + ev.layer_to.astype(str)
        ev.to_csv(out / "eq5_long.csv", index=False)
        table("eq5_ev",
              ev.pivot(index="pair", columns="method", values="explained_variance")[order].reindex(pair_names),
              f"Eq. 5: explained variance of x_(t+1), residual mean removed "
              f"({int(ev.n_tokens.iloc[0])} tokens per cell)")
        table("eq5_dloss", ev.pivot(index="pair", columns="method", values="delta_loss")[order].reindex(pair_names),
              f"ΔL (nats/token, clean loss {ev.clean_loss.iloc[0]:.3f})", "{:+.3f}")

    # -- 5. persistence -----------------------------------------------------------------------------
    if "persist" in stages:
        from saematch_nb.analysis.evaluate import read_off_persistence

        K = min(8, T - 1)
        ro = timed("read_off_persistence", lambda: read_off_persistence(chain, acts, progress=False, max_k=K))
        life = chain.persistence()
        rows = []
        for k in range(1, K + 1):
            r = {"k": k}
            starts = [L for L in layers if L + k <= layers[-1]]
            r["chain (mean share)"] = float(np.mean([(life.loc[L].lifetime >= k).mean() for L in starts]))
            r["read-off (mean share)"] = float(np.mean([ro.loc[(L, k), "fraction"] for L in starts
                                                        if (L, k) in ro.index]))
            for L in (0, 4, 8, 12):
                if L + k <= layers[-1]:
                    r[f"L{L} chain"] = float((life.loc[L].lifetime >= k).mean())
                    r[f"L{L} read-off"] = float(ro.loc[(L, k), "fraction"]) if (L, k) in ro.index else np.nan
            rows.append(r)
        pdf = pd.DataFrame(rows).set_index("k")
        table("persistence", pdf, "Persistence: share of a layer's features still there k layers later — "
              "chain (accepted partner at every step) vs read-off (the encoder still reads it, above the null's 99 %)")
        mean_life = float(np.mean([life.loc[L].lifetime.mean() for L in layers[:-1]]))
        md.append("Mean chain lifetime (accepted steps forward, censored at the last layer): "
                  f"{mean_life:.2f} layers.\n")
        fig = go.Figure()
        fig.add_scatter(x=pdf.index, y=pdf["chain (mean share)"], name="chain (accepted)", mode="lines+markers")
        fig.add_scatter(x=pdf.index, y=pdf["read-off (mean share)"], name="read-off (data)", mode="lines+markers")
        fig.update_layout(title="Persistence over depth: share of features still present k layers later",
                          xaxis_title="k (layers later)", yaxis_title="share", template="plotly_white")
        md.append(f"![persistence]({save_fig(fig, out, 'persistence')})\n")

    # -- 6. composition ------------------------------------------------------------------------------
    if "compose" in stages:
        rows = []
        for k in (2, 3):
            for t in range(0, T - k):
                a, b = layers[t], layers[t + k]
                direct = match(ws[t], ws[t + k])
                rows.append({"k": k, "from": a, "to": b,
                             "raw composed = direct": chain.agreement(a, b, direct, raw=True),
                             "accepted composed = direct": chain.agreement(a, b, direct),
                             "direct accepted": direct.matched_fraction,
                             "composed path share": float((chain.compose(a, b) >= 0).mean())})
        if rows:
            cdf = pd.DataFrame(rows).set_index(["k", "from", "to"])
            table("composition", cdf, "Hypothesis 3: composed permutations vs the direct match t→t+k")
            table("composition_by_k", cdf.groupby(level="k").mean(),
                  "Hypothesis 3, means over start layers")

    # -- 7. early vs late ----------------------------------------------------------------------------
    if "contrast" in stages:
        rows = []
        for t, name in enumerate(pair_names):
            r = {"pair": name, "group": group(layers[t])}
            if agree is not None:
                for m in ("folded", "unfolded", "top-1 cosine"):
                    row = agree[(agree.matching == m) & (agree.pair == name)]
                    r[f"agreement {m}"] = float(row.agreement.iloc[0])
                    r[f"agreement_accepted {m}"] = float(row.agreement_accepted.iloc[0])
            r["accepted folded"] = chains["folded"].pairs[t].matched_fraction
            r["accepted unfolded"] = chains["unfolded"].pairs[t].matched_fraction
            r["same permutation"] = float((chains["folded"].pairs[t].permutation ==
                                           chains["unfolded"].pairs[t].permutation).mean())
            rows.append(r)
        cdf = pd.DataFrame(rows)
        table("contrast", cdf.groupby("group").mean(numeric_only=True), "Early vs late pairs (means over pairs)")

    md.append("Timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()) + "\n")
    (out / "results.md").write_text("\n".join(md))
    log(f"wrote {out / 'results.md'}; timings {timings}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
