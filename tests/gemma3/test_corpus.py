"""The pure parts of scripts/build_gemma3.py: chunking, the held-out split, the token windows."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import build_gemma3 as bg  # noqa: E402


class _Tok:
    """A whitespace tokenizer with a BOS id: enough for the window logic."""

    bos_token_id = 2

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [10 + (hash(w) % 1000) for w in text.split()]}


def test_chunks_respect_the_limit_and_keep_the_text():
    text = "\n\n".join(f"paragraph {i} " + "word " * (40 + 3 * i) for i in range(30))
    chunks = bg._chunks(text, limit=1000)
    assert len(chunks) > 5 and all(len(c) <= 1000 for c in chunks)
    assert "".join(chunks).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")
    # one paragraph longer than the limit is cut at lines; one line longer than it is truncated
    long = "\n".join("x = 1  # line %d" % i for i in range(400))
    assert len(bg._chunks(long, limit=1000)) > 3
    assert max(len(c) for c in bg._chunks("y" * 5000, limit=1000)) <= 1000


def test_held_out_split_is_fixed_by_id(monkeypatch):
    docs = bg.read_corpus_sources(use_docs=False)
    again = bg.read_corpus_sources(use_docs=False)
    assert [d["split"] for d in docs] == [d["split"] for d in again]
    share = np.mean([d["split"] == "eval" for d in docs])
    assert 0.02 < share < 0.09, share  # 5 % by construction, up to hashing noise
    styles = {d["style"] for d in docs}
    assert {"python-code", "literature"} <= styles


def test_windows_start_with_bos_and_follow_the_style_weights():
    docs = ([{"style": "python-docs", "text": "doc " * 50 + str(i)} for i in range(40)]
            + [{"style": "python-code", "text": "code " * 50 + str(i)} for i in range(40)]
            + [{"style": "literature", "text": "verse " * 50 + str(i)} for i in range(10)])
    w = bg.windows(_Tok(), docs, 4000, 32, seed=0)
    assert w.shape == (4000 // 31, 32) and (w[:, 0] == 2).all()
    assert (w[:, 1:] >= 10).all()  # no BOS inside a window
    w2 = bg.windows(_Tok(), docs, 4000, 32, seed=0)
    assert np.array_equal(w, w2)  # seeded: a resumed build sees the same stream
