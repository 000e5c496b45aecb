"""Gemma-Scope-shaped synthetic SAE pairs that are hard for assignment solvers.

What makes them Gemma-like (d_in 2304, d_sae 16384 by default): per-feature thresholds spread
lognormally and growing with depth, lognormal decoder norms, an anisotropic direction spectrum
(component k scaled by (k+1)^-decay, as residual streams are), and groups of near-duplicate
features (feature splitting: 2-4 features around one direction). Layer B keeps 70% of A's
features (permuted, rescaled, perturbed) and replaces 30% with fresh ones. Near-duplicate
groups are what make dense LSA slow (many almost-equal alternatives).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .synthetic import FoldedFeatures, perturb, random_features, survivors, unfold
from .weights import SAEInfo, SAEWeights


def _split_groups(f: FoldedFeatures, dups: float, group_size: tuple[int, int], spread: float,
                  rng: np.random.Generator) -> FoldedFeatures:
    """Turn a fraction ``dups`` of the features into groups of near-duplicates: each member is
    its group's first feature plus relative noise ``spread``."""
    n = f.dec.shape[0]
    n_dup = int(round(dups * n))
    if n_dup < 2:
        return f
    idx = rng.permutation(n)[:n_dup]
    sizes = []
    left = n_dup
    while left >= 2:
        s = int(min(left, rng.integers(group_size[0], group_size[1] + 1)))
        sizes.append(s)
        left -= s
    starts = np.concatenate([[0], np.cumsum(sizes)])
    centre = np.empty(starts[-1], np.int64)
    for a, b in zip(starts[:-1], starts[1:]):
        centre[a:b] = idx[a]
    members = idx[:starts[-1]]
    copies = FoldedFeatures(np.ascontiguousarray(f.enc[:, centre]), f.b_enc[centre].copy(), f.dec[centre].copy())
    moved = perturb(copies, spread, rng)
    enc, b, dec = f.enc.copy(), f.b_enc.copy(), f.dec.copy()
    enc[:, members] = moved.enc
    b[members] = moved.b_enc
    dec[members] = moved.dec
    return FoldedFeatures(enc, b, dec)


def _features(n, d_in, rng, dups, group_size, dup_spread, norm_spread, spectrum_decay):
    f = random_features(n, d_in, rng, norm_spread=norm_spread, spectrum_decay=spectrum_decay)
    return _split_groups(f, dups, group_size, dup_spread, rng)


def _next_layer(fa: FoldedFeatures, rng, fresh_fraction, noise, make_fresh):
    n = fa.dec.shape[0]
    alive, perm, truth = survivors(n, fresh_fraction, rng)
    kept = perturb(fa, noise, rng)
    fresh = make_fresh()
    enc, b, dec = fresh.enc, fresh.b_enc, fresh.dec
    enc[:, perm[alive]] = kept.enc[:, alive]
    b[perm[alive]] = kept.b_enc[alive]
    dec[perm[alive]] = kept.dec[alive]
    return FoldedFeatures(enc, b, dec), truth


def _info(t: int) -> SAEInfo:
    return SAEInfo(layer=t, hook_name=f"blocks.{t}.hook_resid_post", model_name="synthetic-gemma",
                   sae_id=f"synthetic-hard/layer_{t}")


def gemma_like_pair(n: int = 16384, d_in: int = 2304, *, fresh_fraction: float = 0.3, noise: float = 0.1,
                    dups: float = 0.3, group_size: tuple[int, int] = (2, 4), dup_spread: float = 0.1,
                    spectrum_decay: float = 0.5, norm_spread: float = 0.4, theta_spread: float = 0.5,
                    theta_growth: float = 1.1, seed: int = 0) -> tuple[SAEWeights, SAEWeights, np.ndarray]:
    """``(sae_a, sae_b, truth)``: ``truth[i]`` = planted partner in B of A-feature i, -1 = died.

    ``dups``: fraction of features in near-duplicate groups (sizes ``group_size``, relative
    spread ``dup_spread``, comparable to the planted ``noise``, so group members compete)."""
    if not (0 <= fresh_fraction < 1 and 0 <= dups <= 1):
        raise ValueError("gemma_like_pair: fresh_fraction must be in [0, 1) and dups in [0, 1]")
    rng = np.random.default_rng(seed)
    mk = lambda: _features(n, d_in, rng, dups, group_size, dup_spread, norm_spread, spectrum_decay)  # noqa: E731
    fa = mk()
    fb, truth = _next_layer(fa, rng, fresh_fraction, noise, mk)
    theta_a = rng.lognormal(0.0, theta_spread, size=n)
    theta_b = theta_growth * rng.lognormal(0.0, theta_spread, size=n)
    return unfold(fa, theta_a, info=_info(0)), unfold(fb, theta_b, info=_info(1)), truth


def gemma_like_chain(n_layers: int = 26, n: int = 16384, d_in: int = 2304, *, fresh_fraction: float = 0.3,
                     noise: float = 0.1, dups: float = 0.3, group_size: tuple[int, int] = (2, 4),
                     dup_spread: float = 0.1, spectrum_decay: float = 0.5, norm_spread: float = 0.4,
                     theta_spread: float = 0.5, theta_growth: float = 1.1,
                     seed: int = 0) -> Iterator[tuple[SAEWeights, np.ndarray | None]]:
    """Yields ``(sae_t, truth_t)`` layer by layer (``truth_t`` maps layer t to t+1, None for the
    last layer), holding only two layers' parameters at a time."""
    rng = np.random.default_rng(seed)
    mk = lambda: _features(n, d_in, rng, dups, group_size, dup_spread, norm_spread, spectrum_decay)  # noqa: E731
    f = mk()
    theta_mean = 1.0
    for t in range(n_layers):
        theta = theta_mean * rng.lognormal(0.0, theta_spread, size=n)
        if t == n_layers - 1:
            yield unfold(f, theta, info=_info(t)), None
            return
        nxt, truth = _next_layer(f, rng, fresh_fraction, noise, mk)
        yield unfold(f, theta, info=_info(t)), truth
        f = nxt
        theta_mean *= theta_growth
