"""SDF/CIF export: round trips through RDKit, pymatgen and ASE on real QM9/MP-20 rows; flagged bad samples; atomic writes."""

from __future__ import annotations

import csv
import dataclasses
import math

import ase.io
import numpy as np
import pytest
import torch
from pymatgen.core import Structure
from pymatgen.io.cif import CifParser
from rdkit import Chem

from sciDiT.batch import Domain, TokenSet
from sciDiT.data.cdvae import load_cdvae
from sciDiT.data.qm9 import load_qm9_split
from sciDiT.errors import SciDiTInputError
from sciDiT.evaluation.io import read_crystals, read_molecules
from sciDiT.export import MANIFEST, lattice_problem, write_cif_file, write_cif_folder, write_sdf
from sciDiT.tokenizers import CrystalTokenizer


@pytest.fixture(scope="module")
def qm9_sets(data_dir, cache_dir) -> list[TokenSet]:
    data = load_qm9_split("val", data_dir, cache_dir, limit=300)
    return [data[i] for i in range(20)]


@pytest.fixture(scope="module")
def mp20_sets(data_dir, cache_dir) -> list[TokenSet]:
    data = load_cdvae("mp20", "val", data_dir, cache_dir, limit=15, workers=1)
    return [data[i] for i in range(len(data))]


def _garbage_molecule(seed: int) -> TokenSet:
    """A random point cloud: bonds get perceived but valences are impossible."""
    g = torch.Generator().manual_seed(seed)
    return TokenSet(types=torch.randint(5, 10, (15,), generator=g), pos=torch.randn(15, 3, generator=g), frac=torch.zeros(15, 3),
                    values=torch.zeros(15), lattice=torch.zeros(6), domain=Domain.MOLECULE)


def _nan_molecule() -> TokenSet:
    return dataclasses.replace(_garbage_molecule(0), pos=torch.full((15, 3), float("nan")))


def _flat_smiles(smiles: str) -> str:
    return Chem.MolToSmiles(Chem.RemoveAllHs(Chem.MolFromSmiles(smiles)), isomericSmiles=False)


def _props(mol: Chem.Mol) -> dict[str, str]:
    return mol.GetPropsAsDict(includePrivate=False) | {"name": mol.GetProp("_Name")}


# -- SDF ----------------------------------------------------------------------------------------


def test_sdf_round_trip_real_molecules_with_their_graph(qm9_sets, tmp_path):
    path = write_sdf(qm9_sets, tmp_path / "graphs.sdf")
    mols = list(Chem.SDMolSupplier(str(path), removeHs=False))  # RDKit sanitizes on read
    assert all(m is not None for m in mols)
    for mol, ts in zip(mols, qm9_sets):
        p = _props(mol)
        assert p["bond_source"] == ts.meta["graph_source"] == "smiles" and p["bond_perception"] == "none" and p["sanitized"] == 1
        assert _flat_smiles(p["smiles"]) == _flat_smiles(ts.meta["smiles"])


def test_sdf_round_trip_real_molecules(qm9_sets, tmp_path):
    qm9_sets = [dataclasses.replace(ts, bonds=None, charges=None) for ts in qm9_sets]  # no graph: bonds are perceived
    path = write_sdf(qm9_sets, tmp_path / "mols.sdf")
    mols = list(Chem.SDMolSupplier(str(path), removeHs=False))  # RDKit sanitizes on read
    assert len(mols) == len(qm9_sets) and all(m is not None for m in mols)
    for k, (mol, ts) in enumerate(zip(mols, qm9_sets)):
        assert [a.GetAtomicNum() for a in mol.GetAtoms()] == ts.types.tolist()
        expected = ts.pos.double().numpy() + np.asarray(ts.meta["origin"])
        np.testing.assert_allclose(mol.GetConformer().GetPositions(), expected, atol=1e-4)
        p = _props(mol)
        assert p["sample_index"] == k and p["name"] == f"sample_{k:05d}" and p["num_atoms"] == ts.num_tokens
        assert p["bond_perception"] == "bond_orders" and p["sanitized"] == 1 and p["finite_coordinates"] == 1
        # perceived bonds give QM9's own molecule back (QM9's SMILES carry no stereo; ours come from 3D)
        assert _flat_smiles(p["smiles"]) == _flat_smiles(ts.meta["smiles"])
    assert len(read_molecules(path)) == len(qm9_sets)  # the evaluation reader opens it too


def test_sdf_keeps_every_molecule_and_flags_bad_ones(qm9_sets, tmp_path):
    samples = [qm9_sets[0], _garbage_molecule(1), _nan_molecule(), qm9_sets[1]]
    path = write_sdf(samples, tmp_path / "mixed.sdf")
    assert path.read_text().count("$$$$") == len(samples)
    raw = list(Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False))
    assert all(m is not None for m in raw) and [m.GetNumAtoms() for m in raw] == [s.num_tokens for s in samples]
    props = [_props(m) for m in raw]
    assert [p["sample_index"] for p in props] == [0, 1, 2, 3]
    assert props[1]["sanitized"] == 0 and props[1]["sanitize_error"] and "smiles" not in props[1]
    assert props[1]["bond_perception"] in ("connectivity_only", "failed")
    assert props[2]["finite_coordinates"] == 0 and props[2]["bond_perception"] == "failed" and raw[2].GetNumBonds() == 0
    assert props[0]["sanitized"] == props[3]["sanitized"] == 1


def test_sdf_of_rdkit_molecules_keeps_their_bonds(tmp_path):
    mol = Chem.AddHs(Chem.MolFromSmiles("c1ccccc1O"))
    from rdkit.Chem import AllChem

    AllChem.EmbedMolecule(mol, randomSeed=0)
    path = write_sdf([mol], tmp_path / "phenol.sdf")
    back = next(iter(Chem.SDMolSupplier(str(path), removeHs=False)))
    assert back.GetNumBonds() == mol.GetNumBonds() and Chem.MolToSmiles(Chem.RemoveHs(back)) == "Oc1ccccc1"


def test_sdf_write_is_atomic(qm9_sets, tmp_path):
    path = tmp_path / "mols.sdf"
    path.write_text("previous run\n")
    with pytest.raises(SciDiTInputError, match="sample 2 is a crystal"):
        write_sdf([qm9_sets[0], qm9_sets[1], dataclasses.replace(qm9_sets[2], domain=Domain.CRYSTAL)], path)
    assert path.read_text() == "previous run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mols.sdf"]  # no temp file left behind
    assert len(read_molecules(write_sdf(qm9_sets[:2], tmp_path / "new" / "mols.sdf"))) == 2  # parent folders are created
    with pytest.raises(SciDiTInputError, match="cannot create folder"):
        write_sdf(qm9_sets, tmp_path / "mols.sdf" / "mols.sdf")  # a file stands where the folder should be


# -- CIF ----------------------------------------------------------------------------------------


def _manifest(folder) -> list[dict[str, str]]:
    with open(folder / MANIFEST) as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_cif_folder_round_trip_with_pymatgen_and_ase(mp20_sets, tmp_path):
    folder = tmp_path / "crystals"
    rows = write_cif_folder(mp20_sets, folder)
    files = sorted(folder.glob("sample_*.cif"))
    assert len(files) == len(rows) == len(mp20_sets) and all(r.status == "ok" for r in rows)
    tok = CrystalTokenizer()
    for k, (f, ts) in enumerate(zip(files, mp20_sets)):
        assert f.name == f"sample_{k:05d}.cif"
        original = tok.to_structure(ts)
        s = Structure.from_file(f)
        np.testing.assert_allclose(s.lattice.parameters, original.lattice.parameters, rtol=1e-5)
        assert [site.specie.Z for site in s] == ts.types.tolist()
        d = s.frac_coords - original.frac_coords
        assert np.abs(d - np.round(d)).max() < 1e-5
        atoms = ase.io.read(f)
        assert atoms.get_atomic_numbers().tolist() == ts.types.tolist()
        np.testing.assert_allclose(atoms.cell.cellpar(), original.lattice.parameters, rtol=1e-5)
        assert math.isclose(s.volume, rows[k].volume, rel_tol=1e-5)
    manifest = _manifest(folder)
    assert [r["file"] for r in manifest] == [f.name for f in files] and {r["status"] for r in manifest} == {"ok"}
    assert len(read_crystals(folder)) == len(mp20_sets)


def test_degenerate_lattices_go_to_the_manifest_only(mp20_sets, tmp_path):
    flat = dataclasses.replace(mp20_sets[1], lattice=torch.tensor([3.0, 3.0, 3.0, 10.0, 10.0, 170.0]))  # no cell has these angles
    nan = dataclasses.replace(mp20_sets[2], lattice=torch.tensor([float("nan"), 3.0, 3.0, 90.0, 90.0, 90.0]))
    negative = dataclasses.replace(mp20_sets[3], lattice=torch.tensor([-1.0, 3.0, 3.0, 90.0, 90.0, 90.0]))
    bad_frac = dataclasses.replace(mp20_sets[4], frac=torch.full_like(mp20_sets[4].frac, float("inf")))
    samples = [mp20_sets[0], flat, nan, negative, bad_frac, mp20_sets[5]]
    folder = tmp_path / "crystals"
    write_cif_folder(samples, folder)
    manifest = _manifest(folder)
    assert [r["status"] for r in manifest] == ["ok", "invalid_lattice", "invalid_lattice", "invalid_lattice", "invalid_coordinates", "ok"]
    assert [r["index"] for r in manifest] == [str(i) for i in range(6)]
    assert sorted(p.name for p in folder.glob("*.cif")) == ["sample_00000.cif", "sample_00005.cif"]
    assert manifest[1]["message"] and manifest[1]["formula"]


def test_lattice_problem_closed_form():
    assert lattice_problem([4.0, 4.0, 4.0, 90.0, 90.0, 90.0]) == ""
    assert lattice_problem([4.0, 4.0, 4.0, 60.0, 60.0, 60.0]) == ""  # fcc primitive cell
    assert "volume" in lattice_problem([4.0, 4.0, 4.0, 120.0, 120.0, 120.0])  # cos sum: 1 - 3/4 - 2/8 = 0
    assert "angle" in lattice_problem([4.0, 4.0, 4.0, 0.0, 90.0, 90.0])


def test_multiblock_cif_file(mp20_sets, tmp_path):
    path = tmp_path / "all.cif"
    samples = [*mp20_sets[:4], dataclasses.replace(mp20_sets[4], lattice=torch.full((6,), float("nan")))]
    rows = write_cif_file(samples, path)
    assert [r.status for r in rows] == ["ok"] * 4 + ["invalid_lattice"]
    assert len(ase.io.read(path, ":")) == 4
    assert len(CifParser(path).parse_structures(primitive=False)) == 4
    assert len(read_crystals(path)) == 4


def test_cif_folder_write_is_atomic_and_never_deletes_user_files(mp20_sets, tmp_path):
    folder = tmp_path / "crystals"
    write_cif_folder(mp20_sets[:3], folder)
    with pytest.raises(SciDiTInputError, match="sample 2 is a molecule"):
        write_cif_folder([mp20_sets[0], mp20_sets[1], dataclasses.replace(mp20_sets[2], domain=Domain.MOLECULE), mp20_sets[3]], folder)
    assert len(_manifest(folder)) == 3  # the previous export is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crystals"]  # no temp folder left behind
    write_cif_folder(mp20_sets[:2], folder)  # a previous export is replaced as a whole
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "sample_00000.cif", "sample_00001.cif"]
    user = tmp_path / "notes"
    user.mkdir()
    (user / "thesis.tex").write_text("keep me")
    with pytest.raises(SciDiTInputError, match="not a previous export"):
        write_cif_folder(mp20_sets[:2], user)
    assert (user / "thesis.tex").read_text() == "keep me" and len(list(user.iterdir())) == 1
