"""QM9 loader on real qm9pack rows: counts, hydrogens, coordinates, metadata, the seeded split, bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

import sciDiT.data.qm9 as qm9
from sciDiT.batch import Domain
from sciDiT.data.paths import qm9pack_dir
from sciDiT.errors import DataNotFoundError, SciDiTInputError

LIMIT = 600


@pytest.fixture(scope="module")
def raw_rows() -> pd.DataFrame:
    folder = qm9pack_dir()
    assert folder is not None, "qm9pack is not installed: `pip install qm9pack` (see data/README.md)"
    return pd.read_csv(folder / "qm9_part1.csv", usecols=["Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang"], nrows=LIMIT)


@pytest.fixture(scope="module")
def molecules(tmp_path_factory):
    # an empty data dir: QM9 comes from the installed qm9pack wheel
    return qm9.load_qm9(tmp_path_factory.mktemp("empty_data"), tmp_path_factory.mktemp("cache"), limit=LIMIT)


def test_loader_matches_the_csv_rows(molecules, raw_rows):
    assert len(molecules) == LIMIT
    assert molecules.domain == Domain.MOLECULE
    np.testing.assert_array_equal(molecules.num_tokens, raw_rows["N_atoms"].to_numpy())
    assert molecules.meta_column("qm9_index") == raw_rows["Index"].tolist()
    assert molecules.meta_column("smiles") == raw_rows["SMILES"].tolist()
    for i in (0, 17, LIMIT - 1):
        ts = molecules[i]
        symbols = json.loads(raw_rows["Elements"][i].replace("'", '"'))
        xyz = np.array(json.loads(re.sub(r"\.(?=[,\]Ee])", ".0", raw_rows["XYZ_Ang"][i])))
        assert ts.types.tolist() == [{"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}[s] for s in symbols]
        assert abs(float(ts.pos.mean(0).abs().max())) < 1e-5  # centred, origin kept in meta
        np.testing.assert_allclose(ts.pos.double().numpy() + np.array(ts.meta["origin"]), xyz, atol=1e-5)
        assert ts.frac.abs().sum() == 0 and ts.lattice.abs().sum() == 0


def test_hydrogens_are_kept(molecules):
    ts = molecules[0]  # methane
    assert ts.types.tolist() == [6, 1, 1, 1, 1]


def test_seeded_split_sizes_disjoint_and_fixed():
    split = qm9.qm9_split()
    assert {k: len(v) for k, v in split.items()} == {"train": 100_000, "val": 18_000, "test": 12_831}
    every = np.concatenate(list(split.values()))
    assert np.array_equal(np.sort(every), np.arange(qm9.QM9_SIZE))
    again = qm9.qm9_split()
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not np.array_equal(split["train"][:100], qm9.qm9_split(seed=43)["train"][:100])


def test_limited_split_keeps_each_row_in_its_full_split(tmp_path):
    full = qm9.qm9_split()
    seen = []
    for name in ("train", "val", "test"):
        part = qm9.load_qm9_split(name, tmp_path / "data", tmp_path / "cache", limit=LIMIT)
        rows = part.indices  # row positions in the file order
        assert set(rows.tolist()) <= set(full[name].tolist())
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(LIMIT))


def test_missing_qm9_names_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(qm9, "qm9pack_dir", lambda: None)
    with pytest.raises(DataNotFoundError, match="qm9pack") as err:
        qm9.load_qm9(tmp_path, tmp_path / "cache", limit=5)
    assert str(tmp_path / "qm9") in str(err.value)


def test_pyg_root_without_files_never_downloads(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataNotFoundError, match="gdb9.sdf"):
        qm9._read_pyg(tmp_path, limit=5)


def _copy_qm9pack(tmp_path, rows: int) -> pd.DataFrame:
    """qm9pack CSVs in <tmp>/data/qm9 with the first ``rows`` real rows of part 1 (parts 2, 3 empty)."""
    folder = tmp_path / "data" / "qm9"
    folder.mkdir(parents=True)
    df = pd.read_csv(qm9pack_dir() / "qm9_part1.csv", nrows=rows)
    for name in qm9.QM9PACK_FILES:
        (df if name.endswith("1.csv") else df.iloc[:0]).to_csv(folder / name, index=False)
    return df


def test_qm9pack_copy_in_data_dir_is_used(tmp_path):
    _copy_qm9pack(tmp_path, 7)
    data = qm9.load_qm9(tmp_path / "data", tmp_path / "cache")
    assert len(data) == 7


def test_unknown_element_names_file_and_row(tmp_path):
    df = _copy_qm9pack(tmp_path, 5)
    df.loc[3, "Elements"] = df.loc[3, "Elements"].replace("'C'", "'Qq'", 1)
    df.to_csv(tmp_path / "data" / "qm9" / "qm9_part1.csv", index=False)
    with pytest.raises(SciDiTInputError, match=r"qm9_part1.csv row 3 \(QM9 index 4\).*unknown element 'Qq'"):
        qm9.load_qm9(tmp_path / "data", tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*")), "nothing cached after a failed parse"


def test_malformed_coordinates_name_the_file(tmp_path):
    df = _copy_qm9pack(tmp_path, 5)
    df.loc[2, "XYZ_Ang"] = "[[0.1,0.2"
    df.to_csv(tmp_path / "data" / "qm9" / "qm9_part1.csv", index=False)
    with pytest.raises(SciDiTInputError, match="qm9_part1.csv: cannot parse"):
        qm9.load_qm9(tmp_path / "data", tmp_path / "cache")


def test_csv_without_columns_names_the_file(tmp_path):
    df = _copy_qm9pack(tmp_path, 5)
    df.drop(columns=["XYZ_Ang"]).to_csv(tmp_path / "data" / "qm9" / "qm9_part1.csv", index=False)
    with pytest.raises(SciDiTInputError, match="qm9_part1.csv: not a qm9pack CSV"):
        qm9.load_qm9(tmp_path / "data", tmp_path / "cache")


def test_pyg_raw_layout_gives_the_same_molecules(tmp_path, raw_rows):
    """A torch_geometric QM9 root whose raw/ files hold the first real qm9pack rows (format fixture:
    the target table is zero-filled, sciDiT does not read it) loads to the same token sets."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    rows = raw_rows.iloc[:6]
    raw = tmp_path / "qm9" / "raw"
    raw.mkdir(parents=True)
    with Chem.SDWriter(str(raw / "gdb9.sdf")) as writer:
        for idx, els, xyz in zip(rows["Index"], rows["Elements"], rows["XYZ_Ang"]):
            symbols = json.loads(els.replace("'", '"'))
            coords = json.loads(re.sub(r"\.(?=[,\]Ee])", ".0", xyz))
            mol = Chem.MolFromXYZBlock(f"{len(symbols)}\n\n" + "".join(f"{s} {x} {y} {z}\n" for s, (x, y, z) in zip(symbols, coords)))
            rdDetermineBonds.DetermineConnectivity(mol)
            mol.SetProp("_Name", f"gdb_{idx}")
            writer.write(mol)
    (raw / "gdb9.sdf.csv").write_text("mol_id," + ",".join(f"t{k}" for k in range(19)) + "\n" + "".join(f"gdb_{i}," + ",".join(["0"] * 19) + "\n" for i in rows["Index"]))
    (raw / "uncharacterized.txt").write_text("header\n" * 9 + "\n")  # no molecule skipped
    assert qm9.find_qm9(tmp_path) == ("pyg", tmp_path / "qm9")
    from_pyg = qm9.load_qm9(tmp_path, tmp_path / "cache")
    from_csv = qm9.load_qm9(tmp_path / "no_data", tmp_path / "cache", limit=6)
    assert from_pyg.meta_column("qm9_index") == from_csv.meta_column("qm9_index")
    for i in range(6):
        assert from_pyg[i].types.tolist() == from_csv[i].types.tolist()
        np.testing.assert_allclose(from_pyg[i].pos.numpy(), from_csv[i].pos.numpy(), atol=2e-4)  # SDF keeps 4 decimals
