"""Read exported sample sets (SDF, XYZ, CIF, CDVAE CSV) into token sets for evaluation.

Evaluation works on files from any model: a molecule set is an SDF file (token sets hold atoms and
coordinates only; ``read_molecules(..., keep_bonds=True)`` also keeps each record's RDKit molecule,
bonds and SD properties as written, in ``meta['written']``), a multi-frame XYZ file or a folder of them; a crystal set is a CIF file (one or more data blocks), a folder of CIFs, or a
CDVAE-layout CSV(.gz) with a ``cif`` column. Every token set gets ``meta['source'] = "file#k"``.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pandas as pd
from rdkit import Chem, RDLogger

from sciDiT.batch import TokenSet
from sciDiT.errors import SciDiTInputError
from sciDiT.export import write_cif_file
from sciDiT.export import write_sdf as export_sdf
from sciDiT.tokenizers import CrystalTokenizer, MoleculeTokenizer

MOLECULE_SUFFIXES = (".sdf", ".xyz")
CRYSTAL_SUFFIXES = (".cif", ".csv", ".csv.gz")
_CIF_BLOCK = re.compile(r"^data_", re.MULTILINE)


def _files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not path.exists():
        raise SciDiTInputError("no such file or folder", path)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))
        if not found:
            raise SciDiTInputError(f"folder holds no {'/'.join(suffixes)} files", path)
        return found
    if not path.name.lower().endswith(suffixes):
        raise SciDiTInputError(f"expected a {'/'.join(suffixes)} file or a folder of them", path)
    return [path]


def _read_sdf(path: Path, keep_bonds: bool = False) -> list[TokenSet]:
    tok = MoleculeTokenizer()
    RDLogger.DisableLog("rdApp.*")
    supplier = Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False, strictParsing=False)
    out = []
    for k, mol in enumerate(supplier):
        if mol is None:
            raise SciDiTInputError(f"record {k} is not a readable molfile block", path)
        try:
            out.append(tok.from_rdkit(mol, meta={"source": f"{path.name}#{k}", **({"written": mol} if keep_bonds else {})}))
        except SciDiTInputError as err:
            raise SciDiTInputError(f"record {k}: {err}", path) from err
    return out


def _read_xyz(path: Path) -> list[TokenSet]:
    from ase.io import read

    tok = MoleculeTokenizer()
    try:
        frames = read(str(path), index=":", format="xyz")
    except Exception as err:  # ASE raises many types on malformed XYZ
        raise SciDiTInputError(f"cannot parse XYZ: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}", path) from err
    out = []
    for k, atoms in enumerate(frames):
        try:
            out.append(tok.from_ase(atoms, meta={"source": f"{path.name}#{k}"}))
        except SciDiTInputError as err:
            raise SciDiTInputError(f"frame {k}: {err}", path) from err
    return out


def read_molecules(path: str | Path, keep_bonds: bool = False) -> list[TokenSet]:
    """Molecule token sets from an SDF or XYZ file, or a folder of them (files in name order).

    ``keep_bonds``: SDF records also keep their unsanitized RDKit molecule in ``meta['written']``.
    """
    sets: list[TokenSet] = []
    for f in _files(Path(path), MOLECULE_SUFFIXES):
        sets += _read_sdf(f, keep_bonds) if f.name.lower().endswith(".sdf") else _read_xyz(f)
    if not sets:
        raise SciDiTInputError("no molecules found", path)
    return sets


def _cif_blocks(text: str) -> list[str]:
    starts = [m.start() for m in _CIF_BLOCK.finditer(text)]
    if not starts:
        return [text]
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]


def read_crystals(path: str | Path, limit: int | None = None) -> list[TokenSet]:
    """Crystal token sets from CIF files (every data block), a folder of them, or a CDVAE CSV(.gz).

    ``limit`` keeps the first rows of a CSV only (reference sets are large).
    """
    tok = CrystalTokenizer()
    sets: list[TokenSet] = []
    for f in _files(Path(path), CRYSTAL_SUFFIXES):
        name = f.name.lower()
        if name.endswith((".csv", ".csv.gz")):
            try:
                cifs = pd.read_csv(f, usecols=["cif"], nrows=limit)["cif"]
            except (ValueError, OSError) as err:
                raise SciDiTInputError(f"not a CDVAE CSV with a 'cif' column: {str(err).splitlines()[0]}", f) from err
            blocks = [(f"row{k}", c) for k, c in enumerate(cifs)]
        else:
            opener = gzip.open if name.endswith(".gz") else open
            with opener(f, "rt") as fh:
                text = fh.read()
            blocks = [(f"block{k}", b) for k, b in enumerate(_cif_blocks(text))]
        for k, cif in blocks:
            sets.append(tok.from_cif(cif, meta={"source": f"{f.name}#{k}"}, where=f"{f}#{k}"))
    if not sets:
        raise SciDiTInputError("no crystals found", path)
    return sets


def write_sdf(sets: list[TokenSet], path: str | Path) -> None:
    """Write molecule token sets as an SDF of coordinates only (no bonds), atomically (see :mod:`sciDiT.export`)."""
    export_sdf(sets, path, bonds=False)


def write_cifs(sets: list[TokenSet], path: str | Path) -> None:
    """Write crystal token sets as one multi-block CIF file, atomically (see :mod:`sciDiT.export`)."""
    write_cif_file(sets, path)
