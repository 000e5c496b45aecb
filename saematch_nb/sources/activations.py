"""Collect residual-stream activations of a TransformerLens model on a set of texts, to disk.

Memory stays bounded: documents are tokenized first (so the number of kept tokens is known), then
run in batches, and each layer's activations stream into a ``.npy`` memmap [n_tokens, d_model].
The BOS position of every document is excluded, as in the paper. Results are cached under
``cache_dir`` keyed by the model's identity, a hash of the token ids and the options; a run writes
into a temporary folder renamed into place only when complete, so an interrupted or failed run
never leaves a half-written cache. A run killed outright (kill -9) leaves its temporary folder;
the next collection in that folder removes it once its writer is gone (see
:func:`remove_stale_temp_folders`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..core._checks import as_index, as_indices
from ..core.cache import cache_folder, warn_unwritable
from ..errors import SaematchError

DEFAULT_HOOK = "blocks.{L}.hook_resid_post"
FORMAT = 1


class ActivationError(SaematchError, ValueError):
    """Bad input to activation collection (what was wrong and what to do)."""


# -- the result -----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Activations:
    """Activations of ``layers`` at ``hook`` on the kept tokens (BOS excluded).

    Row ``r`` of every layer is the token ``token_ids[r]`` at position ``pos[r]`` of document
    ``doc[r]``. ``acts[L]`` (or ``acts.layer(L)``) is a read-only memmap [n_tokens, d_model];
    ``acts.batches(L, n)`` yields torch tensors of ``n`` rows. ``doc_tokens[d]`` holds the full
    token ids of document ``d`` (BOS included) and ``vocab`` the strings of the ids that occur,
    for showing contexts.
    """

    path: Path
    key: str
    layers: tuple[int, ...]
    hook: str
    token_ids: np.ndarray
    doc: np.ndarray
    pos: np.ndarray
    doc_offsets: np.ndarray  # doc d's full tokens are all_tokens[doc_offsets[d]:doc_offsets[d+1]]
    all_tokens: np.ndarray
    vocab: dict = field(repr=False)
    d_model: int = 0
    dtype: str = "float32"
    model_name: str = ""
    stats: dict = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def n_docs(self) -> int:
        return int(self.doc_offsets.shape[0] - 1)

    def hook_name(self, layer: int) -> str:
        return self.hook.format(L=as_index(layer, "layer"))

    def layer(self, layer: int) -> np.ndarray:
        layer = as_index(layer, "layer")  # int(1.9) would silently give layer 1
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not collected (layers {self.layers}); "
                           "collect it with collect_activations(..., layers=[...])")
        return np.load(self.path / f"layer_{layer}.npy", mmap_mode="r")

    __getitem__ = layer

    def batches(self, layer: int, batch_tokens: int = 4096, *, device: Any = None) -> Iterator[Any]:
        """Float32 torch batches of ``batch_tokens`` rows of one layer, in row order."""
        import torch

        arr = self.layer(layer)
        for s in range(0, arr.shape[0], batch_tokens):
            yield torch.from_numpy(np.array(arr[s:s + batch_tokens], dtype=np.float32)).to(device or "cpu")

    def to_pandas(self):
        """One row per kept token: doc, pos, token id and string."""
        import pandas as pd

        return pd.DataFrame({"doc": self.doc, "pos": self.pos, "token_id": self.token_ids,
                             "token": [self.token_str(t) for t in self.token_ids]})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Activations":
        """Reopen a finished collection folder (a cache entry)."""
        path = Path(path)
        if not (path / "meta.json").exists():
            raise FileNotFoundError(f"{path} is not a finished activation collection (no meta.json)")
        arrs = {n: np.load(path / f"{n}.npy") for n in ("all_tokens", "doc_offsets", "doc", "pos", "token_ids")}
        return _load(path, None, arrs["all_tokens"], arrs["doc_offsets"], arrs["doc"], arrs["pos"],
                     arrs["token_ids"], stats_extra={"cached": True})

    def doc_tokens(self, d: int) -> np.ndarray:
        return self.all_tokens[self.doc_offsets[d]:self.doc_offsets[d + 1]]

    def token_str(self, tid: int) -> str:
        return self.vocab.get(int(tid), f"<{int(tid)}>")

    def row_of(self, d: int, p: int) -> int:
        """Row of (document, position), or -1 when that token is not kept (BOS, truncated)."""
        lo, hi = np.searchsorted(self.doc, d, "left"), np.searchsorted(self.doc, d, "right")
        j = lo + np.searchsorted(self.pos[lo:hi], p)
        return int(j) if j < hi and self.pos[j] == p else -1

    def rows_of(self, d: int, positions: np.ndarray) -> np.ndarray:
        """:meth:`row_of` for many positions of one document at once (-1 where not kept)."""
        lo, hi = np.searchsorted(self.doc, d, "left"), np.searchsorted(self.doc, d, "right")
        ps = np.asarray(positions, dtype=np.int64)
        j = lo + np.searchsorted(self.pos[lo:hi], ps)
        jj = np.minimum(j, max(hi - 1, 0))
        ok = (j < hi) & (self.pos[jj] == ps) if hi > lo else np.zeros(ps.shape, bool)
        return np.where(ok, j, -1).astype(np.int64)

    def nbytes(self) -> int:
        return sum((self.path / f"layer_{L}.npy").stat().st_size for L in self.layers)

    def __repr__(self) -> str:
        return (f"Activations({self.model_name or 'model'}, layers={list(self.layers)}, "
                f"hook={self.hook!r}, docs={self.n_docs}, tokens={self.n_tokens}, "
                f"d_model={self.d_model}, {self.dtype}, {self.nbytes() / 2**20:.1f} MiB at {self.path})")


# -- identity and tokenization --------------------------------------------------------------------
def model_identity(model: Any) -> str:
    """A cheap fingerprint of a model: its config plus a strided sample of every parameter."""
    import torch

    h = hashlib.sha256()
    cfg = getattr(model, "cfg", None)
    h.update(repr(getattr(cfg, "to_dict", lambda: cfg)()).encode() if cfg is not None else b"nocfg")
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(flat[::step].to("cpu", torch.float32).numpy().tobytes())
    return h.hexdigest()[:16]


DEFAULT_DATASET_DOCS = 100


def _resolve_texts(texts: Any, max_docs: int | None = None) -> Any:
    """Strings / token ids as given; the demo's held-out texts; a Hugging Face dataset name
    (its first ``max_docs`` documents, default 100) or ``(dataset_name, n_docs)``."""
    if max_docs is not None and (not isinstance(max_docs, (int, np.integer)) or max_docs < 1):
        raise ActivationError(f"max_docs must be a positive integer, got {max_docs!r}")
    if hasattr(texts, "texts") and not isinstance(texts, (str, list, tuple)):
        texts = list(texts.texts)  # a demo bundle
    elif isinstance(texts, str):
        return _dataset_texts(texts, max_docs or DEFAULT_DATASET_DOCS)
    elif (isinstance(texts, tuple) and len(texts) == 2 and isinstance(texts[0], str)
          and isinstance(texts[1], (int, np.integer)) and not isinstance(texts[1], bool)):
        n = int(texts[1]) if max_docs is None else min(int(texts[1]), int(max_docs))
        if n < 1:
            raise ActivationError(f"texts={texts!r}: the number of documents must be >= 1")
        return _dataset_texts(texts[0], n)
    if max_docs is not None:
        try:
            texts = list(texts)[: int(max_docs)]
        except TypeError:
            pass  # tokenize reports what texts should be
    return texts


def _dataset_texts(name: str, n_docs: int = DEFAULT_DATASET_DOCS) -> list[str]:
    """The first ``n_docs`` documents (column "text", else the first string column) of the train
    split of the Hugging Face dataset ``name``, streamed (nothing else is downloaded)."""
    try:
        import datasets
    except ImportError:
        raise ActivationError(f"texts={name!r} looks like a dataset name, but the `datasets` package is "
                              "not installed; pip install datasets, or pass a list of strings") from None
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise ActivationError(
            f"texts={name!r} names a Hugging Face dataset, but the hub is offline (HF_HUB_OFFLINE=1 or "
            "HF_DATASETS_OFFLINE=1). Pass a list of strings instead, e.g. saematch_nb.demo.load().texts")
    try:
        ds = datasets.load_dataset(name, split="train", streaming=True)
        out = []
        for row in ds:
            out.append(row.get("text") or next(v for v in row.values() if isinstance(v, str)))
            if len(out) >= n_docs:
                break  # read no row more than needed
        return out
    except Exception as exc:
        raise ActivationError(f"could not read dataset {name!r} from the Hugging Face hub ({exc}); "
                              "check the name and your connection (offline?), or pass a list of strings") from exc


def tokenize(model: Any, texts: Any, *, context: int | None = None, max_docs: int | None = None) -> list[np.ndarray]:
    """One int64 array per document (BOS first when the model's tokenizer adds one), truncated
    to ``context`` tokens (default: the model's n_ctx); at most ``max_docs`` documents."""
    texts = _resolve_texts(texts, max_docs)
    n_ctx = int(getattr(getattr(model, "cfg", None), "n_ctx", 0) or 0) or None
    if context is not None:  # 0 is not "the default": only None is
        context = as_index(context, "context")
        if context < 2:
            raise ActivationError(f"context must be at least 2 tokens per document (BOS and one token), "
                                  f"got {context}; pass None for the model's n_ctx")
    context = context or n_ctx
    if context is not None and n_ctx is not None and context > n_ctx:
        raise ActivationError(f"context={context} is longer than the model's n_ctx={n_ctx}")
    docs: list[np.ndarray] = []
    try:
        items = list(texts)
    except TypeError:
        raise ActivationError("texts must be a list of strings or of token-id lists, got "
                              f"{type(texts).__name__}") from None
    if not items:
        raise ActivationError("texts is empty: pass at least one document")
    for i, t in enumerate(items):
        if isinstance(t, str):
            if getattr(model, "tokenizer", None) is None:
                raise ActivationError("this model has no tokenizer: pass token ids (lists of ints) instead of strings")
            ids = np.asarray(model.to_tokens(t, prepend_bos=True, truncate=False)[0].cpu().numpy(), np.int64)
        else:
            try:
                raw = np.asarray(t.cpu().numpy() if hasattr(t, "cpu") else t).reshape(-1)
            except (TypeError, ValueError):
                raise ActivationError(f"document {i} is neither a string nor a list of token ids: "
                                      f"{type(t).__name__}") from None
            # ids are integers as given: a cast would read 5.9 as token 5 and True as token 1
            if raw.size and raw.dtype.kind not in "iu":
                raise ActivationError(f"document {i} has token ids of type {raw.dtype} ({raw[:3].tolist()}...); "
                                      "token ids must be integers (a list of ints or an integer tensor)")
            if raw.dtype.kind == "u" and raw.size and raw.max() > np.iinfo(np.int64).max:
                raise ActivationError(f"document {i} has token ids outside the int64 range")
            ids = raw.astype(np.int64)
            d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
            if ids.size and (ids.min() < 0 or (d_vocab and ids.max() >= d_vocab)):
                raise ActivationError(f"document {i} has token ids outside [0, {d_vocab})")
        if context:
            ids = ids[:context]
        if ids.size < 2:
            raise ActivationError(f"document {i} has {ids.size} token(s) after tokenization; need at least 2 "
                                  "(BOS and one token)")
        docs.append(ids)
    return docs


def _vocab_strings(model: Any, ids: np.ndarray) -> dict[int, str]:
    uniq = np.unique(ids)
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return {int(t): f"<{int(t)}>" for t in uniq}
    strs = tok.convert_ids_to_tokens([int(t) for t in uniq])
    out = {}
    for t, s in zip(uniq, strs):
        s = tok.convert_tokens_to_string([s]) if s is not None else f"<{int(t)}>"
        out[int(t)] = s
    return out


# -- collection -----------------------------------------------------------------------------------
def collect_activations(
    model: Any, texts: Any, layers: Sequence[int] | int, *, hook: str = DEFAULT_HOOK, batch_size: int = 8,
    max_tokens: int | None = None, context: int | None = None, exclude_bos: bool = True,
    dtype: str = "float32", cache: bool = True, cache_dir: str | os.PathLike | None = None,
    progress: bool = True, max_docs: int | None = None,
) -> Activations:
    """Run ``model`` on ``texts`` and store the activations of ``layers`` at ``hook`` on disk.

    ``texts``: a list of strings (tokenized with the model's tokenizer, BOS prepended), a list of
    token-id lists (used as given; their first token is treated as BOS), the demo bundle (its
    held-out ``.texts``), or a Hugging Face dataset name (needs the hub online and the
    ``datasets`` package; streamed, its first ``max_docs`` documents, default 100; the form
    ``("dataset_name", n_docs)`` says the same wherever texts are taken). ``max_docs``: use at
    most this many documents (of a list too).
    ``context``: tokens per document, at least 2 (None: the model's n_ctx; 0 is an error, not the
    default); ``max_tokens``: stop after this many kept tokens in total, a positive integer (whole
    documents only, the last one truncated; None: all). Token ids must be integers (floats are
    refused, not cut) in [0, d_vocab); ``layers`` integers (a string such as "12" is refused). ``dtype``: storage
    ("float32" or "float16"). ``cache``: reuse a finished collection with the same model, tokens
    and options under ``cache_dir`` (default ``$SAEMATCH_CACHE_DIR/activations``).
    """
    import torch
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    # ints only: int(1.9) would be layer 1 and tuple(int(c) for c in "12") layers (1, 2)
    layers = ((as_index(layers, "layers"),) if isinstance(layers, (int, np.integer))
              else as_indices(layers, "layers"))
    if not layers:
        raise ActivationError("layers is empty: name at least one layer")
    n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
    if n_layers is not None and any(not 0 <= L < n_layers for L in layers):
        raise ActivationError(f"layers {layers} out of range: the model has layers 0..{n_layers - 1}")
    if not isinstance(hook, str) or "{L}" not in hook:
        raise ActivationError(f"hook must contain '{{L}}' (e.g. {DEFAULT_HOOK!r}), got {hook!r}")
    try:
        hook_names = [hook.format(L=L) for L in layers]
    except (KeyError, IndexError, ValueError, AttributeError) as e:  # '{x}', '{0}', '{L', '{L.x}'
        raise ActivationError(f"hook {hook!r} is not a template with the one field {{L}} "
                              f"({type(e).__name__}: {e}); e.g. {DEFAULT_HOOK!r}") from None
    known = getattr(model, "hook_dict", None)
    if known is not None:
        missing = [h for h in hook_names if h not in known]
        if missing:
            raise ActivationError(f"the model has no hook point(s) {missing}")
    if dtype not in ("float32", "float16"):
        raise ActivationError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    if as_index(batch_size, "batch_size") < 1:
        raise ActivationError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None and as_index(max_tokens, "max_tokens") < 1:
        raise ActivationError(f"max_tokens must be a positive number of tokens (or None: every token), "
                              f"got {max_tokens}")

    docs = tokenize(model, texts, context=context, max_docs=max_docs)
    first = 1 if exclude_bos else 0
    if max_tokens is not None:
        kept, out = 0, []
        for ids in docs:
            room = max_tokens - kept
            if room <= 0:
                break
            ids = ids[: first + room]
            out.append(ids)
            kept += ids.size - first
        docs = out
    lengths = np.array([d.size for d in docs], np.int64)
    all_tokens = np.concatenate(docs)
    doc_offsets = np.concatenate([[0], np.cumsum(lengths)])
    doc = np.concatenate([np.full(n - first, i, np.int32) for i, n in enumerate(lengths)])
    pos = np.concatenate([np.arange(first, n, dtype=np.int32) for n in lengths])
    token_ids = np.concatenate([d[first:] for d in docs])
    d_model = int(model.cfg.d_model)

    h = hashlib.sha256()
    h.update(model_identity(model).encode())
    h.update(all_tokens.tobytes())
    h.update(lengths.tobytes())
    h.update(json.dumps({"layers": layers, "hook": hook, "bos": exclude_bos, "dtype": dtype,
                         "format": FORMAT}).encode())
    key = h.hexdigest()[:20]
    model_name = str(getattr(model.cfg, "model_name", "") or "")

    root = cache_folder("activations", cache_dir)
    final = root / key
    if cache and _exists(final / "meta.json"):
        try:
            return _load(final, model, all_tokens, doc_offsets, doc, pos, token_ids, stats_extra={"cached": True})
        except Exception:  # an unreadable cache entry is recomputed, never trusted
            shutil.rmtree(final, ignore_errors=True)

    tmp = None
    removed = 0
    if cache:
        try:
            root.mkdir(parents=True, exist_ok=True)
            removed = remove_stale_temp_folders(root)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        except OSError as e:  # the collection runs all the same, uncached
            warn_unwritable(root, e, "activations")
            cache = False
    if tmp is None:
        removed += remove_stale_temp_folders(Path(tempfile.gettempdir()))
        tmp = Path(tempfile.mkdtemp(prefix=_UNCACHED_PREFIX))
    lock = _hold_writer_lock(tmp)
    try:
        np_dtype = np.float16 if dtype == "float16" else np.float32
        mms = {L: np.lib.format.open_memmap(tmp / f"layer_{L}.npy", mode="w+", dtype=np_dtype,
                                            shape=(token_ids.size, d_model)) for L in layers}
        device = getattr(model.cfg, "device", None) or "cpu"
        pad = 0
        row = 0
        bar = tqdm(total=int(token_ids.size), desc="activations", unit="tok", disable=not progress)
        for s in range(0, len(docs), batch_size):
            batch = docs[s:s + batch_size]
            L_max = max(d.size for d in batch)
            toks = torch.full((len(batch), L_max), pad, dtype=torch.long)
            for i, d in enumerate(batch):
                toks[i, :d.size] = torch.from_numpy(d)
            # Right padding under causal attention leaves the real positions exact.
            with torch.no_grad():
                _, cache_ = model.run_with_cache(toks.to(device), names_filter=lambda n: n in hook_names,
                                                 stop_at_layer=max(layers) + 1)
            for L, name in zip(layers, hook_names):
                act = cache_[name]
                r = row
                for i, d in enumerate(batch):
                    n = d.size - first
                    mms[L][r:r + n] = act[i, first:d.size].to("cpu", torch.float32).numpy().astype(np_dtype)
                    r += n
            row += sum(d.size - first for d in batch)
            bar.update(sum(d.size - first for d in batch))
            del cache_
        bar.close()
        for mm in mms.values():
            mm.flush()
        del mms
        np.save(tmp / "token_ids.npy", token_ids)
        np.save(tmp / "doc.npy", doc)
        np.save(tmp / "pos.npy", pos)
        np.save(tmp / "all_tokens.npy", all_tokens)
        np.save(tmp / "doc_offsets.npy", doc_offsets)
        meta = {"format": FORMAT, "key": key, "layers": list(layers), "hook": hook, "d_model": d_model,
                "dtype": dtype, "model_name": model_name, "exclude_bos": exclude_bos,
                "vocab": {str(k): v for k, v in _vocab_strings(model, all_tokens).items()},
                "seconds": time.perf_counter() - t0}
        (tmp / "meta.json").write_text(json.dumps(meta))
        path = tmp
        if cache:
            try:
                os.replace(tmp, final)
                path = final
            except OSError as e:
                if _exists(final / "meta.json"):  # another process finished the same key first: use theirs
                    shutil.rmtree(tmp, ignore_errors=True)
                    path = final
                else:  # kept where it is, removed with the result (as with cache=False)
                    warn_unwritable(root, e, "activations")
                    cache = False
        acts = _load(path, model, all_tokens, doc_offsets, doc, pos, token_ids,
                     stats_extra={"cached": False, "seconds": time.perf_counter() - t0,
                                  "stale_temp_removed": removed})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _release_writer_lock(lock, None)
        raise
    if cache:
        _release_writer_lock(lock, path)
    else:  # a temp folder in use: locked (never "stale") until the result is dropped with it
        weakref.finalize(acts, _remove_locked, str(path), lock)
    return acts


def _remove_locked(path: str, lock: int | None) -> None:
    shutil.rmtree(path, ignore_errors=True)
    _release_writer_lock(lock, None)


# -- temporary folders: a writer lock, and the folders of killed runs removed ----------------------
# A run writes into ``.<key>.<8 random>`` under the cache folder (``saematch_acts_<8 random>`` in the
# system temp folder when uncached) and holds an exclusive flock on its ``writer.lock`` until it is
# done; the kernel drops that lock when the process dies, kill -9 included. So a temp folder whose
# lock can be taken has no writer left and is removed by the next collection. A folder without a
# lock file (made by a version before the lock, or where flock does not exist) is removed only
# once it is older than STALE_AFTER_S: a live writer of that kind cannot be asked.
_LOCK_NAME = "writer.lock"
_UNCACHED_PREFIX = "saematch_acts_"
_TEMP_NAME = re.compile(r"(\.[0-9a-f]{20}\.|saematch_acts_)[a-z0-9_]{8}")
STALE_AFTER_S = 24 * 3600


def _hold_writer_lock(folder: Path) -> int | None:
    """An open, exclusively flocked ``folder/writer.lock`` (None where flock does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the age rule alone
        return None
    fd = os.open(folder / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())  # for a person looking; the lock is what counts
    except OSError:
        os.close(fd)
        return None
    return fd


def _release_writer_lock(fd: int | None, folder: Path | None) -> None:
    """Drop the lock file from a finished folder (not part of the entry), then the lock itself."""
    if folder is not None:
        try:
            (folder / _LOCK_NAME).unlink(missing_ok=True)
        except OSError:
            pass
    if fd is not None:
        os.close(fd)


def _writer_gone(folder: Path) -> bool:
    """True when no process writes ``folder`` any more (see the comment above). Only our own
    folders: another user's (a shared temp or cache folder) is never ours to judge."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        fcntl = None
    try:
        st = folder.stat()
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            return False
        lock = folder / _LOCK_NAME
        if fcntl is None or not lock.exists():
            return time.time() - st.st_mtime > STALE_AFTER_S
        fd = os.open(lock, os.O_RDWR)
    except OSError:  # cannot look: not ours to remove
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its writer is running
        return False
    finally:
        os.close(fd)
    return True


def remove_stale_temp_folders(folder: Path) -> int:
    """Remove the temporary folders of collections killed in ``folder`` (only names of this
    module's own making, only when their writer is gone); returns how many were removed."""
    n = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for e in entries:
        try:
            if not (_TEMP_NAME.fullmatch(e.name) and e.is_dir(follow_symlinks=False)):
                continue
        except OSError:
            continue
        p = Path(e.path)
        if _writer_gone(p):
            shutil.rmtree(p, ignore_errors=True)
            n += not p.exists()
    return n


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except OSError:  # a folder we may not look into holds nothing we can use
        return False


def _load(path: Path, model: Any, all_tokens, doc_offsets, doc, pos, token_ids, stats_extra) -> Activations:
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != FORMAT:
        raise ActivationError(f"cache format {meta.get('format')} at {path} is not {FORMAT}")
    for L in meta["layers"]:
        arr = np.load(path / f"layer_{L}.npy", mmap_mode="r")
        if arr.shape != (token_ids.size, meta["d_model"]):
            raise ActivationError(f"cached layer {L} at {path} has shape {arr.shape}")
    ro = []
    for a in (token_ids, doc, pos, doc_offsets, all_tokens):
        a = np.array(a, copy=True)
        a.setflags(write=False)
        ro.append(a)
    return Activations(
        path=path, key=meta["key"], layers=tuple(meta["layers"]), hook=meta["hook"], token_ids=ro[0],
        doc=ro[1], pos=ro[2], doc_offsets=ro[3], all_tokens=ro[4],
        vocab={int(k): v for k, v in meta["vocab"].items()}, d_model=meta["d_model"], dtype=meta["dtype"],
        model_name=meta.get("model_name", ""), stats={"collect_seconds": meta.get("seconds"), **stats_extra},
    )
