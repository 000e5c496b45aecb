#!/usr/bin/env python
"""The match criterion on planted families it was not tuned on, next to the rules a user would
otherwise pick, in one run.

Families: every family of ``saematch_nb.core.synthetic_families.FAMILIES`` at ``--scale`` times
its CI sizes, and ``--draws`` *held-out* families of each kind of issue #18, whose parameters are
drawn independently (one draw per family, from its own seed, printed in the row label) from the
issue's ranges and used by no test:

- ``held-drift``: both layers' features around shared centres (32-512 of them, member cosine
  0.4-0.8), 20-35% of A's features fresh, a stable share 0.5-0.95 of the persisting ones turned
  1-4°, the rest drifting by a lower end in [5, 15]° to an upper end in [20, 40]°;
- ``held-null``: the same shared-centre structure, nothing persists (``null=True``).

Each held-out family also draws n in [768, 1536] and d_in in {64, 96, 128} (times ``--scale``
for n). Every family runs on ``--seeds`` seeds (pairs 100, 101, ...).

Per family (mean over seeds; the worst seed for accuracy):

- ``acc``: accuracy of the bijective match: ``matched`` is True exactly where the assigned
  partner is the planted one (persisting features, correctly assigned);
- ``prec`` / ``rec``: precision and recall of the accepted persisting features (accepted and
  correct / accepted; accepted and correct / persisting);
- ``fresh acc``: share of A's fresh (dying) features that are accepted;
- ``kept`` / ``fresh ptn``: partial mode (``allow_unmatched=True``): persisting features kept with
  their true partner; fresh features given any partner;
- ``sep``: seeds on which the true partners' direction distances (99th percentile) lie below the
  fresh features' nearest-candidate distances (1st percentile); the partial-mode targets apply on
  those seeds;
- ``accepted``: matched fraction (on null families: the false-match rate, target <= 3·alpha);
- ``exp`` / ``act`` / ``ratio``: ``LayerMatch.expected_false_matches`` and the actual number of
  accepted matches that are not the planted partner, summed over seeds, and exp / act;
- ``s/match``: seconds per bijective ``match`` call (criterion included).

The diagnostics table gives the same expected / actual count for the partial mode (``exp_p``,
``act_p``: accepted partners that are not the planted one).

Alternatives on the same bijective assignment (accuracy, after the criterion's columns): a fixed
decoder-cosine cut (cos >= 0.7, a common choice), mutual nearest neighbours (on the folded cost),
and the pre-v3 releases' rule (per-row extreme-value score <= -1.4). A diagnostics table follows
(threshold, the separability quantiles, pi0, accept_rate, duplicates dropped), then one line per
target saying whether it is met.

    python benchmarks/bench_criterion.py              # 4 seeds, CI sizes x 2, 4 held-out draws each
    python benchmarks/bench_criterion.py --quick      # 2 seeds, CI sizes
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saematch_nb import match  # noqa: E402
from saematch_nb.core import criterion as crit  # noqa: E402
from saematch_nb.core.cost import dense_cost, feature_matrix  # noqa: E402
from saematch_nb.core.synthetic_families import FAMILIES, FamilySpec, family_pair  # noqa: E402

ALT = ("cos>=0.7", "mutual NN", "old z<=-1.4")


def accuracy(matched, partner, truth) -> float:
    correct = (partner == truth) & (truth >= 0)
    return float(np.mean(matched == correct))


def separable(a, b, truth) -> tuple[bool, float, float]:
    """(separable?, q99 of true-partner distance, q01 of fresh rows' nearest distance)."""
    X, Y = feature_matrix(a), feature_matrix(b)
    parts = crit.part_slices("encoder+decoder", a.d_in)
    alive = truth >= 0
    if not alive.any():
        return True, float("nan"), float("nan")
    s_true = crit.direction_distance(X, Y, np.where(alive, truth, -1), parts)[alive]
    if not (~alive).any():
        return True, float(np.quantile(s_true, 0.99)), float("nan")
    _, s_nn = crit.nearest_direction(crit.directions(X[torch.as_tensor(np.flatnonzero(~alive))], parts), Y, parts)
    q99, q01 = float(np.quantile(s_true, 0.99)), float(np.quantile(s_nn, 0.01))
    return q99 < q01, q99, q01


def baselines(a, b, lm) -> dict[str, np.ndarray]:
    """matched flags of the alternative rules on lm's (bijective) assignment."""
    p = lm.partner
    da = torch.nn.functional.normalize(a.W_dec, dim=1)
    db = torch.nn.functional.normalize(b.W_dec, dim=1)
    cos = (da * db[torch.as_tensor(p)]).sum(1).numpy()
    X, Y = feature_matrix(a), feature_matrix(b)
    C = dense_cost(X, Y)
    C = C.numpy() if isinstance(C, torch.Tensor) else np.asarray(C)
    mutual = (C.argmin(1) == p) & (C.argmin(0)[p] == np.arange(len(p)))
    return {"cos>=0.7": cos >= 0.7, "mutual NN": mutual, "old z<=-1.4": old_rule(X, Y, p, a.d_in)}


def old_rule(X, Y, p, d_in, n_sample=512, seed=0) -> np.ndarray:
    """The pre-v3 releases' criterion: per-row null of the direction distance from 512 random
    columns (median, 1.4826 MAD), score = (s - loc) / (scale sqrt(2 ln n_b)) <= -1.4."""
    parts = crit.part_slices("encoder+decoder", d_in)
    rng = np.random.default_rng(seed)
    cols = np.sort(rng.choice(Y.shape[0], size=min(n_sample, Y.shape[0]), replace=False))
    S = 1.0 - (crit.directions(X, parts) @ crit.directions(Y[torch.as_tensor(cols)], parts).T).double().numpy()
    loc = np.median(S, axis=1)
    scale = np.maximum(1.4826 * np.median(np.abs(S - loc[:, None]), axis=1), 1e-6)
    s = crit.direction_distance(X, Y, p, parts)
    z = (s - loc) / (scale * math.sqrt(2 * math.log(max(Y.shape[0], 2))))
    return z <= -1.4


def held_out(k: int, null: bool, base_seed: int) -> tuple[str, FamilySpec]:
    """Held-out family number k of the persisting (null=False) or null kind: parameters drawn from
    issue #18's ranges with their own generator (seed base_seed + k, + 500 for the null kind)."""
    rng = np.random.default_rng(base_seed + k + (500 if null else 0))
    centres = int(round(math.exp(rng.uniform(math.log(32), math.log(512)))))  # log-uniform 32-512
    cos = float(rng.uniform(0.4, 0.8))
    n = int(rng.integers(768, 1537))
    d = int(rng.choice([64, 96, 128]))
    if null:
        name = f"held-null#{k} c{centres} cos{cos:.2f}"
        return name, FamilySpec(kind="drift", n=n, d_in=d, shared_centres=centres, member_cos=cos, null=True,
                                name=name)
    fresh = float(rng.uniform(0.20, 0.35))
    stable = float(rng.uniform(0.5, 0.95))
    lo, hi = float(rng.uniform(5, 15)), float(rng.uniform(20, 40))
    name = f"held-drift#{k} c{centres} cos{cos:.2f} st{stable:.2f} dr{lo:.0f}-{hi:.0f} fr{fresh:.2f}"
    return name, FamilySpec(kind="drift", n=n, d_in=d, shared_centres=centres, member_cos=cos,
                            fresh_fraction=fresh, stable_share=stable, stable_deg=(1.0, 4.0), drift_deg=(lo, hi),
                            name=name)


def run_pair(spec: FamilySpec, seed: int, alpha: float, with_baselines: bool) -> dict:
    a, b, truth = family_pair(spec, seed=seed)
    t0 = time.perf_counter()
    lm = match(a, b, alpha=alpha)
    t1 = time.perf_counter()
    lp = match(a, b, alpha=alpha, allow_unmatched=True)
    t2 = time.perf_counter()
    alive = truth >= 0
    correct = (lm.partner == truth) & alive
    acc_ok = lm.matched & correct
    n_acc = int(lm.matched.sum())
    cal = lm.calibration
    r = {"seed": seed, "n": spec.n, "n_b": spec.n_b or spec.n, "d_in": spec.d_in, "null": spec.null,
         "acc": accuracy(lm.matched, lm.partner, truth), "accepted": lm.matched_fraction,
         "prec": acc_ok.sum() / n_acc if n_acc and alive.any() else float("nan"),
         "rec": acc_ok.sum() / alive.sum() if alive.any() else float("nan"),
         "fresh_acc": float(lm.matched[~alive].mean()) if (~alive).any() else float("nan"),
         "kept": float(np.mean(lp.partner[alive] == truth[alive])) if alive.any() else float("nan"),
         "fresh_ptn": float(np.mean(lp.partner[~alive] >= 0)) if (~alive).any() else float("nan"),
         "partial_acc": float(np.mean(lp.partner >= 0)),
         "exp": float(lm.expected_false_matches), "act": int((lm.matched & ~correct).sum()),
         "exp_p": float(lp.expected_false_matches), "act_p": int((lp.matched & (lp.partner != truth)).sum()),
         "thr": float(lm.threshold), "pi0": float(cal.get("pi0", float("nan"))),
         "accept_rate": float(cal.get("accept_rate", float("nan"))),
         "n_dup": int(cal.get("n_duplicates", 0)), "t_match": t1 - t0, "t_partial": t2 - t1}
    r["separable"], r["q99_true"], r["q01_fresh"] = separable(a, b, truth)
    if with_baselines:
        for k, m in baselines(a, b, lm).items():
            r["acc " + k] = accuracy(m, lm.partner, truth)
    return r


def nanmean(v) -> float:
    v = [x for x in v if x == x]
    return float(np.mean(v)) if v else float("nan")


def summarise(name: str, rs: list[dict], alpha: float, with_baselines: bool) -> dict:
    sep = [r for r in rs if r["separable"] and not r["null"]]
    exp, act = sum(r["exp"] for r in rs), sum(r["act"] for r in rs)
    exp_p, act_p = sum(r["exp_p"] for r in rs), sum(r["act_p"] for r in rs)
    s = {"family": name, "n": rs[0]["n"], "n_b": rs[0]["n_b"], "d": rs[0]["d_in"],
         "acc": nanmean(r["acc"] for r in rs), "acc_min": min(r["acc"] for r in rs),
         "prec": nanmean(r["prec"] for r in rs), "rec": nanmean(r["rec"] for r in rs),
         "fresh_acc": nanmean(r["fresh_acc"] for r in rs),
         "kept": nanmean(r["kept"] for r in rs), "fresh_ptn": nanmean(r["fresh_ptn"] for r in rs),
         "sep": f"{sum(bool(r['separable']) for r in rs)}/{len(rs)}" if not rs[0]["null"] else "-",
         "accepted": nanmean(r["accepted"] for r in rs), "accepted_max": max(r["accepted"] for r in rs),
         "partial_acc": nanmean(r["partial_acc"] for r in rs),
         "exp": exp, "act": act, "ratio": exp / act if act else float("nan"),
         "exp_p": exp_p, "act_p": act_p, "ratio_p": exp_p / act_p if act_p else float("nan"),
         "s/match": nanmean(r["t_match"] for r in rs), "s/partial": nanmean(r["t_partial"] for r in rs),
         "thr": nanmean(r["thr"] for r in rs), "q99_true": nanmean(r["q99_true"] for r in rs),
         "q01_fresh": nanmean(r["q01_fresh"] for r in rs), "pi0": nanmean(r["pi0"] for r in rs),
         "accept_rate": nanmean(r["accept_rate"] for r in rs), "n_dup": nanmean(r["n_dup"] for r in rs),
         "null": rs[0]["null"]}
    if with_baselines:
        for k in ALT:
            s[k] = nanmean(r["acc " + k] for r in rs)
    # targets
    miss = []
    if s["acc"] < 0.95:
        miss.append("acc")
    s["sep_kept"] = nanmean(r["kept"] for r in sep)
    s["sep_fresh_ptn"] = nanmean(r["fresh_ptn"] for r in sep)
    if sep and (s["sep_kept"] < 0.98 or (s["sep_fresh_ptn"] == s["sep_fresh_ptn"] and s["sep_fresh_ptn"] > 0.03)):
        miss.append("partial")
    if s["null"] and s["accepted"] > 3 * alpha:
        miss.append("null")
    if act >= 10 and not (act / 2 <= exp <= 2 * act):
        miss.append("expected")
    if act_p >= 10 and not (act_p / 2 <= exp_p <= 2 * act_p):
        miss.append("expected(partial)")
    s["miss"] = ",".join(miss) or "-"
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--scale", type=float, default=2.0, help="multiply the families' CI widths")
    ap.add_argument("--draws", type=int, default=4, help="held-out parameter draws of each kind")
    ap.add_argument("--draw-seed", type=int, default=18_000, help="seed of the held-out parameter draws")
    ap.add_argument("--quick", action="store_true", help="2 seeds at CI sizes")
    ap.add_argument("--alpha", type=float, default=crit.DEFAULT_ALPHA)
    ap.add_argument("--no-baselines", action="store_true", help="skip the alternative rules' columns")
    ap.add_argument("--families", nargs="*", default=None, help="run only these named families (and held-out)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.scale = 2, 1.0
    with_baselines = not args.no_baselines
    specs: list[tuple[str, FamilySpec]] = []
    for name, spec in FAMILIES.items():
        if args.families is None or name in args.families:
            specs.append((name, spec))
    for null in (False, True):
        for k in range(args.draws):
            specs.append(held_out(k, null, args.draw_seed))
    t_start = time.perf_counter()
    summaries = []
    for name, spec in specs:
        spec = replace(spec, n=int(spec.n * args.scale),
                       n_b=None if spec.n_b is None else int(spec.n_b * args.scale))
        rs = [run_pair(spec, 100 + s, args.alpha, with_baselines) for s in range(args.seeds)]
        summaries.append(summarise(name, rs, args.alpha, with_baselines))
        print(f"  {name}: acc {summaries[-1]['acc']:.4f} ({time.perf_counter() - t_start:.0f} s)",
              file=sys.stderr, flush=True)
    secs = time.perf_counter() - t_start
    df = pd.DataFrame(summaries).set_index("family")

    print(f"criterion v{crit.CRITERION_VERSION} on planted families: alpha {args.alpha}, {args.seeds} seeds, "
          f"widths x{args.scale:g}, {args.draws} held-out draws of each kind (draw seed {args.draw_seed}), "
          f"{secs:.0f} s\n")
    main_cols = ["n", "d", "acc", "acc_min", "prec", "rec", "fresh_acc", "kept", "fresh_ptn", "sep", "accepted",
                 "exp", "act", "ratio", "s/match"] + (list(ALT) if with_baselines else []) + ["miss"]
    fmt = {c: "{:.4f}".format for c in ("acc", "acc_min", "prec", "rec", "fresh_acc", "kept", "fresh_ptn",
                                        "accepted") + (ALT if with_baselines else ())}
    fmt.update({"exp": "{:.1f}".format, "ratio": "{:.2f}".format, "s/match": "{:.2f}".format})
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_colwidth", 60):
        print(df[main_cols].to_string(formatters=fmt, na_rep="-"))
        print("\ndiagnostics (means over seeds): threshold in force, q99 of the true partners' distance, q01 of the "
              "fresh rows' nearest distance, pi0, accept_rate, duplicates dropped, partial-mode accepted share, "
              "max accepted over seeds, partial mode's expected / actual false matches (sum over seeds) and "
              "ratio, s per partial match")
        diag = ["thr", "q99_true", "q01_fresh", "pi0", "accept_rate", "n_dup", "partial_acc", "accepted_max",
                "exp_p", "act_p", "ratio_p", "s/partial"]
        dfmt = {c: "{:.4f}".format for c in diag}
        dfmt["n_dup"] = "{:.1f}".format
        dfmt.update({"s/partial": "{:.2f}".format, "exp_p": "{:.1f}".format, "act_p": "{:d}".format,
                     "ratio_p": "{:.2f}".format})
        print(df[diag].to_string(formatters=dfmt, na_rep="-"))

    def verdict(label, failing):
        return f"{label}: {'MET' if not failing else 'MISSED (' + ', '.join(failing) + ')'}"

    acc_fail = [f for f in df.index if df.loc[f, "acc"] < 0.95]
    part_fail = [f for f in df.index if "partial" in df.loc[f, "miss"].split(",")]
    null_fail = [f for f in df.index if "null" in df.loc[f, "miss"].split(",")]
    exp_fail = [f for f in df.index if "expected" in df.loc[f, "miss"].split(",")]
    exp_p_fail = [f for f in df.index if "expected(partial)" in df.loc[f, "miss"].split(",")]
    print(f"\nworst family accuracy {df['acc'].min():.4f} ({df['acc'].idxmin()}), worst seed "
          f"{df['acc_min'].min():.4f} ({df['acc_min'].idxmin()}); null families' max accepted over seeds "
          f"{df.loc[df['null'], 'accepted_max'].max():.4f} (3·alpha = {3 * args.alpha:.3f})")
    print("targets -- " + "; ".join([
        verdict("accuracy >= 0.95 every family (mean over seeds)", acc_fail),
        verdict("partial >= 0.98 kept / <= 0.03 fresh where separable", part_fail),
        verdict(f"null accepted <= 3·alpha = {3 * args.alpha:g}", null_fail),
        verdict("expected within x2 of actual where actual >= 10", exp_fail)]))
    print("  (not an issue target) partial mode's expected within x2 of actual where actual >= 10: "
          + ("MET" if not exp_p_fail else "MISSED (" + ", ".join(exp_p_fail) + ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
