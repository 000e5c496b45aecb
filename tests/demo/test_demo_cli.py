"""`make demo` (``python -m saematch_nb.demo --out DIR``) from a fresh cache: exit 0, a summary
table with one row per adjacent layer pair, and a self-contained report.html (issue #3)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from saematch_nb import demo

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    if not demo.available():
        pytest.fail(f"the shipped demo assets are missing from {demo.ASSETS}")
    tmp = tmp_path_factory.mktemp("demo_cli")
    out = tmp / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "SAEMATCH_CACHE_DIR": str(tmp / "cache"), "HOME": str(tmp / "home")}
    r = subprocess.run([sys.executable, "-m", "saematch_nb.demo", "--out", str(out)], capture_output=True,
                       text=True, env=env, cwd=tmp, timeout=600)
    return r, out


def _n_layers() -> int:
    return json.loads((demo.ASSETS / "model_cfg.json").read_text())["n_layers"]


def test_make_demo_runs_the_same_command():
    make = (ROOT / "Makefile").read_text()
    rule = re.search(r"^demo:.*\n((?:\t.*\n)+)", make, flags=re.M)
    assert rule, "Makefile has no demo target"
    assert "-m saematch_nb.demo" in rule.group(1) and "--out" in rule.group(1)


def test_demo_exits_0_and_says_what_it_ran_on(demo_run):
    r, out = demo_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    first = r.stdout.splitlines()[0]
    # the first line labels the bundle: the demo model, its SAEs, its texts, where they came from
    n = _n_layers()
    assert first.startswith("DemoBundle(") and f"{n} layers" in first, first
    assert f"saes={n}× JumpReLU" in first and str(demo.ASSETS) in first, first
    assert f"wrote {out / 'report.html'}" in r.stdout


def _table_rows(stdout: str, heading: str) -> list[list[str]]:
    """The data rows of the table printed under the line starting with ``heading``."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 3:]:  # heading, column names, index name
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def test_demo_prints_one_mse_row_per_adjacent_pair(demo_run):
    r, _ = demo_run
    assert r.returncode == 0, r.stderr[-3000:]
    head = next(line for line in r.stdout.splitlines() if "mse_mean" in line)
    cols = head.split()
    assert cols[:2] == ["layer_a", "layer_b"] and "mse_median" in cols and "matched_fraction" in cols
    rows = _table_rows(r.stdout, "Matched MSE on folded parameters")
    n = _n_layers()
    assert len(rows) == n - 1
    for t, row in enumerate(rows):
        vals = dict(zip(["pair", *cols], row))
        assert (int(vals["layer_a"]), int(vals["layer_b"])) == (t, t + 1)
        mse, med, frac = float(vals["mse_mean"]), float(vals["mse_median"]), float(vals["matched_fraction"])
        assert 0 < mse < 1 and 0 < med < 1 and 0 <= frac <= 1, row
    # features visibly persist (issue #10): a majority matched on every pair
    fracs = [float(dict(zip(["pair", *cols], row))["matched_fraction"]) for row in rows]
    assert min(fracs) > 0.5, fracs
    # the criterion table: one row per pair and the seed ceiling, with the expected false matches
    crit_rows = _table_rows(r.stdout, "SAE Match criterion")
    assert len(crit_rows) == n and "seeds)" in " ".join(crit_rows[-1])
    # the per-layer SAE table as well: one row per layer, mean θ next to the residual norm
    sae_rows = _table_rows(r.stdout, "SAEs (mean θ")
    assert [int(x[0]) for x in sae_rows] == list(range(n))
    assert all(float(x[1]) > 0 and float(x[2]) > 0 for x in sae_rows)


def test_demo_report_is_self_contained(demo_run):
    r, out = demo_run
    assert r.returncode == 0, r.stderr[-3000:]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page.lower()
    # nothing is loaded from anywhere: no src/href/url()/@import to a resource; an <a href> link
    # would be fine, and the SVG namespace is an identifier, not a fetch
    assert not re.search(r"\bsrc\s*=", page, flags=re.I)
    assert not re.search(r"<link\b", page, flags=re.I)
    assert not re.search(r"url\(|@import", page, flags=re.I)
    for m in re.finditer(r"https?://[^\s\"'<>)]+", page):
        before = page[max(0, m.start() - 12):m.start()]
        assert m.group(0) == "http://www.w3.org/2000/svg" or "<a " in page[max(0, m.start() - 200):m.start()], \
            (before, m.group(0))
    # the chain's repr: a MatchChain over every layer, with the demo model's name
    n = _n_layers()
    assert "MatchChain" in page and f"{n - 1} pairs over layers" in page
    assert "saematch-demo" in page
    # a few traces of layer-0 features, each followed through the layers
    traces = re.findall(r"FeatureTrace</span><span class=\"smn-title\">feature ([\d,]+) of layer 0<", page)
    assert len(traces) == 3, traces
    assert page.count('class="smn-trace"') == 3
    # the extra sections the CLI adds
    assert "Demo SAEs" in page and "Matched MSE on folded parameters" in page


def test_demo_matches_afresh_and_leaves_the_cache_alone(demo_run):
    """The demo matches with ``cache=False`` (a stale cache would hide a rebuilt asset): the
    progress bar reports no pair as cached, and nothing is written to $SAEMATCH_CACHE_DIR. So a
    second run recomputes too; it is not run here (it would only repeat these ~30 s)."""
    r, out = demo_run
    assert r.returncode == 0, r.stderr[-3000:]
    cached = [int(c) for c in re.findall(r"cached=(\d+)", r.stderr)]
    assert cached and max(cached) == 0
    cache_dir = out.parent / "cache"
    assert not cache_dir.exists() or not any(cache_dir.rglob("*.npz")), sorted(cache_dir.rglob("*"))


# -- issue #22 items 10 and 15: bad arguments and broken assets end early, with a clear message -------
@pytest.fixture
def no_run(monkeypatch, tmp_path):
    """The demo must stop before loading anything: loading is a test failure here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "load", lambda *a, **k: pytest.fail("the demo ran (loaded its assets)"))


def test_issue22_max_tokens_must_be_positive(no_run, tmp_path, capsys):
    """Item 10: --check --max-tokens 0 exited 0 with an empty table."""
    from saematch_nb.demo.__main__ import main

    for bad in ("0", "-5", "x"):
        with pytest.raises(SystemExit) as e:
            main(["--check", "--max-tokens", bad, "--out", str(tmp_path / "o")])
        assert e.value.code == 2
        assert "--max-tokens" in capsys.readouterr().err


def test_issue22_unusable_out_is_refused_before_the_run(no_run, tmp_path, capsys):
    """Item 15: an --out that is a file, or under a file, ended in a traceback after the whole run."""
    from saematch_nb.demo.__main__ import main

    f = tmp_path / "a_file"
    f.write_text("keep me")
    for out, says in ((f, "is an existing file, not a folder"), (f / "sub", "is a file, so no folder")):
        assert main(["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert f.read_text() == "keep me"


def test_issue22_read_only_out_is_refused(tmp_path):
    """Item 15: a read-only --out folder (as a non-root user; root may write anywhere)."""
    import shutil
    import tempfile

    from saematch_nb.demo.__main__ import out_folder_problem
    from tests._faults import as_unprivileged

    base = Path(tempfile.mkdtemp(prefix="smn_ro_out_", dir="/tmp"))
    try:
        base.chmod(0o555)
        for out in (base, base / "new"):
            problem, _ = as_unprivileged(out_folder_problem, out)
            assert problem and "cannot be written" in problem and str(out) in problem
        assert list(base.iterdir()) == []  # nothing made, no probe left
    finally:
        base.chmod(0o755)
        shutil.rmtree(base)
    assert out_folder_problem(tmp_path / "fine" / "deep") is None and (tmp_path / "fine" / "deep").is_dir()
    assert list((tmp_path / "fine" / "deep").iterdir()) == []


def test_issue22_broken_assets_end_the_cli_with_the_file_named(tmp_path, monkeypatch, capsys):
    """Item 15: a missing saes/layer_3 exited 0 with "5 layers" (the layer-4 SAE labelled layer 3);
    a broken file ended in a traceback that did not name it."""
    import saematch_nb
    from saematch_nb.demo.__main__ import main
    from tests.demo.test_assets import broken_assets

    monkeypatch.setattr(saematch_nb, "match_chain", lambda *a, **k: pytest.fail("the demo ran on broken assets"))
    for kind, says in (("missing_layer", "saes/layer_3/cfg.json"), ("sae_cfg", "layer_1/cfg.json is not valid JSON"),
                       ("sae_weights", "layer_2/sae_weights.safetensors cannot be loaded")):
        root = broken_assets(tmp_path / kind, kind)
        assert main(["--assets", str(root), "--out", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err, err
