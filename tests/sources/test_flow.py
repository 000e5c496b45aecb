"""sources/flow.py: each layer's attention output projection for attention SAEs at hook_z."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saematch_nb.core.flow import feature_flow, project_attention
from saematch_nb.core.weights import SAEInfo, SAEWeights
from saematch_nb.sources.flow import attention_out_proj


class RMSNorm(torch.nn.Module):  # named as TransformerLens' class: a gain w, no centring
    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)


class LayerNorm(RMSNorm):  # TransformerLens' LayerNorm: centring, then the gain
    pass


class _Obj:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def _fake_model(post):
    g = torch.Generator().manual_seed(0)
    blocks = []
    for _ in range(3):
        W_O = torch.randn(2, 3, 5, generator=g)
        ln = None if post is None else post(torch.rand(5, generator=g) + 0.5)
        blocks.append(_Obj(attn=_Obj(W_O=W_O), **({} if ln is None else {"ln1_post": ln})))
    return _Obj(blocks=blocks, cfg=_Obj(n_heads=2))


def test_plain_models_give_W_O():
    m = _fake_model(None)
    got = attention_out_proj(m, [0, 2])
    assert set(got) == {0, 2}
    torch.testing.assert_close(got[2], m.blocks[2].attn.W_O)
    assert got[0].dtype == torch.float32 and not got[0].requires_grad


def test_post_attention_norm_gain_is_folded_in():
    m = _fake_model(RMSNorm)
    got = attention_out_proj(m)
    w = m.blocks[1].ln1_post.w.detach()
    torch.testing.assert_close(got[1], m.blocks[1].attn.W_O * w)
    torch.testing.assert_close(attention_out_proj(m, post_norm=False)[1], m.blocks[1].attn.W_O)
    ml = _fake_model(LayerNorm)
    W = ml.blocks[0].attn.W_O
    torch.testing.assert_close(attention_out_proj(ml)[0],
                               (W - W.mean(-1, keepdim=True)) * ml.blocks[0].ln1_post.w.detach())


def test_bad_models_and_layers():
    with pytest.raises(TypeError, match="TransformerLens"):
        attention_out_proj(object())
    with pytest.raises(ValueError, match="out of range"):
        attention_out_proj(_fake_model(None), [3])


@pytest.fixture(scope="module")
def gemma2():
    pytest.importorskip("transformer_lens")
    from tests import _saelens_doubles as fx

    model = fx.tiny_gemma2_model(seed=1, n_layers=2, d_model=64)
    with torch.no_grad():  # a gain that is not all ones, so that folding it in matters
        g = torch.Generator().manual_seed(5)
        for b in model.blocks:
            b.ln1_post.w.copy_(torch.rand(64, generator=g) * 2 + 0.1)
    return model


def test_a_hook_z_feature_writes_the_projected_direction(gemma2):
    """Add a feature's decoder row to hook_z in a real (tiny, Gemma 2 shaped) TransformerLens
    model: what reaches hook_attn_out (after the post-attention norm) points along the direction
    attention_out_proj gives, not along the raw z @ W_O."""
    model = gemma2
    L = 1
    H, dh = model.cfg.n_heads, model.cfg.d_head
    d = torch.randn(H * dh, generator=torch.Generator().manual_seed(2))
    tokens = torch.tensor([[1, 5, 9, 11, 3, 7]])
    eps = 1e-2

    def add(z, hook):
        z = z.clone()
        z[:, -1] += eps * d.reshape(H, dh)
        return z

    with torch.no_grad():
        _, base = model.run_with_cache(tokens, names_filter=f"blocks.{L}.hook_attn_out")
        with model.hooks(fwd_hooks=[(f"blocks.{L}.attn.hook_z", add)]):
            _, moved = model.run_with_cache(tokens, names_filter=f"blocks.{L}.hook_attn_out")
    delta = (moved[f"blocks.{L}.hook_attn_out"] - base[f"blocks.{L}.hook_attn_out"])[0, -1]
    ours = project_attention(d[None], attention_out_proj(model)[L])[0]
    raw = project_attention(d[None], model.W_O[L].detach())[0]
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    assert cos(delta, ours) > 0.95
    assert cos(delta, raw) < cos(delta, ours) - 0.1


def test_feature_flow_takes_the_models_projections(gemma2):
    rng = np.random.default_rng(0)
    H, dh, D = gemma2.cfg.n_heads, gemma2.cfg.d_head, gemma2.cfg.d_model

    def sae(n, d_in, hook):
        dec = torch.tensor(rng.standard_normal((n, d_in)), dtype=torch.float32)
        return SAEWeights(W_enc=dec.T.contiguous(), b_enc=torch.zeros(n), W_dec=dec, b_dec=torch.zeros(d_in),
                          threshold=torch.ones(n), info=SAEInfo(hook_name=hook))

    res = {0: sae(80, D, "blocks.0.hook_resid_post"), 1: sae(80, D, "blocks.1.hook_resid_post")}
    att = {1: sae(40, H * dh, "blocks.1.attn.hook_z")}
    fl = feature_flow(res, att=att, attn_out_proj=attention_out_proj(gemma2, [1]), n_null=256)
    want = project_attention(att[1].W_dec, attention_out_proj(gemma2, [1])[1])
    wn = want / want.norm(dim=1, keepdim=True)
    q = res[1].W_dec / res[1].W_dec.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(fl.layer(1).s_A, (q @ wn.T).max(1).values.numpy(), atol=1e-5)
