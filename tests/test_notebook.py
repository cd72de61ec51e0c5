"""The notebooks run end to end in their small mode through the README's own `jupyter execute` commands (from the
project root, data paths relative to it), and show their pictures."""

from __future__ import annotations

import os
from pathlib import Path

import subprocess
import sys

import nbformat
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
NOTEBOOKS = ROOT / "notebooks"
NOTEBOOK = NOTEBOOKS / "perturbation_response.ipynb"


def _readme_command(notebook: Path) -> list[str]:
    """The README's `jupyter execute` command line for ``notebook``, as written (environment assignments and comment left out)."""
    for line in README.read_text().splitlines():
        if f"jupyter execute notebooks/{notebook.name}" in line:
            words = line.split("#")[0].split()
            return words[words.index("jupyter") :]
    raise AssertionError(f"README.md has no `jupyter execute notebooks/{notebook.name}` command")


def _execute(path: Path, timeout: int = 300) -> tuple[str, int]:
    """Run the README's `jupyter execute` command for a notebook from the project root; its printed text and its number of images."""
    command = _readme_command(path)
    output = next(w.split("=", 1)[1] for w in command if w.startswith("--output="))
    executed = path.parent / f"{output}.ipynb"
    jupyter = Path(sys.executable).parent / "jupyter"  # the environment's own, as an activated venv would find it
    try:
        run = subprocess.run([str(jupyter), *command[1:]], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        assert run.returncode == 0, run.stderr[-3000:]
        nb = nbformat.read(executed, as_version=4)
    finally:
        executed.unlink(missing_ok=True)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    return text, sum("image/png" in o.get("data", {}) for o in outputs)


def test_perturbation_notebook_runs_in_small_mode(data_dir, monkeypatch):
    monkeypatch.setenv("SCIDIT_NOTEBOOK_SMALL", "1")
    # as in the README: a data path relative to the project root, the kernel started in notebooks/ (jupyter execute)
    monkeypatch.setenv("SCIDIT_DATA_DIR", os.path.relpath(data_dir, NOTEBOOK.parents[1]))
    monkeypatch.delenv("SCIDIT_CHECKPOINT", raising=False)
    outputs, images = _execute(NOTEBOOK)
    assert "small mode: True" in outputs
    assert "scidit" in outputs and "no_change" in outputs  # the metric table with baselines
    assert images >= 2  # the scatter and PCA figures are shown in Jupyter, not only drawn


def test_inverse_design_notebook_runs_in_small_mode(data_dir, cache_dir, tmp_path, monkeypatch):
    """Trains a tiny conditional model, sweeps gap requests (SchNet + xTB), space-group requests, and shows 3 pictures."""
    from sciDiT.evaluation.property_predictor import AtomCountBaseline, PropertyPredictor, save_predictor

    hparams = {"hidden": 8, "filters": 8, "interactions": 1, "gaussians": 5, "cutoff": 5.0, "mean": 6.8, "std": 1.3}
    save_predictor(tmp_path / "gap.pt", "gap", PropertyPredictor(**hparams), hparams,
                   AtomCountBaseline.fit(np.array([9, 12, 15]), np.array([7.0, 6.8, 6.5])), {"test_mae": 391.0})  # untrained: exercises the path
    monkeypatch.setenv("SCIDIT_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("SCIDIT_DATA_DIR", os.path.relpath(data_dir, NOTEBOOKS.parent))  # from the project root, as in the README
    monkeypatch.setenv("SCIDIT_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("SCIDIT_PREDICTOR", str(tmp_path / "gap.pt"))
    monkeypatch.delenv("SCIDIT_CHECKPOINT", raising=False)
    outputs, images = _execute(NOTEBOOKS / "inverse_design.ipynb")
    assert "small mode: True" in outputs
    assert "gap sweep: 4 requests" in outputs and "predicted by SchNet" in outputs
    assert "xtb_gap_spearman" in outputs and "n_xtb_requested" in outputs  # the package's condition figures
    assert "space-group requests" in outputs and "spacegroup_match_rate" in outputs and "spacegroup_base_rate" in outputs
    assert images >= 3  # gap plot, molecule grid, crystal views: shown in Jupyter, not only drawn
