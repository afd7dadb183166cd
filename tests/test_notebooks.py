"""The notebooks run from top to bottom on small simulated data, in a fresh kernel."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_the_three_notebooks():
    assert [n.name for n in NOTEBOOKS] == [
        "1.0-explore-failed-payments.ipynb",
        "2.0-train-and-compare-policies.ipynb",
        "3.0-ab-analysis.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_without_error(path, tmp_path, monkeypatch):
    # the kernel's own backend (inline), as a user's Jupyter has it: charts render as images
    monkeypatch.delenv("MPLBACKEND", raising=False)
    book = nbformat.read(path, as_version=4)
    NotebookClient(
        book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]  # fmt: skip
    assert not errors
    outputs = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    shown = [o for o in outputs if "image/png" in o.get("data", {})]
    as_text = [o for o in outputs if "<Figure size" in str(o.get("data", {}).get("text/plain"))]
    assert not [o for o in as_text if "image/png" not in o.get("data", {})], "a chart as text"
    if "plots." in "".join(c.source for c in book.cells):
        assert shown, "the notebook's charts render inline"
    # what a reader sees is the notebook's story, not a library's INFO lines
    text = " ".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", "")) for o in outputs
    )
    assert " INFO " not in text and "INFO mlflow" not in text, text[:2000]
    # no notebook defines a function or class worth reusing: those belong in the package
    for cell in book.cells:
        if cell.cell_type == "code":
            assert "def " not in cell.source and "class " not in cell.source, cell.source
