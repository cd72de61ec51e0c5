"""Generated crystals -> CIF files that pymatgen (``Structure.from_file``) and ASE (``ase.io.read``) open.

The sample-set layout is a folder with one P1 CIF per crystal (what both libraries read by default,
one structure per file) and a manifest of every sample, so none is lost silently (tab-separated,
so that readers globbing a folder for ``.cif``/``.csv`` files, like :mod:`sciDiT.evaluation.io`, skip it)::

    crystals/
      sample_00000.cif
      sample_00001.cif
      ...
      manifest.tsv   tab-separated: index, file, formula, num_atoms, a, b, c, alpha, beta, gamma, volume, status, message, request,
                     structure_source

A decoded lattice that is not a lattice (NaN or infinite parameters, non-positive lengths, angles
outside (0, 180), non-positive volume) or non-finite coordinates get no CIF file; the manifest
row says why (``status`` is ``ok`` or ``invalid_lattice`` / ``invalid_coordinates`` / ``write_failed``).
:func:`write_cif_file` writes a single multi-block CIF instead (valid crystals only).

Conditional samples (token sets with ``meta['request']``, or Structures with
``properties['request']``) carry their request as JSON with sorted keys, e.g.
``{"elements": ["Li", "Fe"], "spacegroup": 225}``: in the manifest's ``request`` column (``{}`` for an
unconditional sample) and, in every CIF data block (one file per crystal, or each block of a
multi-block file), as the data item ``_scidit_request`` right after the ``data_`` line, a quoted
string that pymatgen and ASE read past.

``structure_source`` says where a generated crystal's elements, sites and cell come from: ``decoded`` (as the VAE
decoded them) or ``refined`` (restored by the model's crystal refiner, :mod:`sciDiT.models.crystal_refiner`);
empty for a Structure or a token set that does not say.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

from sciDiT.batch import Domain, TokenSet
from sciDiT.errors import SciDiTInputError
from sciDiT.export.atomic import atomic_folder, atomic_write_text
from sciDiT.tokenizers.elements import formula

MANIFEST = "manifest.tsv"
MIN_RELATIVE_VOLUME = 1e-5  # volume / (a b c) below this: a flat (degenerate) cell, up to rounding


@dataclass
class ManifestRow:
    """One generated crystal's line in ``manifest.tsv``."""

    index: int
    file: str
    formula: str
    num_atoms: int
    a: float
    b: float
    c: float
    alpha: float
    beta: float
    gamma: float
    volume: float
    status: str
    message: str
    request: str = "{}"
    structure_source: str = ""


def lattice_problem(params: Sequence[float]) -> str:
    """Empty string if ``a, b, c, alpha, beta, gamma`` describe a real cell, else what is wrong with it."""
    params = [float(p) for p in params]
    if not all(math.isfinite(p) for p in params):
        return "lattice parameters are not finite"
    a, b, c, al, be, ga = params
    if min(a, b, c) <= 0:
        return "non-positive lattice length"
    if not all(0.0 < x < 180.0 for x in (al, be, ga)):
        return "lattice angle outside (0, 180) degrees"
    cos = [math.cos(math.radians(x)) for x in (al, be, ga)]
    gram = 1 - cos[0] ** 2 - cos[1] ** 2 - cos[2] ** 2 + 2 * cos[0] * cos[1] * cos[2]
    if gram <= 0 or math.sqrt(gram) < MIN_RELATIVE_VOLUME:
        return "zero or negative cell volume (inconsistent angles)"
    return ""


def to_structure(sample: TokenSet | Structure, index: int = 0) -> tuple[Structure | None, ManifestRow]:
    """A pymatgen ``Structure`` (None if degenerate) and its manifest row, for a token set or a Structure."""
    request, source = "{}", ""
    if isinstance(sample, Structure):
        request = str((sample.properties or {}).get("request", request))
        lat = sample.lattice
        params, numbers, frac = [*lat.abc, *lat.angles], [s.specie.Z for s in sample], sample.frac_coords
    elif isinstance(sample, TokenSet):
        if sample.domain != Domain.CRYSTAL:
            raise SciDiTInputError(f"sample {index} is a {sample.domain.name.lower()}, not a crystal: it cannot go into a CIF")
        request, source = str(sample.meta.get("request", request)), str(sample.meta.get("structure_source", ""))
        params, numbers = sample.lattice.double().cpu().tolist(), sample.types.cpu().tolist()
        frac = sample.frac.double().cpu().numpy()
    else:
        raise SciDiTInputError(f"sample {index} is a {type(sample).__name__}, expected a TokenSet or a pymatgen Structure")
    problem, status = lattice_problem(params), "invalid_lattice"
    if not problem and not np.isfinite(np.asarray(frac)).all():
        problem, status = "fractional coordinates are not finite", "invalid_coordinates"
    volume = float("nan")
    structure = None
    if not problem:
        structure = sample if isinstance(sample, Structure) else Structure(Lattice.from_parameters(*params), numbers, frac)
        if request != "{}":
            structure.properties = {**(structure.properties or {}), "request": request}
        volume = float(structure.volume)
    row = ManifestRow(index, "", formula(numbers), len(numbers), *map(float, params), volume, status if problem else "ok", problem, request,
                      source)
    return structure, row


def cif_text(structure: Structure) -> str:
    """P1 CIF text of a structure (pymatgen ``CifWriter``), with ``_scidit_request`` when it has a request."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = str(CifWriter(structure))
    request = (structure.properties or {}).get("request")
    if request is None:
        return text
    head, _, rest = text.partition("\n")
    return f"{head}\n_scidit_request   '{request}'\n{rest}"



def render(sample: TokenSet | Structure, index: int) -> tuple[str | None, ManifestRow]:
    """CIF text (None if the crystal is degenerate or pymatgen cannot write it) and the manifest row."""
    structure, row = to_structure(sample, index)
    if structure is None:
        return None, row
    try:
        return cif_text(structure), row
    except Exception as err:  # pymatgen can fail on exotic cells: record it, keep going
        row.status, row.message = "write_failed", (str(err).strip().splitlines() or [type(err).__name__])[0]
        return None, row


def _manifest_csv(rows: Sequence[ManifestRow]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ManifestRow.__dataclass_fields__), delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    return buf.getvalue()


def is_previous_export(folder: Path) -> bool:
    """A folder this module wrote: a manifest and nothing but sample CIFs."""
    names = [p.name for p in folder.iterdir()]
    return MANIFEST in names and all(n == MANIFEST or (n.startswith("sample_") and n.endswith(".cif")) for n in names)


def write_cif_folder(samples: Sequence[TokenSet | Structure], folder: str | Path) -> list[ManifestRow]:
    """Write one ``sample_{index:05d}.cif`` per valid crystal and ``manifest.tsv`` for all, atomically.

    The folder is built under a temporary name and renamed into place; an existing ``folder`` is
    replaced only if it is empty or a previous export (a manifest and sample CIFs). Returns the
    manifest rows (one per sample, in order).
    """
    rows: list[ManifestRow] = []
    with atomic_folder(folder, may_replace=is_previous_export) as tmp:
        for i, sample in enumerate(samples):
            text, row = render(sample, i)
            if text is not None:
                row.file = f"sample_{i:05d}.cif"
                (tmp / row.file).write_text(text)
            rows.append(row)
        (tmp / MANIFEST).write_text(_manifest_csv(rows))
    return rows


def write_cif_file(samples: Sequence[TokenSet | Structure], path: str | Path) -> list[ManifestRow]:
    """Write the valid crystals as data blocks of ONE CIF file, atomically; returns every sample's manifest row.

    ``Structure.from_file`` reads only the first block of such a file; ``ase.io.read(path, ":")``
    and ``CifParser(path).parse_structures()`` read all of them.
    """
    rows, blocks = [], []
    for i, sample in enumerate(samples):
        text, row = render(sample, i)
        if text is not None:
            blocks.append(text.replace("data_", f"data_sample_{i:05d}_", 1))
            row.file = Path(path).name
        rows.append(row)
    atomic_write_text(path, "".join(blocks))
    return rows
