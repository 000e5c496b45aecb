"""Planted SAE pairs of many kinds, to validate the match criterion on data it was not tuned on.

:func:`family_pair` draws a pair ``(sae_a, sae_b, truth)`` from independently set knobs, each a
way real layer pairs differ:

- ``spectrum_decay`` / ``spectrum_basis``: anisotropic feature directions (component k scaled by
  (k+1)^-decay, as residual streams are), along the coordinate axes or in a random basis;
- ``clusters`` / ``group_size`` / ``cluster_spread``: groups of 2-8 near-duplicate features in A
  (feature splitting; a dying member's best candidate is a surviving sibling's partner);
- ``norm_spread``, ``gain_spread``, ``theta_spread``, ``fresh_scale``: per-feature norms and
  thresholds spread lognormally (folding removes θ, not the norms), weak newborn features;
- ``fresh_fraction``: A-features that die (their B slot holds a new, unrelated feature);
- ``noise`` / ``noise_spread``: relative perturbation of a persisting feature's folded parameters
  (``noise_spread`` > 0: each feature's own level, ``noise`` × lognormal(0, noise_spread), so that
  some features change across the layer pair much more than others);
- ``n_b``: rectangular pairs (extra fresh B-features);
- ``split_fraction``: persisting features that also get a newborn near-duplicate in B (a split
  across layers), placed in some of B's fresh slots;
- ``null=True``: B is drawn independently of A (nothing persists): the pure null pair.

A second generator (``kind="drift"``, :func:`drift_pair`) makes the structures of real layer pairs
the first lacks, with its own knobs: ``shared_centres`` feature families (clusters) that BOTH
layers draw their features from (``member_cos``: a member's cosine to its centre, ±0.1), so that
unrelated features of the two layers are close by chance; persisting features that turn by an
angle, a ``stable_share`` of them by ``stable_deg`` degrees and the rest (a drifting minority) by
``drift_deg``; and ``duplicates``, a share of each SAE's features that are a near-copy (turned by
``duplicate_deg``) of another feature of the same SAE.

``truth[i]`` is the planted partner of A-feature i in B, -1 when it dies. :data:`FAMILIES` holds the
named families the tests and benchmarks/bench_criterion.py use; :func:`family` draws one by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .synthetic import FoldedFeatures, perturb, unfold
from .weights import SAEInfo, SAEWeights


def _directions(n: int, d: int, rng: np.random.Generator, decay: float, basis: np.ndarray | None) -> np.ndarray:
    u = rng.standard_normal((n, d))
    if decay:
        u *= (np.arange(1, d + 1) ** -decay)[None, :]
    if basis is not None:
        u = u @ basis
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def _features(n: int, d: int, rng: np.random.Generator, spec: "FamilySpec", basis) -> FoldedFeatures:
    u = _directions(n, d, rng, spec.spectrum_decay, basis)
    g = rng.lognormal(0.0, spec.norm_spread, size=n)
    # the encoder reads roughly along the decoder direction (as trained SAEs do), with its own part
    e = u + 0.3 * _directions(n, d, rng, spec.spectrum_decay, basis)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    dec = u * g[:, None]
    enc = (e / g[:, None]).T
    b = -0.5 + 0.1 * rng.standard_normal(n)
    if spec.gain_spread:
        h = rng.lognormal(0.0, spec.gain_spread, size=n)
        dec, enc = dec * h[:, None], enc * h[None, :]
    f = FoldedFeatures(enc.astype(np.float32), b.astype(np.float32), dec.astype(np.float32))
    return _clusters(f, rng, spec)


def _clusters(f: FoldedFeatures, rng: np.random.Generator, spec: "FamilySpec") -> FoldedFeatures:
    """A share ``spec.clusters`` of the features becomes groups of near-duplicates of a centre."""
    n = f.dec.shape[0]
    n_dup = int(round(spec.clusters * n))
    if n_dup < 2:
        return f
    idx = rng.permutation(n)[:n_dup]
    lo, hi = spec.group_size
    centre = np.empty(n_dup, np.int64)
    a = 0
    while a < n_dup:
        s = int(min(n_dup - a, rng.integers(lo, hi + 1)))
        centre[a:a + s] = idx[a]
        a += s
    copies = FoldedFeatures(np.ascontiguousarray(f.enc[:, centre]), f.b_enc[centre].copy(), f.dec[centre].copy())
    moved = perturb(copies, spec.cluster_spread, rng)
    enc, b, dec = f.enc.copy(), f.b_enc.copy(), f.dec.copy()
    enc[:, idx], b[idx], dec[idx] = moved.enc, moved.b_enc, moved.dec
    return FoldedFeatures(enc, b, dec)


@dataclass(frozen=True)
class FamilySpec:
    """Knobs of :func:`family_pair` (see the module docstring)."""

    n: int = 512
    d_in: int = 64
    n_b: int | None = None
    fresh_fraction: float = 0.3
    noise: float = 0.1
    noise_spread: float = 0.0
    spectrum_decay: float = 0.0
    spectrum_basis: str = "axis"  # "axis" or "random"
    clusters: float = 0.0
    group_size: tuple[int, int] = (2, 8)
    cluster_spread: float = 0.45
    norm_spread: float = 0.4
    gain_spread: float = 0.0
    theta_spread: float = 0.3
    theta_growth: float = 1.5
    fresh_scale: float = 1.0
    split_fraction: float = 0.0
    split_spread: float = 0.45
    null: bool = False
    kind: str = "noise"  # "noise": family_pair's perturbation model; "drift": drift_pair
    shared_centres: int = 0
    member_cos: float = 0.6
    stable_share: float = 1.0
    stable_deg: tuple[float, float] = (1.0, 4.0)
    drift_deg: tuple[float, float] = (10.0, 35.0)
    duplicates: float = 0.0
    duplicate_deg: float = 8.0
    name: str = "custom"
    description: str = ""
    extra: dict = field(default_factory=dict)


def family_pair(spec: FamilySpec | None = None, *, seed: int = 0, **overrides: Any
                ) -> tuple[SAEWeights, SAEWeights, np.ndarray]:
    """``(sae_a, sae_b, truth)`` drawn from ``spec`` (with ``overrides``); see the module docstring."""
    spec = replace(spec or FamilySpec(), **overrides)
    if spec.kind == "drift":
        return drift_pair(spec, seed=seed)
    if spec.kind != "noise":
        raise ValueError(f"kind must be 'noise' or 'drift', got {spec.kind!r}")
    n, d = spec.n, spec.d_in
    n_b = n if spec.n_b is None else spec.n_b
    if n_b < n:
        raise ValueError("family_pair needs n_b >= n (match the pair the other way round)")
    if not 0.0 <= spec.fresh_fraction < 1.0:
        raise ValueError(f"fresh_fraction must be in [0, 1), got {spec.fresh_fraction}")
    rng = np.random.default_rng(seed)
    basis = None
    if spec.spectrum_basis == "random":
        basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    elif spec.spectrum_basis != "axis":
        raise ValueError(f"spectrum_basis must be 'axis' or 'random', got {spec.spectrum_basis!r}")
    fa = _features(n, d, rng, spec, basis)
    truth = np.full(n, -1, np.int64)
    fresh = _features(n_b, d, rng, spec, basis)
    enc_b = fresh.enc * spec.fresh_scale
    b_b = fresh.b_enc * spec.fresh_scale
    dec_b = fresh.dec * spec.fresh_scale
    if not spec.null:
        n_fresh = int(round(spec.fresh_fraction * n))
        dying = rng.choice(n, size=n_fresh, replace=False)
        alive = np.setdiff1d(np.arange(n), dying)
        perm = rng.permutation(n_b)  # B slot of each A feature (first n) and of the extras
        truth[alive] = perm[alive]
        level = spec.noise * (rng.lognormal(0.0, spec.noise_spread, size=n) if spec.noise_spread else 1.0)
        kept = perturb(fa, level, rng)
        enc_b[:, perm[alive]] = kept.enc[:, alive]
        b_b[perm[alive]] = kept.b_enc[alive]
        dec_b[perm[alive]] = kept.dec[alive]
        free = perm[dying] if n_b == n else np.concatenate([perm[dying], perm[n:]])
        n_split = min(int(round(spec.split_fraction * alive.size)), free.size)
        if n_split:
            # newborn near-duplicates of persisting features in free B slots (a split across layers)
            src = rng.choice(alive, size=n_split, replace=False)
            slots = rng.choice(free, size=n_split, replace=False)
            sib = perturb(FoldedFeatures(np.ascontiguousarray(fa.enc[:, src]), fa.b_enc[src].copy(),
                                         fa.dec[src].copy()), spec.split_spread, rng)
            enc_b[:, slots], b_b[slots], dec_b[slots] = sib.enc, sib.b_enc, sib.dec
    fb = FoldedFeatures(enc_b.astype(np.float32), b_b.astype(np.float32), dec_b.astype(np.float32))
    theta_a = rng.lognormal(0.0, spec.theta_spread, size=n)
    theta_b = spec.theta_growth * rng.lognormal(0.0, spec.theta_spread, size=n_b)
    info = lambda t: SAEInfo(layer=t, hook_name=f"blocks.{t}.hook_resid_post",  # noqa: E731
                             sae_id=f"family/{spec.name}/{t}")
    return unfold(fa, theta_a, info=info(0)), unfold(fb, theta_b, info=info(1)), truth


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _turn(u: np.ndarray, deg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each unit row of ``u`` turned by its angle (degrees) in a random plane."""
    w = rng.standard_normal(u.shape)
    w = _unit(w - (w * u).sum(1, keepdims=True) * u)
    phi = np.deg2rad(np.asarray(deg, np.float64))[:, None]
    return np.cos(phi) * u + np.sin(phi) * w


def drift_pair(spec: FamilySpec, *, seed: int = 0) -> tuple[SAEWeights, SAEWeights, np.ndarray]:
    """``(sae_a, sae_b, truth)`` of the "drift" kind (module docstring): unit directions made in
    folded coordinates (decoder and encoder turned alike), lognormal norms, unfolded with per-layer
    thresholds."""
    n, d = spec.n, spec.d_in
    n_b = n if spec.n_b is None else spec.n_b
    if n_b < n:
        raise ValueError("family_pair needs n_b >= n (match the pair the other way round)")
    rng = np.random.default_rng(seed)
    scale = np.arange(1, d + 1) ** -spec.spectrum_decay if spec.spectrum_decay else np.ones(d)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))

    def isotropic(m):
        return _unit((rng.standard_normal((m, d)) * scale) @ basis)

    if spec.shared_centres:
        centres = isotropic(spec.shared_centres)

        def new(m):
            c = centres[rng.integers(0, spec.shared_centres, m)]
            cos = np.clip(rng.uniform(spec.member_cos - 0.1, spec.member_cos + 0.1, m), -1, 1)[:, None]
            w = rng.standard_normal(c.shape)
            w = _unit(w - (w * c).sum(1, keepdims=True) * c)
            return cos * c + np.sqrt(1 - cos ** 2) * w
    else:
        new = isotropic

    def encoder(u):  # trained encoders read roughly along their decoder direction
        return _unit(u + 0.3 * _unit(rng.standard_normal(u.shape)))

    ua, ub = new(n), new(n_b)
    ea, eb = encoder(ua), encoder(ub)
    for u, e in ((ua, ea), (ub, eb)):
        m = int(spec.duplicates * u.shape[0]) // 2
        if m:
            idx = rng.choice(u.shape[0], 2 * m, replace=False)
            deg = np.full(m, spec.duplicate_deg)
            u[idx[m:]], e[idx[m:]] = _turn(u[idx[:m]], deg, rng), _turn(e[idx[:m]], deg, rng)
    truth = np.full(n, -1, np.int64)
    na, nb = rng.lognormal(0, spec.norm_spread, n), rng.lognormal(0, spec.norm_spread, n_b)
    if not spec.null:
        k = int(round((1 - spec.fresh_fraction) * n))
        alive = rng.choice(n, k, replace=False)
        slots = rng.permutation(n_b)[:k]
        stable = rng.random(k) < spec.stable_share
        deg = np.where(stable, rng.uniform(*spec.stable_deg, k), rng.uniform(*spec.drift_deg, k))
        ub[slots], eb[slots] = _turn(ua[alive], deg, rng), _turn(ea[alive], deg, rng)
        nb[slots] = na[alive] * rng.lognormal(0, 0.1, k)
        truth[alive] = slots

    def sae(u, e, g, theta, t):
        f = FoldedFeatures((e / g[:, None]).T.astype(np.float32),
                           (-0.5 + 0.1 * rng.standard_normal(u.shape[0])).astype(np.float32),
                           (u * g[:, None]).astype(np.float32))
        return unfold(f, theta, info=SAEInfo(layer=t, hook_name=f"blocks.{t}.hook_resid_post",
                                             sae_id=f"family/{spec.name}/{t}"))

    theta_a = rng.lognormal(0.0, spec.theta_spread, n)
    theta_b = spec.theta_growth * rng.lognormal(0.0, spec.theta_spread, n_b)
    return sae(ua, ea, na, theta_a, 0), sae(ub, eb, nb, theta_b, 1), truth


#: Named families: each sets its knobs independently of the others (sizes are CI sizes).
FAMILIES: dict[str, FamilySpec] = {
    "isotropic": FamilySpec(n=512, d_in=64, fresh_fraction=0.3, noise=0.1,
                            description="isotropic directions, 30% fresh, noise 0.1"),
    "anisotropic": FamilySpec(n=512, d_in=128, spectrum_decay=0.5, spectrum_basis="random",
                              fresh_fraction=0.3, noise=0.2,
                              description="spectrum (k+1)^-0.5 in a random basis, noise 0.2"),
    "clusters": FamilySpec(n=768, d_in=96, clusters=0.6, group_size=(2, 8), cluster_spread=0.45,
                           fresh_fraction=0.3, noise=0.05,
                           description="60% in groups of 2-8 near-duplicates (sibling cos ~0.83), noise 0.05"),
    "heterogeneous": FamilySpec(n=512, d_in=64, norm_spread=0.8, gain_spread=1.5, theta_spread=1.0,
                                fresh_scale=0.05, fresh_fraction=0.5, noise=0.3,
                                description="norms and θ spread widely, weak newborns, 50% fresh, noise 0.3"),
    "rectangular": FamilySpec(n=384, n_b=768, d_in=80, spectrum_decay=0.3, clusters=0.3,
                              fresh_fraction=0.3, noise=0.15,
                              description="1:2 widths, mild anisotropy, 30% clustered, noise 0.15"),
    "stable": FamilySpec(n=512, d_in=64, fresh_fraction=0.0, noise=0.02,
                         description="nothing dies, noise 0.02"),
    "splitting": FamilySpec(n=512, d_in=96, fresh_fraction=0.3, split_fraction=0.3, split_spread=0.45,
                            noise=0.1, description="30% of persisting features also split off a newborn sibling in B"),
    "noisy-splitting": FamilySpec(n=512, d_in=64, clusters=0.6, cluster_spread=0.45, fresh_fraction=0.3,
                                  split_fraction=0.5, split_spread=0.45, noise=0.08, noise_spread=1.0,
                                  description="per-feature noise 0.08 × lognormal(1.0) (some features change "
                                              "a lot), clusters, and newborn siblings in B"),
    "null": FamilySpec(n=512, d_in=64, null=True, spectrum_decay=0.3, clusters=0.3,
                       description="two unrelated SAEs (nothing persists)"),
    "drifting-minority": FamilySpec(kind="drift", n=1024, d_in=96, fresh_fraction=0.25, stable_share=0.8,
                                    stable_deg=(1, 4), drift_deg=(10, 35), norm_spread=0.6,
                                    description="80% of persisting features turn 1-4°, 20% drift 10-35°, 25% fresh"),
    "shared-drift": FamilySpec(kind="drift", n=1024, d_in=96, shared_centres=128, member_cos=0.6,
                               fresh_fraction=0.3, stable_share=0.0, drift_deg=(10, 35),
                               description="both layers around 128 shared centres (cos 0.6), 70% persist "
                                           "drifting 10-35°"),
    "shared-null": FamilySpec(kind="drift", n=1024, d_in=96, shared_centres=128, member_cos=0.6, null=True,
                              description="both layers around 128 shared centres (cos 0.6), nothing persists"),
    "duplicates": FamilySpec(kind="drift", n=1024, d_in=96, duplicates=0.05, fresh_fraction=0.25,
                             stable_share=0.7, drift_deg=(10, 30),
                             description="5% of each SAE's features near-copies (8°) of another, 30% of "
                                         "persisting features drift 10-30°"),
}


FAMILIES = {k: replace(v, name=k) for k, v in FAMILIES.items()}


def family(name: str, *, seed: int = 0, **overrides: Any) -> tuple[SAEWeights, SAEWeights, np.ndarray]:
    """The named family ``name`` of :data:`FAMILIES` (knobs overridable)."""
    if name not in FAMILIES:
        raise KeyError(f"unknown family {name!r}; choose one of {sorted(FAMILIES)}")
    return family_pair(FAMILIES[name], seed=seed, **overrides)
