"""Execute every notebook (jupytext py:percent source) top to bottom on the bundled demo."""

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


def test_notebooks_exist():
    assert NOTEBOOKS, "notebooks/ has no py:percent notebooks"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    from nbclient import NotebookClient

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAEMATCH_CACHE_DIR", str(tmp_path / "cache"))
    nb = jupytext.read(path)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    # every code cell ran without error and the rich reprs contain no script tags
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out
            html = out.get("data", {}).get("text/html", "")
            assert "<script" not in html.lower() or "plotly" in html.lower()
