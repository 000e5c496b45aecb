#!/usr/bin/env python
"""List blocks of code that appear more than once in the package (copy-pasted logic).

    python scripts/repeated_blocks.py [--min-lines 6] [--under saematch_nb/core/lap] [ROOT ...]

Every ``.py`` file under the roots (default: ``saematch_nb/``) is normalised: comments and
docstrings dropped (tokenize), each line stripped of indentation and trailing whitespace, blank
lines dropped. A repeated block is a run of at least ``--min-lines`` consecutive normalised lines
that occurs at two places (in one file or in two); each maximal run is printed once per pair of
places, with both locations. Lines that are only closing brackets, ``else:`` etc., and import
lines count like any other line, but a block made only of such lines is not reported (two
modules opening with the same imports is not copied logic).

Exit status: 1 when a repeated block is found (printed), 0 when none (CI: no copy-paste left).
``--under`` restricts the report (and the exit status) to blocks with a place below that path.
"""

from __future__ import annotations

import argparse
import io
import sys
import tokenize
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_TRIVIAL = {"", ")", "]", "}", "),", "],", "},", "else:", "try:", "finally:", "pass", "continue", "break",
            "return", '"""', "'''"}


def _trivial(line: str) -> bool:
    is_import = line.startswith("import ") or (line.startswith("from ") and " import " in line)
    return line in _TRIVIAL or is_import


def normalised(path: Path) -> list[tuple[int, str]]:
    """(line number, normalised text) of the file's code lines, comments and docstrings out."""
    src = path.read_text(encoding="utf-8")
    drop: dict[int, list[tuple[int, int]]] = defaultdict(list)  # line -> removed (start, end) columns
    lines = src.splitlines()
    prev = tokenize.INDENT
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (tokenize.TokenError, SyntaxError):
        toks = []
    for tok in toks:
        # a string statement on its own (docstring): the previous token ends a line or opens a block
        docstring = tok.type == tokenize.STRING and prev in (tokenize.INDENT, tokenize.NEWLINE, tokenize.DEDENT,
                                                             tokenize.NL)
        if tok.type == tokenize.COMMENT or docstring:
            (r0, c0), (r1, c1) = tok.start, tok.end
            for r in range(r0, r1 + 1):
                drop[r].append((c0 if r == r0 else 0, c1 if r == r1 else len(lines[r - 1])))
        if tok.type not in (tokenize.COMMENT, tokenize.NL):
            prev = tok.type
    out = []
    for no, line in enumerate(lines, 1):
        for c0, c1 in sorted(drop.get(no, ()), reverse=True):
            line = line[:c0] + line[c1:]
        text = " ".join(line.split())
        if text:
            out.append((no, text))
    return out


def repeated_blocks(files: list[Path], min_lines: int
                    ) -> list[tuple[int, tuple[Path, int, int], tuple[Path, int, int]]]:
    """Maximal repeated runs: (length in normalised lines, (file, first, last line), same for the copy)."""
    norm = {f: normalised(f) for f in files}
    where: dict[tuple[str, ...], list[tuple[Path, int]]] = defaultdict(list)
    for f, ls in norm.items():
        texts = [t for _, t in ls]
        for k in range(len(texts) - min_lines + 1):
            where[tuple(texts[k:k + min_lines])].append((f, k))
    found = []
    for window, places in where.items():
        if len(places) < 2 or all(_trivial(t) for t in window):
            continue
        for a in range(len(places)):
            for b in range(a + 1, len(places)):
                (fa, ka), (fb, kb) = places[a], places[b]
                ta, tb = norm[fa], norm[fb]
                if fa == fb and kb - ka < min_lines:
                    continue  # a run overlapping itself (e.g. a repeated single line)
                if ka > 0 and kb > 0 and ta[ka - 1][1] == tb[kb - 1][1]:
                    continue  # not the start of the maximal run: reported from its start
                n = min_lines
                while ka + n < len(ta) and kb + n < len(tb) and ta[ka + n][1] == tb[kb + n][1] \
                        and not (fa == fb and ka + n >= kb):
                    n += 1
                found.append((n, (fa, ta[ka][0], ta[ka + n - 1][0]), (fb, tb[kb][0], tb[kb + n - 1][0])))
    found.sort(key=lambda x: (str(x[1][0]), x[1][1], str(x[2][0]), x[2][1]))
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", nargs="*", default=[str(ROOT / "saematch_nb")])
    ap.add_argument("--min-lines", "-n", type=int, default=6, help="shortest block reported (default 6)")
    ap.add_argument("--under", default=None, help="only blocks with a place below this path")
    a = ap.parse_args(argv)
    if a.min_lines < 2:
        ap.error("--min-lines must be at least 2")
    files = sorted({p.resolve() for r in a.roots for p in (Path(r).rglob("*.py") if Path(r).is_dir() else [Path(r)])})
    blocks = repeated_blocks(files, a.min_lines)
    if a.under is not None:
        under = Path(a.under).resolve()
        blocks = [b for b in blocks if any(under == p[0] or under in p[0].parents for p in b[1:])]

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(ROOT))
        except ValueError:
            return str(p)

    for n, (fa, a0, a1), (fb, b0, b1) in blocks:
        print(f"{n:3d} lines: {rel(fa)}:{a0}-{a1}  ==  {rel(fb)}:{b0}-{b1}")
    print(f"{len(blocks)} repeated block(s) of >= {a.min_lines} lines", file=sys.stderr)
    return 1 if blocks else 0


if __name__ == "__main__":
    sys.exit(main())
