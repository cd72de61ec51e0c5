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
from sciDiT.export import MANIFEST, lattice_problem, write_cif_file
from sciDiT.export import write_sdf as export_sdf
from sciDiT.tokenizers import CrystalTokenizer, MoleculeTokenizer

MOLECULE_SUFFIXES = (".sdf", ".xyz")
CRYSTAL_SUFFIXES = (".cif", ".csv", ".csv.gz")
_CIF_BLOCK = re.compile(r"^data_", re.MULTILINE)
REQUEST = "request"  # SD property / manifest column / CIF item holding a sample's request as JSON (issue 13 contract)
# a CIF block's request: a ``_scidit_request`` data item (value optionally quoted) or a ``# request: {...}`` comment line
_CIF_REQUEST = re.compile(r"^\s*(?:_scidit_request\s+(?P<q>['\"]?)(?P<item>\{.*\})(?P=q)|#\s*request:\s*(?P<comment>\{.*\}))\s*$", re.MULTILINE)


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


def _text(path: Path, kind: str) -> str:
    """The file's text; one-line error for a binary (non-UTF-8) or empty file."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            text = fh.read()
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError):
        raise SciDiTInputError(f"not a text {kind} file (binary or not UTF-8)", path) from None
    except OSError as err:
        raise SciDiTInputError(f"cannot read the file ({err.strerror or type(err).__name__})", path) from None
    if not text.strip():
        raise SciDiTInputError(f"empty {kind} file", path)
    return text


def _read_sdf(path: Path, keep_bonds: bool = False) -> list[TokenSet]:
    tok = MoleculeTokenizer()
    RDLogger.DisableLog("rdApp.*")
    supplier = Chem.SDMolSupplier()
    supplier.SetData(_text(path, "SDF"), sanitize=False, removeHs=False, strictParsing=False)
    out = []
    for k, mol in enumerate(supplier):
        if mol is None:
            raise SciDiTInputError(f"record {k} is not a readable molfile block", path)
        meta = {"source": f"{path.name}#{k}", **({"written": mol} if keep_bonds else {})}
        if mol.HasProp(REQUEST):
            meta[REQUEST] = mol.GetProp(REQUEST)
        try:
            out.append(tok.from_rdkit(mol, meta=meta))
        except SciDiTInputError as err:
            raise SciDiTInputError(f"record {k}: {err}", path) from err
    return out


def _check_xyz_layout(text: str, path: Path) -> None:
    """Frames of an XYZ file: an atom count line, a comment line, then that many ``symbol x y z`` lines."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    i, frame = 0, 0
    while i < len(lines):
        count = lines[i].strip()
        if not count.isdigit() or int(count) < 1:
            hint = " (does the previous frame's atom count match its atom lines?)" if frame else ""
            raise SciDiTInputError(f"frame {frame}: line {i + 1} should be a positive atom count, found {count[:40]!r}{hint}", path)
        n = int(count)
        atoms = lines[i + 2 : i + 2 + n]
        for j, ln in enumerate(atoms):
            fields = ln.split()
            if len(fields) == 1 and fields[0].isdigit():
                raise SciDiTInputError(f"frame {frame}: line {i + 1} announces {n} atoms but only {j} atom lines follow", path)
            try:
                coords = [float(x) for x in fields[1:4]]
            except ValueError:
                coords = []
            if len(coords) < 3:
                raise SciDiTInputError(f"frame {frame}: line {i + 3 + j} is not 'symbol x y z': {ln.strip()[:60]!r}", path)
        if len(atoms) < n:
            raise SciDiTInputError(f"frame {frame}: line {i + 1} announces {n} atoms but the file ends after {len(atoms)}", path)
        i, frame = i + 2 + n, frame + 1


def _read_xyz(path: Path) -> list[TokenSet]:
    import io

    from ase.io import read

    tok = MoleculeTokenizer()
    text = _text(path, "XYZ")
    _check_xyz_layout(text, path)
    try:
        frames = read(io.StringIO(text), index=":", format="xyz")
    except Exception as err:  # ASE raises many types on malformed XYZ (unknown element: KeyError)
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, KeyError):
            detail = f"unknown element {detail}"
        raise SciDiTInputError(f"cannot parse XYZ: {detail}", path) from err
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


_CELL_KEYS = ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")


def _cell_parameters(cif: str) -> list[float] | None:
    """``a, b, c, alpha, beta, gamma`` as written in a CIF block (uncertainties like ``3.1(2)`` dropped), or None."""
    if not isinstance(cif, str):  # an empty CSV cell; parse_cif says what is wrong
        return None
    values = []
    for key in _CELL_KEYS:
        m = re.search(rf"^\s*_cell_{key}\s+([-+0-9.eE]+)", cif, re.MULTILINE)
        if m is None:
            return None
        try:
            values.append(float(m.group(1)))
        except ValueError:
            return None
    return values


def _check_cell(params: list[float] | None, where: str) -> None:
    problem = lattice_problem(params) if params is not None else ""
    if problem:
        raise SciDiTInputError(f"degenerate lattice: {problem} (a, b, c, alpha, beta, gamma = {', '.join(f'{x:g}' for x in params)})", where)


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
            blocks = [(f"block{k}", b) for k, b in enumerate(_cif_blocks(_text(f, "CIF")))]
        for k, cif in blocks:
            where = f"{f}#{k}"
            _check_cell(_cell_parameters(cif), where)  # as written: pymatgen takes |a| and rejects flat cells cryptically
            meta = {"source": f"{f.name}#{k}", "file": f.name}
            found = _CIF_REQUEST.search(cif) if isinstance(cif, str) else None
            if found:
                meta[REQUEST] = found.group("item") or found.group("comment")
            ts = tok.from_cif(cif, meta=meta, where=where)
            _check_cell(ts.lattice.tolist(), where)
            sets.append(ts)
    if not sets:
        raise SciDiTInputError("no crystals found", path)
    return sets


def read_manifest(path: str | Path) -> pd.DataFrame | None:
    """The ``manifest.tsv`` rows of a sciDiT export folder (all columns as text), or None when ``path`` has none."""
    manifest = Path(path) / MANIFEST
    if not Path(path).is_dir() or not manifest.is_file():
        return None
    try:
        rows = pd.read_csv(manifest, sep="\t", dtype=str, keep_default_na=False)
    except (ValueError, OSError) as err:
        raise SciDiTInputError(f"unreadable manifest: {str(err).splitlines()[0]}", manifest) from None
    if not {"status", "formula", "file"} <= set(rows.columns):
        raise SciDiTInputError("manifest lacks the status/formula/file columns of a sciDiT export", manifest)
    return rows


def unwritten_crystals(path: str | Path) -> list[str]:
    """Formulas of the samples that a sciDiT export folder lists in ``manifest.tsv`` but wrote no CIF for.

    Those are generated crystals with a degenerate lattice or non-finite coordinates; evaluation
    counts them as invalid samples rather than letting them leave the denominator.
    """
    rows = read_manifest(path)
    if rows is None:
        return []
    manifest = Path(path) / MANIFEST
    missing = [f for f in rows.loc[rows["status"] == "ok", "file"] if not (Path(path) / f).is_file()]
    if missing:
        raise SciDiTInputError(f"manifest lists {len(missing)} CIF file(s) that are not in the folder, e.g. {missing[0]}", manifest)
    return rows.loc[rows["status"] != "ok", "formula"].tolist()


def write_sdf(sets: list[TokenSet], path: str | Path) -> None:
    """Write molecule token sets as an SDF of coordinates only (no bonds), atomically (see :mod:`sciDiT.export`)."""
    export_sdf(sets, path, bonds=False)


def write_cifs(sets: list[TokenSet], path: str | Path) -> None:
    """Write crystal token sets as one multi-block CIF file, atomically (see :mod:`sciDiT.export`)."""
    write_cif_file(sets, path)
