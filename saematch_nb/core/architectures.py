"""One class per SAE architecture: encode, fold and one feature's activation, in one place.

As sae-lens has one class per SAE type, each architecture here says, for itself:

- ``encode(w, pre)``: the codes from pre-activations ``pre = x W_enc + b_enc`` (after b_dec is
  subtracted where the SAE does that);
- ``feature_activation(w, x, f)``: feature f's activation on inputs x (exact: TopK needs every
  pre-activation to know whether f is among the k largest);
- ``fold_scales(...)``: the per-feature factor s of folding (W_enc/s, b_enc/s, W_dec·s, θ/s), or
  None when no factor keeps the SAE's function (see core/fold.py for why each choice);
- ``feature_scale(w, f)``: the same factor for one feature (steering needs one folded decoder row,
  not a folded SAE).

``ARCHITECTURES`` maps the names ``SAEWeights.architecture`` takes to instances; ``get(name)``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..errors import SaematchWarning


class FoldWarning(SaematchWarning):
    """``fold`` left an SAE unchanged because folding would change its function (a TopK SAE whose
    decoder norms differ): matching uses its raw parameters."""


class Architecture:
    """Base: what every architecture answers (see the module docstring)."""

    name = ""
    label = ""  # as people write it
    needs_threshold = False
    needs_k = False

    def encode(self, w: Any, pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def feature_activation(self, w: Any, x: torch.Tensor, f: int) -> torch.Tensor:
        """Activation of feature ``f`` on inputs ``x`` [..., d_in] -> [...]."""
        pre = _pre(w, x, f)
        return self._one(w, pre, f)

    def _one(self, w: Any, pre: torch.Tensor, f: int) -> torch.Tensor:
        return self.activate_one(pre, None if w.threshold is None else w.threshold[f])

    def activate_one(self, pre: torch.Tensor, threshold: torch.Tensor | None) -> torch.Tensor:
        """One feature's activation from its own pre-activation (and threshold): what a hook that
        holds a single feature's parameters computes. TopK cannot (it needs every feature)."""
        raise NotImplementedError(f"a {self.name} feature's activation needs every pre-activation")

    def fold_scales(self, threshold: torch.Tensor | None, W_dec: torch.Tensor, *, bad_threshold: str,
                    topk_rtol: float, label: str) -> torch.Tensor | None:
        raise NotImplementedError

    def feature_scale(self, w: Any, f: int) -> float:
        """The folding factor of feature ``f`` alone (1.0 where folding leaves it as it is)."""
        s = self.fold_scales(None if w.threshold is None else w.threshold[f:f + 1], w.W_dec[f:f + 1],
                             bad_threshold="skip", topk_rtol=0.0, label=w.info.label)
        return 1.0 if s is None else float(s[0])

    def __repr__(self) -> str:
        return f"<{self.name} architecture>"


def _pre(w: Any, x: torch.Tensor, f: int | None = None) -> torch.Tensor:
    x = x.to(w.W_enc.dtype)
    if w.apply_b_dec_to_input:
        x = x - w.b_dec
    if f is None:
        return x @ w.W_enc + w.b_enc
    return x @ w.W_enc[:, f] + w.b_enc[f]


def _unit_decoder_scales(W_dec: torch.Tensor) -> torch.Tensor:
    """1 / ||W_dec[i]|| (a dead feature with a zero row keeps factor 1)."""
    norms = W_dec.detach().to(torch.float64).norm(dim=1)
    return 1.0 / torch.where(norms <= 0, torch.ones_like(norms), norms)


class JumpReLU(Architecture):
    """``f = pre · [pre > θ]`` (Gemma Scope). Folding moves θ into the weights: s = θ."""

    name = "jumprelu"
    label = "JumpReLU"
    needs_threshold = True

    def encode(self, w, pre):
        return pre * (pre > w.threshold)

    def activate_one(self, pre, threshold):
        return pre * (pre > threshold)

    def fold_scales(self, threshold, W_dec, *, bad_threshold, topk_rtol, label):
        thr = threshold.detach().to(torch.float64)
        bad = ~torch.isfinite(thr) | (thr <= 0)
        if bool(bad.any()):
            idx = torch.nonzero(bad).flatten().tolist()
            if bad_threshold == "raise":
                shown = ", ".join(str(i) for i in idx[:8]) + (", ..." if len(idx) > 8 else "")
                raise ValueError(
                    f"{label}: {len(idx)} feature(s) have a threshold that is <= 0, NaN or inf "
                    f"(indices {shown}); folding divides by the threshold. Fix the thresholds, or "
                    "pass bad_threshold='skip' (to fold, match or match_chain) to leave those features unscaled"
                )
            thr = torch.where(bad, torch.ones_like(thr), thr)
        return thr


class ReLU(Architecture):
    """``f = relu(pre)``. No threshold: folding scales each feature to a unit decoder row."""

    name = "relu"
    label = "ReLU"

    def encode(self, w, pre):
        return torch.relu(pre)

    def activate_one(self, pre, threshold):
        return torch.relu(pre)

    def fold_scales(self, threshold, W_dec, *, bad_threshold, topk_rtol, label):
        return _unit_decoder_scales(W_dec)


class TopK(Architecture):
    """``f`` = the k largest of ``relu(pre)``, the others 0. Rescaling features changes which k
    win, so folding applies only when the decoder norms are already equal (within topk_rtol)."""

    name = "topk"
    label = "TopK"
    needs_k = True

    def encode(self, w, pre):
        vals, idx = torch.topk(torch.relu(pre), w.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, vals)

    def feature_activation(self, w, x, f):
        # exact: whether f is among the k largest depends on every pre-activation
        return self.encode(w, _pre(w, x))[..., f]

    def fold_scales(self, threshold, W_dec, *, bad_threshold, topk_rtol, label):
        s = _unit_decoder_scales(W_dec)
        norms = 1.0 / s
        spread = float(norms.max() / norms.min()) if norms.numel() else 1.0
        if spread > 1.0 + topk_rtol:
            warnings.warn(
                f"{label}: fold() left this TopK SAE unchanged: its decoder norms differ "
                f"(max/min = {spread:.3g}) and rescaling features would change which k features "
                "win the top-k, i.e. change the SAE's function. Matching uses the raw parameters.",
                FoldWarning, stacklevel=4,
            )
            return None
        return s

    def feature_scale(self, w, f):
        # the whole SAE decides (equal norms or not); asked quietly, the factor or 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FoldWarning)
            s = self.fold_scales(None, w.W_dec, bad_threshold="skip", topk_rtol=1e-3, label=w.info.label)
        return 1.0 if s is None else float(s[f])


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (JumpReLU(), ReLU(), TopK())}


def get(name: str) -> Architecture:
    """The architecture called ``name`` ("jumprelu", "relu", "topk")."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown SAE architecture {name!r}; expected one of {tuple(ARCHITECTURES)}") from None


def from_saelens(sae: Any) -> Architecture:
    """The architecture of a sae-lens SAE object (by its cfg, else by whether it has a threshold)."""
    cfg = getattr(sae, "cfg", None)
    arch = getattr(cfg, "architecture", None)
    arch = arch() if callable(arch) else arch
    arch = str(arch).lower() if arch else ""
    if "topk" in arch:
        return ARCHITECTURES["topk"]
    if (arch == "jumprelu" or getattr(sae, "threshold", None) is not None
            or getattr(sae, "log_threshold", None) is not None):
        return ARCHITECTURES["jumprelu"]
    return ARCHITECTURES["relu"]
