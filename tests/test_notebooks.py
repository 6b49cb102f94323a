"""The notebooks run top to bottom on the embedded model (their own cells assert the numbers)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    expected = {"01_saliency.ipynb": "notebook-outputs/ouzel_figure.png",
                "02_inner_node_gradients.ipynb": "gradient_L6.png"}.get(path.name)
    if expected:
        assert (tmp_path / expected).exists()


def test_the_three_exercise_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == [
        "01_saliency.ipynb", "02_inner_node_gradients.ipynb", "03_receptive_field.ipynb"]
