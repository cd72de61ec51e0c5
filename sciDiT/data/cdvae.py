"""Crystal datasets in CDVAE's CSV layout: MP-20, carbon_24, perov_5.

Each dataset is a folder with ``{train,val,test}.csv`` (or ``.csv.gz``), one crystal per row, the
structure as CIF text in a ``cif`` column (CDVAE's ``data/<name>/`` files). Each CIF is parsed with
pymatgen, Niggli-reduced (``Structure.get_reduced_structure()``, as CDVAE does) and tokenized with
:class:`~sciDiT.tokenizers.crystal.CrystalTokenizer`. Parsing ~10k CIFs takes minutes, so it runs in
a process pool and the result is cached (:mod:`sciDiT.data.cache`).
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from sciDiT.batch import Domain, TokenSet
from sciDiT.data.cache import TokenSetDataset, load_or_build
from sciDiT.data.paths import not_found, resolve_cache_dir, resolve_data_dir
from sciDiT.errors import SciDiTInputError
from sciDiT.tokenizers.crystal import CrystalTokenizer, parse_cif
from sciDiT.tokenizers.symmetry import DEFAULT_SYMPREC, asymmetric_token_set

# dataset name -> folder under the data dir
CDVAE_FOLDERS = {"mp20": "mp20", "carbon_24": "cdvae_extra/carbon_24", "perov_5": "cdvae_extra/perov_5"}
SPLITS = ("train", "val", "test")
# optional CSV columns kept in meta: column -> meta key
META_COLUMNS = {"material_id": "material_id", "pretty_formula": "formula", "formula": "formula", "spacegroup.number": "spacegroup"}
_POOL_MIN_ROWS = 200  # below this, parsing in-process beats starting a pool


def split_file(name: str, split: str, data_dir: str | Path | None = None) -> Path:
    """Path of ``<data_dir>/<folder>/<split>.csv[.gz]``; DataNotFoundError naming what is missing."""
    if name not in CDVAE_FOLDERS:
        raise SciDiTInputError(f"unknown crystal dataset {name!r} (expected one of {', '.join(CDVAE_FOLDERS)})")
    if split not in SPLITS:
        raise SciDiTInputError(f"unknown split {split!r} (expected train, val or test)")
    folder = resolve_data_dir(data_dir) / CDVAE_FOLDERS[name]
    if not folder.is_dir():
        raise not_found(name, folder, f"{name} folder")
    for candidate in (folder / f"{split}.csv", folder / f"{split}.csv.gz"):
        if candidate.is_file():
            return candidate
    raise not_found(name, folder, f"{name} split file {split}.csv or {split}.csv.gz")


def read_split_csv(path: Path, limit: int | None = None) -> pd.DataFrame:
    """The CSV rows (first ``limit`` only if given); checks the ``cif`` column and that rows exist."""
    try:
        df = pd.read_csv(path, nrows=limit)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as err:
        raise SciDiTInputError(f"cannot read CSV: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}", path) from err
    if "cif" not in df.columns:
        raise SciDiTInputError(f"no 'cif' column (columns: {', '.join(map(str, df.columns))})", path)
    if len(df) == 0:
        raise SciDiTInputError("split has no rows", path)
    return df


def _tokenize_row(job: tuple[int, Any, bool]) -> tuple[int, dict[str, Any] | None, str | None]:
    """Pool worker: CIF text -> token tensors as numpy (tensors sent between processes use file handles)."""
    row, text, niggli = job
    try:
        structure = parse_cif(text)
        if niggli:
            structure = structure.get_reduced_structure()
        ts = CrystalTokenizer().from_structure(structure)
    except SciDiTInputError as err:
        return row, None, str(err)
    except Exception as err:  # pymatgen raises many types on degenerate cells
        return row, None, f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return row, {k: getattr(ts, k).numpy() for k in ("types", "pos", "frac", "lattice")}, None


def tokenize_rows(df: pd.DataFrame, path: Path, niggli: bool = True, workers: int = 2) -> TokenSetDataset:
    """Token sets of every row of a CDVAE CSV (meta: row, material_id, formula, spacegroup when present)."""
    jobs = [(row, text, niggli) for row, text in enumerate(df["cif"])]
    meta_cols = [c for c in META_COLUMNS if c in df.columns]
    if workers > 1 and len(jobs) >= _POOL_MIN_ROWS:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = list(pool.imap(_tokenize_row, jobs, chunksize=32))
    else:
        results = [_tokenize_row(job) for job in jobs]
    sets = []
    for row, arrays, error in results:
        record = df.iloc[row]
        meta: dict[str, Any] = {"row": row}
        for col in meta_cols:
            value = record[col]
            if not pd.isna(value):
                meta[META_COLUMNS[col]] = value.item() if hasattr(value, "item") else str(value)
        if error is not None:
            label = f" (material_id {meta['material_id']})" if "material_id" in meta else ""
            raise SciDiTInputError(f"row {row}{label}: {error}", path)
        t = {k: torch.from_numpy(v) for k, v in arrays.items()}
        values = torch.zeros(t["types"].shape[0])
        sets.append(TokenSet(types=t["types"], pos=t["pos"], frac=t["frac"], values=values, lattice=t["lattice"], domain=Domain.CRYSTAL, meta=meta))
    return TokenSetDataset.from_sets(sets)


def load_cdvae(
    name: str,
    split: str,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    limit: int | None = None,
    niggli: bool = True,
    workers: int = 2,
    asymmetric_unit: bool = False,
) -> TokenSetDataset:
    """One split of a CDVAE crystal dataset (``mp20``, ``carbon_24``, ``perov_5``) as cached token sets.

    ``limit`` reads only the first rows of the file; ``workers`` processes parse the CIFs.
    ``asymmetric_unit``: each crystal as the asymmetric unit of its standardised conventional cell
    (:func:`sciDiT.tokenizers.symmetry.asymmetric_unit`; the setting in ``meta['hall_number']``).
    """
    path = split_file(name, split, data_dir)
    if asymmetric_unit:
        def build() -> TokenSetDataset:
            cells = load_cdvae(name, split, data_dir, cache_dir, limit, niggli, workers)
            return TokenSetDataset.from_sets([asymmetric_token_set(cells[i]) for i in range(len(cells))])

        options = {"limit": limit, "niggli": niggli, "asymmetric_unit": True, "symprec": DEFAULT_SYMPREC}
        return load_or_build(resolve_cache_dir(cache_dir), f"{name}-{split}-asym", [path], options, build)

    def build() -> TokenSetDataset:
        return tokenize_rows(read_split_csv(path, limit), path, niggli=niggli, workers=workers)

    return load_or_build(resolve_cache_dir(cache_dir), f"{name}-{split}", [path], {"limit": limit, "niggli": niggli}, build)
