"""The tutorial notebooks (jupytext py:percent sources in notebooks/, each paired with an .ipynb).

- every ``notebooks/*.py`` has its paired ``.ipynb``, with the same cells (``jupytext --sync``) and
  no outputs (the .ipynb is committed clean, to be read on GitHub / opened in Colab);
- every notebook runs top to bottom on the bundled demo, offline, with no error output and no
  traceback in its streams, and its rich HTML reprs carry no script (plotly output aside).
"""

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))
IDS = [p.stem for p in NOTEBOOKS]


def test_notebooks_exist():
    assert NOTEBOOKS, "notebooks/ has no py:percent notebooks"
    assert {"01_quickstart", "02_gemma_scope", "03_gemma3"} <= set(IDS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_paired_ipynb_in_sync_without_outputs(path):
    import jupytext
    import nbformat

    ipynb = path.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} is missing: run `jupytext --sync {path.name}` in notebooks/"
    src = jupytext.read(path)
    paired = nbformat.read(ipynb, as_version=4)
    nbformat.validate(paired)
    formats = paired.metadata.get("jupytext", {}).get("formats", "")
    assert "ipynb" in formats and "py:percent" in formats, f"{ipynb.name} is not paired (formats {formats!r})"
    assert [(c.cell_type, c.source) for c in src.cells] == [(c.cell_type, c.source) for c in paired.cells], (
        f"{path.name} and {ipynb.name} differ: run `jupytext --sync {path.name}` in notebooks/")
    for i, cell in enumerate(paired.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{ipynb.name} cell {i} has outputs: commit it cleared "
                "(jupyter nbconvert --clear-output, or jupytext --sync from the .py)")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path, tmp_path, monkeypatch, request):
    import jupytext
    from nbclient import NotebookClient

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAEMATCH_CACHE_DIR", str(tmp_path / "cache"))
    if path.stem == "03_gemma3":  # the real Gemma: its de-quantized checkpoint, built once per session
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / "models").symlink_to(request.getfixturevalue("gemma3_models"))
    monkeypatch.delenv("SAEMATCH_USE_GEMMA", raising=False)  # CI runs the demo path
    # One intra-op thread in the kernel: on a 2-core runner shared with other jobs, torch's default
    # (one thread per core) oversubscribes and a forward pass of the demo model goes from ~0.1 s
    # to ~2 s. Users' sessions keep torch's default.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = jupytext.read(path)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    n_rich = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", (i, out.get("ename"), out.get("evalue"))
            if out.get("output_type") == "stream":
                assert "Traceback" not in out.get("text", ""), (i, out["text"])
            html = out.get("data", {}).get("text/html", "")
            n_rich += bool(html)
            assert "<script" not in html.lower() or "plotly" in html.lower()
            assert "Traceback" not in html, (i, html[:500])
    assert n_rich >= 5, f"only {n_rich} HTML outputs: the rich reprs did not render"
    if path.stem == "03_gemma3":  # it ran on Gemma, not the skip path
        said = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                       if o.get("output_type") == "stream")
        assert "ran in" in said and "Gemma 3 270M" in said and "skipped" not in said, said[-2000:]
    if path.stem == "02_gemma_scope":  # without the switch it must say it runs on the demo
        switch = next(c for c in nb.cells if c.cell_type == "code")
        said = "".join(o.get("text", "") for o in switch.outputs if o.get("output_type") == "stream")
        assert "USE_GEMMA=False" in said and "demo" in said, said
