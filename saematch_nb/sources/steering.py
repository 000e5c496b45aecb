"""Steering a model with matched features (Feature Flow, Laptev et al. 2025, §steering).

A feature traced through a chain gives one direction per layer (its folded decoder row, so the
strength is in units of the feature's own threshold activation). Two interventions:

- ``mode="add"`` (activate): ``h <- h + s_l * v_l`` on every token at each steered layer.
- ``mode="scale"`` (deactivate / amplify): ``h <- h + (r - 1) * a_l * d_l`` where ``a_l`` is the
  feature's JumpReLU activation at that token and ``d_l`` its (unfolded) decoder row: r = 0 removes
  the feature's contribution, r < 0 pushes away, r > 1 amplifies.

Schedules across layers: ``constant`` (s), ``linear`` (s ramps from s to 0 across the steered
layers), ``exponential`` (s·e^{α·l}, α = −0.05 by default as in the paper).

Hooks are only ever attached inside ``model.hooks(...)`` so they are removed even when
generation raises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..core.fold import fold
from ..core.weights import SAEWeights, as_weights

SCHEDULES = ("constant", "linear", "exponential")
MODES = ("add", "scale")
SPANS = ("single", "trace", "cumulative")


@dataclass(frozen=True)
class SteeringPlan:
    """Where and how strongly to steer: one entry per steered layer."""

    layers: tuple[int, ...]
    features: tuple[int, ...]
    hook_names: tuple[str, ...]
    strengths: tuple[float, ...]
    mode: str = "add"
    origin: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        n = len(self.layers)
        if not (len(self.features) == len(self.hook_names) == len(self.strengths) == n):
            raise ValueError("SteeringPlan: layers, features, hook_names and strengths must have equal length")
        if self.mode not in MODES:
            raise ValueError(f"unknown steering mode {self.mode!r}; choose one of {MODES}")

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame({"layer": self.layers, "feature": self.features,
                             "hook_name": self.hook_names, "strength": self.strengths})

    def __repr__(self) -> str:
        steps = ", ".join(f"L{l}:#{f}×{s:.3g}" for l, f, s in zip(self.layers, self.features, self.strengths))
        return f"SteeringPlan({self.mode}, origin=L{self.origin[0]}#{self.origin[1]}: {steps})"


def schedule_strengths(layers: Sequence[int], strength: float, schedule: str = "constant",
                       alpha: float = -0.05) -> list[float]:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    n = len(layers)
    if schedule == "constant":
        return [float(strength)] * n
    if schedule == "linear":
        return [float(strength) * (1 - k / max(n, 1)) for k in range(n)]
    return [float(strength) * math.exp(alpha * l) for l in layers]


def plan_steering(chain: Any, layer: int, feature: int, *, strength: float = 4.0,
                  span: str = "trace", schedule: str = "constant", alpha: float = -0.05,
                  mode: str = "add", hook_template: str = "blocks.{L}.hook_resid_post") -> SteeringPlan:
    """Steer feature ``feature`` of ``layer`` and, with span="trace", its matched partners.

    span: "single" (only this layer), "trace" (every layer the trace reaches, both directions),
    "cumulative" (this layer and the layers before it that the trace reaches — Feature Flow's
    cumulative steering of layers 0..l).
    """
    if span not in SPANS:
        raise ValueError(f"unknown span {span!r}; choose one of {SPANS}")
    if span == "single":
        pairs = [(layer, int(feature))]
    else:
        tr = chain.trace(layer, feature)
        pairs = [(l, int(f)) for l, f in zip(tr.layers, tr.features) if f >= 0]
        if span == "cumulative":
            pairs = [(l, f) for l, f in pairs if l <= layer]
    layers = [l for l, _ in pairs]
    hooks = []
    for l in layers:
        info = None
        infos = getattr(chain, "infos", ())
        for inf in infos:
            if inf.layer == l:
                info = inf
        hooks.append(info.hook_name if (info is not None and info.hook_name) else hook_template.format(L=l))
    return SteeringPlan(
        layers=tuple(layers), features=tuple(f for _, f in pairs), hook_names=tuple(hooks),
        strengths=tuple(schedule_strengths(layers, strength, schedule, alpha)), mode=mode,
        origin=(int(layer), int(feature)),
    )


def _weights_by_layer(saes: Any) -> dict[int, SAEWeights]:
    out: dict[int, SAEWeights] = {}
    items = saes.items() if isinstance(saes, dict) else enumerate(saes)
    for key, s in items:
        w = as_weights(s)
        layer = w.info.layer if w.info.layer is not None else int(key)
        out[int(layer)] = w
    return out


def steering_hooks(plan: SteeringPlan, saes: Any, *, device: Any = None) -> list[tuple[str, Any]]:
    """TransformerLens forward hooks (name, fn) that carry out ``plan``."""
    by_layer = _weights_by_layer(saes)
    missing = [l for l in plan.layers if l not in by_layer]
    if missing:
        raise KeyError(f"no SAE for steered layers {missing}; SAEs are given for layers {sorted(by_layer)}")
    hooks = []
    for l, f, name, s in zip(plan.layers, plan.features, plan.hook_names, plan.strengths):
        w = by_layer[l]
        if not 0 <= f < w.d_sae:
            raise IndexError(f"feature {f} is out of range for the layer-{l} SAE (d_sae={w.d_sae})")
        if plan.mode == "add":
            vec = fold(w).W_dec[f].clone()

            def add_hook(act, hook, vec=vec, s=s):
                return act + s * vec.to(act.device, act.dtype)

            hooks.append((name, add_hook))
        else:
            enc = w.W_enc[:, f].clone(); b = w.b_enc[f].clone(); d = w.W_dec[f].clone()
            thr = None if w.threshold is None else w.threshold[f].clone()
            b_dec = w.b_dec.clone() if w.apply_b_dec_to_input else None

            def scale_hook(act, hook, enc=enc, b=b, d=d, thr=thr, b_dec=b_dec, r=s):
                x = act if b_dec is None else act - b_dec.to(act.device, act.dtype)
                pre = x @ enc.to(act.device, act.dtype) + b.to(act.device, act.dtype)
                a = pre * (pre > thr.to(act.device, act.dtype)) if thr is not None else torch.relu(pre)
                return act + (r - 1.0) * a[..., None] * d.to(act.device, act.dtype)

            hooks.append((name, scale_hook))
    return hooks


@dataclass(frozen=True)
class SteeringResult:
    prompt: str
    baseline: str
    steered: str
    plan: SteeringPlan
    options: dict = field(default_factory=dict)

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame([{"prompt": self.prompt, "baseline": self.baseline, "steered": self.steered}])

    def __repr__(self) -> str:
        return (f"SteeringResult({self.plan!r})\n  prompt:   {self.prompt!r}\n"
                f"  baseline: {self.baseline!r}\n  steered:  {self.steered!r}")

    def _repr_html_(self) -> str:
        from ..display.html import steering_html

        return steering_html(self)


def _generate(model: Any, prompt: str, max_new_tokens: int, temperature: float, seed: int) -> str:
    torch.manual_seed(seed)
    out = model.generate(prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                         verbose=False, do_sample=temperature > 0, return_type="str")
    return out[len(prompt):] if isinstance(out, str) and out.startswith(prompt) else out


def steer(model: Any, saes: Any, plan: SteeringPlan, prompt: str, *, max_new_tokens: int = 40,
          temperature: float = 0.0, seed: int = 0) -> SteeringResult:
    """Generate from ``prompt`` with and without the plan's hooks (same seed)."""
    hooks = steering_hooks(plan, saes)
    baseline = _generate(model, prompt, max_new_tokens, temperature, seed)
    with model.hooks(fwd_hooks=hooks):  # removed on exit, also when generation raises
        steered = _generate(model, prompt, max_new_tokens, temperature, seed)
    return SteeringResult(prompt, baseline, steered, plan,
                          {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed})


def steered_logits(model: Any, saes: Any, plan: SteeringPlan, tokens: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean logits, steered logits) on the same tokens: a quick check that steering acts."""
    with torch.no_grad():
        clean = model(tokens)
        with model.hooks(fwd_hooks=steering_hooks(plan, saes)):
            steered = model(tokens)
    return clean, steered


def feature_logit_effect(model: Any, saes: Any, plan: SteeringPlan, tokens: Any, k: int = 10) -> Any:
    """Tokens whose mean log-probability rises most under steering (a readable summary)."""
    import pandas as pd

    clean, steered = steered_logits(model, saes, plan, tokens)
    delta = (steered.log_softmax(-1) - clean.log_softmax(-1)).mean(dim=(0, 1))
    vals, idx = torch.topk(delta, k)
    toks = [model.tokenizer.decode([int(i)]) if getattr(model, "tokenizer", None) is not None else str(int(i))
            for i in idx]
    return pd.DataFrame({"token": toks, "delta_logprob": vals.cpu().numpy().astype(np.float64)})
