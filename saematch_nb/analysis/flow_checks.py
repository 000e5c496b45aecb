"""Feature Flow checked on a model: on data, causally, and steered along (Laptev et al. 2025, §4).

:func:`feature_flow` (core) classifies every residual feature from decoder weights alone. This
module asks the model whether the weights were right:

- :func:`flow_labels` (the paper's data check): at every token where a residual feature ``f`` of
  layer ``L`` fires, which of its top-1 predecessors fire too: R (the residual SAE of the layer
  before), M (the MLP-output SAE of ``L``), A (the attention-output SAE of ``L``); eight groups
  (``R``, ``M``, ``A``, ``R+M``, ``R+A``, ``M+A``, ``R+M+A``, ``from nowhere``). Each weight-based
  class predicts a group (translated: R fires; processed: R and a module fire; newborn: a module
  fires without R; unexplained: none). The same counts with each feature's predecessors shuffled
  among the layer's features (same predecessors, same firing rates, the pairing scrambled) are
  the null: what co-firing alone gives.
- :func:`deactivate` (the paper's causal check): remove a predecessor's contribution,
  ``h <- h + (r - 1) a V`` with ``r = 0`` at the predecessor's site (``a`` its activation on that
  token, ``V`` its decoder row), and measure the target's activation at ``L`` on the tokens where
  it fired. Predecessors by method: top-1 cosine in R, M, A, all three at once, SAE Match's
  partner in R (from a :class:`~saematch_nb.core.chain.MatchChain`), and a control: a random R
  feature that fires on the same tokens (co-activation without the weight link).
- :func:`plan_flow_steering` (§4.3): a :class:`~saematch_nb.analysis.steering.SteeringPlan` over a
  flow graph's residual path (and its module nodes), single-layer or cumulative, with the
  schedules of :func:`~saematch_nb.analysis.steering.schedule_weights`; run it with
  :func:`~saematch_nb.analysis.steering.steer`.

Hook sites come from each SAE's hook name (``SAEInfo.hook_name``); attention SAEs at ``hook_z``
read the heads' outputs flattened (``[..., n_heads, d_head]`` -> ``[..., n_heads * d_head]``, as
sae-lens does).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .._atomic import atomic_write_json
from ..core._checks import as_index
from ..core.flow import CLASSES, MODULES, FeatureFlow, FlowGraph
from ..core.results import read_result_npz, write_result_npz
from ..core.stack import SAEStack, stack_of
from ..core.weights import SAEWeights
from ..errors import ArgumentTypeError, InvalidArgumentError

#: which top-1 predecessors fire with the feature (code r + 2m + 4a -> group index)
GROUPS = ("R", "M", "A", "R+M", "R+A", "M+A", "R+M+A", "from nowhere")
_CODE_TO_GROUP = np.array([7, 0, 1, 3, 2, 4, 5, 6])
#: the groups each weight-based class predicts
PREDICTED = {"translated": ("R", "R+M", "R+A", "R+M+A"), "processed": ("R+M", "R+A", "R+M+A"),
             "newborn": ("M", "A", "M+A"), "unexplained": ("from nowhere",)}
METHODS = ("R", "M", "A", "R+M+A", "match", "co-active R")
_DEFAULT_SITE = {"res": "blocks.{L}.hook_resid_post", "R": "blocks.{L}.hook_resid_post",
                 "M": "blocks.{L}.hook_mlp_out", "A": "blocks.{L}.hook_attn_out"}
FORMAT_VERSION = 1
_SAE_NAME = {"res": "a residual", "R": "a residual", "M": "an MLP-output", "A": "an attention"}


# -- shared plumbing ------------------------------------------------------------------------------
def _stacks(flow: FeatureFlow, res: Any, mlp: Any, att: Any) -> dict[str, SAEStack | None]:
    if not isinstance(flow, FeatureFlow):
        raise TypeError(f"expected a FeatureFlow (from saematch_nb.feature_flow), got {type(flow).__name__}")
    st = {"res": stack_of(res, what="res"), "M": None if mlp is None else stack_of(mlp, what="mlp"),
          "A": None if att is None else stack_of(att, what="att")}
    for fl in flow.by_layer:  # the SAEs must be the ones the flow was scored on
        for key, stack, layer in (("res", st["res"], fl.layer), ("R", st["res"], fl.prev_layer),
                                  ("M", st["M"], fl.layer), ("A", st["A"], fl.layer)):
            want = fl.fingerprints.get(key)
            if not want or (key in MODULES and not fl.has(key)):
                continue
            if stack is None or layer not in stack:
                raise InvalidArgumentError(
                    f"the flow was scored with {_SAE_NAME[key]} SAE at layer {layer}; "
                    f"pass it ({'res' if key in ('res', 'R') else {'M': 'mlp', 'A': 'att'}[key]}=...)")
            got = stack.fingerprint(layer)
            if got != want:
                raise InvalidArgumentError(
                    f"the SAE given for {key} at layer {layer} (weights hash {got}) is not the one the flow was scored "
                    f"on ({want}): pass the same SAEs as to feature_flow")
    return st


def _site(fl: Any, key: str) -> str:
    info = fl.infos.get(key)
    hook = getattr(info, "hook_name", None)
    layer = fl.prev_layer if key == "R" else fl.layer
    return hook or _DEFAULT_SITE[key].format(L=layer)


def _weights(st: dict, fl: Any, key: str) -> SAEWeights:
    if key == "res":
        return st["res"].weights(fl.layer)
    if key == "R":
        return st["res"].weights(fl.prev_layer)
    return st[key].weights(fl.layer)


def _flat(act: torch.Tensor) -> torch.Tensor:
    """[B, T, d] (or hook_z's [B, T, heads, d_head] flattened)."""
    return act.flatten(2) if act.ndim == 4 else act


def _tokens(model: Any, tokens: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [n, T] and the positions that count ([n, T] bool: not BOS, not padding)."""
    if isinstance(tokens, str):
        tokens = [tokens]
    if isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str):
        t = model.to_tokens(list(tokens)).cpu()
        pad = getattr(getattr(model, "tokenizer", None), "pad_token_id", None)
        valid = torch.ones_like(t, dtype=torch.bool) if pad is None or len(tokens) == 1 else t != pad
    else:
        t = torch.as_tensor(tokens)
        if t.ndim != 2 or t.dtype not in (torch.int64, torch.int32) or t.shape[1] < 2:
            raise InvalidArgumentError(f"tokens must be text(s) or token ids [n_windows, n_ctx >= 2], got "
                                       f"{tuple(t.shape)} {t.dtype}")
        t = t.long()
        valid = torch.ones_like(t, dtype=torch.bool)
    valid[:, 0] = False
    return t, valid


def _layers(flow: FeatureFlow, layers: Sequence[int] | None) -> list[Any]:
    if layers is None:
        return list(flow.by_layer)
    return [flow.layer(as_index(x, "layer")) for x in layers]


def _run(model: Any, toks: torch.Tensor, sites: Sequence[str], hooks: Sequence = ()) -> dict[str, torch.Tensor]:
    """Activations at ``sites`` (float32, on the CPU, where the SAE stacks keep their weights), with
    ``hooks`` applied; stops after the deepest site."""
    got: dict[str, torch.Tensor] = {}

    def keep(act, hook):
        got[hook.name] = _flat(act).float().cpu()

    deepest = max(int(s.split(".")[1]) for s in sites)
    dev = getattr(getattr(model, "cfg", None), "device", None)
    with torch.no_grad():
        model.run_with_hooks(toks.to(dev) if dev is not None else toks, stop_at_layer=deepest + 1,
                             fwd_hooks=list(hooks) + [(s, keep) for s in sorted(set(sites))])
    return got


# -- the data check -------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FlowLabels:
    """Per residual feature of each layer: at how many of its active tokens each group of top-1
    predecessors fired too (``counts[layer]``: int64 [n, 8], columns :data:`GROUPS`), the same
    with shuffled predecessors (``null_counts``), and its weight-based class (``classes``)."""

    layers: tuple[int, ...]
    counts: Mapping[int, np.ndarray]
    null_counts: Mapping[int, np.ndarray]
    classes: Mapping[int, np.ndarray]
    n_tokens: int
    options: Mapping[str, Any] = field(default_factory=dict)

    def table(self) -> Any:
        """One row per (layer, class) and the pooled "all layers": features that fired, share of
        their activations in each group, the share the class predicts (``agree``) and the same
        share under shuffled predecessors (``agree_null``)."""
        import pandas as pd

        rows = []
        for L in list(self.layers) + ["all"]:
            ls = self.layers if L == "all" else (L,)
            for c in CLASSES:
                cnt = sum((self.counts[x][self.classes[x] == c].sum(0) for x in ls), np.zeros(8, np.int64))
                nul = sum((self.null_counts[x][self.classes[x] == c].sum(0) for x in ls), np.zeros(8, np.int64))
                nf = int(sum(((self.counts[x][self.classes[x] == c].sum(1)) > 0).sum() for x in ls))
                tot, ntot = int(cnt.sum()), int(nul.sum())
                want = [GROUPS.index(g) for g in PREDICTED[c]]
                row = {"layer": L, "class": c, "features_active": nf, "activations": tot}
                for g, v in zip(GROUPS, cnt):
                    row[g] = v / tot if tot else float("nan")
                row["agree"] = cnt[want].sum() / tot if tot else float("nan")
                row["agree_null"] = nul[want].sum() / ntot if ntot else float("nan")
                rows.append(row)
        return pd.DataFrame(rows)

    def share_with(self, module: str) -> dict[int, np.ndarray]:
        """Per feature, the share of its activations at which the top-1 predecessor in ``module``
        ("R", "M", "A", or "M|A" for either module) fired too (NaN for features that never fired)."""
        cols = {"R": ("R", "R+M", "R+A", "R+M+A"), "M": ("M", "R+M", "M+A", "R+M+A"),
                "A": ("A", "R+A", "M+A", "R+M+A"), "M|A": ("M", "A", "R+M", "R+A", "M+A", "R+M+A")}[module]
        idx = [GROUPS.index(g) for g in cols]
        out = {}
        for L in self.layers:
            c = self.counts[L]
            tot = c.sum(1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[L] = np.where(tot > 0, c[:, idx].sum(1) / np.maximum(tot, 1), np.nan)
        return out

    def tests(self) -> Any:
        """Mann-Whitney U (one-sided) on per-feature shares, pooled over layers: does R fire more
        often with translated than with newborn features, and a module more often with newborn
        than with unexplained ones? (The paper: p < 0.001 on its four datasets.)"""
        import pandas as pd
        from scipy.stats import mannwhitneyu

        rows = []
        for what, module, a, b in (("R fires with the feature", "R", "translated", "newborn"),
                                   ("a module fires with the feature", "M|A", "newborn", "unexplained"),
                                   ("a module fires with the feature", "M|A", "processed", "translated")):
            sh = self.share_with(module)
            xa = np.concatenate([sh[L][self.classes[L] == a] for L in self.layers])
            xb = np.concatenate([sh[L][self.classes[L] == b] for L in self.layers])
            xa, xb = xa[np.isfinite(xa)], xb[np.isfinite(xb)]
            p = float(mannwhitneyu(xa, xb, alternative="greater").pvalue) if len(xa) and len(xb) else float("nan")
            rows.append({"test": f"{what}: {a} > {b}", "n_a": len(xa), "n_b": len(xb),
                         "median_a": float(np.median(xa)) if len(xa) else float("nan"),
                         "median_b": float(np.median(xb)) if len(xb) else float("nan"), "p_value": p})
        return pd.DataFrame(rows)

    def to_pandas(self) -> Any:
        return self.table()

    def save(self, path: str | os.PathLike) -> Path:
        """One ``.npz`` (counts, null counts, classes per layer + JSON metadata), atomically."""
        arrays = {}
        for L in self.layers:
            arrays[f"counts_{L}"] = self.counts[L]
            arrays[f"null_{L}"] = self.null_counts[L]
            arrays[f"classes_{L}"] = np.asarray(self.classes[L]).astype("U12")
        meta = {"format_version": FORMAT_VERSION, "kind": "FlowLabels", "layers": list(self.layers),
                "n_tokens": self.n_tokens, "options": dict(self.options)}
        return write_result_npz(path, json.dumps(meta), arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FlowLabels":
        def read(z: Any, meta: dict, _path: Path) -> "FlowLabels":
            Ls = tuple(int(x) for x in meta["layers"])
            return cls(Ls, {L: z[f"counts_{L}"] for L in Ls}, {L: z[f"null_{L}"] for L in Ls},
                       {L: z[f"classes_{L}"].astype(object) for L in Ls}, int(meta["n_tokens"]), meta["options"])

        return read_result_npz(path, "FlowLabels", FORMAT_VERSION, read, "run saematch_nb.flow_labels again")

    def __repr__(self) -> str:
        t = self.table()
        t = t[t["layer"] == "all"]
        lines = [f"FlowLabels: {len(self.layers)} layers {list(self.layers)}, {self.n_tokens:,} tokens; "
                 "share of each class's activations in the group it predicts (shuffled predecessors):"]
        for _, r in t.iterrows():
            lines.append(f"  {r['class']:<12} {r['features_active']:>6} features  agree {r['agree']:.3f} "
                         f"(null {r['agree_null']:.3f})")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from ..display.html import table_html

        t = self.table()
        return table_html(t[t["layer"] == "all"].drop(columns=["layer"]), title=repr(self).splitlines()[0])


def _check_flow(flow: Any, model: Any, what: str) -> None:
    """The flow comes first (the analysis layer's order: what was made from the SAEs, then the
    model, then data); the old order is said plainly, before any other check."""
    if isinstance(flow, FeatureFlow):
        return
    if isinstance(model, FeatureFlow):
        raise ArgumentTypeError(f"{what}(flow, model, res, ...) takes the FeatureFlow first and the model second "
                                "(the analysed result comes first in every analysis call)")
    raise ArgumentTypeError(f"{what}(flow, model, res, ...) needs a FeatureFlow (saematch_nb.feature_flow) first, "
                            f"got {type(flow).__name__}")


def flow_labels(flow: FeatureFlow, model: Any, res: Any, *, mlp: Any = None, att: Any = None, tokens: Any,
                layers: Sequence[int] | None = None, batch_size: int = 8, seed: int = 0) -> FlowLabels:
    """The data check of a :class:`FeatureFlow` (module docstring): run ``model`` on ``tokens``
    (texts, or token ids [n_windows, n_ctx]; the first position of each window is left out, BOS)
    and count, for every residual feature, which of its top-1 predecessors fire on the same tokens.
    ``res``/``mlp``/``att``: the SAEs the flow was scored on. ``seed``: the null's shuffle."""
    _check_flow(flow, model, "flow_labels")
    st = _stacks(flow, res, mlp, att)
    toks, valid = _tokens(model, tokens)
    fls = _layers(flow, layers)
    rng = np.random.default_rng(seed)
    shuffles = {fl.layer: {m: rng.permutation(fl.n) for m in MODULES} for fl in fls}
    counts = {fl.layer: np.zeros((fl.n, 8), np.int64) for fl in fls}
    nulls = {fl.layer: np.zeros((fl.n, 8), np.int64) for fl in fls}
    sites = sorted({_site(fl, k) for fl in fls for k in ("res",) + MODULES if k == "res" or fl.has(k)})
    from tqdm.auto import tqdm

    n_tok = 0
    for i in tqdm(range(0, len(toks), batch_size), desc="flow labels", disable=len(toks) <= batch_size):
        acts = _run(model, toks[i:i + batch_size], sites)
        keep = valid[i:i + batch_size, 1:].reshape(-1, 1)
        n_tok += int(keep.sum())
        for fl in fls:
            x = acts[_site(fl, "res")][:, 1:].reshape(-1, acts[_site(fl, "res")].shape[-1])
            on = (_weights(st, fl, "res").encode(x) > 0) & keep  # [N, n]
            code = torch.zeros(on.shape, dtype=torch.int64)
            code_null = torch.zeros(on.shape, dtype=torch.int64)
            for bit, m in ((1, "R"), (2, "M"), (4, "A")):
                if not fl.has(m):
                    continue
                a = acts[_site(fl, m)][:, 1:]
                p_on = _weights(st, fl, m).encode(a.reshape(-1, a.shape[-1])) > 0  # [N, n_m]
                idx = torch.from_numpy(np.array(fl.index(m)))
                ok = idx >= 0
                got = p_on[:, idx.clamp_min(0)] & ok
                code += bit * got
                code_null += bit * got[:, torch.from_numpy(shuffles[fl.layer][m])]
            grp = torch.as_tensor(_CODE_TO_GROUP)[code]
            grp_null = torch.as_tensor(_CODE_TO_GROUP)[code_null]
            for g in range(8):
                counts[fl.layer][:, g] += ((grp == g) & on).sum(0).numpy()
                nulls[fl.layer][:, g] += ((grp_null == g) & on).sum(0).numpy()
    return FlowLabels(tuple(fl.layer for fl in fls), counts, nulls,
                      {fl.layer: fl.classes for fl in fls}, n_tok,
                      {"batch_size": int(batch_size), "seed": int(seed), "n_windows": int(len(toks)),
                       "n_ctx": int(toks.shape[1])})


# -- the causal check -----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FlowDeactivation:
    """One row per (target feature, method): the predecessor(s) removed, the target's mean
    activation on the tokens where it fired before and after, ``change`` = 1 - after / before
    (1: switched off; 0: unaffected; negative: raised) and ``success`` (change >= ``success_drop``)."""

    rows: tuple[Mapping[str, Any], ...]
    success_drop: float
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_pandas(self) -> Any:
        import pandas as pd

        return pd.DataFrame(list(self.rows))

    def summary(self, by: Sequence[str] = ("method",)) -> Any:
        """Mean activation change and success rate per method (the paper's §4.2 numbers)."""
        df = self.to_pandas()
        if df.empty:
            return df
        g = df.groupby(list(by), sort=False)
        out = g.agg(targets=("change", "size"), mean_change=("change", "mean"), median_change=("change", "median"),
                    success_rate=("success", "mean"), mean_s=("s", "mean"))
        return out.reset_index()

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, {"format_version": FORMAT_VERSION, "kind": "FlowDeactivation",
                                        "rows": list(self.rows), "success_drop": self.success_drop,
                                        "options": dict(self.options)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FlowDeactivation":
        d = json.loads(Path(path).read_text())
        if d.get("kind") != "FlowDeactivation":
            raise InvalidArgumentError(f"{path} is not a saved FlowDeactivation (kind {d.get('kind')!r})")
        return cls(tuple(d["rows"]), float(d["success_drop"]), d.get("options", {}))

    def __repr__(self) -> str:
        s = self.summary()
        lines = [f"FlowDeactivation: {len(self.rows)} (target, method) runs; success = activation down by "
                 f">= {self.success_drop:.0%}"]
        for _, r in s.iterrows():
            lines.append(f"  {r['method']:<12} {int(r['targets']):>5} targets  mean change {r['mean_change']:+.3f}  "
                         f"success {r['success_rate']:.1%}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from ..display.html import table_html

        return table_html(self.summary(), title=repr(self).splitlines()[0])


def _match_partners(chain: Any, prev: int, layer: int) -> np.ndarray:
    """SAE Match's partner at ``prev`` of every feature of ``layer`` (-1: none)."""
    layers = list(chain.layers)
    if prev not in layers or layer not in layers or layers.index(layer) != layers.index(prev) + 1:
        raise InvalidArgumentError(f"the chain has no step {prev} -> {layer} (its layers are {layers}): match the "
                                   "same residual SAEs the flow was scored on")
    return np.asarray(chain._inverse(layers.index(prev), "partner"))


def _removal_hook(w: SAEWeights, feats: torch.Tensor, rows_per: int):
    """h <- h - a V for feature feats[b // rows_per] of batch row b (-1: nothing removed)."""
    f = feats.clamp_min(0)
    cpu = {"ok": (feats >= 0).float(), "enc": w.W_enc[:, f].T, "b_enc": w.b_enc[f], "dec": w.W_dec[f],  # [G, d] ...
           "thr": None if w.threshold is None else w.threshold[f], "b_dec": w.b_dec if w.apply_b_dec_to_input else None}
    on: dict = {}  # the same on the activation's device, moved once (a model on CUDA)
    arch = w.arch

    def hook(act, hook=None):
        if act.device not in on:
            on[act.device] = {k: None if v is None else v.to(act.device, torch.float32) for k, v in cpu.items()}
        g = on[act.device]
        ok, enc, b_enc, dec, thr, b_dec = g["ok"], g["enc"], g["b_enc"], g["dec"], g["thr"], g["b_dec"]
        shape = act.shape
        x = _flat(act).float()
        G = len(feats)
        xg = x.reshape(G, rows_per, *x.shape[1:])
        xin = xg - b_dec if b_dec is not None else xg
        pre = torch.einsum("grtd,gd->grt", xin, enc) + b_enc[:, None, None]
        a = arch.activate_one(pre, None if thr is None else thr[:, None, None]) * ok[:, None, None]
        out = xg - a[..., None] * dec[:, None, None, :]
        return out.reshape(x.shape).reshape(shape).to(act.dtype)

    return hook


def deactivate(flow: FeatureFlow, model: Any, res: Any, *, mlp: Any = None, att: Any = None, tokens: Any,
               layers: Sequence[int] | None = None, n_targets: int = 32, methods: Sequence[str] | None = None,
               chain: Any = None, contexts: int = 4, min_active: int = 3, success_drop: float = 0.5,
               classes: Sequence[str] | None = None, group: int = 16, seed: int = 0) -> FlowDeactivation:
    """The causal check (module docstring). Per layer, ``n_targets`` residual features that fire at
    least ``min_active`` times on ``tokens`` (seeded sample); each is measured on the ``contexts``
    windows where it fires most. ``methods``: any of :data:`METHODS` ("match" needs ``chain``, the
    residual SAEs' MatchChain); None (default): all of them, "match" only when ``chain`` is given.
    ``classes``: draw targets only from these weight classes (e.g.
    ``("translated", "processed", "newborn")``: the features the weights give a predecessor; most
    features of real SAEs are *unexplained*, so a uniform draw measures mostly those).
    ``group`` interventions share one batched forward pass."""
    _check_flow(flow, model, "deactivate")
    if methods is None:
        methods = [m for m in METHODS if m != "match" or chain is not None]
    methods = [methods] if isinstance(methods, str) else list(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise InvalidArgumentError(f"unknown methods {bad}; choose from {METHODS}")
    if "match" in methods and chain is None:
        raise InvalidArgumentError("method 'match' needs chain= (match_chain of the residual SAEs the flow used)")
    if classes is not None:
        classes = [str(c) for c in ([classes] if isinstance(classes, str) else classes)]
        unknown = [c for c in classes if c not in CLASSES]
        if unknown or not classes:
            raise InvalidArgumentError(f"classes must name some of {CLASSES}, got {classes!r}")
    if not 0 < float(success_drop) <= 1:
        raise InvalidArgumentError(f"success_drop must be in (0, 1], got {success_drop!r}")
    st = _stacks(flow, res, mlp, att)
    toks, valid = _tokens(model, tokens)
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    from tqdm.auto import tqdm

    fls = _layers(flow, layers)
    bar = tqdm(total=len(fls) * len(methods), desc="deactivation", disable=len(fls) * len(methods) < 4)
    for fl in fls:
        tgt_site = _site(fl, "res")
        w_t = _weights(st, fl, "res")
        pred_sites = {m: _site(fl, m) for m in MODULES if fl.has(m)}
        # clean pass: where each feature fires, per window, and the R SAE's activity (the control)
        a_clean, r_on = [], []
        for i in range(0, len(toks), 16):
            got = _run(model, toks[i:i + 16], [tgt_site] + ([pred_sites["R"]] if "R" in pred_sites else []))
            a = w_t.encode(got[tgt_site]) * valid[i:i + 16, :, None]  # BOS and padding never count
            a_clean.append(a)
            if "R" in pred_sites:
                r_on.append(_weights(st, fl, "R").encode(got[pred_sites["R"]]) > 0)
        A = torch.cat(a_clean)  # [W, T, n]
        fires = (A > 0).sum((0, 1))
        ok = fires.numpy() >= min_active
        if classes is not None:
            ok &= np.isin(fl.classes, classes)
        cand = np.flatnonzero(ok)
        targets = np.sort(rng.choice(cand, size=min(n_targets, len(cand)), replace=False)) if len(cand) else cand
        R_on = torch.cat(r_on) if r_on else None
        ctx = {int(f): torch.argsort(-(A[:, :, f] > 0).sum(1).float() - 1e-6 * A[:, :, f].sum(1),
                                     stable=True)[:contexts]
               for f in targets}
        partners = _match_partners(chain, fl.prev_layer, fl.layer) if "match" in methods else None
        for m in methods:
            plan = []  # (target, {site_key: predecessor}, s)
            for f in targets.tolist():
                if m in ("R", "M", "A"):
                    if not fl.has(m):
                        continue
                    plan.append((f, {m: int(fl.index(m)[f])}, float(fl.score(m)[f])))
                elif m == "R+M+A":
                    plan.append((f, {k: int(fl.index(k)[f]) for k in MODULES if fl.has(k)},
                                 float(np.nanmax([fl.score(k)[f] for k in MODULES if fl.has(k)]))))
                elif m == "match":
                    p = int(partners[f])
                    if p >= 0:
                        Kd = _weights(st, fl, "R").W_dec
                        s = float(torch.nn.functional.cosine_similarity(Kd[p], w_t.W_dec[f], dim=0))
                        plan.append((f, {"R": p}, s))
                else:  # co-active R: a random R feature firing where f fires, other than the top-1
                    if R_on is None:
                        continue
                    where = A[:, :, f] > 0
                    co = R_on[where].sum(0).numpy()
                    co[int(fl.index("R")[f])] = 0
                    pool = np.flatnonzero(co >= max(1, co.max() // 2)) if co.max() > 0 else np.array([], int)
                    if len(pool):
                        p = int(rng.choice(pool))
                        Kd = _weights(st, fl, "R").W_dec
                        cos = torch.nn.functional.cosine_similarity(Kd[p], w_t.W_dec[f], dim=0)
                        plan.append((f, {"R": p}, float(cos)))
            for g0 in range(0, len(plan), group):
                part = plan[g0:g0 + group]
                idx = torch.stack([ctx[f] for f, _, _ in part])  # [G, c]
                c = idx.shape[1]
                batch = toks[idx.reshape(-1)]
                hooks = []
                for key in MODULES:
                    if not any(key in pr for _, pr, _ in part):
                        continue
                    feats = torch.tensor([pr.get(key, -1) for _, pr, _ in part])
                    hooks.append((pred_sites[key], _removal_hook(_weights(st, fl, key), feats, c)))
                got = _run(model, batch, [tgt_site], hooks)[tgt_site]
                got = got.reshape(len(part), c, *got.shape[1:])
                for k, (f, pr, s) in enumerate(part):
                    after = w_t.feature_activation(got[k], f)  # [c, T]
                    before = A[ctx[f], :, f]
                    on = before > 0
                    b, a = float(before[on].mean()), float(after[on].mean())
                    rows.append({"layer": fl.layer, "target": f, "class": CLASSES[int(fl.cls[f])], "method": m,
                                 "predecessors": {k2: int(v) for k2, v in pr.items()}, "s": s, "tokens": int(on.sum()),
                                 "before": b, "after": a, "change": 1 - a / b,
                                 "success": bool(1 - a / b >= success_drop)})
            bar.update(1)
    bar.close()
    return FlowDeactivation(tuple(rows), float(success_drop),
                            {"n_targets": int(n_targets), "contexts": int(contexts), "min_active": int(min_active),
                             "classes": classes,
                             "methods": methods, "seed": int(seed), "n_windows": int(len(toks)),
                             "n_ctx": int(toks.shape[1])})


# -- steering along a flow ------------------------------------------------------------------------
def plan_flow_steering(graph: FlowGraph, res: Any, *, mlp: Any = None, att: Any = None, strength: float = 4.0,
                       span: str = "cumulative", modules: bool = True, schedule: str = "constant",
                       alpha: float = -0.05, flow: FeatureFlow | None = None):
    """A :class:`~saematch_nb.analysis.steering.SteeringPlan` (add mode, ``h <- h + s_l V`` with the
    folded decoder row as every other plan) along a flow graph: ``span="single"`` steers the origin
    feature alone; ``"cumulative"`` also every residual node of the graph's backward path before it
    (layers <= the origin's: the paper's "0 ... l"). ``modules``: add the MLP/attention nodes that
    write into those residual nodes (at their own hooks). The schedule weighs each entry by its
    layer. Run with ``steer(plan, model, prompt)``."""
    from .steering import SCHEDULES, SteeringPlan, schedule_weights

    if not isinstance(graph, FlowGraph):
        raise TypeError(f"expected a FlowGraph (FeatureFlow.graph(layer, feature)), got {type(graph).__name__}")
    if span not in ("single", "cumulative"):
        raise InvalidArgumentError(f"span must be 'single' or 'cumulative', got {span!r}")
    if schedule not in SCHEDULES:
        raise InvalidArgumentError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    stacks = {"residual": stack_of(res, what="res"), "mlp": None if mlp is None else stack_of(mlp, what="mlp"),
              "attn": None if att is None else stack_of(att, what="att")}
    L0 = graph.origin_layer
    # the backward path: the origin and, following residual edges into it, its predecessors
    into = {graph.nodes[e.target].key: graph.nodes[e.source] for e in graph.edges if e.kind == "residual"}
    path = [next(n for n in graph.nodes if n.origin)]
    while span == "cumulative" and path[-1].key in into:
        path.append(into[path[-1].key])
    chosen = list(reversed(path))
    if modules:
        keys = {n.key for n in chosen}
        for e in graph.edges:
            if e.kind in ("mlp", "attn") and graph.nodes[e.target].key in keys:
                chosen.append(graph.nodes[e.source])
    chosen.sort(key=lambda n: (n.layer, {"attn": 0, "mlp": 1, "residual": 2}[n.kind]))
    entries = []
    for n in chosen:
        stack = stacks[n.kind]
        if stack is None or n.layer not in stack:
            arg = "res" if n.kind == "residual" else {"mlp": "mlp", "attn": "att"}[n.kind]
            raise InvalidArgumentError(f"the graph has a {n.kind} node at layer {n.layer} but no {n.kind} SAE was "
                                       f"given for it ({arg}=...)")
        info = stack.info(n.layer)
        hook = info.hook_name or _DEFAULT_SITE[{"residual": "res", "mlp": "M", "attn": "A"}[n.kind]].format(L=n.layer)
        entries.append((n, hook, stack))
    if any(".hook_z" in h for _, h, _ in entries):
        raise InvalidArgumentError("steering an attention SAE read at hook_z is not supported here: its decoder "
                                   "adds to the heads' outputs; steer the residual nodes (modules=False)")
    layers = sorted({n.layer for n, _, _ in entries})
    w_by_layer = dict(zip(layers, schedule_weights(layers, schedule, alpha)))
    s = float(strength)
    if not math.isfinite(s):
        raise InvalidArgumentError(f"strength must be a finite number, got {strength!r}")
    return SteeringPlan(
        layers=tuple(n.layer for n, _, _ in entries), features=tuple(n.feature for n, _, _ in entries),
        hook_names=tuple(h for _, h, _ in entries), strengths=tuple(s * w_by_layer[n.layer] for n, _, _ in entries),
        mode="add", origin=(L0, graph.origin_feature),
        fingerprints=tuple(st.fingerprint(n.layer) for n, _, st in entries),
        options={"strength": s, "span": span, "schedule": schedule, "alpha": float(alpha), "modules": bool(modules),
                 "kinds": [n.kind for n, _, _ in entries]},
        saes=tuple(st.weights(n.layer) for n, _, st in entries),
    )


__all__ = ["GROUPS", "METHODS", "PREDICTED", "FlowLabels", "FlowDeactivation", "flow_labels", "deactivate",
           "plan_flow_steering"]
