"""Generated molecules -> one SDF file that RDKit, Open Babel and friends read back.

Every molecule is written, in sample order, whatever its chemistry: bonds are perceived from the
coordinates (:meth:`MoleculeTokenizer.to_rdkit`), and a molecule whose bond orders cannot be
assigned keeps only its connectivity (or no bonds), flagged in the SD properties below. Unsanitizable
molecules are written unsanitized rather than dropped, so evaluation sees the full sample set.

SD properties of each record:

=================  ==================================================================
sample_index       position of the molecule in the generated set (0-based)
num_atoms          number of atoms
bond_perception    ``bond_orders`` | ``connectivity_only`` | ``failed`` | ``none``
sanitized          ``1`` if RDKit sanitization succeeds on the perceived bonds, else ``0``
sanitize_error     first line of RDKit's complaint (only when ``sanitized`` is 0)
smiles             canonical SMILES (only when ``sanitized`` is 1)
finite_coordinates ``0`` when the sample had NaN/inf coordinates (written as 0.0), else ``1``
=================  ==================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Geometry import Point3D
from rdkit.rdBase import BlockLogs

from sciDiT.batch import Domain, TokenSet
from sciDiT.errors import SciDiTInputError
from sciDiT.export.atomic import atomic_write_text
from sciDiT.tokenizers import MoleculeTokenizer


def sanitize_status(mol: Chem.Mol) -> tuple[bool, str]:
    """Whether RDKit sanitizes a copy of ``mol`` (the molecule itself is left untouched), and why not."""
    trial = Chem.Mol(mol)
    with BlockLogs():
        try:
            Chem.SanitizeMol(trial)
        except Exception as err:  # RDKit raises several exception types for bad valences/aromaticity
            return False, (str(err).strip().splitlines() or [type(err).__name__])[0]
    return True, ""


def _finite_coordinates(mol: Chem.Mol) -> bool:
    """Replace NaN/inf coordinates by 0.0 (molfiles cannot hold them); True if all were finite."""
    if mol.GetNumConformers() == 0:
        return True
    conf = mol.GetConformer()
    pos = conf.GetPositions()
    if np.isfinite(pos).all():
        return True
    for i, p in enumerate(np.nan_to_num(pos, nan=0.0, posinf=0.0, neginf=0.0)):
        conf.SetAtomPosition(i, Point3D(*map(float, p)))
    return False


def annotate(mol: Chem.Mol, index: int) -> Chem.Mol:
    """Copy of ``mol`` with the SD properties of the module docstring (bond perception kept if already set)."""
    mol = Chem.Mol(mol)
    finite = _finite_coordinates(mol)
    if not finite:
        mol = Chem.RWMol(mol)
        for bond in list(mol.GetBonds()):
            mol.RemoveBond(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx())
        mol = mol.GetMol()
        mol.SetProp("bond_perception", "failed")
    ok, why = sanitize_status(mol)
    mol.SetProp("_Name", f"sample_{index:05d}")
    mol.SetIntProp("sample_index", index)
    mol.SetIntProp("num_atoms", mol.GetNumAtoms())
    if not mol.HasProp("bond_perception"):
        mol.SetProp("bond_perception", "bond_orders" if mol.GetNumBonds() else "none")
    mol.SetIntProp("sanitized", int(ok))
    if ok:
        trial = Chem.Mol(mol)
        Chem.SanitizeMol(trial)
        mol.SetProp("smiles", Chem.MolToSmiles(Chem.RemoveHs(trial, sanitize=False)))
    else:
        mol.SetProp("sanitize_error", why)
    mol.SetIntProp("finite_coordinates", int(finite))
    return mol


def _props_block(mol: Chem.Mol) -> str:
    lines = []
    for key in mol.GetPropNames():  # public properties only (names starting with _ are hidden)
        lines += [f">  <{key}>", mol.GetProp(key), ""]
    return "\n".join(lines) + ("\n" if lines else "")


def mol_record(mol: Chem.Mol) -> str:
    """One SDF record (molfile + properties + ``$$$$``) for any RDKit molecule, sanitized or not.

    Kekulized bonds when RDKit can kekulize (every reader understands them), aromatic bond type 4
    otherwise; property caches are refreshed non-strictly so unsanitized molecules still serialise.
    """
    mol = Chem.Mol(mol)
    with BlockLogs():
        mol.UpdatePropertyCache(strict=False)
        try:
            block = Chem.MolToMolBlock(mol, kekulize=True)
        except Exception:  # kekulization fails for unsanitizable aromatic systems
            block = Chem.MolToMolBlock(mol, kekulize=False)
    return block + _props_block(mol) + "$$$$\n"


def to_molecules(samples: Sequence[TokenSet | Chem.Mol], bonds: bool = True) -> list[Chem.Mol]:
    """Annotated RDKit molecules, one per sample (token sets decoded with bond perception when ``bonds``)."""
    tok = MoleculeTokenizer()
    mols = []
    with BlockLogs():  # failed bond perception / sanitization is recorded per molecule, not printed
        for i, s in enumerate(samples):
            if isinstance(s, TokenSet):
                if s.domain != Domain.MOLECULE:
                    raise SciDiTInputError(f"sample {i} is a {s.domain.name.lower()}, not a molecule: it cannot go into an SDF")
                s = tok.to_rdkit(s, bonds=bonds)
            elif not isinstance(s, Chem.Mol):
                raise SciDiTInputError(f"sample {i} is a {type(s).__name__}, expected a TokenSet or an RDKit Mol")
            mols.append(annotate(s, i))
    return mols


def write_sdf(samples: Sequence[TokenSet | Chem.Mol], path: str | Path, bonds: bool = True) -> Path:
    """Write every sample to one SDF file at ``path``, atomically; returns the path.

    Token sets are decoded with bonds perceived from coordinates (``bonds=False``: atoms only);
    RDKit molecules are written with their own bonds. The whole file is built in memory and then
    renamed into place, so an error leaves no partial file.
    """
    text = "".join(mol_record(m) for m in to_molecules(samples, bonds=bonds))
    return atomic_write_text(path, text)
