"""Molecules <-> token sets: one token per atom (atomic number, Cartesian position in Angstrom).

Hydrogens are kept explicit. A token set may carry the molecular graph (``bonds`` as (i, j, order)
with kekulized orders 1/2/3, and per-atom formal ``charges``); decoding to RDKit uses that graph
when present and otherwise perceives bonds from the coordinates (``rdDetermineBonds``).
:meth:`MoleculeTokenizer.graph_from_smiles` derives the graph of a DFT geometry from its SMILES.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from ase import Atoms
from torch import Tensor
from rdkit import Chem
from rdkit.Chem import rdDetermineBonds, rdmolops
from rdkit.Geometry import Point3D
from rdkit.rdBase import BlockLogs

from sciDiT.batch import Domain, TokenSet
from sciDiT.errors import SciDiTInputError
from sciDiT.tokenizers.elements import NUM_ELEMENTS, symbol

BOND_TYPES = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}  # order -> RDKit type
BOND_ORDERS = {t: k for k, t in BOND_TYPES.items()}
MAX_BOND_ORDER = 3


_GENERIC_BONDS = rdmolops.AdjustQueryParameters.NoAdjustments()
_GENERIC_BONDS.makeBondsGeneric = True  # a substructure query whose bonds match any bond
_CHARGED = Chem.MolFromSmarts("[!+0]")  # any atom with a formal charge


def _bare_molecule(numbers: np.ndarray, positions: np.ndarray) -> Chem.Mol:
    """Atoms and conformer, no bonds (through an XYZ block: one RDKit call instead of a Python loop per atom)."""
    lines = [f"{symbol(int(z))} {x:.6f} {y:.6f} {w:.6f}" for z, (x, y, w) in zip(numbers, positions)]
    return Chem.MolFromXYZBlock(f"{len(lines)}\n\n" + "\n".join(lines) + "\n")


def _graph_of(mol: Chem.Mol) -> tuple[Tensor, Tensor] | None:
    """(bonds [n_bonds, 3] long, charges [n] long) of an RDKit molecule, kekulized; None if it cannot be kekulized."""
    mol = Chem.Mol(mol)
    try:
        Chem.Kekulize(mol, clearAromaticFlags=True)
    except Exception:  # RDKit: unkekulizable aromatic system
        return None
    rows = []
    for b in mol.GetBonds():
        order = BOND_ORDERS.get(b.GetBondType())
        if order is None:  # dative, quadruple, ...: outside the graph vocabulary
            return None
        i, j = sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx()))
        rows.append((i, j, order))
    bonds = torch.tensor(sorted(rows), dtype=torch.long).reshape(-1, 3)
    charges = torch.tensor([a.GetFormalCharge() for a in mol.GetAtoms()], dtype=torch.long)
    return bonds, charges


class MoleculeTokenizer:
    """Encode molecules (RDKit, ASE, XYZ) as token sets and decode them back.

    ``center=True`` moves the centroid to the origin (molecules have no absolute frame) and keeps
    the removed offset in ``meta['origin']`` so decoding restores the original coordinates.
    """

    domain = Domain.MOLECULE

    def __init__(self, center: bool = True):
        self.center = center

    # -- encode ---------------------------------------------------------------------------------
    def from_arrays(
        self,
        numbers: np.ndarray,
        positions: np.ndarray,
        meta: dict | None = None,
        bonds: Tensor | None = None,
        charges: Tensor | None = None,
    ) -> TokenSet:
        """Token set from atomic numbers [n] and positions [n, 3] (Angstrom), with an optional graph.

        ``bonds`` [n_bonds, 3] (i, j, order 1..3) and ``charges`` [n] (formal charges) come together.
        """
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
        if (bonds is None) != (charges is None):
            raise SciDiTInputError("a molecule graph needs both bonds and charges (or neither)")
        if bonds is not None:
            bonds = torch.as_tensor(bonds, dtype=torch.long).reshape(-1, 3)
            charges = torch.as_tensor(charges, dtype=torch.long)
            ij, order = bonds[:, :2], bonds[:, 2]
            if charges.shape != (n,) or (ij < 0).any() or (ij >= n).any() or (ij[:, 0] == ij[:, 1]).any():
                raise SciDiTInputError(f"bonds must join two different atoms of 0..{n - 1} and charges must have n={n} entries")
            if (order < 1).any() or (order > MAX_BOND_ORDER).any():
                raise SciDiTInputError(f"bond orders must lie in 1..{MAX_BOND_ORDER} (kekulized), got {sorted(set(order.tolist()))}")
            ij = ij.sort(dim=1).values
            bonds = torch.cat([ij, order[:, None]], dim=1)[torch.argsort(ij[:, 0] * n + ij[:, 1])]  # rows sorted by (i, j)
        return TokenSet(
            types=torch.from_numpy(numbers),
            pos=torch.from_numpy(positions).float(),
            frac=torch.zeros(n, 3),
            values=torch.zeros(n),
            lattice=torch.zeros(6),
            domain=self.domain,
            meta=meta,
            bonds=bonds,
            charges=charges,
        )

    def from_rdkit(self, mol: Chem.Mol, conf_id: int = -1, meta: dict | None = None, graph: bool = True) -> TokenSet:
        """Token set from an RDKit molecule with a 3D conformer (hydrogens must be explicit).

        With ``graph`` the molecule's bonds (kekulized) and formal charges are kept, unless it has no
        bonds or cannot be kekulized.
        """
        if mol.GetNumConformers() == 0:
            raise SciDiTInputError("RDKit molecule has no 3D conformer")
        numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
        positions = mol.GetConformer(conf_id).GetPositions()
        found = _graph_of(mol) if graph and mol.GetNumBonds() > 0 else None
        bonds, charges = found if found is not None else (None, None)
        return self.from_arrays(numbers, positions, meta, bonds=bonds, charges=charges)

    def graph_from_smiles(self, numbers: np.ndarray, positions: np.ndarray, smiles: str) -> tuple[Tensor | None, Tensor | None, str]:
        """The bond graph of a 3D structure whose SMILES is known: (bonds, charges, source).

        Why: a DFT geometry has no bonds, and perception from coordinates alone misassigns orders and
        charges (zwitterions, strained rings). The SMILES graph (hydrogens added) is matched onto the
        connectivity perceived from the geometry (covalent radii, then extended Hueckel); its orders
        and formal charges are then carried over, and extra geometric contacts (e.g. across strained
        rings) are dropped. ``source``: ``smiles`` on a match; ``perceived`` when the SMILES does not
        match the geometry but ``DetermineBonds(charge=SMILES charge)`` gives a sanitizable graph;
        ``none`` (bonds and charges None) otherwise.
        """
        with BlockLogs():
            bare = _bare_molecule(numbers, positions)
            template = Chem.MolFromSmiles(smiles)
            if template is not None:
                template = Chem.AddHs(template)
                Chem.Kekulize(template, clearAromaticFlags=True)
                n = template.GetNumAtoms()
                charges = torch.zeros(n, dtype=torch.long)
                neutral = template
                if template.HasSubstructMatch(_CHARGED):  # also nitro groups: RDKit reads N(=O)=O as [N+](=O)[O-]
                    charges = torch.tensor([a.GetFormalCharge() for a in template.GetAtoms()], dtype=torch.long)
                    neutral = Chem.RWMol(template)
                    for atom in neutral.GetAtoms():
                        atom.SetFormalCharge(0)
                query = rdmolops.AdjustQueryProperties(neutral, _GENERIC_BONDS)  # the plain graph: any bond, neutral atoms
                adjacency = np.triu(Chem.GetAdjacencyMatrix(template, useBO=True))  # [n, n] kekulized orders
                for hueckel in (False, True):
                    geometric = Chem.Mol(bare)
                    try:
                        rdDetermineBonds.DetermineConnectivity(geometric, useHueckel=hueckel)
                    except Exception:  # RDKit: Hueckel calculation failed
                        continue
                    match = geometric.GetSubstructMatch(query)  # template atom k -> geometry atom match[k]
                    if match and n == len(numbers):
                        index = torch.tensor(match, dtype=torch.long)
                        i, j = np.nonzero(adjacency)
                        ij = index[torch.from_numpy(np.stack([i, j], 1))].sort(dim=1).values  # [n_bonds, 2] geometry atoms
                        order = torch.from_numpy(adjacency[i, j].round().astype(np.int64))[:, None]  # [n_bonds, 1]
                        out_charges = torch.zeros(n, dtype=torch.long)
                        out_charges[index] = charges
                        return torch.cat([ij, order], dim=1), out_charges, "smiles"
            total_charge = Chem.GetFormalCharge(template) if template is not None else 0
            perceived = Chem.Mol(bare)
            try:
                rdDetermineBonds.DetermineBonds(perceived, charge=total_charge)
                Chem.SanitizeMol(perceived)
            except Exception:  # no bond-order assignment fits the geometry
                return None, None, "none"
            found = _graph_of(perceived)
            return (*found, "perceived") if found is not None else (None, None, "none")

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

    def to_rdkit(self, ts: TokenSet, bonds: bool = True, charge: int = 0, use_graph: bool = True) -> Chem.Mol:
        """RDKit molecule with a conformer and, when ``bonds``, bonds (unsanitized: check it yourself).

        If the set carries a graph and ``use_graph``, its bonds and formal charges are used as they
        are (property ``bond_source``: the set's ``meta['graph_source']``, else ``decoded``;
        ``bond_perception=none``). Otherwise bonds are perceived
        from the coordinates (``bond_source=perceived``) with ``rdDetermineBonds.DetermineBonds`` at
        total ``charge``; when no valid assignment exists (common for generated molecules) only
        connectivity is kept and the molecule gets ``bond_perception=connectivity_only`` (``failed``
        if even that fails), so nothing is silently dropped.
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
        graph = bonds and use_graph and ts.bonds is not None
        if graph:
            for i, j, order in ts.bonds.tolist():
                rw.AddBond(int(i), int(j), BOND_TYPES[int(order)])
            for atom, q in zip(rw.GetAtoms(), ts.charges.tolist()):
                atom.SetFormalCharge(int(q))
        mol = rw.GetMol()
        status = "none"
        if bonds and not graph:
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
        if bonds:  # a dataset's graph says where it came from (graph_source); a generated one was decoded
            mol.SetProp("bond_source", str(ts.meta.get("graph_source", "decoded")) if graph else "perceived")
        for key, value in ts.meta.items():
            if key != "origin" and isinstance(value, (str, int, float)):
                mol.SetProp(str(key), str(value))
        return mol
