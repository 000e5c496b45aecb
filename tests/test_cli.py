"""``python -m saematch_nb``: the warm-up command and the demo's options passed through."""

from __future__ import annotations

import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "saematch_nb", *args], capture_output=True, text=True, timeout=300)


def test_demo_options_reach_the_demo():
    p = _run("demo", "--help")
    assert p.returncode == 0 and "--out" in p.stdout and "--max-tokens" in p.stdout, p.stdout + p.stderr


def test_bad_commands_say_what_is_expected():
    p = _run()
    assert p.returncode == 2 and "warmup" in p.stderr and "demo" in p.stderr
    p = _run("warmup", "now")
    assert p.returncode == 2 and "unrecognized arguments: now" in p.stderr
    p = _run("wamup")
    assert p.returncode == 2 and "invalid choice: 'wamup'" in p.stderr
