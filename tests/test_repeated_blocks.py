"""scripts/repeated_blocks.py (issue #24): lists copied blocks of code, exits 1 when there is one."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "repeated_blocks.py"

_spec = importlib.util.spec_from_file_location("repeated_blocks", SCRIPT)
rb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rb)

BLOCK = """\
    for t in range(nt):  # reset
        j = touched[t]
        d[j] = inf
        pred[j] = -1
        scanned[j] = False
    total += 1
"""


def _write(tmp_path, name, body):
    p = tmp_path / name
    p.write_text(body)
    return p


def test_a_copied_block_is_found_across_files_whatever_its_indentation_and_comments(tmp_path, capsys):
    _write(tmp_path, "a.py", "def f(touched, nt, d, pred, scanned, inf, total):\n" + BLOCK + "    return total\n")
    copy = BLOCK.replace("    ", "        ").replace("# reset", "# another comment")
    _write(tmp_path, "b.py", '"""doc"""\n\n\ndef g(touched, nt, d, pred, scanned, inf, total):\n    if nt:\n'
           + copy + "    return None\n")
    assert rb.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("6 lines:")
    assert "a.py:2-7" in out[0] and "b.py:6-11" in out[0]
    assert rb.main([str(tmp_path), "--min-lines", "7"]) == 0  # N is a flag


def test_a_block_repeated_within_one_file_and_the_exit_status_of_the_script(tmp_path):
    _write(tmp_path, "c.py", "def f():\n" + BLOCK + "\n\ndef g():\n" + BLOCK)
    p = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 1 and "c.py:2-7" in p.stdout and "c.py:11-16" in p.stdout
    _write(tmp_path, "c.py", "def f():\n" + BLOCK)
    p = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == ""


def test_shared_imports_and_closing_brackets_are_not_a_copied_block(tmp_path):
    head = ("from __future__ import annotations\n\nimport math\nimport time\nfrom typing import Any\n\n"
            "import numpy as np\nimport torch\n")
    _write(tmp_path, "a.py", head + "X = 1\n")
    _write(tmp_path, "b.py", head + "Y = 2\n")
    assert rb.main([str(tmp_path)]) == 0


def test_the_solvers_have_no_repeated_block():
    """The searches' relaxation loop and the other solver blocks are written once (core/lap)."""
    assert rb.main([str(ROOT / "saematch_nb"), "--under", str(ROOT / "saematch_nb" / "core" / "lap")]) == 0
