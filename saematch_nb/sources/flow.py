"""The model side of Feature Flow: each layer's attention output projection, for attention SAEs
read at ``hook_z`` (``saematch_nb.feature_flow(res, att=..., attn_out_proj=attention_out_proj(model))``).

A feature of an attention SAE at ``blocks.L.attn.hook_z`` writes ``z = d`` (n_heads x d_head) into
the heads; the attention output it adds is ``sum_h d[h] @ W_O[h]`` (``b_O`` does not depend on
the feature). Models with a norm *after* attention (Gemma 2 and 3: TransformerLens'
``blocks[L].ln1_post``, an RMSNorm) rescale that output before it reaches the residual stream:
``x / rms(x) * w``. The rms is one positive number per token, which leaves a direction unchanged;
the gain ``w`` is per dimension and turns it, so it is folded in here: ``W_O[h, e, :] * w``. A
LayerNorm there also removes the mean over d_model (folded in as well: ``W_O - mean_d W_O``).
Reading ``model.W_O`` alone is right for models without a post-attention norm (GPT-2, the demo).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def attention_out_proj(model: Any, layers: Sequence[int] | None = None, *, post_norm: bool = True
                       ) -> dict[int, torch.Tensor]:
    """``{layer: W_O}`` ([n_heads, d_head, d_model], float32, CPU, detached) of a TransformerLens
    ``HookedTransformer`` (or anything with ``blocks[L].attn.W_O``), for ``feature_flow``'s
    ``attn_out_proj``. ``post_norm``: fold the post-attention norm's gain in (module docstring)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"attention_out_proj needs a TransformerLens model (blocks[L].attn.W_O), got "
                        f"{type(model).__name__}")
    n = len(blocks)
    layers = list(range(n)) if layers is None else [int(L) for L in layers]
    out = {}
    for L in layers:
        if not 0 <= L < n:
            raise ValueError(f"layer {L} is out of range: the model has {n} layers")
        W = blocks[L].attn.W_O.detach().to("cpu", torch.float32)
        if W.ndim == 2:  # some attention variants keep W_O flat [n_heads * d_head, d_model]
            W = W.reshape(int(model.cfg.n_heads), -1, W.shape[-1])
        ln = getattr(blocks[L], "ln1_post", None) if post_norm else None
        if ln is not None:
            cls = type(ln).__name__
            if "LayerNorm" in cls and "RMS" not in cls:
                W = W - W.mean(dim=-1, keepdim=True)  # LayerNorm centres over d_model first
            w = getattr(ln, "w", None)
            if w is not None:
                W = W * w.detach().to("cpu", torch.float32)
        out[L] = W.contiguous()
    return out


__all__ = ["attention_out_proj"]
