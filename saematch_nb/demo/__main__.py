"""``python -m saematch_nb.demo --out out``: match the demo's SAE chain, print a summary, write out/report.html.

Also measures what makes the demo's matching meaningful (docs/DEMO.md): per adjacent pair, the
matched MSE (on folded parameters) of folded matching, unfolded matching and the identity
permutation, and the explained variance of the next-hidden-state approximation (METHOD.md §1
Eq. 5) for folded matching against the identity permutation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def pair_table(paths, chain) -> "object":
    """One row per adjacent pair: matched MSE of folded / unfolded / identity (all on folded params)."""
    import pandas as pd

    from ..core.match import match

    rows = []
    for t, lm in enumerate(chain.pairs):
        unf = match(paths[t], paths[t + 1], fold=False)
        ident = match(paths[t], paths[t + 1], method="identity")
        rows.append({"pair": f"{chain.layers[t]}→{chain.layers[t + 1]}", "mse_folded": float(lm.mse.mean()),
                     "mse_unfolded": float(unf.mse.mean()), "mse_identity": float(ident.mse.mean()),
                     "matched_fraction": lm.matched_fraction})
    return pd.DataFrame(rows).set_index("pair")


def sae_table(bundle) -> "object":
    """Per layer: mean θ next to the residual-stream norm (from the build's held-out measurement)."""
    import pandas as pd

    rows = []
    saes = bundle.metrics.get("saes", {})
    for layer, sae in enumerate(bundle.saes):
        m = saes.get(str(layer), {})
        rows.append({"layer": layer, "mean_theta": float(sae.threshold.detach().mean()),
                     "resid_norm": m.get("resid_norm"), "explained_variance": m.get("explained_variance"),
                     "l0": m.get("l0"), "dead_fraction": m.get("dead_fraction")})
    return pd.DataFrame(rows).set_index("layer")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m saematch_nb.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out", help="folder for report.html (default: out)")
    ap.add_argument("--assets", default=None, help="assets folder (default: the shipped one)")
    ap.add_argument("--max-tokens", type=int, default=8192, help="tokens for the hidden-state check")
    ap.add_argument("--check", action="store_true",
                    help="also measure the baselines (unfolded / identity matching) and the next-hidden-state "
                         "approximation (several minutes on 2 CPU cores)")
    args = ap.parse_args(argv)

    from . import MissingAssetsError, load

    t0 = time.perf_counter()
    try:
        bundle = load(args.assets)
    except MissingAssetsError as e:
        print(f"saematch_nb.demo: {e}", file=sys.stderr)
        return 1
    import pandas as pd

    from .. import match_chain
    from . import sae_paths

    paths = [str(p) for p in sae_paths(args.assets)]
    print(bundle)
    src = bundle.handles if bundle.handles is not None else paths
    chain = match_chain(src, cache=False, progress=True)
    with pd.option_context("display.width", 140, "display.max_columns", 20, "display.precision", 4):
        print("\nSAEs (mean θ grows with the residual-stream norm, so folding matters):")
        print(sae_table(bundle).to_string())
        print("\nMatched MSE on folded parameters (lower is better; --check adds the baselines):")
        pairs = pair_table(paths, chain) if args.check else chain.summary()[
            ["layer_a", "layer_b", "mse_mean", "mse_median", "matched_fraction"]]
        print(pairs.to_string())
        ev = None
        if args.check:
            from ..sources.evaluate import evaluate

            ev = evaluate(chain, bundle.model, list(bundle.texts), saes=paths,
                          methods=["folded+matched", "unfolded+matched", "identity"],
                          max_tokens=args.max_tokens, progress=True)
            wide = ev.pivot_table(index=["layer_from", "layer_to"], columns="method",
                                  values="explained_variance")
            print("\nNext-hidden-state approximation, explained variance (higher is better):")
            print(wide.to_string())

    from ..display import html as dh

    # a few traces: the best-matched features of layer 0, followed through every layer
    lm0 = chain.pairs[0]
    order = lm0.mse.argsort()[:3].tolist()
    traces = [chain.trace(chain.layers[0], int(i)) for i in order]
    sections = [("Demo SAEs", sae_table(bundle).to_html(float_format=lambda v: f"{v:.4g}")),
                ("Matched MSE on folded parameters", pairs.to_html(float_format=lambda v: f"{v:.4g}"))]
    if ev is not None:
        sections.append(("Next-hidden-state explained variance", wide.to_html(float_format=lambda v: f"{v:.4f}")))
    page = dh.report_html(chain, traces, title="saematch_nb demo: SAE Match on a 6-layer toy model",
                          intro=(f"{bundle.n_layers} JumpReLU SAEs of {bundle.saes[0].cfg.d_sae} features on "
                                 "blocks.{L}.hook_resid_post of a small model trained on Shakespeare, Milton, "
                                 "the King James Bible and the Jargon File."), sections=sections)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.html").write_text(page, encoding="utf-8")
    print(f"\nwrote {out / 'report.html'} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
