"""The walk-through notebook runs top to bottom on a tiny config and is committed
without outputs."""

import json

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOK = ROOT / "notebook" / "walkthrough.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


@pytest.mark.slow
def test_notebook_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = nb.cells[1]
    assert params.source.startswith("# Parameters")
    params.source = f'WORK = "{tmp_path}"\nSTEPS = 4'
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "train loss: step 0" in outputs and "Q: 12+34=" in outputs
    assert (tmp_path / "model.pth").is_file() and (tmp_path / "loss.png").is_file()
