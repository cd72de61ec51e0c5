"""The perturbation notebook runs end to end in its small mode (CI keeps it from rotting)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "perturbation_response.ipynb"


def test_perturbation_notebook_runs_in_small_mode(data_dir, monkeypatch):
    monkeypatch.setenv("SCIDIT_NOTEBOOK_SMALL", "1")
    # as in the README: a data path relative to the project root, the kernel started in notebooks/ (jupyter execute)
    monkeypatch.setenv("SCIDIT_DATA_DIR", os.path.relpath(data_dir, NOTEBOOK.parents[1]))
    monkeypatch.delenv("SCIDIT_CHECKPOINT", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "small mode: True" in outputs
    assert "scidit" in outputs and "no_change" in outputs  # the metric table with baselines
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the scatter and PCA figures are shown in Jupyter, not only drawn
