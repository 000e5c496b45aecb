"""Test doubles: tiny, format-faithful Gemma Scope snapshots, sae-lens folders and Gemma 2 models.

Used by the tests (``from tests import _saelens_doubles as fx``) and by
``benchmarks/measure_activations.py --toy``; nothing here touches the network. It lives under
tests/ because it monkeypatches sae-lens and huggingface_hub: no part of the package needs it.

- :func:`write_gemma_scope_snapshot`: a Hugging Face snapshot of ``google/gemma-scope-2b-pt-res``
  with the real layout ``layer_{L}/width_16k/average_l0_{N}/params.npz`` (real key names
  W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold; float32), tiny sizes.
- :func:`write_gemma_scope_2_snapshot`: a Hugging Face snapshot of a Gemma Scope 2 repository
  (``google/gemma-scope-2-{size}-{pt,it}``) with the real layout ``{site}/{sae_id}/params.safetensors``
  + ``config.json`` (folders from sae-lens' directory; keys w_enc, w_dec, b_enc, b_dec, threshold and,
  for skip transcoders, affine_skip_connection; float32), tiny sizes.
- :func:`write_saelens_folder`: ``cfg.json`` + ``sae_weights.safetensors`` as ``SAE.save_model``
  writes them in sae-lens 6.
- :func:`route_hub_to`: monkeypatches sae-lens' download calls so the *real* sae-lens loaders
  (``SAE.from_pretrained`` -> gemma_2 / gemma_3 converter -> config -> state dict) read the fixtures.
- :func:`tiny_gemma2_model`: a randomly initialised HookedTransformer (or HookedSAETransformer)
  with TransformerLens' own Gemma 2 configuration at toy size, and a local tokenizer.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

GEMMA_SCOPE_REPO = "google/gemma-scope-2b-pt-res"
# Canonical 16k L0 of Gemma Scope 2b residual SAEs, layers 0..25 (sae-lens' directory lists the
# same numbers in the canonical ids' folders; tests/sources/test_saes.py checks it).
CANONICAL_16K_L0 = (105, 102, 141, 59, 124, 68, 70, 69, 71, 73, 77, 80, 82, 84, 84, 78, 78, 77,
                    74, 73, 71, 70, 72, 75, 73, 116)


# --------------------------------------------------------------------------------------------
# SAE files
# --------------------------------------------------------------------------------------------
def jumprelu_arrays(d_in: int = 16, d_sae: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    """Random JumpReLU SAE parameters in the sae-lens / Gemma Scope layout (float32)."""
    rng = np.random.default_rng(seed)
    W_dec = rng.standard_normal((d_sae, d_in)).astype(np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    return {
        "W_enc": np.ascontiguousarray(W_dec.T * rng.uniform(0.5, 1.5, d_sae), dtype=np.float32),
        "W_dec": W_dec,
        "b_enc": (0.1 * rng.standard_normal(d_sae)).astype(np.float32),
        "b_dec": (0.1 * rng.standard_normal(d_in)).astype(np.float32),
        "threshold": rng.uniform(0.05, 0.5, d_sae).astype(np.float32),
    }


def write_gemma_scope_snapshot(
    root: str | Path,
    layers: Sequence[int] = (0, 1, 2),
    *,
    width: str = "16k",
    l0s: Mapping[int, Sequence[int]] | None = None,
    d_in: int = 16,
    d_sae: int = 64,
    seed: int = 0,
) -> Path:
    """Write ``root/layer_{L}/width_{width}/average_l0_{N}/params.npz`` and return ``root``.

    By default each layer gets the L0 values that sae-lens' directory lists for release
    ``gemma-scope-2b-pt-res`` at that layer and width (so both the canonical and every
    average_l0 id resolve). Each file has its own seed (from seed, layer and L0): every SAE differs.
    """
    root = Path(root)
    for L in layers:
        for n in (l0s or {}).get(L) or real_l0s(L, width):
            folder = root / f"layer_{L}" / f"width_{width}" / f"average_l0_{n}"
            folder.mkdir(parents=True, exist_ok=True)
            arrays = jumprelu_arrays(d_in, d_sae, seed=seed * 1_000_003 + L * 1009 + n)
            np.savez(folder / "params.npz", **arrays)
    return root


def real_l0s(layer: int, width: str = "16k") -> list[int]:
    """The average_l0 values sae-lens lists for gemma-scope-2b-pt-res at (layer, width)."""
    from saematch_nb.sources.saes import _directory

    pre = f"layer_{layer}/width_{width}/average_l0_"
    out = sorted(int(s[len(pre):]) for s in _directory()["gemma-scope-2b-pt-res"].saes if s.startswith(pre))
    if not out:
        raise ValueError(f"gemma-scope-2b-pt-res has no SAEs at layer {layer}, width {width}")
    return out


def gemma_scope_2_arrays(folder: str, d_in: int, d_sae: int, d_out: int | None = None,
                         seed: int = 0) -> dict[str, np.ndarray]:
    """The tensors of one Gemma Scope 2 ``params.safetensors``, under the file's own (lower-case)
    names: w_enc [d_in, d_sae], w_dec [d_sae, d_out], b_enc, b_dec [d_out], threshold, and for
    ``_affine`` transcoders affine_skip_connection [d_in, d_out]. Deterministic per folder."""
    import zlib

    d_out = d_in if d_out is None else d_out
    rng = np.random.default_rng(seed * 1_000_003 + zlib.crc32(folder.encode()))
    out = {
        "w_enc": (rng.standard_normal((d_in, d_sae)) / np.sqrt(d_in)).astype(np.float32),
        "w_dec": (rng.standard_normal((d_sae, d_out)) / np.sqrt(d_out)).astype(np.float32),
        "b_enc": (0.1 * rng.standard_normal(d_sae)).astype(np.float32),
        "b_dec": (0.1 * rng.standard_normal(d_out)).astype(np.float32),
        # thresholds well away from 1: a loader that dropped or rescaled them would show
        "threshold": rng.uniform(0.05, 0.5, d_sae).astype(np.float32),
    }
    if folder.endswith("_affine"):
        out["affine_skip_connection"] = (0.1 * rng.standard_normal((d_in, d_out))).astype(np.float32)
    return out


def gemma_scope_2_config(repo_id: str, folder: str, l0: float | None = None, width: int | None = None) -> dict:
    """A Gemma Scope 2 ``config.json``: the keys sae-lens' gemma_3 loader reads (architecture,
    model_name, hf_hook_point_in, hf_hook_point_out, affine_connection) with the values its
    fallback ``_infer_gemma_3_raw_cfg_dict`` gives for the same folder, plus width and l0."""
    from sae_lens.loading.pretrained_sae_loaders import _infer_gemma_3_raw_cfg_dict

    cfg = dict(_infer_gemma_3_raw_cfg_dict(repo_id, folder))
    if width is not None:
        cfg["width"] = width
    if l0 is not None:
        cfg["l0"] = l0
    return cfg


def write_gemma_scope_2_snapshot(
    root: str | Path,
    release: str = "gemma-scope-2-1b-pt-res-all",
    layers: Sequence[int] | None = (0, 1, 2),
    *,
    sae_ids: Sequence[str] | None = None,
    d_in: int = 16,
    d_sae: int = 64,
    d_in_att: int = 32,
    config: bool = True,
    seed: int = 0,
) -> Path:
    """Write the SAEs of a Gemma Scope 2 ``release`` into ``root`` as the hub repo lays them out:
    ``root/{folder}/params.safetensors`` and ``root/{folder}/config.json``, with ``folder`` the
    path sae-lens' directory gives (e.g. ``resid_post_all/layer_0_width_16k_l0_small``). Return root.

    ``sae_ids`` picks ids; else every id of the release at ``layers`` (None: every layer). Several
    releases of one model share a repo, so several calls may write into one root. Attention SAEs
    read ``hook_z`` (n_heads × d_head wide, not d_model): they get ``d_in_att`` inputs.
    ``config=False`` leaves config.json out (sae-lens then infers it from the folder name).
    """
    import json

    import torch
    from safetensors.torch import save_file

    from saematch_nb.sources.saes import _directory

    rel = _directory()[release]
    if sae_ids is None:
        import re

        sae_ids = [s for s in rel.saes
                   if layers is None or int(re.search(r"layer_(\d+)", s).group(1)) in set(layers)]
    root = Path(root)
    for sid in sae_ids:
        folder = rel.saes[sid]
        n_in = d_in_att if folder.startswith("attn_out") else d_in
        arrays = gemma_scope_2_arrays(folder, n_in, d_sae, seed=seed)
        (root / folder).mkdir(parents=True, exist_ok=True)
        save_file({k: torch.from_numpy(v) for k, v in arrays.items()}, str(root / folder / "params.safetensors"))
        if config:
            cfg = gemma_scope_2_config(rel.repo_id, folder, l0=rel.l0.get(sid), width=d_sae)
            (root / folder / "config.json").write_text(json.dumps(cfg))
    return root


def write_saelens_folder(
    path: str | Path,
    *,
    d_in: int = 16,
    d_sae: int = 64,
    hook_name: str = "blocks.0.hook_resid_post",
    model_name: str | None = "tiny-gemma2",
    neuronpedia_id: str | None = None,
    release: str | None = None,
    sae_id: str | None = None,
    seed: int = 0,
) -> Path:
    """A sae-lens 6 JumpReLU folder (``cfg.json`` + ``sae_weights.safetensors``), as ``save_model``
    writes it (same keys; ``SAE.load_from_disk`` reads it, a test checks that)."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arrays = jumprelu_arrays(d_in, d_sae, seed)
    save_file({k: torch.from_numpy(v) for k, v in arrays.items()}, str(path / "sae_weights.safetensors"))
    meta = {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12",
            "hook_name": hook_name, "model_name": model_name}
    for k, v in (("neuronpedia_id", neuronpedia_id), ("release", release), ("sae_id", sae_id)):
        if v is not None:
            meta[k] = v
    cfg = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": False, "normalize_activations": "none",
           "reshape_activations": "none", "metadata": meta, "architecture": "jumprelu"}
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


def tiny_jumprelu_sae(d_in: int = 16, d_sae: int = 64, *, hook_name: str = "blocks.0.hook_resid_post",
                      seed: int = 0, arrays: Mapping[str, Any] | None = None) -> Any:
    """A sae-lens JumpReLU SAE object with random (or given) weights."""
    import torch
    from sae_lens import SAE

    arrays = arrays or jumprelu_arrays(d_in, d_sae, seed)
    cfg = {"architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": False, "normalize_activations": "none",
           "metadata": {"hook_name": hook_name, "model_name": "tiny-gemma2"}}
    sae = SAE.from_dict(cfg)
    sae.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in arrays.items()})
    return sae


# --------------------------------------------------------------------------------------------
# routing sae-lens' hub downloads to fixtures
# --------------------------------------------------------------------------------------------
def route_hub_to(monkeypatch: Any, snapshots: Mapping[str, str | Path]) -> list[tuple[str, str]]:
    """Make sae-lens read hub files from local snapshot folders; returns the log of requests.

    Patched (both in ``sae_lens.loading.pretrained_sae_loaders``, where sae-lens looks them up
    at call time):

    - ``hf_hub_download`` (imported there from huggingface_hub): ``(repo_id, filename,
      subfolder)`` -> ``snapshots[repo_id]/subfolder/filename``. A repo not in ``snapshots``
      raises ``LocalEntryNotFoundError`` exactly like an offline hub; a missing file raises
      ``EntryNotFoundError`` (what sae-lens expects for optional files).
    - ``get_gemma_2_config_from_hf``: the real function still runs (hook, model name, flags),
      then d_in / d_sae are taken from the fixture's params.npz, because sae-lens hard-codes
      d_in = 2304 for "2b" repos and d_sae from the width name (16k -> 16384).
    - ``_get_with_rate_limit_retry`` (a plain ``requests.get``: how the gemma_3 loader's
      ``get_safetensors_tensor_shapes`` reads a params.safetensors header by HTTP range requests,
      bypassing the HF cache): the URL ``hf_hub_url`` built is mapped back to the fixture file and
      the requested bytes are served from it, so the real header parsing runs. A repo not in
      ``snapshots`` raises ``requests.ConnectionError``, as an unreachable hub does.
    """
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    from sae_lens.loading import pretrained_sae_loaders as psl

    roots = {k: Path(v) for k, v in snapshots.items()}
    log: list[tuple[str, str]] = []

    def fake_hf_hub_download(repo_id: str, filename: str, *, subfolder: str | None = None, **_: Any) -> str:
        rel = f"{subfolder}/{filename}" if subfolder else filename
        log.append((repo_id, rel))
        if repo_id not in roots:
            raise LocalEntryNotFoundError(
                "An error happened while trying to locate the file on the Hub and we cannot find "
                f"the requested files in the local cache ({repo_id}/{rel}; routed to fixtures).")
        p = roots[repo_id] / rel
        if not p.exists():
            raise EntryNotFoundError(f"{rel} not in fixture snapshot of {repo_id}")
        return str(p)

    real_cfg = psl.get_gemma_2_config_from_hf

    def tiny_gemma_2_config(repo_id, folder_name, device, force_download=False, cfg_overrides=None):
        cfg = real_cfg(repo_id, folder_name, device, force_download, cfg_overrides)
        npz = roots.get(repo_id, Path("/nonexistent")) / folder_name / "params.npz"
        if npz.exists():
            with np.load(npz) as z:
                cfg["d_in"], cfg["d_sae"] = (int(s) for s in z["W_enc"].shape)
        return cfg

    def fake_http_range_get(url: str, headers: Mapping[str, Any], max_attempts: int = 5) -> Any:
        import re
        import types
        from urllib.parse import unquote

        import requests

        m = re.match(r"^https?://[^/]+/(?P<repo>[^/]+/[^/]+)/resolve/[^/]+/(?P<file>.+)$", url)
        rng = re.match(r"bytes=(\d+)-(\d+)$", str(headers.get("Range", "")))
        if m is None or rng is None:
            raise AssertionError(f"unexpected HTTP request from sae-lens: {url} {headers.get('Range')}")
        repo_id, rel = m.group("repo"), unquote(m.group("file"))
        log.append((repo_id, f"{rel}#bytes={rng.group(1)}-{rng.group(2)}"))
        if repo_id not in roots:
            raise requests.ConnectionError(f"test: {url} is not routed to a fixture (hub unreachable)")
        p = roots[repo_id] / rel
        if not p.exists():
            raise requests.HTTPError(f"404: {rel} not in fixture snapshot of {repo_id}")
        with open(p, "rb") as f:
            f.seek(int(rng.group(1)))
            data = f.read(int(rng.group(2)) - int(rng.group(1)) + 1)
        return types.SimpleNamespace(content=data, status_code=206, headers={})

    monkeypatch.setattr(psl, "hf_hub_download", fake_hf_hub_download)
    monkeypatch.setattr(psl, "get_gemma_2_config_from_hf", tiny_gemma_2_config)
    monkeypatch.setattr(psl, "_get_with_rate_limit_retry", fake_http_range_get)
    return log


def force_offline_hub(monkeypatch: Any, cache_dir: str | Path) -> None:
    """Real huggingface_hub in offline mode with an empty cache (what HF_HUB_OFFLINE=1 does,
    patched after import because huggingface_hub reads the variable once)."""
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(c, "HUGGINGFACE_HUB_CACHE", str(cache_dir), raising=False)


# --------------------------------------------------------------------------------------------
# tiny Gemma 2
# --------------------------------------------------------------------------------------------
_TOKENIZER_DIRS: dict[tuple, str] = {}
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Sparse autoencoders find features in the "
    "residual stream of a language model. Features of one layer are matched to the next layer. "
    "def f(x): return x * 2  # code\n"
    "Paris is the capital of France. Berlin is the capital of Germany. 0123456789 ()[]{}<>=+-*/"
)


def tiny_tokenizer(directory: str | Path | None = None, vocab_size: int = 384) -> Any:
    """A byte-level BPE tokenizer (any text encodes) with <bos>/<eos>/<pad>/<unk>, saved to and
    loaded back from a local folder: TransformerLens reloads a tokenizer by ``name_or_path`` to
    add BOS, and an in-memory one would send that reload to the hub."""
    from transformers import AutoTokenizer

    key = (str(directory) if directory else None, vocab_size)
    if key in _TOKENIZER_DIRS and Path(_TOKENIZER_DIRS[key], "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(_TOKENIZER_DIRS[key])
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")
    out = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="smn_tiny_tok_"))
    fast.save_pretrained(out)
    _TOKENIZER_DIRS[key] = str(out)
    return AutoTokenizer.from_pretrained(str(out))


def tiny_gemma2_config(
    *, n_layers: int = 2, d_model: int = 64, n_heads: int = 4, n_key_value_heads: int = 2,
    d_head: int = 16, d_mlp: int = 128, d_vocab: int = 384, n_ctx: int = 128, window_size: int = 8,
    seed: int = 0, device: str = "cpu",
) -> Any:
    """HookedTransformerConfig from TransformerLens' own gemma-2-2b settings, shrunk.

    ``convert_hf_model_config("google/gemma-2-2b")`` works offline in TL 3.x (Gemma configs are
    written out in TL's source, no hub call), so the architecture flags are TL's: RMSNorm before
    and after each sublayer, gelu_pytorch_tanh gated MLP, rotary, GQA, attention soft-cap 50,
    final logit soft-cap 30, alternating local (sliding window) / global attention.
    """
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    cfg = dict(convert_hf_model_config("google/gemma-2-2b"))
    cfg.update(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_key_value_heads=n_key_value_heads,
        d_head=d_head, d_mlp=d_mlp, d_vocab=d_vocab, n_ctx=n_ctx, window_size=window_size,
        attn_types=(["local", "global"] * n_layers)[:n_layers], model_name="tiny-gemma2",
        tokenizer_name=None, seed=seed, device=device, init_weights=True,
        default_prepend_bos=True, dtype=__import__("torch").float32,
    )
    cfg.pop("quantization_method", None)
    return HookedTransformerConfig(**cfg)


def tiny_gemma2_model(
    seed: int = 0, n_layers: int = 2, d_model: int = 64, *, sae_transformer: bool = False,
    tokenizer_dir: str | Path | None = None, **cfg_kw: Any,
) -> Any:
    """A random Gemma-2-architecture HookedTransformer (``sae_transformer=True``: sae-lens'
    HookedSAETransformer, what ``load_model`` returns) with a local tokenizer. CPU, float32.

    The random init uses TL's initializer_range; embedding scaling by sqrt(d_model) is part of
    TL's Gemma weight conversion, not of the forward pass, so a random model has nothing to scale.
    """
    import torch

    tok = tiny_tokenizer(tokenizer_dir)
    cfg = tiny_gemma2_config(n_layers=n_layers, d_model=d_model, d_vocab=len(tok), seed=seed, **cfg_kw)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
        if sae_transformer:
            from sae_lens import HookedSAETransformer as cls
        else:
            from transformer_lens import HookedTransformer as cls
        model = cls(cfg, tokenizer=tok)
    model.eval()
    return model


def write_tiny_hf_gemma2(
    directory: str | Path, *, seed: int = 0, n_layers: int = 2, d_model: int = 64, n_heads: int = 4,
    n_key_value_heads: int = 2, d_head: int = 16, d_mlp: int = 128, n_ctx: int = 128, window_size: int = 8,
) -> Path:
    """A random Hugging Face ``Gemma2ForCausalLM`` + tokenizer saved in ``directory`` (the layout of a
    hub snapshot of google/gemma-2-2b, at toy size): what ``load_model(path, backend="bridge")``
    boots offline. ``query_pre_attn_scalar = d_head`` as in gemma-2-2b (256 = head_dim)."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    directory = Path(directory)
    tok = tiny_tokenizer()
    cfg = Gemma2Config(
        vocab_size=len(tok), hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_key_value_heads, head_dim=d_head,
        max_position_embeddings=n_ctx, sliding_window=window_size, query_pre_attn_scalar=d_head,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(cfg)
    with torch.no_grad():  # HF inits norm weights at 0 (= gain 1); random gains test the +1 handling
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.1)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def hooked_from_hf_gemma2(hf_model: Any, tokenizer: Any = None, *, sae_transformer: bool = False) -> Any:
    """HookedTransformer (or HookedSAETransformer) holding a HF Gemma 2's weights, converted by
    TransformerLens' own ``convert_gemma_weights`` (what ``from_pretrained`` does for gemma-2-2b)."""
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights

    c = hf_model.config
    cfg = tiny_gemma2_config(
        n_layers=c.num_hidden_layers, d_model=c.hidden_size, n_heads=c.num_attention_heads,
        n_key_value_heads=c.num_key_value_heads, d_head=c.head_dim, d_mlp=c.intermediate_size,
        d_vocab=c.vocab_size, n_ctx=c.max_position_embeddings, window_size=c.sliding_window,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
        if sae_transformer:
            from sae_lens import HookedSAETransformer as cls
        else:
            from transformer_lens import HookedTransformer as cls
        model = cls(cfg, tokenizer=tokenizer)
    model.load_and_process_state_dict(
        convert_gemma_weights(hf_model, cfg), fold_ln=False, center_writing_weights=False,
        center_unembed=False, fold_value_biases=False,
    )
    model.eval()
    return model
