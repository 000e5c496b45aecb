"""``python -m saematch_nb.demo --out out``: match the demo's SAE chain, print a summary, write out/report.html.

Prints, per adjacent pair, the matched MSE (on folded parameters) and how many features the
calibrated criterion accepts as the same feature in the next layer, with its expected number of
false matches and the decoder cosine of the partners; the seed ceiling (two SAEs of one layer, two
seeds) next to them. ``--check`` adds unfolded matching and the identity permutation as baselines
and the explained variance of the next-hidden-state approximation (docs/DEMO.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from .._atomic import atomic_write


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


def _dec_cos(wa, wb, partner):
    """Cosine of each feature's decoder row with its partner's (NaN without partner)."""
    import numpy as np
    import torch

    da = torch.nn.functional.normalize(wa.W_dec, dim=1)
    db = torch.nn.functional.normalize(wb.W_dec, dim=1)
    p = np.asarray(partner)
    out = np.full(p.size, np.nan)
    ok = p >= 0
    out[ok] = (da[torch.as_tensor(np.flatnonzero(ok))] * db[torch.as_tensor(p[ok])]).sum(1).numpy()
    return out


def criterion_table(chain, weights, ceiling=None) -> "object":
    """Per pair: the criterion's verdict and its error rate, and the decoder cosine of the
    partners; with ``ceiling`` = (layer, LayerMatch of the same layer's two seeds), that row too."""
    import numpy as np
    import pandas as pd

    rows = []
    for t, lm in enumerate(chain.pairs):
        cos = _dec_cos(weights[t], weights[t + 1], lm.partner)
        rows.append({"pair": f"{chain.layers[t]}→{chain.layers[t + 1]}", "matched": int(lm.matched.sum()),
                     "of": lm.n_a, "matched_fraction": lm.matched_fraction,
                     "expected_false": lm.expected_false_matches, "threshold": lm.threshold,
                     "partner_cos_median": float(np.nanmedian(cos)),
                     "matched_cos_median": float(np.nanmedian(cos[lm.matched])) if lm.matched.any() else np.nan})
    if ceiling is not None:
        layer, lm, wa, wb = ceiling
        cos = _dec_cos(wa, wb, lm.partner)
        rows.append({"pair": f"{layer}≡{layer} (2 seeds)", "matched": int(lm.matched.sum()), "of": lm.n_a,
                     "matched_fraction": lm.matched_fraction, "expected_false": lm.expected_false_matches,
                     "threshold": lm.threshold, "partner_cos_median": float(np.nanmedian(cos)),
                     "matched_cos_median": float(np.nanmedian(cos[lm.matched])) if lm.matched.any() else np.nan})
    return pd.DataFrame(rows).set_index("pair")


def longest_lived(chain, n: int = 3) -> list[int]:
    """The ``n`` features of the chain's first layer that keep an accepted partner longest (ties:
    lowest matched MSE): what to trace first, chosen by persistence, not by hand."""
    import numpy as np

    life = chain.persistence().loc[chain.layers[0]].lifetime.to_numpy()
    order = np.lexsort((chain.pairs[0].mse, -life))
    return [int(i) for i in order[:n]]


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


def _positive_int(text: str) -> int:
    """argparse type: 0 tokens would end in an empty table and exit 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of tokens, got {v}")
    return v


def out_folder_problem(out: Path) -> str | None:
    """Why ``out`` cannot take report.html (None: it can). Checked before the run, not after it:
    the folder is created and a probe file written and removed."""
    try:
        if out.exists() and not out.is_dir():
            return f"{out} is an existing file, not a folder; give a folder (it is created if missing)"
        up = out
        while not up.exists() and up.parent != up:
            up = up.parent
        if up.exists() and not up.is_dir():
            return f"{up} is a file, so no folder {out} can be made under it; give another --out"
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-probe-"):
            pass
    except OSError as e:
        return f"{out} cannot be written ({type(e).__name__}: {e.strerror or e}); give a writable folder"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m saematch_nb.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out", help="folder for report.html, created if missing and checked "
                                                 "before the run (default: out)")
    ap.add_argument("--assets", default=None, help="assets folder (default: the shipped one)")
    ap.add_argument("--max-tokens", type=_positive_int, default=8192, help="tokens for the hidden-state check")
    ap.add_argument("--check", action="store_true",
                    help="also measure the baselines (unfolded / identity matching) and the next-hidden-state "
                         "approximation (several minutes on 2 CPU cores)")
    args = ap.parse_args(argv)

    out = Path(args.out)
    problem = out_folder_problem(out)
    if problem:
        print(f"saematch_nb.demo: --out: {problem}", file=sys.stderr)
        return 2

    from . import MissingAssetsError, load

    t0 = time.perf_counter()
    try:
        bundle = load(args.assets)
        ceiling_sae = _ceiling_weights(args.assets)  # read now: a broken file is known before the run
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
        from ..core.match import match

        weights = [chain.stack.weights(L) for L in chain.layers]  # the chain's own, converted once
        ceiling = None
        if ceiling_sae is not None:
            wc = ceiling_sae
            layer = wc.info.layer
            ceiling = (layer, match(weights[layer], wc), weights[layer], wc)
        crit_df = criterion_table(chain, weights, ceiling)
        print(f"\nSAE Match criterion (matched = accepted as the same feature; null false-match rate "
              f"{chain.pairs[0].calibration.get('alpha', float('nan')):.0%}; expected_false = features "
              "without partner expected among the matched):")
        print(crit_df.to_string(float_format=lambda v: f"{v:.3f}"))
        if ceiling is not None:
            print(f"\n(last row: the seed ceiling, two SAEs of layer {ceiling[0]} trained with different seeds:"
                  " how far any matcher can get)")
        ev = None
        if args.check:
            from ..analysis.evaluate import evaluate

            ev = evaluate(chain, bundle.model, list(bundle.texts),
                          methods=["folded+matched", "unfolded+matched", "identity"],
                          max_tokens=args.max_tokens, progress=True)
            wide = ev.pivot_table(index=["layer_from", "layer_to"], columns="method",
                                  values="explained_variance")
            print("\nNext-hidden-state approximation, explained variance (higher is better):")
            print(wide.to_string())

    from ..display import html as dh

    # a few traces: the longest-lived features of layer 0, followed through every layer
    traces = [chain.trace(chain.layers[0], i) for i in longest_lived(chain, 3)]
    sections = [("Demo SAEs", sae_table(bundle).to_html(float_format=lambda v: f"{v:.4g}")),
                ("Matched MSE on folded parameters", pairs.to_html(float_format=lambda v: f"{v:.4g}")),
                ("SAE Match criterion per pair", crit_df.to_html(float_format=lambda v: f"{v:.3f}"))]
    if ev is not None:
        sections.append(("Next-hidden-state explained variance", wide.to_html(float_format=lambda v: f"{v:.4f}")))
    page = dh.report_html(chain, traces, title="saematch_nb demo: SAE Match on a 6-layer toy model",
                          intro=(f"{bundle.n_layers} JumpReLU SAEs of {bundle.saes[0].cfg.d_sae} features on "
                                 "blocks.{L}.hook_resid_post of a small model trained on Shakespeare, Milton, "
                                 "the King James Bible and the Jargon File."), sections=sections)
    try:  # written whole or not at all (the folder was checked before the run, but may have gone)
        atomic_write(out / "report.html", page)
    except OSError as e:
        print(f"saematch_nb.demo: --out: cannot write {out / 'report.html'} ({type(e).__name__}: {e})",
              file=sys.stderr)
        return 1
    print(f"\nwrote {out / 'report.html'} in {time.perf_counter() - t0:.1f}s")
    return 0


def _ceiling_weights(assets):
    """The seed-ceiling SAE's weights (None in builds without one); a broken one is a
    BrokenAssetsError naming its folder."""
    from ..core.weights import as_weights
    from . import BrokenAssetsError, seed_ceiling_path

    cp = seed_ceiling_path(assets)
    if cp is None:
        return None
    try:
        w = as_weights(str(cp))
    except Exception as e:
        raise BrokenAssetsError(f"the seed-ceiling SAE {cp} cannot be loaded ({type(e).__name__}: {e}); "
                                "rebuild the assets (docs/DEMO.md)") from e
    if w.info.layer is None:
        raise BrokenAssetsError(f"the seed-ceiling SAE {cp} does not say which layer it reads (cfg.json "
                                "metadata.hook_name); rebuild the assets (docs/DEMO.md)")
    return w


if __name__ == "__main__":
    sys.exit(main())
