#!/usr/bin/env python
"""The sweep that chose the demo SAEs' recipe (docs/DEMO.md "How the SAE recipe was chosen").

For each configuration (width, target L0, steps) it trains, with the training code of
scripts/build_demo.py and independent seeds, an SAE on layer A, a second one on layer A (another
seed: the seed ceiling) and one on layer A+1, all on the activations that ``build_demo.py
--stop-after activations`` wrote. It reports on the held-out activations:

- quality of the layer-A SAE: explained variance, mean L0, dead features;
- seed to seed (same layer, two seeds) and adjacent (A -> A+1): the share of features accepted by
  SAE Match's calibrated criterion and the median decoder cosine of the matched partners.

    python scripts/build_demo.py --out .demo_build --stop-after activations
    python scripts/sweep_demo_saes.py --build .demo_build --layer 2 --out sweep.json

Each configuration takes (3 × steps × ~15 ms) on one core. Results append to --out as they come,
so an interrupted sweep keeps what it finished (and skips it when restarted).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import build_demo as bd  # noqa: E402

DEFAULT_CONFIGS = [
    # width, target L0, steps
    (2048, 32, 2000),   # the previous recipe, as a reference
    (512, 8, 5000),
    (512, 12, 5000),
    (256, 6, 5000),
    (256, 8, 5000),
    (256, 6, 10000),
    (256, 6, 20000),
    (384, 6, 10000),
    (384, 8, 8000),
    (512, 8, 10000),
]


def _weights(p: dict, layer: int):
    from saematch_nb.core.weights import SAEInfo, SAEWeights

    return SAEWeights.from_arrays(p, architecture="jumprelu",
                                  info=SAEInfo(layer=layer, hook_name=f"blocks.{layer}.hook_resid_post"))


def pair_numbers(pa: dict, pb: dict, la: int, lb: int) -> dict:
    from saematch_nb import match

    lm = match(_weights(pa, la), _weights(pb, lb))
    da = torch.nn.functional.normalize(pa["W_dec"], dim=1)
    db = torch.nn.functional.normalize(pb["W_dec"], dim=1)
    cos = (da * db[torch.as_tensor(lm.partner)]).sum(1).numpy()
    return {"accepted": lm.matched_fraction, "median_partner_cos": float(np.median(cos)),
            "median_partner_cos_accepted": float(np.median(cos[lm.matched])) if lm.matched.any() else float("nan"),
            "threshold": lm.threshold, "binding": "persistence" if lm.calibration.get("persist_threshold", 1e9)
            < lm.calibration.get("null_threshold", 0) else "null"}


def rescore(out: Path, keep: Path, la: int) -> int:
    rows = json.loads(out.read_text())
    for r in rows:
        f = keep / f"{r['width']}_{r['target_l0']}_{r['steps']}.pt"
        if not f.exists():
            print(f"no kept SAEs for {f.name}: left as it was")
            continue
        sae = torch.load(f)
        r["seed"] = pair_numbers(sae["a"], sae["a2"], la, la)
        r["adjacent"] = pair_numbers(sae["a"], sae["b"], la, la + 1)
        r["criterion"] = "rescored"
    out.write_text(json.dumps(rows, indent=1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=str(ROOT / ".demo_build"), help="build folder with activations/")
    ap.add_argument("--layer", type=int, default=2, help="layer A (A+1 is the adjacent layer)")
    ap.add_argument("--out", default="sweep.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--configs", default=None, help="e.g. '256:6:5000,512:8:5000' (width:L0:steps)")
    ap.add_argument("--keep", default=None, help="folder to keep each configuration's three SAEs in")
    ap.add_argument("--rescore", action="store_true",
                    help="recompute the matching columns of --out from the SAEs kept in --keep (current criterion)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rescore:
        return rescore(Path(args.out), Path(args.keep), args.layer)
    acts = Path(args.build) / "activations"
    la, lb = args.layer, args.layer + 1
    xa = torch.from_numpy(np.load(acts / f"train_{la}.npy"))
    xb = torch.from_numpy(np.load(acts / f"train_{lb}.npy"))
    ea = torch.from_numpy(np.load(acts / f"eval_{la}.npy"))
    eb = torch.from_numpy(np.load(acts / f"eval_{lb}.npy"))
    configs = DEFAULT_CONFIGS if not args.configs else [
        tuple(int(v) for v in c.split(":")) for c in args.configs.split(",")]
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.exists() else []
    have = {(r["width"], r["target_l0"], r["steps"]) for r in done}
    for width, l0, steps in configs:
        if (width, l0, steps) in have:
            continue
        sz = dict(bd.SIZES["full"], sae_width=width, sae_steps=steps, sae_batch=args.batch,
                  target_l0=float(l0))
        t0 = time.time()
        p_a, _ = bd.train_sae(xa, ea, sz, 100 + la, "cpu", f"{width}/{l0}/{steps} L{la}")
        p_a2, _ = bd.train_sae(xa, ea, sz, 900 + la, "cpu", f"{width}/{l0}/{steps} L{la} seed2")
        p_b, _ = bd.train_sae(xb, eb, sz, 100 + lb, "cpu", f"{width}/{l0}/{steps} L{lb}")
        secs = (time.time() - t0) / 3
        if args.keep:  # the SAEs themselves, so that --rescore can judge them with another criterion
            keep = Path(args.keep)
            keep.mkdir(parents=True, exist_ok=True)
            torch.save({"a": p_a, "a2": p_a2, "b": p_b}, keep / f"{width}_{l0}_{steps}.pt")
        qa, qb = bd.sae_quality(p_a, ea), bd.sae_quality(p_b, eb)
        row = {"width": width, "target_l0": l0, "steps": steps, "seconds_per_sae": secs,
               "ev": qa["explained_variance"], "l0": qa["l0"], "dead": qa["dead_fraction"],
               "ev_b": qb["explained_variance"], "l0_b": qb["l0"], "dead_b": qb["dead_fraction"],
               "seed": pair_numbers(p_a, p_a2, la, la), "adjacent": pair_numbers(p_a, p_b, la, lb)}
        done.append(row)
        out.write_text(json.dumps(done, indent=1))
        print(json.dumps(row), flush=True)
    print(f"\n{'width':>5} {'L0*':>4} {'steps':>6} {'s/SAE':>6} {'EV':>6} {'L0':>5} {'dead':>6} "
          f"{'seed acc':>8} {'seed cos':>8} {'adj acc':>8} {'adj cos':>8}")
    for r in done:
        print(f"{r['width']:>5} {r['target_l0']:>4} {r['steps']:>6} {r['seconds_per_sae']:>6.0f} {r['ev']:>6.3f} "
              f"{r['l0']:>5.1f} {100 * r['dead']:>5.1f}% {100 * r['seed']['accepted']:>7.1f}% "
              f"{r['seed']['median_partner_cos']:>8.3f} {100 * r['adjacent']['accepted']:>7.1f}% "
              f"{r['adjacent']['median_partner_cos']:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
