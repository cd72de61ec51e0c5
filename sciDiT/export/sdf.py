"""Generated molecules -> one SDF file that RDKit, Open Babel and friends read back.

Every molecule is written, in sample order, whatever its chemistry. A token set that carries a
molecular graph (a VAE with a bond head decodes one) is written with those bonds and formal charges;
otherwise bonds are perceived from the coordinates (:meth:`MoleculeTokenizer.to_rdkit`), and a
molecule whose bond orders cannot be assigned keeps only its connectivity (or no bonds), flagged in
the SD properties below. Unsanitizable molecules are written unsanitized rather than dropped, so
evaluation sees the full sample set. ``relax=True`` minimises each sanitizable molecule's geometry
with a force field on its own graph (MMFF94, UFF where MMFF94 lacks parameters).

SD properties of each record:

=================  ==================================================================
sample_index       position of the molecule in the generated set (0-based)
num_atoms          number of atoms
bond_source        ``decoded`` (the graph decoded with the sample: argmax per pair) | ``decoded_constrained`` /
                   ``decoded_joint`` (valence-constrained decoding, :mod:`sciDiT.tokenizers.valence`) |
                   ``perceived`` (from coordinates);
                   for dataset molecules the graph's origin (``smiles``, ``perceived``)
bond_perception    ``bond_orders`` | ``connectivity_only`` | ``failed`` | ``none`` (``none``: not perceived)
sanitized          ``1`` if RDKit sanitization succeeds on the bonds as written, else ``0``
sanitize_error     first line of RDKit's complaint (only when ``sanitized`` is 0)
smiles             canonical SMILES (only when ``sanitized`` is 1)
finite_coordinates ``0`` when the sample had NaN/inf coordinates (written as 0.0), else ``1``
geometry_source    generated molecules: ``decoded`` (positions as the VAE decoded them; also where a refinement put two
                   atoms within 0.5 A and was undone) | ``refined`` (placed by the model's geometry refiner on the
                   decoded graph, ``refine=true``: :mod:`sciDiT.models.refiner`)
relaxed            only with ``relax=True``: ``1`` if the geometry was force-field minimised, else ``0``
relax_force_field  ``MMFF94`` or ``UFF`` (only when ``relaxed`` is 1)
request            conditional samples only: the request they were generated for, as JSON with
                   sorted keys, e.g. ``{"gap": 6.5}`` (:mod:`sciDiT.data.conditions`); absent = unconditional
screen             generate-and-screen by screening predictors only (``property_screen``): JSON with the number of
                   ``candidates``, the ``chosen`` one and its ``predicted_<key>`` values (half-B predictors, not judges)
=================  ==================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdForceFieldHelpers
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


def force_field(mol: Chem.Mol):
    """An RDKit force field for a sanitized molecule with a conformer: (MMFF94 or UFF, its name), or (None, "")."""
    props = rdForceFieldHelpers.MMFFGetMoleculeProperties(mol)  # None when an atom type is missing
    if props is not None:
        return rdForceFieldHelpers.MMFFGetMoleculeForceField(mol, props), "MMFF94"
    if rdForceFieldHelpers.UFFHasAllMoleculeParams(mol):
        return rdForceFieldHelpers.UFFGetMoleculeForceField(mol), "UFF"
    return None, ""


def relax_molecule(mol: Chem.Mol, max_iters: int = 2000, max_displacement: float | None = None,
                   restraint_k: float = 100.0) -> Chem.Mol:
    """Copy of ``mol`` whose conformer is minimised on its own graph (bonds and charges kept).

    For users who want clean geometries: decoded coordinates are close to, not at, a minimum. Only
    a molecule that sanitizes with finite coordinates is relaxed; the copy gets ``relaxed`` = 1 and
    ``relax_force_field``, or ``relaxed`` = 0 (coordinates untouched) when it cannot be relaxed.
    ``max_displacement`` (Angstrom): each atom moves that far freely and is held beyond it by a harmonic
    restraint of ``restraint_k`` (kcal/mol/A^2), so the minimum fixes local geometry (bond lengths, angles)
    near the start instead of changing the conformation; None: unrestrained.
    """
    out = Chem.Mol(mol)
    out.SetIntProp("relaxed", 0)
    if out.GetNumConformers() == 0 or not np.isfinite(out.GetConformer().GetPositions()).all() or not sanitize_status(out)[0]:
        return out
    trial = Chem.Mol(out)
    with BlockLogs():
        Chem.SanitizeMol(trial)
        ff, name = force_field(trial)
        if ff is None:
            return out
        if max_displacement is not None:
            restrain = ff.MMFFAddPositionConstraint if name == "MMFF94" else ff.UFFAddPositionConstraint
            for i in range(trial.GetNumAtoms()):
                restrain(i, max_displacement, restraint_k)
        ff.Initialize()
        ff.Minimize(maxIts=max_iters)
    conf = out.GetConformer()
    for i, p in enumerate(trial.GetConformer().GetPositions()):
        conf.SetAtomPosition(i, Point3D(*map(float, p)))
    out.SetIntProp("relaxed", 1)
    out.SetProp("relax_force_field", name)
    return out


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


def to_molecules(samples: Sequence[TokenSet | Chem.Mol], bonds: bool = True, relax: bool = False) -> list[Chem.Mol]:
    """Annotated RDKit molecules, one per sample (token sets with their decoded graph, else bond perception when ``bonds``).

    ``relax``: force-field minimisation of every sanitizable molecule (see :func:`relax_molecule`).
    """
    tok = MoleculeTokenizer()
    mols = []
    with BlockLogs():  # failed bond perception / sanitization is recorded per molecule, not printed
        for i, s in enumerate(samples):
            if isinstance(s, TokenSet):
                if s.domain != Domain.MOLECULE:
                    raise SciDiTInputError(f"sample {i} is a {s.domain.name.lower()}, not a molecule: it cannot go into an SDF")
                props = {key: s.meta[key] for key in ("request", "geometry_source", "screen") if key in s.meta}
                s = tok.to_rdkit(s, bonds=bonds)
                for key, value in props.items():
                    s.SetProp(key, str(value))
            elif not isinstance(s, Chem.Mol):
                raise SciDiTInputError(f"sample {i} is a {type(s).__name__}, expected a TokenSet or an RDKit Mol")
            mol = annotate(s, i)
            mols.append(relax_molecule(mol) if relax else mol)
    return mols


def write_sdf(samples: Sequence[TokenSet | Chem.Mol], path: str | Path, bonds: bool = True, relax: bool = False) -> Path:
    """Write every sample to one SDF file at ``path``, atomically; returns the path.

    Token sets are written with their decoded graph, else with bonds perceived from coordinates
    (``bonds=False``: atoms only); RDKit molecules are written with their own bonds. ``relax``:
    force-field minimised geometries (see :func:`relax_molecule`). The whole file is built in memory and then
    renamed into place, so an error leaves no partial file.
    """
    text = "".join(mol_record(m) for m in to_molecules(samples, bonds=bonds, relax=relax))
    return atomic_write_text(path, text)
