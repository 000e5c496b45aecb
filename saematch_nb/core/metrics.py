"""Data-based checks of a match: explained variance, co-activation, Pearson, Lerner relations.

Pure torch/numpy. Everything streams: accumulators take batches of activations (tokens × features)
and keep running sums in float64, so no statistic needs all tokens in memory.

Definitions (documented choices where the papers leave room):

- Explained variance (SAE Match Eq. 5): ``1 - Var(x̂ - x) / Var(x)``, total variance over tokens
  and dimensions (per-dimension variances summed, means taken over tokens): the residual's mean is
  removed, so a constant offset of x̂ is forgiven. ``value(residual_mean="kept")`` gives
  ``1 - E|x̂ - x|² / Var(x)`` instead (the offset counts as error; never higher).
- Matching score (SAE Match "probability that the two matched features are active together"):
  ``P(both active | either active)`` with *active = activation > 0* (the JumpReLU fired). It is
  the Jaccard index of the firing sets; symmetric, 1 when the two always fire together.
- Lerner et al. relations use *active = activation > 0.2 × the feature's maximum over the data*:
  sufficiency ``P(B active | A active)``, necessity ``P(A active | B active)``, Jaccard
  ``|A ∧ B| / |A ∨ B|``.
- Pearson correlation of the raw activations over all tokens (0 when a feature never varies).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

LERNER_FRACTION = 0.2


def _f64(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.from_numpy(np.array(x, dtype=np.float64))  # a copy: read-only inputs are fine


# -- explained variance ---------------------------------------------------------------------------
@dataclass
class EVAccumulator:
    """Running sums for ``1 - Var(x̂ - x) / Var(x)`` over batches of rows [tokens, d]."""

    n: int = 0
    s_x: torch.Tensor | None = None
    s_xx: torch.Tensor | None = None
    s_r: torch.Tensor | None = None
    s_rr: torch.Tensor | None = None

    def update(self, x_hat, x) -> None:
        x = _f64(x).reshape(-1, _f64(x).shape[-1])
        r = _f64(x_hat).reshape(x.shape) - x
        if self.s_x is None:
            z = torch.zeros(x.shape[-1], dtype=torch.float64)
            self.s_x, self.s_xx, self.s_r, self.s_rr = z.clone(), z.clone(), z.clone(), z.clone()
        self.n += x.shape[0]
        self.s_x += x.sum(0)
        self.s_xx += (x * x).sum(0)
        self.s_r += r.sum(0)
        self.s_rr += (r * r).sum(0)

    def value(self, residual_mean: str = "removed") -> float:
        """EV with the residual's mean ``"removed"`` (Var of the residual, the default) or
        ``"kept"`` (its mean square)."""
        if residual_mean not in ("removed", "kept"):
            raise ValueError(f"residual_mean must be 'removed' or 'kept', got {residual_mean!r}")
        if not self.n:
            return float("nan")
        var_x = (self.s_xx / self.n - (self.s_x / self.n) ** 2).sum()
        var_r = (self.s_rr / self.n).sum()
        if residual_mean == "removed":
            var_r = var_r - ((self.s_r / self.n) ** 2).sum()
        if var_x <= 0:
            return float("nan")
        return float(1.0 - var_r / var_x)


def explained_variance(x_hat, x) -> float:
    """``1 - Var(x̂ - x) / Var(x)`` (total variance over rows and dims)."""
    acc = EVAccumulator()
    acc.update(x_hat, x)
    return acc.value()


# -- paired statistics ----------------------------------------------------------------------------
@dataclass
class PairStats:
    """Statistics of given feature pairs (a_idx[k], b_idx[k]) accumulated over token batches.

    ``max_a``/``max_b`` (the features' maxima over the data, from a first pass) define Lerner's
    "active" (> 0.2 × max); without them only the > 0 statistics are meaningful.
    """

    a_idx: np.ndarray
    b_idx: np.ndarray
    max_a: np.ndarray | None = None
    max_b: np.ndarray | None = None
    frac: float = LERNER_FRACTION
    n: int = 0
    sums: dict = field(default_factory=dict)

    def update(self, fa, fb) -> None:
        a = _f64(fa)[:, torch.as_tensor(self.a_idx, dtype=torch.long)]
        b = _f64(fb)[:, torch.as_tensor(self.b_idx, dtype=torch.long)]
        a0, b0 = a > 0, b > 0
        terms = {
            "a": a.sum(0), "b": b.sum(0), "aa": (a * a).sum(0), "bb": (b * b).sum(0),
            "ab": (a * b).sum(0), "fire_both": (a0 & b0).sum(0).double(),
            "fire_either": (a0 | b0).sum(0).double(),
        }
        if self.max_a is not None and self.max_b is not None:
            ta = self.frac * _f64(self.max_a[self.a_idx])
            tb = self.frac * _f64(self.max_b[self.b_idx])
            la, lb = (a > ta) & a0, (b > tb) & b0
            terms.update({"act_a": la.sum(0).double(), "act_b": lb.sum(0).double(),
                          "act_both": (la & lb).sum(0).double(),
                          "act_either": (la | lb).sum(0).double()})
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0) + v
        self.n += a.shape[0]

    def result(self) -> dict[str, np.ndarray]:
        s, n = self.sums, max(self.n, 1)
        out = {
            "pearson": _pearson(s["a"], s["b"], s["aa"], s["bb"], s["ab"], n).numpy(),
            "matching_score": _ratio(s["fire_both"], s["fire_either"]).numpy(),
        }
        if "act_a" in s:
            out["sufficiency"] = _ratio(s["act_both"], s["act_a"]).numpy()
            out["necessity"] = _ratio(s["act_both"], s["act_b"]).numpy()
            out["jaccard"] = _ratio(s["act_both"], s["act_either"]).numpy()
        return out


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num/den, NaN where den == 0 (undefined: neither feature was ever active)."""
    out = torch.full_like(num, float("nan"))
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def _pearson(sa, sb, saa, sbb, sab, n) -> torch.Tensor:
    cov = sab / n - (sa / n) * (sb / n)
    va = (saa / n - (sa / n) ** 2).clamp_min(0)
    vb = (sbb / n - (sb / n) ** 2).clamp_min(0)
    den = torch.sqrt(va * vb)
    out = torch.zeros_like(cov)
    ok = den > 1e-12
    out[ok] = cov[ok] / den[ok]
    return out


def pair_statistics(fa, fb, a_idx, b_idx, *, frac: float = LERNER_FRACTION) -> dict[str, np.ndarray]:
    """All pair statistics on in-memory activations (maxima taken from the same data)."""
    fa, fb = _f64(fa), _f64(fb)
    ps = PairStats(np.asarray(a_idx), np.asarray(b_idx), fa.max(0).values.numpy(),
                   fb.max(0).values.numpy(), frac)
    ps.update(fa, fb)
    return ps.result()


# -- the data-driven best partner -----------------------------------------------------------------
@dataclass
class CrossMoments:
    """Running ``Σ a``, ``Σ a²`` per A-feature, the same for B, and ``Σ a bᵀ`` for a block of
    A-features (rows ``rows``) against all B-features: the blocked Pearson matrix.

    Accumulates in float64 on ``device``; the block is [len(rows), n_b].
    """

    rows: slice
    n_b: int
    device: str | torch.device = "cpu"
    n: int = 0
    s_a: torch.Tensor | None = None
    s_aa: torch.Tensor | None = None
    s_b: torch.Tensor | None = None
    s_bb: torch.Tensor | None = None
    s_ab: torch.Tensor | None = None

    def update(self, fa, fb) -> None:
        a = torch.as_tensor(fa)[:, self.rows].to(self.device, torch.float64)
        b = torch.as_tensor(fb).to(self.device, torch.float64)
        if self.s_ab is None:
            self.s_a = torch.zeros(a.shape[1], dtype=torch.float64, device=self.device)
            self.s_aa = torch.zeros_like(self.s_a)
            self.s_b = torch.zeros(self.n_b, dtype=torch.float64, device=self.device)
            self.s_bb = torch.zeros_like(self.s_b)
            self.s_ab = torch.zeros(a.shape[1], self.n_b, dtype=torch.float64, device=self.device)
        self.n += a.shape[0]
        self.s_a += a.sum(0)
        self.s_aa += (a * a).sum(0)
        self.s_b += b.sum(0)
        self.s_bb += (b * b).sum(0)
        self.s_ab += _cross(torch.as_tensor(fa)[:, self.rows], torch.as_tensor(fb), self.device)

    def pearson(self) -> torch.Tensor:
        n = max(self.n, 1)
        return _pearson(self.s_a[:, None], self.s_b[None, :], self.s_aa[:, None],
                        self.s_bb[None, :], self.s_ab, n)

    def best(self) -> tuple[np.ndarray, np.ndarray]:
        """(argmax over B, max Pearson) per A-row of the block; -1 where no B correlates."""
        r = self.pearson()
        val, idx = r.max(dim=1)
        idx = torch.where(val > 0, idx, torch.full_like(idx, -1))
        return idx.cpu().numpy().astype(np.int64), val.cpu().numpy()


def _cross(a: torch.Tensor, b: torch.Tensor, device) -> torch.Tensor:
    """``aᵀ b`` in float64. SAE codes are sparse (L0 ≪ width): a sparse×dense product costs
    nnz(a)·n_b instead of tokens·n_a·n_b; each batch's float32 product is summed in float64."""
    a = a.to(device, torch.float32)
    b = b.to(device, torch.float32)
    if a.numel() and (a != 0).float().mean() < 0.05:
        return torch.sparse.mm(a.T.contiguous().to_sparse(), b).double()
    return (a.T @ b).double()


def best_pearson_partner(fa, fb, *, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Best Pearson partner in B of every A-feature, on in-memory activations (blocked)."""
    fa, fb = torch.as_tensor(fa), torch.as_tensor(fb)
    idx, val = [], []
    for s in range(0, fa.shape[1], block):
        cm = CrossMoments(slice(s, min(s + block, fa.shape[1])), fb.shape[1])
        cm.update(fa, fb)
        i, v = cm.best()
        idx.append(i)
        val.append(v)
    return np.concatenate(idx), np.concatenate(val)


def agreement_rate(partner: np.ndarray, data_partner: np.ndarray, *, mask: np.ndarray | None = None) -> float:
    """Fraction of A-features whose SAE Match partner is the data's best Pearson partner, over
    features that have both (partner != -1 and data_partner != -1) and pass ``mask``."""
    partner = np.asarray(partner)
    data_partner = np.asarray(data_partner)
    ok = (partner >= 0) & (data_partner >= 0)
    if mask is not None:
        ok &= np.asarray(mask, bool)
    return float((partner[ok] == data_partner[ok]).mean()) if ok.any() else float("nan")
