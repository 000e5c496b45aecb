"""Feature Flow's module-resolved view (Laptev, Balagansky, Aksenov, Gavrilov 2025, arXiv 2502.03032).

For a residual feature ``f`` of layer ``L`` (its unit decoder direction) and each *predecessor*
module ``P``::

    s(P) = max_k cos(f, W_dec(P)_k)      P in {R: residual SAE of the layer before,
                                                   M: MLP-output SAE of layer L,
                                                   A: attention-output SAE of layer L}

with the top-1 index ``k`` kept. A feature is *translated* (high s(R), low s(M) and s(A)),
*processed* (high s(R) and a high s(M) or s(A)), *newborn* (low s(R), a high s(M) or s(A)) or
*unexplained* (all low). Data-free: decoder rows only, no activations.

**Attention SAEs at ``hook_z``** (Gemma Scope 2's ``blocks.L.attn.hook_z``) read the heads' outputs
before the output projection: their decoder rows live in ``n_heads * d_head``, not in the residual
stream. A feature that writes ``z = d`` into the heads adds ``sum_h d[h] @ W_O[h]`` to the
attention output (``b_O`` does not depend on the feature), so its ``d_model`` direction is the row
reshaped to ``[n_heads, d_head]`` (head-major, as sae-lens flattens ``hook_z``) and contracted with
``W_O [n_heads, d_head, d_model]`` over both axes (:func:`project_attention`). Pass the
projections as ``attn_out_proj`` (``{layer: W_O}``, or TransformerLens' stacked ``model.W_O``);
``saematch_nb.sources.flow.attention_out_proj(model)`` reads them from a model, with the
post-attention norm's gain folded in for models that have one (Gemma 2 / 3).

**Thresholds: a null of each pair's own geometry** (:func:`null_queries`, :func:`calibrate_against`).
What counts as a "high" s(P) depends on the pair: the width of P (the max of more cosines is
larger), the dimension, and above all the shape of the decoder sets: residual and module SAEs
crowd into the same few dominant directions of the stream and share mean directions, so an
unrelated feature comes much closer to P than it would in general position. The null asks how
close P comes to a feature *drawn like layer L's features but unrelated to P*: a feature ``f`` of
layer L (unit decoder row) is reflected about the mean ``mu`` of L's unit rows in their principal
axes, ``f' = mu + O (f - mu)`` with ``O = V diag(s) V^T``, ``V`` the eigenvectors of the
covariance of L's rows and ``s`` random signs. Over the features and the signs, ``f'`` has
exactly L's mean and covariance (spectrum *and* axes: it occupies the same directions of the
stream as the real features, facing P as they do), while which real feature it was, and so its
alignment with any feature of P, is scrambled. P is left exactly as it is (its widths, norms,
clusters, spectrum). The null value is ``max_k cos(f', W_dec(P)_k)``, for ``n_null`` reflected
features (at least :data:`MIN_REFLECTIONS` independent reflections, each on its own sample of
features; as many as needed to reach ``n_null`` values when the SAE is smaller), the same
reflected features for the three modules of a layer. The null is exact when L's cloud of
directions is symmetric under reflections of its principal axes about its mean (any Gaussian-like
cloud, however anisotropic); a feature lying on one principal axis stays close to itself (then
the null errs high: conservative); clusters are mirrored to where L may have none (then it errs
low). Measured (benchmarks/bench_flow_null.py, alpha = 1%, d 64, 5 seeds per shape): a false-positive
rate of 0.8-1.1% on average (0.6-1.6% per seed) on isotropic, anisotropic and shared-mean streams.
Alternatives: a uniform random rotation spreads the variance evenly and under-states chance
closeness (same runs: 1% on the isotropic stream, 12% with a shared mean, 86-99.97% on the
anisotropic ones; tests/core/test_flow.py keeps that comparison); reflecting P in *its* own
axes was ~20% anti-conservative in a prototype (its axes estimated from fewer rows); a far-away
layer's SAE needs SAEs that may not exist and is not a null of the pair at hand.

The threshold ``t_P`` is the ``ceil((1 - alpha)(N + 1))``-th smallest of the ``N`` null values: a
feature with no counterpart in P (one drawn like the null) reaches it with probability at most
``alpha`` (exactly, by exchangeability of the order statistics; ``alpha`` - 1/(N+1) at least).
So, per feature, a false "high" at a rate of ``alpha`` per module; a feature with no counterpart
anywhere is called anything but *unexplained* with probability about ``1 - (1 - alpha)^3`` (3 %
at the default ``alpha = 0.01``), and a translated one is called *processed* by chance with about
``2 alpha``. The null's quantiles are kept in the result (``FlowLayer.calibration``).

**Graphs** (:meth:`FeatureFlow.graph`): from one feature, its top-1 residual predecessors are
followed backward and its successors forward, each cut where s(R) < ``min_residual`` (0.5, as
the paper); the successors of ``f`` at the next layer are the features whose top-1 residual
predecessor is ``f`` (the inverse of the backward map: no extra pass, a tree); every residual
node gets its MLP and attention top-1 as module nodes when their s >= ``min_module`` (0.15).

Cost per layer and module: one blocked float32 pass of ``n x m`` cosines (``n`` features of L,
``m`` of P; blocks of at most ``block_bytes``, only the running top-1 kept), plus ``n_null x m``
for the null, and one ``d x d`` eigendecomposition per layer (the covariance of L's rows, in row
blocks).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ._checks import as_index
from .cost import default_device
from .results import jsonable, read_result_npz, write_result_npz
from .stack import SAEStack, stack_of
from .weights import SAEInfo, SAEWeights

#: the four classes, in this order everywhere (``FlowLayer.cls`` holds indices into it)
CLASSES = ("translated", "processed", "newborn", "unexplained")
#: predecessor modules: R (residual SAE of the layer before), M (MLP output), A (attention output)
MODULES = ("R", "M", "A")
MODULE_NAMES = {"R": "residual", "M": "mlp", "A": "attn"}
DEFAULT_ALPHA = 0.01
#: null values per layer and module (queries x rotations)
DEFAULT_NULL_ROWS = 4096
#: quantiles of each null kept in the result
NULL_QUANTILES = (0.5, 0.9, 0.95, 0.99, 0.999)
#: the paper's graph cuts
MIN_RESIDUAL = 0.5
MIN_MODULE = 0.15
#: at most this many reflections per null (small SAEs: n_null / n queries of them)
MAX_REFLECTIONS = 256
FORMAT_VERSION = 1
_BLOCK_BYTES = 64 * 2**20


# -- numerics -------------------------------------------------------------------------------------
def top1_cosine(Q: torch.Tensor, K: torch.Tensor, *, device: Any = None, block_bytes: int = _BLOCK_BYTES,
                k_norms: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For every row of ``Q`` [n, d], the largest cosine with a row of ``K`` [m, d] and its index:
    ``(values float32 [n], indices int64 [n])``. Blocked float32 matmuls: at most one
    ``rows x cols`` block of ``block_bytes`` is held, never the ``n x m`` matrix; no normalised
    copy of K (its row norms divide each block). Zero rows have cosine 0."""
    if Q.ndim != 2 or K.ndim != 2 or Q.shape[1] != K.shape[1]:
        raise ValueError(f"top1_cosine needs [n, d] and [m, d] with one d, got {tuple(Q.shape)} and {tuple(K.shape)}")
    n, m = int(Q.shape[0]), int(K.shape[0])
    if m == 0:
        raise ValueError("top1_cosine needs at least one row to compare with")
    dev = default_device(device)
    if dev.type != "cpu":  # one copy of K on the accelerator instead of one per row block
        K = K.to(dev, torch.float32)
    kn = (torch.linalg.vector_norm(K.to(torch.float32), dim=1) if k_norms is None else k_norms)
    kn = kn.to(dev, torch.float32).clamp_min(1e-12)
    br = int(max(1, min(n, 4096)))
    bc = int(max(1, min(m, block_bytes // (4 * br))))
    vals = np.empty(n, np.float32)
    idx = np.empty(n, np.int64)
    for r0 in range(0, n, br):
        q = Q[r0:r0 + br].to(dev, torch.float32)
        q = q / torch.linalg.vector_norm(q, dim=1, keepdim=True).clamp_min(1e-12)
        best = torch.full((q.shape[0],), -float("inf"), device=dev)
        arg = torch.zeros(q.shape[0], dtype=torch.long, device=dev)
        for c0 in range(0, m, bc):
            G = q @ K[c0:c0 + bc].to(dev, torch.float32).T
            G /= kn[c0:c0 + bc]
            v, j = G.max(dim=1)
            better = v > best
            best = torch.where(better, v, best)
            arg = torch.where(better, j + c0, arg)
        vals[r0:r0 + q.shape[0]] = best.clamp(-1.0, 1.0).cpu().numpy()
        idx[r0:r0 + q.shape[0]] = arg.cpu().numpy()
    return vals, idx


def _as_tensor(a: Any) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float32)
    return torch.as_tensor(np.asarray(a), dtype=torch.float32)


def project_attention(W_dec: torch.Tensor, W_O: Any) -> torch.Tensor:
    """The ``d_model`` directions of attention-SAE features read at ``hook_z``: each decoder row
    [n_heads * d_head] reshaped to [n_heads, d_head] (head-major, sae-lens' flattening of hook_z)
    and contracted with ``W_O`` [n_heads, d_head, d_model] (or the flat [n_heads * d_head,
    d_model]), i.e. ``einsum("nhe,hed->nd")``. Returns [n, d_model] float32."""
    W = _as_tensor(W_O)
    dec = W_dec.to(torch.float32)
    if W.ndim == 3:
        H, dh, d = W.shape
        if dec.shape[1] != H * dh:
            raise ValueError(f"the attention SAE's decoder rows have {dec.shape[1]} entries but W_O is "
                             f"[{H}, {dh}, {d}] (n_heads * d_head = {H * dh}): pass the W_O of the SAE's layer")
        W = W.reshape(H * dh, d)
    elif W.ndim != 2 or W.shape[0] != dec.shape[1]:
        raise ValueError(f"W_O must be [n_heads, d_head, d_model] or [n_heads * d_head, d_model] with "
                         f"n_heads * d_head = {dec.shape[1]} (the SAE's d_in), got {tuple(W.shape)}")
    # [n, H*dh] @ [H*dh, d]: the same sum as the einsum over (head, d_head), in row blocks
    out = torch.empty(dec.shape[0], W.shape[1], dtype=torch.float32)
    for r0 in range(0, dec.shape[0], 16384):
        out[r0:r0 + 16384] = dec[r0:r0 + 16384] @ W
    return out


#: the null's queries are turned by at least this many independent reflections
MIN_REFLECTIONS = 8


@dataclass(frozen=True)
class NullBasis:
    """What the null keeps of layer L's features: the ``mean`` [d] of their unit decoder rows, the
    principal ``axes`` [d, d] of those rows about it (columns, eigenvectors of their covariance,
    largest first) and the ``variances`` [d] along them."""

    mean: np.ndarray
    axes: np.ndarray
    variances: np.ndarray

    def signs(self, rng: np.random.Generator) -> np.ndarray:
        """A random reflection: +1 / -1 per axis."""
        return rng.choice(np.array([-1.0, 1.0]), size=self.axes.shape[1])

    def matrix(self, signs: np.ndarray) -> np.ndarray:
        """``O = V diag(signs) V^T`` [d, d] (symmetric and orthogonal; tests: :meth:`turn` never forms it)."""
        return (self.axes * signs[None, :]) @ self.axes.T

    def turn(self, q: torch.Tensor, signs: np.ndarray) -> torch.Tensor:
        """Rows ``mean + (q - mean) @ O`` (float64), through the axes without forming O."""
        V = torch.as_tensor(self.axes)
        mu = torch.as_tensor(self.mean)
        return mu + (((q.double() - mu) @ V) * torch.as_tensor(signs)[None, :]) @ V.T


def _unit_rows(X: torch.Tensor) -> torch.Tensor:
    X = X.to(torch.float32)
    return X / torch.linalg.vector_norm(X, dim=1, keepdim=True).clamp_min(1e-12)


def null_basis(Q: torch.Tensor) -> NullBasis:
    """The :class:`NullBasis` of decoder rows ``Q`` [n, d] (unit-normalised here, in row blocks)."""
    n, d = int(Q.shape[0]), int(Q.shape[1])
    s1 = torch.zeros(d, dtype=torch.float64)
    S = torch.zeros(d, d, dtype=torch.float64)
    for r0 in range(0, n, 8192):
        u = _unit_rows(Q[r0:r0 + 8192])
        s1 += u.sum(0).double()
        S += (u.T @ u).double()
    mu = s1.numpy() / max(n, 1)
    C = S.numpy() / max(n, 1) - np.outer(mu, mu)
    w, V = np.linalg.eigh((C + C.T) / 2)
    order = np.argsort(-w, kind="stable")
    return NullBasis(mean=mu, axes=V[:, order], variances=np.clip(w[order], 0.0, None))


def null_queries(Q: torch.Tensor, *, n_null: int = DEFAULT_NULL_ROWS, seed: int = 0, basis: NullBasis | None = None,
                 device: Any = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The null's queries: features of ``Q`` (layer L's decoder rows, unit-normalised) reflected
    about their mean in their principal axes, ``mean + (f - mean) O`` (module docstring), in
    chunks of ``ceil(n_null / R)`` rows with one reflection each, ``R = max(MIN_REFLECTIONS,
    ceil(n_null / n))``. Returns ``([N, d] float32 on the device, facts)``, N >= n_null."""
    n_null = int(n_null)
    if n_null < 16:
        raise ValueError(f"n_null must be at least 16 null values, got {n_null}")
    n = int(Q.shape[0])
    if n == 0:
        raise ValueError("the null needs at least one feature to reflect")
    basis = null_basis(Q) if basis is None else basis
    rng = np.random.default_rng(seed)
    R = int(min(MAX_REFLECTIONS, max(MIN_REFLECTIONS, math.ceil(n_null / n))))
    chunk = int(min(n, math.ceil(n_null / R)))
    dev = default_device(device)
    V = torch.as_tensor(basis.axes, dtype=torch.float32, device=dev)
    mu = torch.as_tensor(basis.mean, dtype=torch.float32, device=dev)
    out = []
    for _ in range(R):
        rows = torch.as_tensor(np.sort(rng.choice(n, size=chunk, replace=False)))
        c = (_unit_rows(Q[rows]).to(dev) - mu) @ V
        s = torch.as_tensor(basis.signs(rng), dtype=torch.float32, device=dev)
        out.append(mu + (c * s) @ V.T)
    facts = {"n_reflections": R, "n_queries": chunk * R, "seed": int(seed),
             "method": "layer L's features reflected about their mean in their principal axes"}
    return torch.cat(out), facts


def calibrate_against(null_q: torch.Tensor, K: torch.Tensor, *, alpha: float = DEFAULT_ALPHA, device: Any = None,
                      block_bytes: int = _BLOCK_BYTES, facts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The threshold on s(P) for module decoders ``K`` from the null's queries (:func:`null_queries`):
    the order statistic of their top-1 cosines with ``K`` (:func:`null_threshold`). Returns a
    JSON-able dict: threshold, alpha, n_null, quantiles, mean, and the queries' ``facts``."""
    alpha = _check_alpha(alpha)
    v, _ = top1_cosine(null_q, K, device=device, block_bytes=block_bytes)
    null = v.astype(np.float64)
    return {
        "threshold": null_threshold(null, alpha), "alpha": alpha, "n_null": int(null.size),
        "mean": float(null.mean()), "quantiles": {f"{q_:g}": float(np.quantile(null, q_)) for q_ in NULL_QUANTILES},
        **dict(facts or {}),
    }


def calibrate_module(Q: torch.Tensor, K: torch.Tensor, *, alpha: float = DEFAULT_ALPHA,
                     n_null: int = DEFAULT_NULL_ROWS, seed: int = 0, device: Any = None,
                     block_bytes: int = _BLOCK_BYTES) -> dict[str, Any]:
    """:func:`null_queries` of ``Q`` then :func:`calibrate_against` ``K``: the threshold on s(P) for
    layer L's features ``Q`` against module decoders ``K`` (module docstring)."""
    alpha = _check_alpha(alpha)
    nq, facts = null_queries(Q, n_null=n_null, seed=seed, device=device)
    return calibrate_against(nq, K, alpha=alpha, device=device, block_bytes=block_bytes, facts=facts)


def null_threshold(null: np.ndarray, alpha: float) -> float:
    """The ``ceil((1 - alpha)(N + 1))``-th smallest of the N null values (+inf when N < 1/alpha - 1:
    too few to reach that rate)."""
    v = np.sort(np.asarray(null, np.float64))
    k = math.ceil((1.0 - alpha) * (v.size + 1))
    return float("inf") if k > v.size else float(v[k - 1])


def _check_alpha(alpha: Any) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"alpha must be a number in (0, 0.5), got {alpha!r}") from None
    if not 0.0 < a < 0.5:
        raise ValueError(f"alpha is the false-positive rate of each module's test: a number in (0, 0.5), got {alpha!r}")
    return a


def classify(high_R: np.ndarray, high_M: np.ndarray, high_A: np.ndarray) -> np.ndarray:
    """Class index (into :data:`CLASSES`) from the three "high" flags."""
    hR = np.asarray(high_R, bool)
    mod = np.asarray(high_M, bool) | np.asarray(high_A, bool)
    return np.where(hR, np.where(mod, 1, 0), np.where(mod, 2, 3)).astype(np.int8)


# -- results --------------------------------------------------------------------------------------
def _ro(a: Any, dtype: Any) -> np.ndarray:
    arr = np.array(a, dtype=dtype, copy=True)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class FlowLayer:
    """The flow scores of one residual layer ``layer`` (its ``n`` features), against the residual
    SAE of ``prev_layer`` (R), the MLP-output SAE (M) and the attention-output SAE (A) of ``layer``.

    ``s_R``/``s_M``/``s_A`` (float32 [n]): top-1 cosine, NaN where that module has no SAE;
    ``i_R``/``i_M``/``i_A`` (int64 [n]): its index in the module's SAE, -1 where none;
    ``thresholds``: {"R"|"M"|"A": t} (NaN where no SAE); ``calibration``: per module the null
    it came from (:func:`calibrate_module`); ``infos``: {"res"|"R"|"M"|"A": SAEInfo or None};
    ``n_modules``: {"R"|"M"|"A": number of features of that SAE, 0 = none}; ``fingerprints``:
    weights hashes of the SAEs ("res" and the modules); ``cls``: each feature's class index.
    """

    layer: int
    prev_layer: int
    n: int
    s_R: np.ndarray
    i_R: np.ndarray
    s_M: np.ndarray
    i_M: np.ndarray
    s_A: np.ndarray
    i_A: np.ndarray
    thresholds: Mapping[str, float]
    calibration: Mapping[str, Any] = field(default_factory=dict)
    infos: Mapping[str, SAEInfo | None] = field(default_factory=dict)
    n_modules: Mapping[str, int] = field(default_factory=dict)
    fingerprints: Mapping[str, str] = field(default_factory=dict)
    #: class index of every feature (into :data:`CLASSES`), from the scores and thresholds
    cls: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name, dt in (("s_R", np.float32), ("s_M", np.float32), ("s_A", np.float32),
                         ("i_R", np.int64), ("i_M", np.int64), ("i_A", np.int64)):
            arr = _ro(getattr(self, name), dt)
            if arr.shape != (self.n,):
                raise ValueError(f"FlowLayer.{name} must have shape ({self.n},), got {arr.shape}")
            object.__setattr__(self, name, arr)
        thr = {m: float(self.thresholds.get(m, float("nan"))) for m in MODULES}
        object.__setattr__(self, "thresholds", thr)
        object.__setattr__(self, "calibration", dict(self.calibration))
        object.__setattr__(self, "infos", {k: self.infos.get(k) for k in ("res",) + MODULES})
        object.__setattr__(self, "n_modules", {m: int(self.n_modules.get(m, 0)) for m in MODULES})
        object.__setattr__(self, "fingerprints", {str(k): str(v) for k, v in self.fingerprints.items()})
        for m in MODULES:
            i, nm = getattr(self, f"i_{m}"), self.n_modules[m]
            if i.size and (i.min() < -1 or i.max() >= nm):
                raise ValueError(f"i_{m} holds indices outside -1 .. {nm - 1} ({nm} features in that SAE)")
        cls = classify(self.high("R"), self.high("M"), self.high("A"))
        cls.setflags(write=False)
        object.__setattr__(self, "cls", cls)

    def has(self, module: str) -> bool:
        """Whether this layer has an SAE for ``module`` ("R", "M" or "A")."""
        return self.n_modules[_module(module)] > 0

    def score(self, module: str) -> np.ndarray:
        return getattr(self, f"s_{_module(module)}")

    def index(self, module: str) -> np.ndarray:
        return getattr(self, f"i_{_module(module)}")

    def high(self, module: str) -> np.ndarray:
        """s(P) >= t_P (False everywhere for a module without SAE)."""
        m = _module(module)
        s, t = self.score(m), self.thresholds[m]
        if not self.has(m) or not math.isfinite(t):
            return np.zeros(self.n, bool)
        return s >= t

    @property
    def classes(self) -> np.ndarray:
        """The class name of every feature (object array of :data:`CLASSES` strings)."""
        return np.asarray(CLASSES, dtype=object)[self.cls]

    def shares(self) -> dict[str, float]:
        c = np.bincount(self.cls, minlength=len(CLASSES))
        return {k: (float(c[i]) / self.n if self.n else float("nan")) for i, k in enumerate(CLASSES)}

    def predecessors(self, feature: int) -> dict[str, dict[str, Any]]:
        """The module predecessors of one feature: {"R"|"M"|"A": {layer, feature, s, threshold,
        high, module}} for the modules this layer has."""
        f = as_index(feature, "feature")
        if not 0 <= f < self.n:
            raise IndexError(f"feature {f} is out of range: layer {self.layer} has {self.n} features")
        out = {}
        for m in MODULES:
            if self.has(m):
                out[m] = {"module": MODULE_NAMES[m], "layer": self.prev_layer if m == "R" else self.layer,
                          "feature": int(self.index(m)[f]), "s": float(self.score(m)[f]),
                          "threshold": self.thresholds[m], "high": bool(self.high(m)[f])}
        return out


def _module(m: str) -> str:
    key = {"r": "R", "res": "R", "residual": "R", "m": "M", "mlp": "M", "a": "A", "att": "A", "attn": "A",
           "attention": "A"}.get(str(m).lower())
    if key is None:
        raise KeyError(f"unknown module {m!r}: use 'R' (residual), 'M' (mlp) or 'A' (attention)")
    return key


@dataclass(frozen=True)
class FlowNode:
    """A node of a :class:`FlowGraph`: a residual feature (``kind="residual"``) or a module feature
    (``"mlp"`` / ``"attn"``) of ``layer``. ``cls``: a residual node's class (None for modules and for
    the first layer, which has no scores); ``origin``: the feature the graph was drawn from."""

    kind: str
    layer: int
    feature: int
    cls: str | None = None
    origin: bool = False

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.kind, self.layer, self.feature)

    @property
    def label(self) -> str:
        k = {"residual": "", "mlp": "MLP ", "attn": "attn "}[self.kind]
        return f"{k}L{self.layer} #{self.feature}"


@dataclass(frozen=True)
class FlowEdge:
    """``source`` -> ``target`` (node indices of the graph): a residual step (``kind="residual"``,
    weight s(R) of the target) or a module writing into a residual feature (``"mlp"``/``"attn"``,
    weight s(M) / s(A)). ``high``: the weight passes the layer's calibrated threshold."""

    source: int
    target: int
    kind: str
    weight: float
    high: bool


@dataclass(frozen=True, eq=False)
class FlowGraph:
    """The flow graph of one feature (:meth:`FeatureFlow.graph`): nodes and weighted edges as plain
    tuples. ``truncated``: a layer had more successors than ``max_per_layer`` (the strongest kept)."""

    origin_layer: int
    origin_feature: int
    nodes: tuple[FlowNode, ...]
    edges: tuple[FlowEdge, ...]
    min_residual: float = MIN_RESIDUAL
    min_module: float = MIN_MODULE
    truncated: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "edges", tuple(self.edges))
        object.__setattr__(self, "labels", dict(self.labels))
        for e in self.edges:
            if not (0 <= e.source < len(self.nodes) and 0 <= e.target < len(self.nodes)):
                raise ValueError(f"edge {e} points outside the {len(self.nodes)} nodes")

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({n.layer for n in self.nodes}))

    def residual_path(self) -> list[tuple[int, int]]:
        """(layer, feature) of the residual nodes, by layer then feature."""
        return sorted((n.layer, n.feature) for n in self.nodes if n.kind == "residual")

    def to_pandas(self, what: str = "edges"):
        """``what="edges"``: one row per edge (source and target kind / layer / feature, weight,
        high); ``"nodes"``: one row per node."""
        import pandas as pd

        if what == "nodes":
            return pd.DataFrame([{"kind": n.kind, "layer": n.layer, "feature": n.feature, "class": n.cls,
                                  "origin": n.origin} for n in self.nodes])
        if what != "edges":
            raise ValueError(f"to_pandas(what=...) must be 'edges' or 'nodes', got {what!r}")
        rows = []
        for e in self.edges:
            s, t = self.nodes[e.source], self.nodes[e.target]
            rows.append({"source_kind": s.kind, "source_layer": s.layer, "source_feature": s.feature,
                         "target_kind": t.kind, "target_layer": t.layer, "target_feature": t.feature,
                         "kind": e.kind, "weight": e.weight, "high": e.high})
        cols = ["source_kind", "source_layer", "source_feature", "target_kind", "target_layer", "target_feature",
                "kind", "weight", "high"]
        return pd.DataFrame(rows, columns=cols)

    def __repr__(self) -> str:
        from ..display import text

        return text.flow_graph_text(self)

    def _repr_html_(self) -> str:
        from ..display import html

        return html.flow_graph_html(self)


@dataclass(frozen=True, eq=False)
class FeatureFlow:
    """Feature Flow's module-resolved view of a list of residual SAEs (:func:`feature_flow`).

    ``by_layer``: one :class:`FlowLayer` per scored residual layer (every residual layer but the
    first, which has no residual predecessor); ``alpha``: the per-module false-positive rate of
    the thresholds; ``options``/``stats``: how it was computed.
    """

    by_layer: tuple[FlowLayer, ...]
    alpha: float = DEFAULT_ALPHA
    options: Mapping[str, Any] = field(default_factory=dict)
    stats: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_layer", tuple(self.by_layer))
        object.__setattr__(self, "options", dict(self.options))
        object.__setattr__(self, "stats", dict(self.stats))
        if not self.by_layer:
            raise ValueError("a FeatureFlow needs at least one scored layer")
        ls = [fl.layer for fl in self.by_layer]
        if len(set(ls)) != len(ls):
            raise ValueError(f"FeatureFlow layers must be distinct, got {ls}")

    # -- lookup ---------------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[int, ...]:
        """The scored residual layers."""
        return tuple(fl.layer for fl in self.by_layer)

    def layer(self, layer: int) -> FlowLayer:
        L = as_index(layer, "layer")
        for fl in self.by_layer:
            if fl.layer == L:
                return fl
        raise KeyError(f"layer {L} has no flow scores (scored layers {self.layers}; the first residual "
                       "layer has no predecessor)")

    __getitem__ = layer

    def _next(self, layer: int) -> FlowLayer | None:
        return next((fl for fl in self.by_layer if fl.prev_layer == layer), None)

    def n_features(self, layer: int) -> int:
        """Features of the residual SAE at ``layer`` (scored, or the predecessor of a scored one)."""
        for fl in self.by_layer:
            if fl.layer == layer:
                return fl.n
        nxt = self._next(layer)
        if nxt is not None and nxt.n_modules["R"]:
            return nxt.n_modules["R"]
        raise KeyError(f"layer {layer} is not in this flow (layers {self.layers})")

    def classes(self, layer: int) -> np.ndarray:
        return self.layer(layer).classes

    def predecessors(self, layer: int, feature: int) -> dict[str, dict[str, Any]]:
        """A feature's module predecessors (see :meth:`FlowLayer.predecessors`)."""
        return self.layer(layer).predecessors(feature)

    # -- tables ---------------------------------------------------------------------------------
    def to_pandas(self):
        """One row per (layer, feature): s_R, pred_R (top-1 index in the previous residual SAE),
        s_M, pred_M, s_A, pred_A (NaN / -1 where no SAE), high_R, high_M, high_A, class."""
        import pandas as pd

        frames = []
        for fl in self.by_layer:
            frames.append(pd.DataFrame({
                "layer": fl.layer, "feature": np.arange(fl.n), "prev_layer": fl.prev_layer,
                "s_R": fl.s_R, "pred_R": fl.i_R, "s_M": fl.s_M, "pred_M": fl.i_M, "s_A": fl.s_A, "pred_A": fl.i_A,
                "high_R": fl.high("R"), "high_M": fl.high("M"), "high_A": fl.high("A"),
                "class": pd.Categorical(fl.classes, categories=list(CLASSES)),
            }))
        return pd.concat(frames, ignore_index=True).set_index(["layer", "feature"])

    def summary(self):
        """One row per layer: sizes, thresholds t_R/t_M/t_A, the null's 99% quantiles, class shares."""
        import pandas as pd

        rows = []
        for fl in self.by_layer:
            sh = fl.shares()
            row = {"layer": fl.layer, "prev_layer": fl.prev_layer, "n_features": fl.n,
                   "n_R": fl.n_modules["R"], "n_M": fl.n_modules["M"], "n_A": fl.n_modules["A"]}
            for m in MODULES:
                row[f"t_{m}"] = fl.thresholds[m]
            for m in MODULES:
                row[f"high_{m}"] = float(fl.high(m).mean()) if fl.has(m) and fl.n else float("nan")
            row.update(sh)
            rows.append(row)
        return pd.DataFrame(rows).set_index("layer")

    # -- graphs ---------------------------------------------------------------------------------
    def graph(self, layer: int, feature: int, *, min_residual: float = MIN_RESIDUAL,
              min_module: float = MIN_MODULE, max_per_layer: int = 50) -> FlowGraph:
        """The flow graph of one feature: its top-1 residual predecessors followed backward and its
        successors (features of the next layer whose top-1 residual predecessor it is) forward,
        each cut where s(R) < ``min_residual``; every residual node gets its MLP and attention top-1
        as module nodes where s >= ``min_module``. ``max_per_layer`` bounds the successors kept per
        layer (the highest s(R) first; ``truncated`` says when it cut)."""
        L = as_index(layer, "layer")
        f = as_index(feature, "feature")
        n = self.n_features(L)
        if not 0 <= f < n:
            raise IndexError(f"feature {f} is out of range: layer {L} has {n} features")
        by = {fl.layer: fl for fl in self.by_layer}
        nodes: list[FlowNode] = []
        index: dict[tuple[str, int, int], int] = {}
        edges: list[FlowEdge] = []

        def node(kind: str, lay: int, feat: int) -> int:
            k = (kind, lay, feat)
            if k not in index:
                fl = by.get(lay)
                cls = CLASSES[int(fl.cls[feat])] if (kind == "residual" and fl is not None) else None
                index[k] = len(nodes)
                nodes.append(FlowNode(kind, lay, feat, cls, origin=(kind == "residual" and lay == L and feat == f)))
            return index[k]

        def modules(lay: int, feat: int) -> None:
            fl = by.get(lay)
            if fl is None:
                return
            tgt = node("residual", lay, feat)
            for m, kind in (("M", "mlp"), ("A", "attn")):
                if fl.has(m) and float(fl.score(m)[feat]) >= min_module:
                    src = node(kind, lay, int(fl.index(m)[feat]))
                    edges.append(FlowEdge(src, tgt, kind, float(fl.score(m)[feat]), bool(fl.high(m)[feat])))

        node("residual", L, f)
        modules(L, f)
        # backward: top-1 residual predecessors while s(R) >= min_residual
        lay, feat = L, f
        while lay in by:
            fl = by[lay]
            s = float(fl.s_R[feat])
            if not s >= min_residual:
                break
            p = int(fl.i_R[feat])
            src = node("residual", fl.prev_layer, p)
            edges.append(FlowEdge(src, node("residual", lay, feat), "residual", s, bool(fl.high("R")[feat])))
            lay, feat = fl.prev_layer, p
            modules(lay, feat)
        # forward: the features whose top-1 predecessor is in the frontier
        truncated = False
        frontier, lay = np.array([f]), L
        while frontier.size:
            nxt = self._next(lay)
            if nxt is None:
                break
            hit = np.flatnonzero(np.isin(nxt.i_R, frontier) & (nxt.s_R >= min_residual))
            if hit.size > max_per_layer:
                truncated = True
                hit = np.sort(hit[np.argsort(-nxt.s_R[hit], kind="stable")[:max_per_layer]])
            for g in hit.tolist():
                src = node("residual", lay, int(nxt.i_R[g]))
                edges.append(FlowEdge(src, node("residual", nxt.layer, g), "residual", float(nxt.s_R[g]),
                                      bool(nxt.high("R")[g])))
                modules(nxt.layer, g)
            frontier, lay = hit, nxt.layer
        labels = {}
        for fl in self.by_layer:
            for k, inf in fl.infos.items():
                if inf is not None:
                    key = {"res": f"residual {fl.layer}", "R": f"residual {fl.prev_layer}",
                           "M": f"mlp {fl.layer}", "A": f"attn {fl.layer}"}[k]
                    labels[key] = inf.label
        return FlowGraph(origin_layer=L, origin_feature=f, nodes=tuple(nodes), edges=tuple(edges),
                         min_residual=float(min_residual), min_module=float(min_module), truncated=truncated,
                         labels=labels)

    # -- persistence ----------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION, "kind": "FeatureFlow", "alpha": float(self.alpha),
            "options": jsonable(self.options), "stats": jsonable(self.stats),
            "layers": [{
                "layer": fl.layer, "prev_layer": fl.prev_layer, "n": fl.n,
                "thresholds": {m: fl.thresholds[m] for m in MODULES},
                "calibration": jsonable(fl.calibration),
                "infos": {k: (None if v is None else v.to_dict()) for k, v in fl.infos.items()},
                "n_modules": dict(fl.n_modules), "fingerprints": dict(fl.fingerprints),
            } for fl in self.by_layer],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write to one ``.npz`` file (arrays per layer + JSON metadata), atomically."""
        arrays = {}
        for k, fl in enumerate(self.by_layer):
            for name in ("s_R", "i_R", "s_M", "i_M", "s_A", "i_A"):
                arrays[f"l{k}_{name}"] = getattr(fl, name)
        # NaN thresholds are not JSON: written as null
        return write_result_npz(path, _dumps(self._meta()), arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureFlow":
        """Read a flow written by :meth:`save`."""
        def read(z: Any, meta: dict, _path: Path) -> "FeatureFlow":
            layers = []
            for k, m in enumerate(meta["layers"]):
                arr = {name: z[f"l{k}_{name}"] for name in ("s_R", "i_R", "s_M", "i_M", "s_A", "i_A")}
                layers.append(FlowLayer(
                    layer=int(m["layer"]), prev_layer=int(m["prev_layer"]), n=int(m["n"]), **arr,
                    thresholds={k_: (float("nan") if v is None else float(v)) for k_, v in m["thresholds"].items()},
                    calibration=m.get("calibration", {}),
                    infos={k_: (None if v is None else SAEInfo.from_dict(v)) for k_, v in m["infos"].items()},
                    n_modules=m["n_modules"], fingerprints=m.get("fingerprints", {})))
            return cls(by_layer=tuple(layers), alpha=float(meta["alpha"]), options=meta.get("options", {}),
                       stats=meta.get("stats", {}))

        return read_result_npz(path, "FeatureFlow", FORMAT_VERSION, read,
                               "recompute it with saematch_nb.feature_flow and save it again")

    # -- reprs ----------------------------------------------------------------------------------
    def __repr__(self) -> str:
        from ..display import text

        return text.feature_flow_text(self)

    def _repr_html_(self) -> str:
        from ..display import html

        return html.feature_flow_html(self)


def _dumps(meta: Mapping[str, Any]) -> str:
    """JSON with non-finite floats as null (strict JSON readers reject NaN)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, Mapping):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(meta))


# -- the front door ---------------------------------------------------------------------------------
def _module_stack(saes: Any, what: str) -> SAEStack | None:
    if saes is None:
        return None
    if isinstance(saes, SAEStack):
        return saes
    if not isinstance(saes, Mapping):
        st = SAEStack.build(saes)
        known = [st.info(L).layer for L in st.layers]
        if known != list(st.layers):
            raise ValueError(f"{what}=: pass a {{layer: sae}} mapping (these SAEs do not all name their layer "
                             "in their hook)")
        return st
    return SAEStack.build(saes)


def _is_hook_z(info: SAEInfo | None) -> bool:
    return bool(info is not None and info.hook_name and str(info.hook_name).endswith("hook_z"))


def _out_proj(attn_out_proj: Any, layer: int) -> Any:
    if attn_out_proj is None:
        return None
    if isinstance(attn_out_proj, Mapping):
        return attn_out_proj.get(layer, attn_out_proj.get(str(layer)))
    W = attn_out_proj
    if getattr(W, "ndim", 0) == 4:  # TransformerLens' model.W_O: [n_layers, n_heads, d_head, d_model]
        if layer >= W.shape[0]:
            raise ValueError(f"attn_out_proj has {W.shape[0]} layers, no W_O for layer {layer}")
        return W[layer]
    raise TypeError("attn_out_proj must be {layer: W_O} (each [n_heads, d_head, d_model] or "
                    "[n_heads * d_head, d_model]) or a stacked [n_layers, n_heads, d_head, d_model] tensor "
                    f"such as TransformerLens' model.W_O; got {type(W).__name__}")


def _attention_directions(w: SAEWeights, layer: int, d_model: int, attn_out_proj: Any) -> tuple[torch.Tensor, bool]:
    """The attention SAE's decoder rows in d_model (projected through W_O where needed)."""
    W_O = _out_proj(attn_out_proj, layer)
    hook_z = _is_hook_z(w.info)
    if W_O is None:
        if hook_z or w.d_in != d_model:
            where = f"its hook is {w.info.hook_name!r}" if hook_z else \
                f"its decoder rows have {w.d_in} entries, the residual stream {d_model}"
            raise ValueError(
                f"the attention SAE of layer {layer} is read before the output projection ({where}): pass "
                "attn_out_proj={layer: W_O} (W_O [n_heads, d_head, d_model] of that layer), TransformerLens' "
                "model.W_O, or saematch_nb.sources.flow.attention_out_proj(model) (which also folds in the "
                "post-attention norm of Gemma 2 / 3)")
        return w.W_dec, False
    if not hook_z and w.d_in == d_model:
        return w.W_dec, False  # already in the residual stream (hook_attn_out): W_O does not apply
    out = project_attention(w.W_dec, W_O)
    if out.shape[1] != d_model:
        raise ValueError(f"W_O of layer {layer} maps to {out.shape[1]} dimensions, the residual SAEs read {d_model}")
    return out, True


def feature_flow(res: Any, *, mlp: Any = None, att: Any = None, attn_out_proj: Any = None,
                 layers: Sequence[int] | None = None, alpha: float = DEFAULT_ALPHA, n_null: int = DEFAULT_NULL_ROWS,
                 seed: int = 0, device: Any = None,
                 block_bytes: int = _BLOCK_BYTES) -> FeatureFlow:
    """Feature Flow's module-resolved view (module docstring): for every feature of every residual
    layer but the first, s(R) against the residual SAE of the layer before, s(M) against the
    MLP-output SAE and s(A) against the attention-output SAE of its own layer, their top-1
    indices, per-layer thresholds calibrated against a null (``alpha``: the false-positive rate of
    each module's test) and the class of each feature.

    ``res``: residual SAEs: a list (layers read from their hooks) or ``{layer: sae}`` of anything
    ``as_weights`` accepts, an SAEStack, or a MatchChain (its SAEs). The residual "layer before"
    is the previous layer of ``res`` (with gaps, s(R) spans them and the modules in between are
    not seen). ``mlp`` / ``att``: ``{layer: sae}`` (optional; layers without one have NaN scores
    there). ``attn_out_proj``: for attention SAEs read at ``hook_z``: ``{layer: W_O}`` or
    TransformerLens' ``model.W_O`` (see :func:`project_attention`). ``layers``: score only these
    residual layers. ``n_null``, ``seed``: the null (:func:`calibrate_module`).
    """
    alpha = _check_alpha(alpha)
    t0 = time.perf_counter()
    rst = stack_of(res, what="res")
    if len(rst.layers) < 2:
        raise ValueError(f"feature_flow needs residual SAEs at two layers at least, got layers {rst.layers}")
    mst, ast_ = _module_stack(mlp, "mlp"), _module_stack(att, "att")
    chosen = None if layers is None else {as_index(x, "layer") for x in layers}
    if chosen is not None:
        bad = sorted(chosen - set(rst.layers[1:]))
        if bad:
            raise ValueError(f"layers {bad} cannot be scored: residual layers with a residual SAE before them "
                             f"are {rst.layers[1:]}")
    for name, st in (("mlp", mst), ("att", ast_)):
        if st is not None:
            extra = sorted(set(st.layers) - set(rst.layers[1:]))
            if extra:
                raise ValueError(f"{name}= has SAEs for layers {extra}, which have no residual SAE to explain (or "
                                 f"no residual SAE before them): residual layers {rst.layers}")
    by_layer, per_layer_s = [], {}
    for p in range(1, len(rst.layers)):
        L, prev = rst.layers[p], rst.layers[p - 1]
        if chosen is not None and L not in chosen:
            continue
        t1 = time.perf_counter()
        w = rst.weights(L)
        Q, d = w.W_dec, w.d_in
        n = w.d_sae
        keys: dict[str, tuple[torch.Tensor, SAEInfo, str]] = {}
        wp = rst.weights(prev)
        if wp.d_in != d:
            raise ValueError(f"the residual SAEs of layers {prev} and {L} read {wp.d_in} and {d} dimensions")
        keys["R"] = (wp.W_dec, wp.info, rst.fingerprint(prev))
        projected = False
        if mst is not None and L in mst:
            wm = mst.weights(L)
            if wm.d_in != d:
                raise ValueError(f"the MLP SAE of layer {L} reads {wm.d_in} dimensions, the residual SAEs {d}: "
                                 "pass MLP-output SAEs (hook_mlp_out) of the same model")
            keys["M"] = (wm.W_dec, wm.info, mst.fingerprint(L))
        if ast_ is not None and L in ast_:
            wa = ast_.weights(L)
            Ka, projected = _attention_directions(wa, L, d, attn_out_proj)
            keys["A"] = (Ka, wa.info, ast_.fingerprint(L))
        s, i, thr, cal, infos, nmod, fps = {}, {}, {}, {}, {"res": w.info}, {}, {"res": rst.fingerprint(L)}
        null_q, facts = null_queries(Q, n_null=n_null, seed=seed + 7919 * L, device=device)
        for m in MODULES:
            if m not in keys:
                s[m], i[m] = np.full(n, np.nan, np.float32), np.full(n, -1, np.int64)
                thr[m], infos[m], nmod[m] = float("nan"), None, 0
                continue
            K, info, fp = keys[m]
            s[m], i[m] = top1_cosine(Q, K, device=device, block_bytes=block_bytes)
            c = calibrate_against(null_q, K, alpha=alpha, device=device, block_bytes=block_bytes, facts=facts)
            if m == "A":
                c["projected_through_W_O"] = projected
            thr[m], cal[m], infos[m], nmod[m], fps[m] = c["threshold"], c, info, int(K.shape[0]), fp
        del null_q
        by_layer.append(FlowLayer(layer=L, prev_layer=prev, n=n, s_R=s["R"], i_R=i["R"], s_M=s["M"], i_M=i["M"],
                                  s_A=s["A"], i_A=i["A"], thresholds=thr, calibration=cal, infos=infos,
                                  n_modules=nmod, fingerprints=fps))
        per_layer_s[L] = time.perf_counter() - t1
        del keys
    if not by_layer:
        raise ValueError("no layer was scored")
    options = {"alpha": alpha, "n_null": int(n_null), "seed": int(seed),
               "modules": [m for m in MODULES if any(fl.has(m) for fl in by_layer)]}
    stats = {"seconds": time.perf_counter() - t0, "layer_seconds": {str(k): v for k, v in per_layer_s.items()}}
    return FeatureFlow(by_layer=tuple(by_layer), alpha=alpha, options=options, stats=stats)


__all__ = ["feature_flow", "FeatureFlow", "FlowLayer", "FlowGraph", "FlowNode", "FlowEdge", "CLASSES", "MODULES",
           "top1_cosine", "project_attention", "calibrate_module", "calibrate_against", "null_queries", "null_basis",
           "null_threshold", "classify"]
