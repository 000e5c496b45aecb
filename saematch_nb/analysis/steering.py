"""Steering a model with matched features (Feature Flow, Laptev et al. 2025, §steering).

A feature traced through a chain gives one feature per layer. Two interventions per steered
layer ``l`` with feature ``f`` and residual stream ``h``:

- ``mode="add"`` (activate): ``h <- h + s_l * v`` on every token, ``v`` the feature's *folded*
  decoder row (``W_dec[f] * θ_f`` for JumpReLU), so ``s = 1`` adds what the feature writes when it
  fires at its threshold: strengths mean the same at every depth.
- ``mode="scale"`` (deactivate / amplify): ``h <- h + (r_l - 1) * a * W_dec[f]`` with ``a`` the
  feature's activation (JumpReLU) at that token: ``r = 0`` removes the feature's contribution,
  ``r < 0`` pushes away, ``r > 1`` amplifies, ``r = 1`` does nothing.

Schedules across the steered layers (weights ``w_l``): ``constant`` (1), ``linear``
(``(n - k) / n`` for the k-th of n steered layers in depth order: full strength at the first,
1/n at the last), ``exponential`` (``e^{α·l}`` with the layer index l, α = −0.05 as in the
paper). Add mode uses ``s_l = s · w_l``; scale mode scales the deviation from a no-op,
``r_l = 1 + (r − 1) · w_l``, so every schedule keeps ``r = 1`` a no-op.

Spans: ``single`` (the chosen layer only), ``trace`` (every layer the feature's trace reaches),
``cumulative`` (the chosen layer and the traced layers before it: Feature Flow's cumulative
steering of layers 0..l).

Hooks are only ever attached inside ``model.hooks(...)``, so they are removed on exit, also when
the forward pass or the generation raises. On sae-lens' ``HookedSAETransformer`` with an SAE
spliced in at a steered hook (``model.add_sae``), the intervention moves to that SAE's own hook
points (``<hook>.hook_sae_output`` for add, ``<hook>.hook_sae_acts_post`` for scale), because the
plain hook name no longer exists there.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..core._checks import as_index, finite_number, positive_int
from ..core.fold import fold
from ..core.weights import SAEInfo, SAEWeights, layer_from_hook, as_weights
from ..errors import ArgumentTypeError, InvalidArgumentError

SCHEDULES = ("constant", "linear", "exponential")
MODES = ("add", "scale")
SPANS = ("single", "trace", "cumulative")
DEFAULT_HOOK = "blocks.{L}.hook_resid_post"

__all__ = [
    "SCHEDULES", "MODES", "SPANS", "SteeringPlan", "SteeringResult", "schedule_weights",
    "schedule_strengths", "plan_steering", "steering_hooks", "steer", "steered_logits",
    "feature_logit_effect", "strength_sweep", "direct_logit_effect",
]


# -- the plan -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SteeringPlan:
    """Where and how strongly to steer: one entry per steered layer.

    ``strengths`` are ``s_l`` (add mode) or ``r_l`` (scale mode), schedule already applied.
    ``fingerprints``: weights hash of each layer's SAE as the chain saw it ("" = unknown), checked
    against the SAEs given to :func:`steering_hooks` where that is cheap.
    """

    layers: tuple[int, ...]
    features: tuple[int, ...]
    hook_names: tuple[str, ...]
    strengths: tuple[float, ...]
    mode: str = "add"
    origin: tuple[int, int] = (0, 0)
    fingerprints: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    n_features: tuple[int, ...] = ()  # d_sae of each layer's SAE as the chain saw it (() = unknown)
    #: the SAEs of the chain the plan was made from: steer(plan, model, prompt) needs no SAEs
    stack: Any = field(default=None, repr=False, compare=False)
    #: one SAE per entry, for plans over several SAEs of a layer (a flow graph's residual and module
    #: features: ``plan_flow_steering``); () = the chain's stack or the ``saes`` given to the hooks
    saes: tuple = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("layers", "features", "hook_names", "strengths", "fingerprints", "n_features"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        object.__setattr__(self, "features", tuple(int(x) for x in self.features))
        object.__setattr__(self, "strengths", tuple(float(x) for x in self.strengths))
        object.__setattr__(self, "options", dict(self.options))
        n = len(self.layers)
        if not (len(self.features) == len(self.hook_names) == len(self.strengths) == n):
            raise ValueError("SteeringPlan: layers, features, hook_names and strengths must have equal length, "
                             f"got {n}, {len(self.features)}, {len(self.hook_names)}, {len(self.strengths)}")
        object.__setattr__(self, "saes", tuple(self.saes))
        for name in ("fingerprints", "n_features", "saes"):
            if getattr(self, name) and len(getattr(self, name)) != n:
                raise ValueError(f"SteeringPlan: {name} must be empty or one per layer ({n}), "
                                 f"got {len(getattr(self, name))}")
        if self.mode not in MODES:
            raise ValueError(f"unknown steering mode {self.mode!r}; choose one of {MODES}")
        if len(set(self.hook_names)) != n:
            raise ValueError(f"SteeringPlan: each steered layer needs its own hook, got {self.hook_names}")
        if not all(math.isfinite(s) for s in self.strengths):
            raise ValueError(f"SteeringPlan: strengths must be finite, got {self.strengths}")

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame({"layer": self.layers, "feature": self.features,
                             "hook_name": self.hook_names, "strength": self.strengths})

    def __repr__(self) -> str:
        steps = ", ".join(f"L{l}:#{f}×{s:.3g}" for l, f, s in zip(self.layers, self.features, self.strengths))
        return f"SteeringPlan({self.mode}, origin=L{self.origin[0]}#{self.origin[1]}: {steps})"


def schedule_weights(layers: Sequence[int], schedule: str = "constant", alpha: float = -0.05) -> list[float]:
    """Per-layer weight of the intervention (see the module docstring); ``layers`` in depth order.
    ``alpha`` (exponential) must keep every weight a finite float: ``e^{α·l}`` above ~1.8e308
    is an error, not an overflow deep in the math."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    n = len(layers)
    if schedule == "constant":
        return [1.0] * n
    if schedule == "linear":
        return [(n - k) / n for k in range(n)]
    alpha = finite_number(alpha, "alpha")
    try:
        return [math.exp(alpha * int(l)) for l in layers]
    except OverflowError:
        top = max(int(l) for l in layers)
        raise InvalidArgumentError(
            f"alpha={alpha:g} makes the exponential schedule's weight e^(alpha*layer) overflow at layer {top}; "
            f"keep alpha*layer below ~709 (the paper uses alpha=-0.05)") from None


def schedule_strengths(layers: Sequence[int], strength: float, schedule: str = "constant",
                       alpha: float = -0.05, mode: str = "add") -> list[float]:
    """``s · w_l`` (add) or ``1 + (r − 1) · w_l`` (scale) for each layer."""
    if mode not in MODES:
        raise ValueError(f"unknown steering mode {mode!r}; choose one of {MODES}")
    w = schedule_weights(layers, schedule, alpha)
    strength = finite_number(strength, "strength")
    out = [strength * x for x in w] if mode == "add" else [1.0 + (strength - 1.0) * x for x in w]
    if not all(math.isfinite(x) for x in out):  # a huge strength times a huge weight
        raise InvalidArgumentError(f"strength={strength:g} with the {schedule} schedule (alpha={alpha:g}) gives "
                                   f"strengths {out} beyond a float; use a smaller strength or alpha")
    return out


def plan_steering(chain: Any, layer: int, feature: int, *, strength: float = 4.0, span: str = "trace",
                  schedule: str = "constant", alpha: float = -0.05, mode: str = "add",
                  accepted_only: bool = True, hook_template: str = DEFAULT_HOOK) -> SteeringPlan:
    """Plan steering of feature ``feature`` of ``layer`` and, for span "trace"/"cumulative", of its
    matched partners in other layers of ``chain`` (a MatchChain).

    ``strength``: s in add mode, r in scale mode. ``accepted_only``: follow only the steps the
    chain's calibrated criterion accepts (a rejected partner is a different feature, steering it
    would steer something else). Hook names come from the chain's SAE infos (else
    ``hook_template``).
    """
    if span not in SPANS:
        raise ValueError(f"unknown span {span!r}; choose one of {SPANS}")
    if mode not in MODES:
        raise ValueError(f"unknown steering mode {mode!r}; choose one of {MODES}")
    if schedule not in SCHEDULES:  # fail before the trace is computed
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    layer, feature = as_index(layer, "layer"), as_index(feature, "feature")
    # chain.trace checks that the layer is in the chain and the feature in range (clear messages)
    tr = chain.trace(layer, feature, accepted_only=accepted_only)
    if span == "single":
        pairs = [(layer, feature)]
    else:
        pairs = [(int(l), int(f)) for l, f in zip(tr.layers, tr.features) if f >= 0]
        if span == "cumulative":
            pairs = [(l, f) for l, f in pairs if l <= layer]
    chain_layers = list(chain.layers)
    infos = list(getattr(chain, "infos", ()))
    hooks, fps, widths = [], [], []
    for l, _ in pairs:
        pos = chain_layers.index(l)
        info = infos[pos] if pos < len(infos) else None
        hooks.append(info.hook_name if (info is not None and info.hook_name) else hook_template.format(L=l))
        fps.append(chain.fingerprint(l) if hasattr(chain, "fingerprint") else "")
        if hasattr(chain, "n_features"):
            widths.append(int(chain.n_features(l)))
    layers = [l for l, _ in pairs]
    return SteeringPlan(
        layers=tuple(layers), features=tuple(f for _, f in pairs), hook_names=tuple(hooks),
        strengths=tuple(schedule_strengths(layers, strength, schedule, alpha, mode)), mode=mode,
        origin=(layer, feature), fingerprints=tuple(fps), n_features=tuple(widths) if len(widths) == len(fps) else (),
        options={"strength": float(strength), "span": span, "schedule": schedule, "alpha": float(alpha),
                 "accepted_only": bool(accepted_only)},
        stack=getattr(chain, "stack", None),
    )


# -- hooks ----------------------------------------------------------------------------------------
def _peek_hook(obj: Any) -> str | None:
    """The hook an SAE (or an SAEInfo) reads, without loading or converting its weights (None = unknown)."""
    info = obj if isinstance(obj, SAEInfo) else getattr(obj, "info", None)
    hook = getattr(info, "hook_name", None) if info is not None else None
    cfg = getattr(obj, "cfg", None)
    if not hook and cfg is not None:
        meta = getattr(cfg, "metadata", None)
        hook = getattr(meta, "hook_name", None) or getattr(cfg, "hook_name", None)
    return hook if isinstance(hook, str) and hook else None


def _peek_layer(obj: Any) -> int | None:
    """The layer an SAE (or an SAEInfo) reads, without loading or converting its weights."""
    info = obj if isinstance(obj, SAEInfo) else getattr(obj, "info", None)
    if info is not None and getattr(info, "layer", None) is not None:
        return int(info.layer)
    layer = layer_from_hook(_peek_hook(obj))
    return None if layer is None else int(layer)


def check_reads_layer(sae: Any, layer: int, what: str = "map each layer to its own SAE (the ones the chain "
                                                         "was built from)") -> None:
    """InvalidArgumentError when the SAE (or SAEInfo) says it reads another layer than ``layer``,
    the one it is about to be run on (unknown is let through); ``what``: what to do instead."""
    reads = _peek_layer(sae)
    if reads is not None and reads != layer:
        raise InvalidArgumentError(
            f"the SAE given for layer {layer} reads layer {reads} ({_peek_hook(sae) or 'its info.layer'}): {what}")


def _sae_for_layer(saes: Any, layer: int) -> Any:
    if isinstance(saes, Mapping):
        by = {int(k): v for k, v in saes.items()}
        if layer not in by:
            raise KeyError(f"no SAE for steered layer {layer}: SAEs are given for layers {sorted(by)}")
        sae = by[layer]
        # the mapping says which layer an SAE is for; the SAE itself says which layer it reads
        check_reads_layer(sae, layer)
        return sae
    items = list(saes)
    found = {}
    for pos, s in enumerate(items):
        L = _peek_layer(s)
        L = pos if L is None else L
        if L in found:
            raise ValueError(f"two of the SAEs given read layer {L}: pass a {{layer: sae}} mapping")
        found[L] = s
    if layer not in found:
        raise KeyError(f"no SAE for steered layer {layer}: SAEs are given for layers {sorted(found)} "
                       "(pass a {layer: sae} mapping to say which SAE reads which layer)")
    return found[layer]


@dataclass(frozen=True)
class _FeatureParams:
    """What one steered layer needs: feature f's encoder column, bias, threshold, decoder rows."""

    enc: torch.Tensor
    b_enc: torch.Tensor
    threshold: torch.Tensor | None
    dec: torch.Tensor
    dec_folded: torch.Tensor
    b_dec: torch.Tensor | None  # only when the SAE subtracts b_dec from its input
    full: SAEWeights | None  # TopK: the activation depends on all features
    d_in: int
    d_sae: int
    arch: Any = None  # the Architecture: one feature's activation rule


class _OneFeature:
    """A sae-lens SAE seen through one feature's slices, so that ``as_weights`` converts (and
    copies to CPU float32) one row and column instead of the whole SAE (300 MB for Gemma Scope 16k)."""

    def __init__(self, sae: Any, f: int) -> None:
        self.cfg = getattr(sae, "cfg", None)
        self.W_enc, self.b_enc = sae.W_enc[:, f:f + 1], sae.b_enc[f:f + 1]
        self.W_dec, self.b_dec = sae.W_dec[f:f + 1], sae.b_dec
        for name in ("threshold", "log_threshold"):
            t = getattr(sae, name, None)
            if t is not None:
                setattr(self, name, t[f:f + 1])


def _is_topk_module(sae: Any) -> bool:
    arch = getattr(getattr(sae, "cfg", None), "architecture", None)
    arch = arch() if callable(arch) else arch
    return "topk" in str(arch or "").lower()


def _not_the_chains(layer: int, got: str, want: str) -> ValueError:
    return ValueError(
        f"the SAE given for layer {layer} ({got}) is not the one the chain was matched on ({want}): "
        "pass the SAEs the chain was built from")


# weights hash of sae-lens SAEs, computed once per SAE (and again when a parameter changes)
_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, tuple[tuple, str]]" = weakref.WeakKeyDictionary()


def _module_fingerprint(sae: Any) -> str:
    state = tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in
                  (getattr(sae, a, None) for a in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold",
                                                   "log_threshold")) if isinstance(t, torch.Tensor))
    got = _FINGERPRINTS.get(sae)
    if got is None or got[0] != state:
        got = (state, as_weights(sae).fingerprint())
        _FINGERPRINTS[sae] = got
    return got[1]


def _params_of(w: SAEWeights, layer: int, f: int, n_features: int | None) -> _FeatureParams:
    """Feature f of an SAE's weights: its encoder column, bias, threshold, raw and folded decoder
    row (the architecture's own folding factor for that feature)."""
    if n_features is not None and w.d_sae != n_features:
        raise _not_the_chains(layer, f"{w.d_sae} features", f"{n_features} features")
    if not 0 <= f < w.d_sae:
        raise IndexError(f"feature {f} is out of range for the layer-{layer} SAE (d_sae={w.d_sae})")
    return _FeatureParams(w.W_enc[:, f].clone(), w.b_enc[f].clone(),
                          None if w.threshold is None else w.threshold[f].clone(), w.W_dec[f].clone(),
                          w.W_dec[f] * w.arch.feature_scale(w, f), w.b_dec.clone() if w.apply_b_dec_to_input else None,
                          w if w.arch.needs_k else None, w.d_in, w.d_sae, w.arch)


def _stack_feature_params(stack: Any, layer: int, f: int, fingerprint: str,
                          n_features: int | None = None) -> _FeatureParams:
    """Feature f of the layer-``layer`` SAE of an analysis' stack (converted and hashed once per
    analysis, by the stack)."""
    if fingerprint and stack.fingerprint(layer) != fingerprint:
        raise _not_the_chains(layer, f"weights hash {stack.fingerprint(layer)}", f"hash {fingerprint}")
    return _params_of(stack.weights(layer), layer, f, n_features)


def _feature_params(sae: Any, layer: int, f: int, fingerprint: str, n_features: int | None = None) -> _FeatureParams:
    lazy_ok = (not isinstance(sae, SAEWeights) and not hasattr(sae, "to_weights")
               and all(hasattr(sae, a) for a in ("W_enc", "b_enc", "W_dec", "b_dec"))
               and not _is_topk_module(sae))
    if lazy_ok:  # a sae-lens JumpReLU / ReLU SAE: only feature f is needed
        d_sae = int(sae.W_enc.shape[-1])
        if n_features is not None and d_sae != n_features:
            raise _not_the_chains(layer, f"{d_sae} features", f"{n_features} features")
        if not 0 <= f < d_sae:
            raise IndexError(f"feature {f} is out of range for the layer-{layer} SAE (d_sae={d_sae})")
        # The hash is of float32 weights: exact for a float32 SAE (computed once per SAE); one
        # loaded in another precision cannot match a float32 chain's hash, so only its width is checked.
        if fingerprint and sae.W_enc.dtype == torch.float32:
            fp = _module_fingerprint(sae)
            if fp != fingerprint:
                raise _not_the_chains(layer, f"weights hash {fp}", f"hash {fingerprint}")
        one = as_weights(_OneFeature(sae, f))
        return _FeatureParams(one.W_enc[:, 0], one.b_enc[0], None if one.threshold is None else one.threshold[0],
                              one.W_dec[0], fold(one).W_dec[0], one.b_dec if one.apply_b_dec_to_input else None,
                              None, one.d_in, d_sae, one.arch)
    w = as_weights(sae)
    if fingerprint and w.fingerprint() != fingerprint:  # SAEWeights, handles, TopK modules alike
        raise _not_the_chains(layer, f"weights hash {w.fingerprint()}", f"hash {fingerprint}")
    return _params_of(w, layer, f, n_features)


class _OnDevice:
    """Tensors moved to the activation's device/dtype once, not on every forward call."""

    def __init__(self, **tensors: torch.Tensor | None) -> None:
        self._src = tensors
        self._key: tuple | None = None
        self._got: dict[str, torch.Tensor | None] = {}

    def get(self, like: torch.Tensor) -> dict[str, torch.Tensor | None]:
        key = (like.device, like.dtype)
        if key != self._key:
            self._got = {k: None if v is None else v.to(like.device, like.dtype) for k, v in self._src.items()}
            self._key = key
        return self._got


def _check_width(act: torch.Tensor, p: _FeatureParams, name: str, layer: int) -> None:
    if act.shape[-1] != p.d_in:
        raise ValueError(f"steering hook {name}: the activation has width {act.shape[-1]} but the layer-{layer} "
                         f"SAE reads d_in={p.d_in}: the SAEs do not belong to this model (or to this hook)")


def _add_hook(p: _FeatureParams, s: float, name: str, layer: int):
    t = _OnDevice(v=p.dec_folded)

    def hook(act, hook=None):
        _check_width(act, p, name, layer)
        return act + s * t.get(act)["v"]

    return hook


def _scale_hook(p: _FeatureParams, r: float, name: str, layer: int, f: int):
    t = _OnDevice(enc=p.enc, b=p.b_enc, thr=p.threshold, d=p.dec, b_dec=p.b_dec)
    full_on: dict = {}  # TopK weights per device, moved once

    def hook(act, hook=None):
        _check_width(act, p, name, layer)
        g = t.get(act)
        if p.full is not None:  # TopK: feature f's activation depends on the other features
            w = full_on.get(act.device)
            if w is None:
                w = full_on.setdefault(act.device, p.full.to(act.device))
            a = w.encode(act.to(w.W_enc.dtype))[..., f].to(act.dtype)
        else:
            x = act if g["b_dec"] is None else act - g["b_dec"]
            pre = x @ g["enc"] + g["b"]
            a = p.arch.activate_one(pre, g["thr"])  # the architecture's rule, one feature
        return act + (r - 1.0) * a[..., None] * g["d"]

    return hook


def _attached_sae(model: Any, hook_name: str) -> Any:
    """sae-lens' wrapper spliced in at ``hook_name`` by HookedSAETransformer.add_sae, else None."""
    table = getattr(model, "_acts_to_saes", None)
    return table.get(hook_name) if isinstance(table, Mapping) else None


def _sae_acts_hook(f: int, r: float):
    def hook(acts, hook=None):
        out = acts.clone()
        out[..., f] = out[..., f] * r
        return out

    return hook


def steering_hooks(plan: SteeringPlan, saes: Any = None, *, model: Any = None) -> list[tuple[str, Any]]:
    """TransformerLens forward hooks ``(name, fn)`` that carry out ``plan``.

    ``saes``: not needed for a plan made from a chain (it carries the chain's SAEs); else
    ``{layer: sae}`` or a list of SAEs (sae-lens SAEs, SAEWeights, handles) whose layer is read
    from their hook name. ``model``: when given, hook names are checked against it and routed
    into SAEs spliced in with ``HookedSAETransformer.add_sae``. Nothing is attached here.
    """
    if saes is None and plan.stack is None and not plan.saes:
        raise ValueError("this plan carries no SAEs (it was not made by plan_steering from a chain that "
                         "has them): pass saes=[...] (the SAEs the chain was built from)")
    if model is not None:  # a plan for layers the model lacks: say that first
        _check_hook_names(model, [n for n in plan.hook_names if _attached_sae(model, n) is None])
    hooks = []
    fps = plan.fingerprints or ("",) * len(plan.layers)
    widths = plan.n_features or (None,) * len(plan.layers)
    for k, (l, f, name, s, fp, n) in enumerate(zip(plan.layers, plan.features, plan.hook_names, plan.strengths,
                                                   fps, widths)):
        if plan.saes:
            p = _feature_params(plan.saes[k], l, f, fp, n)
        else:
            p = (_stack_feature_params(plan.stack, l, f, fp, n) if saes is None
                 else _feature_params(_sae_for_layer(saes, l), l, f, fp, n))
        wrapper = _attached_sae(model, name) if model is not None else None
        if wrapper is not None:
            d_sae = int(wrapper.sae.cfg.d_sae)
            if d_sae != p.d_sae:  # its feature indices would mean other features
                raise ValueError(f"the SAE attached to the model at {name} has d_sae={d_sae} but the layer-{l} "
                                 f"SAE of the plan has {p.d_sae}: attach the same SAE, or reset_saes()")
            if plan.mode == "add":
                hooks.append((f"{name}.hook_sae_output", _add_hook(p, s, name, l)))
            else:
                hooks.append((f"{name}.hook_sae_acts_post", _sae_acts_hook(f, s)))
            continue
        if plan.mode == "add":
            hooks.append((name, _add_hook(p, s, name, l)))
        else:
            hooks.append((name, _scale_hook(p, s, name, l, f)))
    if model is not None:
        _check_hook_names(model, [n for n, _ in hooks])
    return hooks


def _check_hook_names(model: Any, names: Sequence[str]) -> None:
    have = getattr(model, "hook_dict", None)
    if not isinstance(have, Mapping):
        return
    missing = [n for n in names if n not in have]
    if missing:
        n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
        extra = f" (the model has {n_layers} layers, blocks.0 .. blocks.{n_layers - 1})" if n_layers else ""
        raise KeyError(f"the model has no hook point {missing}{extra}: the plan's layers do not exist in "
                       "this model, or its SAEs were made for another model")


# -- running --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SteeringResult:
    """Baseline and steered continuations of ``prompt`` (same seed, same settings)."""

    prompt: str
    baseline: str
    steered: str
    plan: SteeringPlan
    options: dict = field(default_factory=dict)
    #: the two generations split into the model's tokens (for the diff); () when not known
    baseline_tokens: tuple = ()
    steered_tokens: tuple = ()

    @property
    def changed(self) -> bool:
        return self.baseline != self.steered

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame([{"prompt": self.prompt, "baseline": self.baseline, "steered": self.steered}])

    def __repr__(self) -> str:
        from ..display.text import steering_text

        return steering_text(self)

    def _repr_html_(self) -> str:
        from ..display.html import steering_html

        return steering_html(self)


def _generate(model: Any, prompt: str, max_new_tokens: int, temperature: float, seed: int, kw: dict) -> str:
    dev = getattr(getattr(model, "cfg", None), "device", None)
    cuda = [torch.device(dev)] if dev is not None and torch.device(dev).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # seeded here, the caller's RNG state restored after
        torch.manual_seed(seed)
        out = model.generate(prompt, max_new_tokens=max_new_tokens,
                             temperature=temperature if temperature > 0 else 1.0, do_sample=temperature > 0,
                             verbose=False, return_type="str", **kw)
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out[len(prompt):] if isinstance(out, str) and out.startswith(prompt) else str(out)


def context_room(model: Any, prompt: str, prepend_bos: Any = None) -> int | None:
    """How many tokens ``model.generate`` can add to ``prompt`` within the model's context
    (``cfg.n_ctx``; None when the model does not say). The last new token is never fed back, so
    prompt + new tokens may be one longer than the context."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if not isinstance(n_ctx, int) or not hasattr(model, "to_tokens"):
        return None
    kw = {} if prepend_bos is None else {"prepend_bos": prepend_bos}
    n = int(model.to_tokens(prompt, truncate=False, **kw).shape[-1])
    return n_ctx - n + 1


def check_context(model: Any, prompt: str, max_new_tokens: int, prepend_bos: Any = None) -> None:
    """ValueError (before any generation) when prompt + new tokens do not fit the model."""
    room = context_room(model, prompt, prepend_bos)
    if room is not None and max_new_tokens > room:
        n_ctx = model.cfg.n_ctx
        ask = (f"ask for at most {room} new tokens" if room >= 1 else
               f"shorten the prompt to at most {n_ctx} tokens")
        raise ValueError(
            f"the prompt is {n_ctx - room + 1} tokens and {max_new_tokens} new tokens are asked for: "
            f"together more than the model's context of {n_ctx} tokens; {ask}")


def _check_plan(plan: Any, model: Any, what: str) -> None:
    """The plan comes first (the analysis layer's order: what was made from the chain, then the
    model, then data); a model given first is the old order, said plainly."""
    if isinstance(plan, SteeringPlan):
        return
    if isinstance(model, SteeringPlan):
        raise ArgumentTypeError(f"{what}(plan, model, ...) takes the SteeringPlan first and the model second "
                                f"(the chain, or what was made from it, comes first in every analysis call)")
    raise ArgumentTypeError(f"{what}(plan, model, ...) needs a SteeringPlan (from plan_steering) first, "
                            f"got {type(plan).__name__}")


def _check_chain(chain: Any, model: Any, what: str) -> None:
    if hasattr(chain, "pairs") and hasattr(chain, "layers"):
        return
    if hasattr(model, "pairs") and hasattr(model, "layers"):
        raise ArgumentTypeError(f"{what}(chain, model, ...) takes the MatchChain first and the model second "
                                f"(the chain comes first in every analysis call)")
    raise ArgumentTypeError(f"{what}(chain, model, ...) needs a MatchChain first, got {type(chain).__name__}")


def steer(plan: SteeringPlan, model: Any, prompt: str, *, max_new_tokens: int = 40, temperature: float = 0.0,
          seed: int = 0, saes: Any = None, **generate_kw: Any) -> SteeringResult:
    """``steer(plan, model, prompt)``: generate from ``prompt`` without and with the plan's hooks,
    from the same seed. The plan carries the chain's SAEs; ``saes=`` steers with SAEs given
    explicitly, checked against the chain's weights hashes.

    ``temperature`` 0 (default) is greedy decoding, > 0 samples (a finite number; anything else is
    an error). ``generate_kw`` go to ``model.generate``.
    The hooks live only inside ``model.hooks(...)``: they are gone when this returns or raises.
    """
    _check_plan(plan, model, "steer")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("steer needs a non-empty prompt string")
    max_new_tokens = as_index(max_new_tokens, "max_new_tokens")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    # NaN or -1 would silently decode greedily (temperature > 0 is False for both)
    temperature = finite_number(temperature, "temperature (0 for greedy decoding, > 0 to sample)", minimum=0.0)
    seed = as_index(seed, "seed")
    check_context(model, prompt, max_new_tokens, generate_kw.get("prepend_bos"))
    hooks = steering_hooks(plan, saes, model=model)  # all checks before anything is generated
    baseline = _generate(model, prompt, max_new_tokens, temperature, seed, generate_kw)
    with model.hooks(fwd_hooks=hooks):  # removed on exit, also when generation raises
        steered = _generate(model, prompt, max_new_tokens, temperature, seed, generate_kw)
    return SteeringResult(prompt, baseline, steered, plan,
                          {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed},
                          baseline_tokens=_str_tokens(model, baseline), steered_tokens=_str_tokens(model, steered))


def _str_tokens(model: Any, text: str) -> tuple[str, ...]:
    """``text`` as the model's token strings (the diff's units); () when the model cannot say, and
    the display then diffs words. Joined, they must give the text back, else words are safer."""
    fn = getattr(model, "to_str_tokens", None)
    if fn is None or not text:
        return ()
    try:
        toks = tuple(str(t) for t in fn(text, prepend_bos=False))
    except Exception:  # a tokenizer that cannot take this text: words instead
        return ()
    return toks if "".join(toks) == text else ()


def _d_vocab(model: Any) -> int | None:
    n = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if isinstance(n, int) and n > 0:
        return n
    W_U = getattr(model, "W_U", None)
    return int(W_U.shape[-1]) if isinstance(W_U, torch.Tensor) else None


def check_token_ids(model: Any, ids: Any, what: str = "tokens") -> None:
    """Token ids must be integers in [0, d_vocab): a negative id would index the vocabulary from
    its end (-3 read as d_vocab - 3), a float would be cut. Strings pass (the model tokenizes them)."""
    if isinstance(ids, str):
        return
    try:
        t = torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise InvalidArgumentError(f"{what} must be a string or integer token ids, got {type(ids).__name__}") from None
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise InvalidArgumentError(f"{what} must be integer token ids, got {t.dtype}")
    n = _d_vocab(model)
    if t.numel() and (int(t.min()) < 0 or (n is not None and int(t.max()) >= n)):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise InvalidArgumentError(f"{what} holds token id {bad}: token ids must be in [0, "
                                   f"{n if n is not None else 'd_vocab'}) for this model")


def steered_logits(plan: SteeringPlan, model: Any, tokens: Any, *, saes: Any = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``steered_logits(plan, model, tokens)``: (clean logits, steered logits) of one forward pass
    on the same tokens (a string, or integer ids in [0, d_vocab))."""
    _check_plan(plan, model, "steered_logits")
    check_token_ids(model, tokens)
    hooks = steering_hooks(plan, saes, model=model)
    with torch.no_grad():
        clean = model(tokens)
        with model.hooks(fwd_hooks=hooks):
            steered = model(tokens)
    return clean, steered


def feature_logit_effect(plan: SteeringPlan, model: Any, tokens: Any, *, k: int = 10, direction: str = "up",
                         saes: Any = None) -> Any:
    """``feature_logit_effect(plan, model, tokens)``: the ``k`` tokens whose log-probability,
    averaged over positions, rises (``direction="up"``) or falls (``"down"``) most under steering:
    a readable summary of what the plan does."""
    import pandas as pd

    _check_plan(plan, model, "feature_logit_effect")
    if direction not in ("up", "down"):
        raise ValueError(f"direction must be 'up' or 'down', got {direction!r}")
    k = positive_int(k, "k")
    clean, steered = steered_logits(plan, model, tokens, saes=saes)
    delta = (steered.float().log_softmax(-1) - clean.float().log_softmax(-1)).mean(dim=(0, 1))
    vals, idx = torch.topk(delta if direction == "up" else -delta, min(k, delta.numel()))
    vals = vals if direction == "up" else -vals
    tok = getattr(model, "tokenizer", None)
    ids = [int(i) for i in idx]
    names = [tok.decode([i]) if tok is not None else str(i) for i in ids]
    return pd.DataFrame({"token": names, "token_id": ids,
                         "delta_logprob": vals.cpu().numpy().astype(np.float64)})


def strength_sweep(chain: Any, model: Any, layer: int, feature: int, prompt: str, *,
                   strengths: Sequence[float] = (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0), span: str = "trace",
                   schedule: str = "constant", mode: str = "add", accepted_only: bool = True,
                   target: str | int | None = None):
    """How much steering changes the model's next-token predictions on ``prompt``, per strength.

    One clean and one steered forward pass per strength (no generation). Columns: ``strength``;
    ``kl``, the KL divergence KL(clean ‖ steered) of the next-token distributions, averaged over the
    prompt's positions (nats; 0 = no change); ``target`` (the token followed) and
    ``target_delta_logprob``, the mean change of its log-probability. ``target``: a token string
    or id; by default the token that the strongest setting (farthest from the no-op) raises most.
    ``strengths``: s in add mode (0 is the no-op), r in scale mode (1 is the no-op).
    """
    import pandas as pd

    _check_chain(chain, model, "strength_sweep")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("strength_sweep needs a non-empty prompt string")
    if target is not None and not isinstance(target, str):  # checked before any forward pass
        tid = as_index(target, "target token id")
        n = _d_vocab(model)
        if tid < 0 or (n is not None and tid >= n):  # -5 overflowed in the tokenizer's decode
            raise InvalidArgumentError(f"target token id {tid} is not in [0, {n if n is not None else 'd_vocab'}) "
                                       "for this model; give a token id in range or a token string")
    values = [float(x) for x in strengths]
    if not values or not all(math.isfinite(x) for x in values):
        raise ValueError(f"strengths must be a non-empty list of finite numbers, got {strengths!r}")
    plans = [plan_steering(chain, layer, feature, strength=x, span=span, schedule=schedule, mode=mode,
                           accepted_only=accepted_only) for x in values]
    tokens = model.to_tokens(prompt) if hasattr(model, "to_tokens") else prompt
    with torch.no_grad():
        clean = model(tokens).float().log_softmax(-1)
        steered = []
        for plan in plans:
            with model.hooks(fwd_hooks=steering_hooks(plan, model=model)):
                steered.append(model(tokens).float().log_softmax(-1))
    tok = getattr(model, "tokenizer", None)
    if target is None:  # the strongest push of the sweep decides what to follow
        ref = max(range(len(values)), key=lambda k: abs(values[k] - (1.0 if mode == "scale" else 0.0)))
        delta = (steered[ref] - clean).mean(dim=(0, 1))
        tid = int(torch.argmax(delta))
    elif isinstance(target, str):
        ids = model.to_tokens(target, prepend_bos=False)[0] if hasattr(model, "to_tokens") else None
        if ids is None or ids.numel() != 1:
            raise ValueError(f"target {target!r} is not one token of this model")
        tid = int(ids[0])
    else:
        tid = as_index(target, "target token id")  # its range is checked above
    name = tok.decode([tid]) if tok is not None else str(tid)
    rows = []
    for x, lp in zip(values, steered):
        kl = (clean.exp() * (clean - lp)).sum(-1).mean().item()
        rows.append({"strength": x, "kl": float(kl), "target": name,
                     "target_delta_logprob": float((lp[..., tid] - clean[..., tid]).mean().item())})
    return pd.DataFrame(rows)


def direct_logit_effect(chain: Any, model: Any, layer: int, feature: int, *, k: int = 5):
    """The tokens whose logits the feature's decoder direction raises and lowers most, read
    straight through the unembedding (``W_dec[f] · W_U``, after the final norm's centring and
    scale; its data-dependent normalisation is left out): Neuronpedia's "top logits". No forward
    pass: cheap enough for every step of a trace. Returns ``(up, down)``, lists of (token, value).
    """
    _check_chain(chain, model, "direct_logit_effect")
    stack = getattr(chain, "stack", None)
    if stack is None:
        raise ValueError("this chain carries no SAEs (loaded without them): attach them with chain.attach(saes)")
    W_U = getattr(model, "W_U", None)
    if W_U is None:
        raise ValueError(f"{type(model).__name__} has no unembedding W_U (a TransformerLens model has one)")
    layer, feature, k = as_index(layer, "layer"), as_index(feature, "feature"), positive_int(k, "k")
    W_dec = stack.weights(layer).W_dec
    if not 0 <= feature < W_dec.shape[0]:  # -1 would index the last feature
        raise IndexError(f"feature {feature} is out of range for the layer-{layer} SAE (d_sae={W_dec.shape[0]})")
    d = W_dec[feature].detach().float()
    cfg = getattr(model, "cfg", None)
    if getattr(cfg, "normalization_type", None) in ("LN", "LNPre"):
        d = d - d.mean()  # LayerNorm removes the mean of the residual before unembedding
    w = getattr(getattr(model, "ln_final", None), "w", None)
    if isinstance(w, torch.Tensor):
        d = d * w.detach().float().to(d.device)
    logits = d.to(W_U.device) @ W_U.detach().float()
    k = min(k, logits.numel())
    tok = getattr(model, "tokenizer", None)

    def name(i: int) -> str:
        return tok.decode([i]) if tok is not None else str(i)

    up = torch.topk(logits, k)
    down = torch.topk(-logits, k)
    return ([(name(int(i)), float(v)) for v, i in zip(up.values, up.indices)],
            [(name(int(i)), -float(v)) for v, i in zip(down.values, down.indices)])
