"""Molecules <-> token sets: one token per atom (atomic number, Cartesian position in Angstrom).

Hydrogens are kept explicit. Decoding to RDKit perceives bonds from the coordinates
(``rdDetermineBonds``), since a token set carries no bonds.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from ase import Atoms
from rdkit import Chem
from rdkit.Chem import rdDetermineBonds
from rdkit.Geometry import Point3D

from sciDiT.batch import Domain, TokenSet
from sciDiT.errors import SciDiTInputError
from sciDiT.tokenizers.elements import NUM_ELEMENTS, symbol


class MoleculeTokenizer:
    """Encode molecules (RDKit, ASE, XYZ) as token sets and decode them back.

    ``center=True`` moves the centroid to the origin (molecules have no absolute frame) and keeps
    the removed offset in ``meta['origin']`` so decoding restores the original coordinates.
    """

    domain = Domain.MOLECULE

    def __init__(self, center: bool = True):
        self.center = center

    # -- encode ---------------------------------------------------------------------------------
    def from_arrays(self, numbers: np.ndarray, positions: np.ndarray, meta: dict | None = None) -> TokenSet:
        """Token set from atomic numbers [n] and positions [n, 3] (Angstrom)."""
        numbers = np.asarray(numbers, dtype=np.int64)
        positions = np.asarray(positions, dtype=np.float64)
        if numbers.ndim != 1 or positions.shape != (numbers.shape[0], 3) or numbers.shape[0] == 0:
            raise SciDiTInputError(f"a molecule needs n >= 1 atoms with [n, 3] positions, got {numbers.shape} and {positions.shape}")
        if (numbers < 1).any() or (numbers > NUM_ELEMENTS).any():
            raise SciDiTInputError(f"atomic numbers must lie in 1..{NUM_ELEMENTS}, got {sorted(set(numbers.tolist()))}")
        if not np.isfinite(positions).all():
            raise SciDiTInputError("molecule positions contain NaN or infinity")
        meta = dict(meta or {})
        if self.center:
            origin = positions.mean(axis=0)
            positions = positions - origin
            meta["origin"] = origin.tolist()
        n = numbers.shape[0]
        return TokenSet(
            types=torch.from_numpy(numbers),
            pos=torch.from_numpy(positions).float(),
            frac=torch.zeros(n, 3),
            values=torch.zeros(n),
            lattice=torch.zeros(6),
            domain=self.domain,
            meta=meta,
        )

    def from_rdkit(self, mol: Chem.Mol, conf_id: int = -1, meta: dict | None = None) -> TokenSet:
        """Token set from an RDKit molecule with a 3D conformer (hydrogens must be explicit)."""
        if mol.GetNumConformers() == 0:
            raise SciDiTInputError("RDKit molecule has no 3D conformer")
        numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
        positions = mol.GetConformer(conf_id).GetPositions()
        return self.from_arrays(numbers, positions, meta)

    def from_ase(self, atoms: Atoms, meta: dict | None = None) -> TokenSet:
        return self.from_arrays(atoms.get_atomic_numbers(), atoms.get_positions(), meta)

    def from_xyz(self, text: str, meta: dict | None = None) -> TokenSet:
        """Token set from the text of a single-frame XYZ file."""
        from ase.io import read

        try:
            atoms = read(io.StringIO(text), format="xyz")
        except Exception as err:  # ASE raises many types for malformed XYZ
            raise SciDiTInputError(f"cannot parse XYZ: {err}") from err
        return self.from_ase(atoms, meta)

    # -- decode ---------------------------------------------------------------------------------
    def to_arrays(self, ts: TokenSet) -> tuple[np.ndarray, np.ndarray]:
        """Atomic numbers [n] and positions [n, 3] (origin restored when the set carries one)."""
        positions = ts.pos.double().cpu().numpy()
        if "origin" in ts.meta:
            positions = positions + np.asarray(ts.meta["origin"])
        return ts.types.cpu().numpy().astype(np.int64), positions

    def to_ase(self, ts: TokenSet) -> Atoms:
        numbers, positions = self.to_arrays(ts)
        return Atoms(numbers=numbers, positions=positions)

    def to_xyz(self, ts: TokenSet, comment: str = "") -> str:
        numbers, positions = self.to_arrays(ts)
        lines = [str(len(numbers)), comment]
        lines += [f"{symbol(z)} {x:.8f} {y:.8f} {w:.8f}" for z, (x, y, w) in zip(numbers, positions)]
        return "\n".join(lines) + "\n"

    def to_rdkit(self, ts: TokenSet, bonds: bool = True, charge: int = 0) -> Chem.Mol:
        """RDKit molecule with a conformer; bonds perceived from coordinates when ``bonds``.

        Bond orders come from ``rdDetermineBonds.DetermineBonds``; when no valid assignment
        exists (common for generated molecules) only connectivity is kept and the molecule gets
        the property ``bond_perception=connectivity_only`` (``failed`` if even that fails), so
        nothing is silently dropped.
        """
        numbers, positions = self.to_arrays(ts)
        rw = Chem.RWMol()
        conf = Chem.Conformer(len(numbers))
        for i, (z, p) in enumerate(zip(numbers, positions)):
            atom = Chem.Atom(int(z))
            atom.SetNoImplicit(True)
            rw.AddAtom(atom)
            conf.SetAtomPosition(i, Point3D(*map(float, p)))
        rw.AddConformer(conf, assignId=True)
        mol = rw.GetMol()
        status = "none"
        if bonds:
            status = "bond_orders"
            try:
                trial = Chem.Mol(mol)
                rdDetermineBonds.DetermineBonds(trial, charge=charge)
                mol = trial
            except Exception:  # RDKit raises ValueError/RuntimeError when no bond orders fit
                status = "connectivity_only"
                try:
                    trial = Chem.Mol(mol)
                    rdDetermineBonds.DetermineConnectivity(trial)
                    mol = trial
                except Exception:
                    status = "failed"
        mol.SetProp("bond_perception", status)
        for key, value in ts.meta.items():
            if key != "origin" and isinstance(value, (str, int, float)):
                mol.SetProp(str(key), str(value))
        return mol
