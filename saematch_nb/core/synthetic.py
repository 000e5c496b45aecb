"""Synthetic SAEs with a known ground truth, for tests, benchmarks and the synthetic demo.

The generator works in *folded* space (where features of different layers are comparable),
then unfolds with a random per-feature threshold. A planted partner in the next layer has the
same folded parameters plus noise, but its own threshold: the SAE function is the same up to a
per-feature rescaling (encoder and θ multiplied by s, decoder divided by s), which is exactly
what folding undoes and unfolded matching does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .weights import SAEInfo, SAEWeights


@dataclass(frozen=True)
class FoldedFeatures:
    """Folded parameters of a set of features: enc [d_in, n], b_enc [n], dec [n, d_in]."""

    enc: np.ndarray
    b_enc: np.ndarray
    dec: np.ndarray


def random_features(n: int, d_in: int, rng: np.random.Generator, *, norm_spread: float = 0.4,
                    spectrum_decay: float = 0.0, gain_spread: float = 0.0) -> FoldedFeatures:
    """Random folded features. ``spectrum_decay`` > 0 makes directions anisotropic
    (component k scaled by (k+1)^-decay, as residual streams are). ``norm_spread``: lognormal
    spread of the decoder norm g (the encoder norm goes as 1/g). ``gain_spread`` > 0: an extra
    lognormal per-feature factor on both encoder and decoder, so that whole feature vectors differ
    in norm (then low-norm features are cheap for any row, the situation where the bijective
    optimum displaces persisting features onto fresh ones)."""
    u = rng.standard_normal((n, d_in))
    if spectrum_decay:
        u *= (np.arange(1, d_in + 1) ** -spectrum_decay)[None, :]
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    g = rng.lognormal(0.0, norm_spread, size=n)
    dec = u * g[:, None]
    # The encoder reads roughly along the decoder direction (as trained SAEs do), with its own part.
    e_dir = u + 0.3 * rng.standard_normal((n, d_in)) / np.sqrt(d_in)
    enc = (e_dir / g[:, None]).T
    b_enc = -0.5 + 0.1 * rng.standard_normal(n)
    if gain_spread:
        h = rng.lognormal(0.0, gain_spread, size=n)
        dec = dec * h[:, None]
        enc = enc * h[None, :]
    return FoldedFeatures(enc.astype(np.float32), b_enc.astype(np.float32), dec.astype(np.float32))


def survivors(n: int, fresh_fraction: float, rng: np.random.Generator, n_b: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which of ``n`` features live on into the next layer and where: (alive, perm, truth), with
    ``round(fresh_fraction * n)`` features dying (replaced by fresh ones), ``perm`` the slot in the
    next layer (``n_b`` slots, default ``n``) of each feature and ``truth[i]`` the partner of
    feature i (-1 for the dying)."""
    dying = rng.choice(n, size=int(round(fresh_fraction * n)), replace=False)
    alive = np.setdiff1d(np.arange(n), dying)
    perm = rng.permutation(n if n_b is None else n_b)
    truth = np.full(n, -1, dtype=np.int64)
    truth[alive] = perm[alive]
    return alive, perm, truth


def perturb(f: FoldedFeatures, noise: float | np.ndarray, rng: np.random.Generator) -> FoldedFeatures:
    """Add relative Gaussian noise (``noise`` × each feature's parameter norm; ``noise`` a number
    or one level per feature)."""
    n, d_in = f.dec.shape
    nz = np.broadcast_to(np.asarray(noise, dtype=np.float64).reshape(-1), (n,))
    dn = np.linalg.norm(f.dec, axis=1, keepdims=True)
    en = np.linalg.norm(f.enc, axis=0, keepdims=True)
    dec = f.dec + nz[:, None] * dn * rng.standard_normal((n, d_in)) / np.sqrt(d_in)
    enc = f.enc + nz[None, :] * en * rng.standard_normal((d_in, n)) / np.sqrt(d_in)
    b_enc = f.b_enc + nz * 0.1 * rng.standard_normal(n)
    return FoldedFeatures(enc.astype(np.float32), b_enc.astype(np.float32), dec.astype(np.float32))


def unfold(f: FoldedFeatures, theta: np.ndarray, *, b_dec: np.ndarray | None = None,
           info: SAEInfo | None = None) -> SAEWeights:
    """Give folded features a threshold θ: W_enc = enc·θ, b_enc = b·θ, W_dec = dec/θ."""
    theta = np.asarray(theta, dtype=np.float32)
    d_in = f.dec.shape[1]
    return SAEWeights(
        W_enc=torch.from_numpy(np.ascontiguousarray(f.enc * theta[None, :], dtype=np.float32)),
        b_enc=torch.from_numpy((f.b_enc * theta).astype(np.float32)),
        W_dec=torch.from_numpy(np.ascontiguousarray(f.dec / theta[:, None], dtype=np.float32)),
        b_dec=torch.from_numpy(np.zeros(d_in, np.float32) if b_dec is None else b_dec.astype(np.float32)),
        threshold=torch.from_numpy(theta.copy()),
        architecture="jumprelu",
        info=info or SAEInfo(),
    )


def planted_pair(n: int = 256, d_in: int = 64, *, n_b: int | None = None, fresh_fraction: float = 0.0,
                 noise: float = 0.1, rescale: tuple[float, float] = (0.3, 3.0), theta_scale: float = 1.0,
                 theta_growth: float = 2.0, norm_spread: float = 0.4, spectrum_decay: float = 0.0,
                 gain_spread: float = 0.0, fresh_scale: float = 1.0, seed: int = 0):
    """SAE A and SAE B = A with features permuted, rescaled and perturbed, some of them replaced.

    Returns ``(sae_a, sae_b, truth)`` where ``truth[i]`` is the planted partner in B of
    A-feature i, or -1 when i dies (its slot in B holds a fresh, unrelated feature).
    ``n_b > n`` adds extra fresh features to B (rectangular pair).

    ``gain_spread`` (see :func:`random_features`) and ``fresh_scale`` (folded norm factor of B's
    fresh features: newborn features are often weak) make the hard partial-matching benchmark:
    ``planted_pair(512, 64, fresh_fraction=0.3, gain_spread=1.0, fresh_scale=0.3, noise=0.3)``:
    low-norm fresh columns are worth nothing to the dying rows, which then take the partners of
    low-norm persisting features in the bijective optimum.
    """
    rng = np.random.default_rng(seed)
    n_b = n if n_b is None else n_b
    if n_b < n:
        raise ValueError("planted_pair needs n_b >= n (use the pair the other way round)")
    fa = random_features(n, d_in, rng, norm_spread=norm_spread, spectrum_decay=spectrum_decay,
                         gain_spread=gain_spread)
    theta_a = theta_scale * rng.lognormal(0.0, 0.3, size=n)

    alive, perm, truth = survivors(n, fresh_fraction, rng, n_b)  # perm: slot in B of each A feature and extra

    fb_kept = perturb(fa, noise, rng)
    fresh = random_features(n_b, d_in, rng, norm_spread=norm_spread, spectrum_decay=spectrum_decay,
                            gain_spread=gain_spread)
    enc_b = fresh.enc * fresh_scale
    b_b = fresh.b_enc * fresh_scale
    dec_b = fresh.dec * fresh_scale
    enc_b[:, perm[alive]] = fb_kept.enc[:, alive]
    b_b[perm[alive]] = fb_kept.b_enc[alive]
    dec_b[perm[alive]] = fb_kept.dec[alive]
    fb = FoldedFeatures(enc_b, b_b, dec_b)

    # B's thresholds: the residual norm grows with depth, and each feature is rescaled at random.
    s = rng.uniform(*rescale, size=n_b)
    theta_b = theta_scale * theta_growth * rng.lognormal(0.0, 0.3, size=n_b) * s
    sae_a = unfold(fa, theta_a, info=SAEInfo(layer=0, hook_name="blocks.0.hook_resid_post", sae_id="synthetic/0"))
    sae_b = unfold(fb, theta_b, info=SAEInfo(layer=1, hook_name="blocks.1.hook_resid_post", sae_id="synthetic/1"))
    return sae_a, sae_b, truth


@dataclass(frozen=True)
class PlantedChain:
    saes: list
    truths: list  # truths[t][i] = partner in layer t+1 of feature i of layer t, -1 = dies


def planted_chain(n_layers: int = 5, n: int = 128, d_in: int = 32, *, fresh_fraction: float = 0.1,
                  noise: float = 0.1, theta_growth: float = 1.3, seed: int = 0) -> PlantedChain:
    """A chain of SAEs where each layer keeps most features of the previous one (permuted,
    rescaled, perturbed) and replaces ``fresh_fraction`` of them with new ones."""
    rng = np.random.default_rng(seed)
    feats = random_features(n, d_in, rng)
    saes, truths = [], []
    theta_mean = 1.0
    slot_feats = feats
    for t in range(n_layers):
        theta = theta_mean * rng.lognormal(0.0, 0.3, size=n) * rng.uniform(0.3, 3.0, size=n)
        saes.append(unfold(slot_feats, theta, info=SAEInfo(
            layer=t, hook_name=f"blocks.{t}.hook_resid_post", sae_id=f"synthetic/layer_{t}")))
        if t == n_layers - 1:
            break
        alive, perm, truth = survivors(n, fresh_fraction, rng)
        kept = perturb(slot_feats, noise, rng)
        fresh = random_features(n, d_in, rng)
        enc = fresh.enc.copy()
        b = fresh.b_enc.copy()
        dec = fresh.dec.copy()
        enc[:, perm[alive]] = kept.enc[:, alive]
        b[perm[alive]] = kept.b_enc[alive]
        dec[perm[alive]] = kept.dec[alive]
        slot_feats = FoldedFeatures(enc, b, dec)
        truths.append(truth)
        theta_mean *= theta_growth
    return PlantedChain(saes, truths)


# -- Feature Flow: residual features made from the layer before, the MLP and the attention ------------
@dataclass(frozen=True)
class PlantedFlow:
    """Residual, MLP-output and attention SAEs (at ``hook_z``) with planted Feature Flow classes.

    ``res``: {layer: SAEWeights} at ``blocks.L.hook_resid_post`` for layers 0..n_layers-1; ``mlp``
    and ``att``: {layer: SAEWeights} for layers 1..n_layers-1, ``att`` at ``blocks.L.attn.hook_z``
    (decoder rows in n_heads * d_head); ``attn_out_proj``: {layer: W_O [n_heads, d_head, d_model]};
    ``truth``: {layer: class index per residual feature} in ``saematch_nb.core.flow.CLASSES`` order
    (0 translated, 1 processed, 2 newborn, 3 unexplained); ``source``: {layer: (module, index)
    per residual feature}: the planted predecessor ("R" at the layer before, "M" or "A" at the
    layer; processed features have their module one here and their residual one in
    ``residual_source``), ("", -1) for unexplained ones; ``residual_source``: {layer: index in the
    layer before, -1 = none}.
    """

    res: dict
    mlp: dict
    att: dict
    attn_out_proj: dict
    truth: dict
    source: dict
    residual_source: dict


def _sae_from_directions(dec: np.ndarray, info: SAEInfo, rng: np.random.Generator) -> SAEWeights:
    """A JumpReLU SAE whose decoder rows are ``dec`` (norms spread like trained SAEs'), encoder along them."""
    g = rng.lognormal(0.0, 0.3, size=dec.shape[0])[:, None]
    W_dec = (dec * g).astype(np.float32)
    d_in = dec.shape[1]
    return SAEWeights(W_enc=torch.from_numpy(np.ascontiguousarray((dec / g).T, dtype=np.float32)),
                      b_enc=torch.zeros(dec.shape[0]), W_dec=torch.from_numpy(W_dec), b_dec=torch.zeros(d_in),
                      threshold=torch.ones(dec.shape[0]), architecture="jumprelu", info=info)


def planted_flow(n_layers: int = 3, n: int = 256, d_in: int = 128, *, n_heads: int = 4, d_head: int = 16,
                 shares: tuple[float, float, float, float] = (0.4, 0.2, 0.2, 0.2), noise: float = 0.05,
                 spectrum_decay: float = 0.0, seed: int = 0) -> PlantedFlow:
    """Residual SAEs whose features at layer L>=1 are, in the proportions ``shares`` (translated,
    processed, newborn, unexplained): a feature of layer L-1 plus noise; the normalised sum of a
    feature of layer L-1 and an MLP or attention feature of layer L (cosine ~0.7 with each); an MLP
    or attention feature (its d_model direction, through W_O for attention); a random direction.
    Module features are used once each; half of the module-made features come from each module.
    ``noise``: relative Gaussian noise on every planted direction. ``spectrum_decay``: anisotropic
    directions (see :func:`random_features`) for every SAE."""
    rng = np.random.default_rng(seed)
    sh = np.asarray(shares, np.float64)
    if sh.shape != (4,) or (sh < 0).any() or sh.sum() <= 0:
        raise ValueError("shares must be four non-negative numbers (translated, processed, newborn, unexplained), "
                         f"got {shares}")
    counts = np.floor(sh / sh.sum() * n).astype(int)
    counts[0] += n - counts.sum()

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def directions(k: int, d: int) -> np.ndarray:
        return unit(random_features(k, d, rng, spectrum_decay=spectrum_decay).dec.astype(np.float64))

    def noisy(x: np.ndarray) -> np.ndarray:
        return unit(unit(x) + noise * rng.standard_normal(x.shape) / np.sqrt(x.shape[-1]))

    res, mlp, att, proj, truth, source, rsource = {}, {}, {}, {}, {}, {}, {}
    prev = directions(n, d_in)
    res[0] = _sae_from_directions(prev, SAEInfo(layer=0, hook_name="blocks.0.hook_resid_post",
                                                sae_id="synthetic/res/0"), rng)
    for L in range(1, n_layers):
        m_dirs = directions(n, d_in)
        z = directions(n, n_heads * d_head)
        W_O = rng.standard_normal((n_heads, d_head, d_in)) / np.sqrt(n_heads * d_head)
        a_dirs = unit(z @ W_O.reshape(n_heads * d_head, d_in))
        cls = rng.permutation(np.repeat(np.arange(4), counts))
        out = np.empty((n, d_in))
        src = [("", -1)] * n
        rsrc = np.full(n, -1, np.int64)
        r_pick = iter(rng.permutation(n).tolist())
        m_pick, a_pick = iter(rng.permutation(n).tolist()), iter(rng.permutation(n).tolist())
        use_attn = False
        for j in range(n):
            c = int(cls[j])
            if c in (1, 2):
                use_attn = not use_attn
                k = next(a_pick) if use_attn else next(m_pick)
                mod = a_dirs[k] if use_attn else m_dirs[k]
                src[j] = ("A" if use_attn else "M", k)
            if c in (0, 1):
                r = next(r_pick)
                rsrc[j] = r
                if c == 0:
                    src[j] = ("R", r)
            if c == 0:
                out[j] = noisy(prev[r])
            elif c == 1:
                out[j] = noisy(unit(prev[r]) + unit(mod))
            elif c == 2:
                out[j] = noisy(mod)
            else:
                out[j] = directions(1, d_in)[0]
        res[L] = _sae_from_directions(out, SAEInfo(layer=L, hook_name=f"blocks.{L}.hook_resid_post",
                                                   sae_id=f"synthetic/res/{L}"), rng)
        mlp[L] = _sae_from_directions(m_dirs, SAEInfo(layer=L, hook_name=f"blocks.{L}.hook_mlp_out",
                                                      sae_id=f"synthetic/mlp/{L}"), rng)
        att[L] = _sae_from_directions(z, SAEInfo(layer=L, hook_name=f"blocks.{L}.attn.hook_z",
                                                 sae_id=f"synthetic/att/{L}"), rng)
        proj[L] = W_O.astype(np.float32)
        truth[L] = cls.astype(np.int8)
        source[L] = src
        rsource[L] = rsrc
        prev = out
    return PlantedFlow(res=res, mlp=mlp, att=att, attn_out_proj=proj, truth=truth, source=source,
                       residual_source=rsource)
