"""Tokenizer round trips decode(encode(x)) == x on real QM9 molecules and real MP-20 crystals."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from ase import Atoms
from pymatgen.analysis.structure_matcher import StructureMatcher
from rdkit import Chem

from sciDiT.data.cdvae import split_file
from sciDiT.data.paths import qm9pack_dir
from sciDiT.tokenizers import CrystalTokenizer, MoleculeTokenizer
from sciDiT.tokenizers.crystal import lattice_matrix, parse_cif


@pytest.fixture(scope="module")
def qm9_rows() -> list[tuple[list[str], np.ndarray, str]]:
    """(element symbols, positions [n, 3] in Angstrom, SMILES) of 30 real QM9 molecules from qm9pack."""
    folder = qm9pack_dir()
    assert folder is not None, "qm9pack is not installed: `pip install qm9pack` (see data/README.md)"
    df = pd.read_csv(folder / "qm9_part2.csv", usecols=["Elements", "XYZ_Ang", "SMILES"], nrows=30)
    rows = []
    for els, xyz, smiles in zip(df["Elements"], df["XYZ_Ang"], df["SMILES"]):
        coords = json.loads(re.sub(r"\.(?=[,\]Ee])", ".0", xyz))
        rows.append((json.loads(els.replace("'", '"')), np.array(coords), smiles))
    return rows


@pytest.fixture(scope="module")
def mp20_cifs(data_dir) -> list[str]:
    """CIF text of 20 real MP-20 validation crystals."""
    return pd.read_csv(split_file("mp20", "val", data_dir), nrows=20)["cif"].tolist()


def _xyz_text(symbols: list[str], pos: np.ndarray) -> str:
    return f"{len(symbols)}\nqm9\n" + "".join(f"{s} {x:.10f} {y:.10f} {z:.10f}\n" for s, (x, y, z) in zip(symbols, pos))


def _assert_same_frac(a: torch.Tensor, b: torch.Tensor) -> None:
    """Fractional coordinates agree modulo 1 (0.9999999 and 0.0 are the same site)."""
    d = (a - b).double()
    assert (d - d.round()).abs().max() < 1e-5


def test_molecule_ase_round_trip(qm9_rows):
    tok = MoleculeTokenizer()
    for symbols, pos, _ in qm9_rows:
        atoms = Atoms(symbols=symbols, positions=pos)
        back = tok.to_ase(tok.from_ase(atoms))
        assert back.get_chemical_symbols() == symbols
        np.testing.assert_allclose(back.get_positions(), pos, atol=1e-5)


def test_molecule_rdkit_round_trip_keeps_atoms_coordinates_and_graph(qm9_rows):
    tok = MoleculeTokenizer()
    perceived = 0
    for symbols, pos, smiles in qm9_rows:
        mol = Chem.MolFromXYZBlock(_xyz_text(symbols, pos))
        ts = tok.from_rdkit(mol)
        assert int((ts.types == 1).sum()) == symbols.count("H")  # hydrogens kept explicit
        assert ts.pos.mean(0).abs().max() < 1e-5  # centred
        back = tok.to_rdkit(ts)
        assert [a.GetSymbol() for a in back.GetAtoms()] == symbols
        np.testing.assert_allclose(back.GetConformer().GetPositions(), pos, atol=1e-5)
        # bonds perceived from the decoded geometry give the dataset's molecule back
        if back.GetProp("bond_perception") == "bond_orders":
            perceived += 1
            got = Chem.CanonSmiles(Chem.MolToSmiles(Chem.RemoveAllHs(back)), useChiral=0)
            assert got == Chem.CanonSmiles(smiles, useChiral=0)
    assert perceived >= 0.8 * len(qm9_rows)


def test_molecule_xyz_round_trip(qm9_rows):
    tok = MoleculeTokenizer()
    for symbols, pos, _ in qm9_rows:
        ts = tok.from_xyz(_xyz_text(symbols, pos))
        again = tok.from_xyz(tok.to_xyz(ts))
        assert torch.equal(again.types, ts.types)
        np.testing.assert_allclose(tok.to_arrays(again)[1], pos, atol=1e-6)


def test_crystal_structure_round_trip_exact_and_matched(mp20_cifs):
    tok = CrystalTokenizer()
    matcher = StructureMatcher()
    for cif in mp20_cifs:
        structure = parse_cif(cif).get_reduced_structure()
        ts = tok.from_structure(structure)
        back = tok.to_structure(ts)
        np.testing.assert_allclose(back.lattice.abc, structure.lattice.abc, rtol=1e-5)
        np.testing.assert_allclose(back.lattice.angles, structure.lattice.angles, rtol=1e-5)
        assert [s.specie.Z for s in back] == [s.specie.Z for s in structure]
        np.testing.assert_allclose(back.frac_coords, np.mod(structure.frac_coords, 1.0), atol=1e-5)
        assert matcher.fit(back, parse_cif(cif))  # same crystal as the unreduced input


def test_crystal_positions_follow_lattice_matrix(mp20_cifs):
    tok = CrystalTokenizer()
    for cif in mp20_cifs:
        structure = parse_cif(cif)
        ts = tok.from_structure(structure)
        matrix = lattice_matrix(ts.lattice.double())
        ref = structure.lattice.from_parameters(*structure.lattice.parameters).matrix
        np.testing.assert_allclose(matrix.numpy(), ref, atol=1e-4)
        np.testing.assert_allclose(ts.pos.double().numpy(), ts.frac.double().numpy() @ ref, atol=1e-4)


def test_crystal_ase_and_cif_round_trips(mp20_cifs):
    tok = CrystalTokenizer()
    matcher = StructureMatcher()
    for cif in mp20_cifs:
        ts = tok.from_cif(cif)
        via_ase = tok.from_ase(tok.to_ase(ts))
        assert torch.equal(via_ase.types, ts.types)
        torch.testing.assert_close(via_ase.lattice, ts.lattice, rtol=1e-5, atol=1e-4)
        _assert_same_frac(via_ase.frac, ts.frac)
        via_cif = tok.from_cif(tok.to_cif(ts))
        assert torch.equal(via_cif.types, ts.types)
        torch.testing.assert_close(via_cif.lattice, ts.lattice, rtol=1e-5, atol=1e-4)
        assert matcher.fit(tok.to_structure(via_cif), parse_cif(cif))
