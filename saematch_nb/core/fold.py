"""Parameter folding (SAE Match, Eq. 4): move each feature's scale out of the activation rule.

JumpReLU: ``W_enc' = W_enc / θ``, ``b_enc' = b_enc / θ``, ``W_dec' = W_dec · θ[:, None]``,
``θ' = 1``. The folded SAE computes exactly the same reconstruction (the activation of feature i
is divided by θ_i and its decoder row multiplied by θ_i), but features of different layers are
now on the same scale and can be compared by their parameters.

ReLU: there is no threshold, so the only free per-feature scale is the decoder norm. Folding
rescales each feature to a unit decoder row (``W_dec[i] / ||W_dec[i]||``, encoder column and
b_enc times ``||W_dec[i]||``). ReLU commutes with positive scaling, so the function is unchanged.

TopK: the same rescaling would change which k features win the top-k ranking (the ranking is on
pre-activations, which folding rescales per feature), so the function would change. ``fold``
therefore applies the unit-norm rescaling to a TopK SAE only when its decoder norms are already
equal to within ``topk_rtol`` (then every pre-activation is scaled by the same factor and the
ranking is kept); otherwise it returns an unchanged copy (``folded=True``, as there is nothing
that can be folded safely) and emits a ``FoldWarning`` (a ``SaematchWarning``, hence a ``UserWarning``)
saying so.

Works on :class:`~saematch_nb.core.weights.SAEWeights` and, by duck typing, on sae-lens SAE
objects (deep copy, parameters modified in place on the copy; the original is never touched).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch

from . import architectures
from .weights import SAEWeights, check_float

BAD_THRESHOLD_CHOICES = ("raise", "skip")


def fold(sae: Any, *, bad_threshold: str = "raise", topk_rtol: float = 1e-3) -> Any:
    """Return a folded copy of ``sae`` (same type: SAEWeights in, SAEWeights out; sae-lens in,
    sae-lens out). The input is never modified.

    Parameters
    ----------
    sae:
        :class:`SAEWeights` or a sae-lens SAE (anything with ``W_enc, b_enc, W_dec`` parameters
        and, for JumpReLU, ``threshold``).
    bad_threshold:
        What to do with JumpReLU features whose threshold is ≤ 0, NaN or inf (they cannot be
        divided by). ``"raise"`` (default): ``ValueError`` naming them. ``"skip"``: leave those
        features unscaled (their θ stays as it is); every other feature is folded. There is
        never a silent division by zero.
    topk_rtol:
        TopK SAEs are rescaled only when ``max/min`` of the decoder norms is within
        ``1 + topk_rtol`` (see module docstring); otherwise they are returned unchanged with a
        warning.

    Raises
    ------
    ValueError
        NaN/inf anywhere in the weights (the tensor is named), a bad threshold with
        ``bad_threshold="raise"``, or an unknown ``bad_threshold``.
    """
    if bad_threshold not in BAD_THRESHOLD_CHOICES:
        raise ValueError(f"bad_threshold must be one of {BAD_THRESHOLD_CHOICES}, got {bad_threshold!r}")
    if isinstance(sae, SAEWeights):
        return _fold_weights(sae, bad_threshold, topk_rtol)
    if all(hasattr(sae, a) for a in ("W_enc", "b_enc", "W_dec")):
        return _fold_module(sae, bad_threshold, topk_rtol)
    raise TypeError(
        f"cannot fold a {type(sae).__name__}: pass SAEWeights or a sae-lens SAE "
        "(use saematch_nb.as_weights to convert other inputs)"
    )


# -- shared numerics ------------------------------------------------------------------------------

def _surely_finite(t: torch.Tensor) -> bool:
    """True when the sum of ``t`` is finite, so every entry is (one fast reduction instead of a
    boolean copy of a 16k x 2304 matrix); False tells nothing: a finite sum may overflow, so the
    caller then looks entry by entry."""
    if not t.is_floating_point():
        return True
    return bool(torch.isfinite(t.detach().sum(dtype=torch.float64 if t.dtype == torch.float64 else None)))


def _check_finite(label: str, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is None or _surely_finite(t):
            continue
        bad = ~torch.isfinite(t.detach())
        if bool(bad.any()):
            n = int(bad.sum())
            raise ValueError(
                f"{label}: {name} contains {n} NaN/inf value(s); the SAE weights are corrupt "
                "(reload them, or check the conversion that produced them)"
            )


def _check_folded(label: str, scale: torch.Tensor, **tensors: torch.Tensor) -> None:
    """Folding divides by θ: in float16 (max 65504) a tiny θ overflows to inf, and matching
    would then fail deep inside the solver. Name the features and say what to do."""
    if all(_surely_finite(t) for t in tensors.values()):
        return
    bad = torch.zeros(scale.shape[0], dtype=torch.bool, device=scale.device)
    for name, t in tensors.items():
        fin = torch.isfinite(t.detach())
        bad |= ~(fin.all(0) if name == "W_enc" else fin.all(1) if name == "W_dec" else fin)
    if bool(bad.any()):
        idx = torch.nonzero(bad).flatten().tolist()
        shown = ", ".join(str(i) for i in idx[:8]) + (", ..." if len(idx) > 8 else "")
        dtype = str(next(iter(tensors.values())).dtype).replace("torch.", "")
        raise ValueError(
            f"{label}: folding overflows {dtype} for {len(idx)} feature(s) (indices {shown}; smallest "
            f"scale {float(scale[bad].min()):.3g}): the folded weights do not fit {dtype}. Convert the "
            "SAE to float32 first (sae.to(dtype=torch.float32), or saematch_nb.as_weights(sae) for a "
            "sae-lens SAE), then fold or match it"
        )


def _fold_weights(w: SAEWeights, bad_threshold: str, topk_rtol: float) -> SAEWeights:
    label = f"fold({w.info.label})"
    # a NaN/inf threshold is handled (named, or skipped) by the threshold check below
    _check_finite(label, W_enc=w.W_enc, b_enc=w.b_enc, W_dec=w.W_dec, b_dec=w.b_dec)
    s = w.arch.fold_scales(w.threshold, w.W_dec, bad_threshold=bad_threshold, topk_rtol=topk_rtol, label=label)
    if s is None:
        return replace(w, folded=True)
    dt = w.W_enc.dtype
    s_t = s.to(device=w.W_enc.device, dtype=torch.float64)
    # float32 weights and float32 scales: one float32 product or quotient is correctly rounded, and
    # so bit for bit what the float64 detour rounds back to (53 >= 2*24 + 2 bits: double rounding is
    # harmless for * and /), without float64 copies of the matrices
    tensors = (w.W_enc, w.b_enc, w.W_dec) + (() if w.threshold is None else (w.threshold,))
    s32 = s_t.to(torch.float32)
    direct = all(t.dtype == torch.float32 for t in tensors) and bool(torch.equal(s32.double(), s_t))
    work, s_w = (torch.float32, s32) if direct else (torch.float64, s_t)
    thr = None
    if w.threshold is not None:
        thr = (w.threshold.to(work) / s_w).to(w.threshold.dtype)
    W_enc = (w.W_enc.to(work) / s_w[None, :]).to(dt)
    b_enc = (w.b_enc.to(work) / s_w).to(w.b_enc.dtype)
    W_dec = (w.W_dec.to(work) * s_w[:, None]).to(w.W_dec.dtype)
    _check_folded(label, s_t, W_enc=W_enc, b_enc=b_enc, W_dec=W_dec)
    return replace(w, W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, threshold=thr, folded=True)


def _fold_module(sae: Any, bad_threshold: str, topk_rtol: float) -> Any:
    label = f"fold({type(sae).__name__})"
    arch = architectures.from_saelens(sae)
    thr = getattr(sae, "threshold", None)
    if arch.needs_threshold and thr is None and getattr(sae, "log_threshold", None) is not None:
        raise ValueError(
            f"{label}: this SAE stores log_threshold; convert it with saematch_nb.as_weights(sae) "
            "and fold the SAEWeights instead"
        )
    if sae.W_enc.ndim != 2 or 0 in tuple(sae.W_enc.shape):
        raise ValueError(f"{label}: W_enc has shape {tuple(sae.W_enc.shape)}; an SAE needs at least one "
                         "feature and one input dimension ([d_in, d_sae], both > 0)")
    # an integer copy would be folded in place by truncation (θ = 2 turns weights into zeros)
    check_float(label, W_enc=sae.W_enc, b_enc=sae.b_enc, W_dec=sae.W_dec, b_dec=getattr(sae, "b_dec", None),
                 threshold=thr)
    _check_finite(label, W_enc=sae.W_enc, b_enc=sae.b_enc, W_dec=sae.W_dec, b_dec=getattr(sae, "b_dec", None))
    s = arch.fold_scales(thr, sae.W_dec, bad_threshold=bad_threshold, topk_rtol=topk_rtol, label=label)
    out = copy.deepcopy(sae)
    if s is None:
        return out
    with torch.no_grad():
        s_t = s.to(device=out.W_enc.device)
        folded = {name: op(getattr(out, name).to(torch.float64)).to(getattr(out, name).dtype)
                  for name, op in (("W_enc", lambda t: t / s_t[None, :]), ("b_enc", lambda t: t / s_t),
                                   ("W_dec", lambda t: t * s_t[:, None]))}
        _check_folded(label, s_t, **folded)  # before the copy is changed: nothing half-folded
        for name, t in folded.items():
            getattr(out, name).copy_(t)
        if arch.needs_threshold:
            out.threshold.copy_((out.threshold.to(torch.float64) / s_t).to(out.threshold.dtype))
    return out
