"""One console script per verb: scidit-train, scidit-sample and scidit-evaluate are the `python -m` forms."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import sciDiT.evaluate
import sciDiT.sample
import sciDiT.train

SCRIPTS = {"scidit-train": sciDiT.train.cli, "scidit-sample": sciDiT.sample.main, "scidit-evaluate": sciDiT.evaluate.main}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_is_the_module_entry_point(name: str):
    (ep,) = [ep for ep in entry_points(group="console_scripts") if ep.name == name]
    assert ep.load() is SCRIPTS[name]


@pytest.mark.parametrize("name, args", [("scidit-sample", ["domain=molecule"]), ("scidit-evaluate", [])])
def test_console_script_runs_and_reports_bad_input(name: str, args: list[str]):
    script = Path(sys.executable).parent / name
    if not script.is_file():
        pytest.skip(f"{name} is not installed next to this interpreter")
    res = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error:") and len(res.stderr.strip().splitlines()) == 1
