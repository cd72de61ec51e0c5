"""`python -m sciDiT.evaluate`: happy paths on real QM9 / MP-20 rows and one-line errors (exit 2) on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sciDiT.evaluate import main
from sciDiT.evaluation.io import read_crystals, write_cifs, write_sdf
from sciDiT.export import write_sdf as export_sdf
from test_eval_molecules import qm9_rows

DATA_DIR = Path(os.environ.get("SCIDIT_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    sets, _ = qm9_rows(30)
    write_sdf(sets, tmp / "samples.sdf")
    write_sdf(qm9_rows(60, part=2)[0], tmp / "reference.sdf")
    csv = DATA_DIR / "mp20" / "test.csv.gz"
    if not csv.exists():
        pytest.skip(f"{csv} missing")
    crystals = read_crystals(csv, limit=40)
    write_cifs(crystals[:20], tmp / "samples.cif")
    write_cifs(crystals[20:], tmp / "reference.cif")
    return {"tmp": tmp, "sdf": tmp / "samples.sdf", "ref_sdf": tmp / "reference.sdf", "cif": tmp / "samples.cif", "ref_cif": tmp / "reference.cif"}


def test_molecules_report(files, capsys):
    out = files["tmp"] / "mol" / "report.json"
    assert main([f"molecules={files['sdf']}", f"reference={files['ref_sdf']}", f"out={out}"]) == 0
    report = json.loads(out.read_text())
    assert report["validity"] == 1.0 and report["novelty"] == 1.0 and report["molecule_stability"] > 0.9
    assert report["headline_file_bonds"] == 0 and "validity_file_bonds" not in report  # the file has no bonds
    assert {"uniqueness", "validity_connected", "validity_perceived", "validity_rdkit_hueckel_retry", "validity_openbabel",
            "atom_stability", "tv_atom_types", "w1_bond_length"} <= set(report)
    md = out.with_suffix(".md").read_text()
    assert "| validity | 1.0000 |" in md and (out.parent / "report_plots" / "molecules.png").is_file()
    assert "on bonds perceived from the coordinates" in md
    assert "molecule_stability" in capsys.readouterr().out


def test_molecules_report_on_the_file_bonds(files):
    sets, _ = qm9_rows(30)
    sdf = export_sdf(sets, files["tmp"] / "bonded.sdf")  # as `sciDiT.sample` writes them: bonds in the file
    out = files["tmp"] / "bonded" / "report.json"
    assert main([f"molecules={sdf}", f"out={out}", "openbabel=0"]) == 0
    report = json.loads(out.read_text())
    assert report["headline_file_bonds"] == 1 and report["file_bonds_decoded"] == 0.0  # perceived when written
    assert report["validity"] == report["validity_file_bonds"] == report["validity_perceived"] == 1.0
    assert report["validity_file_bonds_connected"] == 1.0
    assert "on the bonds written in the file" in out.with_suffix(".md").read_text()


def test_crystals_report(files):
    out = files["tmp"] / "cry" / "r.json"
    assert main([f"crystals={files['cif']}", f"reference={files['ref_cif']}", f"out={out}"]) == 0
    report = json.loads(out.read_text())
    assert report["structural_validity"] == 1.0 and report["novelty"] == 1.0
    assert {"compositional_validity", "validity", "uniqueness", "w1_density", "w1_num_elements"} <= set(report)
    assert "Energy above hull is not reported" in out.with_suffix(".md").read_text()
    assert (out.parent / "r_plots" / "distributions.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["molecules=missing.sdf"], "missing.sdf: no such file"),
        (["crystals=x.cif", "molecules=y.sdf"], "exactly one of"),
        (["molecules"], "bad argument"),
        (["molecules=a.sdf", "posebusters=maybe"], "posebusters must be true or false"),
    ],
)
def test_bad_arguments_exit_2(argv, message, capsys, tmp_path):
    assert main([*argv, f"out={tmp_path / 'r.json'}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r.json").exists()


def test_malformed_file_exits_2_from_the_shell(tmp_path):
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\n_cell_length_a 3\nloop_\n _atom_site_label\n")
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "sciDiT.evaluate", f"crystals={bad}", f"out={out}"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "bad.cif" in proc.stderr and proc.stderr.count("\n") == 1
    assert not out.exists()
