"""CDVAE crystal loaders on real rows; every bad input gives a one-line error naming the file; caching."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

import sciDiT.data.cdvae as cdvae
from sciDiT.batch import Domain
from sciDiT.errors import DataNotFoundError, SciDiTInputError
from sciDiT.tokenizers.crystal import parse_cif


@pytest.fixture(scope="module")
def mp20_val_rows(data_dir) -> pd.DataFrame:
    return pd.read_csv(cdvae.split_file("mp20", "val", data_dir), nrows=40)


def test_mp20_rows_tokenized_niggli_reduced_with_ids(data_dir, cache_dir, mp20_val_rows):
    data = cdvae.load_cdvae("mp20", "val", data_dir, cache_dir, limit=40)
    assert len(data) == 40 and data.domain == Domain.CRYSTAL
    assert data.meta_column("material_id") == mp20_val_rows["material_id"].tolist()
    assert data.meta_column("formula") == mp20_val_rows["pretty_formula"].tolist()
    assert data.meta_column("spacegroup") == mp20_val_rows["spacegroup.number"].tolist()
    for i in (0, 13, 39):
        reduced = parse_cif(mp20_val_rows["cif"][i]).get_reduced_structure()
        ts = data[i]
        assert data.num_tokens[i] == len(reduced) == ts.num_tokens
        assert sorted(ts.types.tolist()) == sorted(site.specie.Z for site in reduced)
        np.testing.assert_allclose(ts.lattice.numpy(), [*reduced.lattice.abc, *reduced.lattice.angles], rtol=1e-5)
        assert float(ts.frac.min()) >= 0 and float(ts.frac.max()) < 1


@pytest.mark.parametrize("name,atoms", [("carbon_24", None), ("perov_5", 5)])
def test_extra_cdvae_sets_load(data_dir, cache_dir, name, atoms):
    data = cdvae.load_cdvae(name, "val", data_dir, cache_dir, limit=8)
    assert len(data) == 8
    if name == "carbon_24":
        assert all(set(data[i].types.tolist()) == {6} for i in range(8))
    else:
        assert (data.num_tokens == atoms).all()


def test_pool_parse_equals_in_process_parse(data_dir, tmp_path):
    one = cdvae.load_cdvae("mp20", "test", data_dir, tmp_path / "a", limit=cdvae._POOL_MIN_ROWS, workers=1)
    two = cdvae.load_cdvae("mp20", "test", data_dir, tmp_path / "b", limit=cdvae._POOL_MIN_ROWS, workers=2)
    assert one.meta_column("material_id") == two.meta_column("material_id")
    for key in ("types", "pos", "frac", "lattice", "offsets"):
        assert torch.equal(one.store[key], two.store[key])


# -- bad input --------------------------------------------------------------------------------------
@pytest.fixture
def fake_root(tmp_path, mp20_val_rows):
    """<tmp>/data/mp20/val.csv with 3 real MP-20 rows, to be broken by each test."""
    folder = tmp_path / "data" / "mp20"
    folder.mkdir(parents=True)
    mp20_val_rows.iloc[:3].to_csv(folder / "val.csv", index=False)
    return tmp_path


def _load(root, **kw):
    return cdvae.load_cdvae("mp20", "val", root / "data", root / "cache", **kw)


def test_missing_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"mp20: mp20 folder not found.*txie-93/cdvae"):
        cdvae.load_cdvae("mp20", "train", tmp_path, tmp_path / "cache")


def test_missing_split_file(fake_root):
    with pytest.raises(DataNotFoundError, match="split file train.csv or train.csv.gz not found"):
        cdvae.load_cdvae("mp20", "train", fake_root / "data", fake_root / "cache")


def test_csv_without_cif_column(fake_root):
    path = fake_root / "data" / "mp20" / "val.csv"
    pd.read_csv(path).rename(columns={"cif": "structure"}).to_csv(path, index=False)
    with pytest.raises(SciDiTInputError, match=r"val.csv: no 'cif' column"):
        _load(fake_root)


def test_empty_split(fake_root):
    path = fake_root / "data" / "mp20" / "val.csv"
    pd.read_csv(path).iloc[:0].to_csv(path, index=False)
    with pytest.raises(SciDiTInputError, match="val.csv: split has no rows"):
        _load(fake_root)


def test_malformed_cif_row(fake_root):
    path = fake_root / "data" / "mp20" / "val.csv"
    df = pd.read_csv(path)
    df.loc[1, "cif"] = df.loc[1, "cif"].split("loop_")[0]  # cell but no atom sites
    df.to_csv(path, index=False)
    mid = df.loc[1, "material_id"]
    with pytest.raises(SciDiTInputError, match=rf"val.csv: row 1 \(material_id {mid}\): ") as err:
        _load(fake_root)
    assert "\n" not in str(err.value)
    assert not (fake_root / "cache").exists() or not list((fake_root / "cache").iterdir())


def test_not_a_cif_row(fake_root):
    path = fake_root / "data" / "mp20" / "val.csv"
    df = pd.read_csv(path)
    df.loc[2, "cif"] = "hello"
    df.to_csv(path, index=False)
    with pytest.raises(SciDiTInputError, match=r"val.csv: row 2 .*not a CIF"):
        _load(fake_root)


def test_unknown_element_row(fake_root):
    path = fake_root / "data" / "mp20" / "val.csv"
    df = pd.read_csv(path)
    cif = df.loc[0, "cif"]
    site = next(line for line in cif.splitlines() if line.startswith("  ") and line.split()[0].isalpha() and len(line.split()) == 7)
    symbol = site.split()[0]
    df.loc[0, "cif"] = cif.replace(site, site.replace(f"  {symbol}  {symbol}", "  Xx  Xx", 1))
    df.to_csv(path, index=False)
    with pytest.raises(SciDiTInputError, match=r"val.csv: row 0 .*non-element species"):
        _load(fake_root)


def test_unreadable_csv(fake_root):
    path = fake_root / "data" / "mp20" / "val.csv"
    path.write_bytes(b"\xff\xfe\x00garbage\x00\"unterminated")
    with pytest.raises(SciDiTInputError, match="val.csv: "):
        _load(fake_root)


# -- cache ------------------------------------------------------------------------------------------
def test_cache_reused_then_invalidated_when_source_changes(fake_root, monkeypatch):
    first = _load(fake_root)
    cached = list((fake_root / "cache").glob("*.pt"))
    assert len(cached) == 1

    def no_parse(*args, **kwargs):
        raise AssertionError("parsed again although a valid cache exists")

    monkeypatch.setattr(cdvae, "tokenize_rows", no_parse)
    again = _load(fake_root)
    assert torch.equal(again.store["pos"], first.store["pos"])

    monkeypatch.undo()
    path = fake_root / "data" / "mp20" / "val.csv"
    pd.read_csv(path).iloc[:2].to_csv(path, index=False)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    changed = _load(fake_root)
    assert len(changed) == 2
    assert [p.name for p in (fake_root / "cache").glob("*.pt")] != [p.name for p in cached]
    assert len(list((fake_root / "cache").iterdir())) == 1, "the stale cache is removed, no temp files left"
