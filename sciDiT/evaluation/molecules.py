"""Molecule generation metrics on token sets read from exported files (SDF / XYZ).

Definitions (so figures compare with papers). Validity is strict, as in the papers: RDKit
``SanitizeMol`` succeeds, no hydrogens are added (every atom of a 3D sample is in the file) and no
atom carries radical electrons. Bonds come from one of two sources, never mixed in one figure:

* ``*_file_bonds`` - the bonds as the SD file wrote them (a model's decoded graph when the SD property
  ``bond_source`` is ``decoded``); reported when the file carries bonds. ``file_bonds_decoded`` is the
  share of records whose ``bond_source`` is ``decoded`` (argmax per pair), ``file_bonds_decoded_constrained``
  of those decoded under exact valences (``bond_decoding=constrained``) and ``file_bonds_decoded_joint`` of
  those whose elements, charges and bonds were decoded together (``bond_decoding=joint``): a file of
  either scores that decoder, a separately named figure whenever results are reported.
* ``*_perceived`` - bonds and orders perceived from the coordinates alone with RDKit
  ``rdDetermineBonds.DetermineBonds`` (covalent-radius connectivity, total charge 0), one attempt.
* ``validity`` / ``validity_connected`` / ``uniqueness`` / ``novelty`` - the headline: the
  ``_file_bonds`` figures when the file carries bonds, else the ``_perceived`` ones;
  ``headline_file_bonds`` says which (1 / 0).
* ``*_connected`` - valid and a single fragment (share of all samples).
* ``validity_rdkit_hueckel_retry`` - lenient, for comparison only: as ``validity_perceived`` but a
  failed perception is retried with extended-Hueckel connectivity, which rescues strained cages of
  real QM9 molecules but also "validates" jittered ones.
* ``validity_openbabel`` - the ADiT path: OpenBabel perceives bonds from the XYZ coordinates
  (``ConnectTheDots`` + ``PerceiveBondOrders``), writes PDB, RDKit reads it back with sanitization
  (hydrogens removed, as ADiT does); valid when RDKit returns a molecule.
* ``uniqueness`` = distinct SMILES / valid; ``novelty`` = distinct SMILES not in the reference /
  valid (ADiT's convention), both over the valid molecules of the same bond source. SMILES are
  canonical RDKit SMILES of the largest fragment *without* stereo (perceived bonds carry no stereo;
  reference SMILES are canonicalised the same way).
  ``*_openbabel`` variants use the OpenBabel path.
* ``connected`` - share of all samples whose covalent graph perceived from the coordinates (RDKit
  ``DetermineConnectivity``) is one piece, valid or not.
* ``overlapping_atoms`` - share of all samples with two atoms closer than 0.5 A (the shortest bond, H2, is
  0.74 A): no molecule looks like that, whatever its graph; validity on the file's bonds does not see it.
* ``atom_stability`` / ``molecule_stability`` - EDM (Hoogeboom et al. 2022): a bond of order 1, 2
  or 3 is read from the distance of each atom pair using tabulated bond lengths plus margins
  (10, 5, 3 pm); an atom is stable when its bond orders sum to its valence (H 1, C 4, N 3, O 2,
  F 1); a molecule is stable when all its atoms are. EDM assigns no formal charges, so e.g. a
  nitro N (valence 4) is unstable, exactly as in EDM. Elements outside H, C, N, O, F form no
  bonds here and are never stable (EDM defines no table for them on QM9).
* ``tv_atom_counts``, ``tv_atom_types`` - total variation distance between the sample and
  reference histograms of atoms per molecule and of element frequencies; ``w1_bond_length`` -
  1-Wasserstein distance (Angstrom) between the lengths of the EDM-perceived bonds.
* ``pb_<check>`` (optional, slow) - PoseBusters ``config="mol"`` pass rate per check over the
  molecules valid by the headline (hydrogens kept); ``pb_all`` = all checks passed.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from rdkit import Chem, RDLogger, rdBase
from rdkit.Chem import rdDetermineBonds
from scipy.stats import wasserstein_distance

from sciDiT.batch import TokenSet
from sciDiT.tokenizers import MoleculeTokenizer, symbol

# -- EDM bond tables ------------------------------------------------------------------------------
# Typical bond lengths in pm (the tables EDM uses, from wiredchemist.com), by unordered element pair.
_SINGLE = {
    ("H", "H"): 74, ("H", "C"): 109, ("H", "N"): 101, ("H", "O"): 96, ("H", "F"): 92,
    ("C", "C"): 154, ("C", "N"): 147, ("C", "O"): 143, ("C", "F"): 135,
    ("N", "N"): 145, ("N", "O"): 140, ("N", "F"): 136,
    ("O", "O"): 148, ("O", "F"): 142,
    ("F", "F"): 142,
}  # fmt: skip
_DOUBLE = {("C", "C"): 134, ("C", "N"): 129, ("C", "O"): 120, ("N", "N"): 125, ("N", "O"): 121, ("O", "O"): 121}
_TRIPLE = {("C", "C"): 120, ("C", "N"): 116, ("C", "O"): 113, ("N", "N"): 110}
EDM_MARGINS_PM = (10, 5, 3)
EDM_VALENCE = {1: 1, 6: 4, 7: 3, 8: 2, 9: 1}
_Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}


def _threshold_table(lengths: dict[tuple[str, str], int], margin: int) -> np.ndarray:
    """[10, 10] bond-length thresholds in Angstrom indexed by atomic number; 0 where no such bond."""
    table = np.zeros((10, 10))
    for (a, b), pm in lengths.items():
        za, zb = _Z[a], _Z[b]
        table[za, zb] = table[zb, za] = (pm + margin) / 100.0
    return table


_THRESHOLDS = np.stack([_threshold_table(t, m) for t, m in zip((_SINGLE, _DOUBLE, _TRIPLE), EDM_MARGINS_PM)])


def edm_bond_orders(types: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """[n, n] EDM bond orders (0-3) from atomic numbers [n] and positions [n, 3] in Angstrom.

    Order k needs the distance below the order-k threshold and every lower-order threshold; pairs
    with an element outside H, C, N, O, F get 0.
    """
    n = len(types)
    dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
    z = np.where((types >= 1) & (types <= 9), types, 0)
    known = np.isin(types, list(EDM_VALENCE))
    order = np.zeros((n, n), dtype=np.int64)
    passed = known[:, None] & known[None, :] & ~np.eye(n, dtype=bool)
    for k in range(3):
        thr = _THRESHOLDS[k][z[:, None], z[None, :]]
        passed = passed & (dist < thr)
        order += passed
    return order


def edm_atom_stable(types: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Per atom [n] bool: its EDM-perceived bond orders ``order [n, n]`` (:func:`edm_bond_orders`) sum to its valence."""
    return order.sum(axis=1) == np.array([EDM_VALENCE.get(int(z), -1) for z in types])


def edm_stability(ts: TokenSet) -> tuple[int, int, bool]:
    """(stable atoms, atoms, molecule stable) by the EDM definition (module docstring)."""
    types = ts.types.cpu().numpy()
    stable = edm_atom_stable(types, edm_bond_orders(types, ts.pos.double().cpu().numpy()))
    return int(stable.sum()), len(types), bool(stable.all())


def edm_bond_lengths(ts: TokenSet) -> dict[str, np.ndarray]:
    """Lengths (Angstrom) of the EDM-perceived bonds, keyed by element pair like ``"C-H"``."""
    types = ts.types.cpu().numpy()
    pos = ts.pos.double().cpu().numpy()
    order = edm_bond_orders(types, pos)
    i, j = np.nonzero(np.triu(order))
    out: dict[str, list[float]] = {}
    for a, b in zip(i, j):
        key = "-".join(sorted((symbol(types[a]), symbol(types[b])), key=lambda s: (s != "C", s)))
        out.setdefault(key, []).append(float(np.linalg.norm(pos[a] - pos[b])))
    return {k: np.array(v) for k, v in out.items()}


# -- bond perception and SMILES ------------------------------------------------------------------
@contextmanager
def quiet_c_output():
    """Silence C-level stdout/stderr (YAeHMOP in RDKit's Hueckel bond perception and spglib print warnings)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


HUECKEL_SAFE_ELEMENTS = {1, 5, 6, 7, 8, 9, 14, 15, 16, 17, 35, 53}  # H B C N O F Si P S Cl Br I
OVERLAP_DISTANCE = 0.5  # Angstrom; the shortest bond (H2) is 0.74: closer atoms overlap


def min_distance(ts: TokenSet) -> float:
    """The smallest distance (Angstrom) between two atoms of ``ts`` (inf for fewer than two atoms)."""
    if ts.num_tokens < 2:
        return float("inf")
    pos = ts.pos.double().numpy()
    dist = np.linalg.norm(pos[:, None] - pos[None, :], axis=-1)
    return float(dist[np.triu_indices(len(pos), 1)].min())


def strict_sanitized(mol: Chem.Mol) -> Chem.Mol | None:
    """Sanitized copy of ``mol`` taken as written (no hydrogens added), or None when RDKit's
    sanitization fails or any atom is left with radical electrons: the strict validity test."""
    mol = Chem.Mol(mol)
    for atom in mol.GetAtoms():
        atom.SetNoImplicit(True)  # a 3D sample lists all its atoms: a missing H is a radical, not an implicit H
    try:
        Chem.SanitizeMol(mol)
    except Exception:  # RDKit raises several exception types for bad valences/aromaticity
        return None
    return None if any(a.GetNumRadicalElectrons() for a in mol.GetAtoms()) else mol


def rdkit_molecule(ts: TokenSet, hueckel_retry: bool = False) -> Chem.Mol | None:
    """Strictly valid RDKit molecule with bonds perceived from coordinates (charge 0), or None.

    ``DetermineBonds`` links atoms closer than 1.3 x the sum of covalent radii, which over-bonds
    strained cages (bicyclo[1.1.1]pentane bridgeheads are 1.9 A apart). ``hueckel_retry`` (the
    lenient ``validity_rdkit_hueckel_retry`` figure only) retries a failure with extended-Hueckel
    connectivity, which recovers such QM9 molecules but also repairs distorted generated ones.
    """
    RDLogger.DisableLog("rdApp.*")
    base = MoleculeTokenizer().to_rdkit(ts, bonds=False)
    # YAeHMOP (behind useHueckel) ends the whole process for elements it has no parameters for
    # (e.g. Kr, Xe, U), and generated molecules can contain any element: only organic ones may use it.
    # It also crashes on atoms that sit on top of each other, which no molecule has.
    retry = hueckel_retry and set(ts.types.tolist()) <= HUECKEL_SAFE_ELEMENTS and min_distance(ts) >= OVERLAP_DISTANCE
    for hueckel in (False, True) if retry else (False,):
        mol = Chem.Mol(base)
        try:
            if hueckel:
                with quiet_c_output():
                    rdDetermineBonds.DetermineBonds(mol, charge=0, useHueckel=True)
            else:
                rdDetermineBonds.DetermineBonds(mol, charge=0)
        except Exception:  # RDKit raises ValueError/RuntimeError when no bond orders fit
            continue
        if (valid := strict_sanitized(mol)) is not None:
            return valid
    return None


def is_single_fragment(mol: Chem.Mol) -> bool:
    """Whether the bond graph of ``mol`` is one piece."""
    return len(Chem.GetMolFrags(mol)) == 1


def openbabel_molecule(ts: TokenSet) -> Chem.Mol | None:
    """The ADiT path: OpenBabel bond perception from XYZ -> PDB -> RDKit (sanitized, H removed)."""
    from openbabel import openbabel as ob
    from openbabel import pybel

    ob.obErrorLog.StopLogging()
    RDLogger.DisableLog("rdApp.*")
    try:
        pdb = pybel.readstring("xyz", MoleculeTokenizer().to_xyz(ts)).write("pdb")
    except Exception:  # OpenBabel raises OSError/RuntimeError on unreadable input
        return None
    return Chem.MolFromPDBBlock(pdb, removeHs=True, sanitize=True)


def canonical_smiles(mol: Chem.Mol) -> str | None:
    """Canonical SMILES (no stereo) of the largest fragment, or None if RDKit cannot write it."""
    try:
        frags = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
        largest = max(frags, key=lambda m: m.GetNumAtoms())
        return Chem.MolToSmiles(Chem.RemoveAllHs(largest), isomericSmiles=False)
    except Exception:  # odd valence states make RemoveHs/MolToSmiles raise
        return None


def canonicalize_smiles(smiles: Iterable[str]) -> set[str]:
    """Reference SMILES in the form :func:`canonical_smiles` writes (unparseable entries are dropped)."""
    out = set()
    blocker = rdBase.BlockLogs()  # RDKit warns per molecule otherwise, even with RDLogger disabled
    for s in smiles:
        mol = Chem.MolFromSmiles(str(s))
        if mol is not None and (c := canonical_smiles(mol)) is not None:
            out.add(c)
    del blocker
    return out


def is_connected(ts: TokenSet) -> bool:
    """Whether the covalent graph perceived from the coordinates is a single piece."""
    mol = MoleculeTokenizer().to_rdkit(ts, bonds=False)
    try:
        rdDetermineBonds.DetermineConnectivity(mol)
    except Exception:  # RDKit raises on impossible geometries
        return False
    return len(Chem.GetMolFrags(mol)) == 1


# -- distributions -------------------------------------------------------------------------------
def total_variation(a: Counter, b: Counter) -> float:
    """Total variation distance between two histograms given as counters."""
    na, nb = sum(a.values()), sum(b.values())
    if na == 0 or nb == 0:
        return float("nan")
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in set(a) | set(b))


@dataclass
class MoleculeDistributions:
    """Histograms and bond lengths of a molecule set (for distances and plots)."""

    atom_counts: Counter = field(default_factory=Counter)
    atom_types: Counter = field(default_factory=Counter)
    bond_lengths: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, sets: list[TokenSet]) -> "MoleculeDistributions":
        d = cls()
        pooled: dict[str, list[np.ndarray]] = {}
        for ts in sets:
            d.atom_counts[ts.num_tokens] += 1
            d.atom_types.update(symbol(z) for z in ts.types.tolist())
            for k, v in edm_bond_lengths(ts).items():
                pooled.setdefault(k, []).append(v)
        d.bond_lengths = {k: np.concatenate(v) for k, v in pooled.items()}
        return d

    def all_bond_lengths(self) -> np.ndarray:
        return np.concatenate(list(self.bond_lengths.values())) if self.bond_lengths else np.zeros(0)


def distribution_distances(sample: MoleculeDistributions, reference: MoleculeDistributions) -> dict[str, float]:
    """TV distances of atom counts and types, W1 of bond lengths (pooled and per common pair)."""
    out = {
        "tv_atom_counts": total_variation(sample.atom_counts, reference.atom_counts),
        "tv_atom_types": total_variation(sample.atom_types, reference.atom_types),
    }
    s_all, r_all = sample.all_bond_lengths(), reference.all_bond_lengths()
    out["w1_bond_length"] = float(wasserstein_distance(s_all, r_all)) if len(s_all) and len(r_all) else float("nan")
    for pair in ("C-C", "C-H", "C-N", "C-O"):
        s, r = sample.bond_lengths.get(pair, np.zeros(0)), reference.bond_lengths.get(pair, np.zeros(0))
        out[f"w1_bond_length_{pair}"] = float(wasserstein_distance(s, r)) if len(s) and len(r) else float("nan")
    return out


# -- PoseBusters ---------------------------------------------------------------------------------
def posebusters_rates(mols: list[Chem.Mol]) -> dict[str, float]:
    """Pass rate of each PoseBusters ``mol`` check over ``mols`` (``pb_all``: every check passed)."""
    from posebusters import PoseBusters

    logging.getLogger("posebusters").setLevel(logging.CRITICAL)
    if not mols:
        return {"pb_all": float("nan")}
    table = PoseBusters(config="mol").bust(mols, None, None)
    checks = table.select_dtypes(include=["bool"])
    out = {f"pb_{c.replace('-', '_')}": float(checks[c].mean()) for c in checks.columns}
    out["pb_all"] = float(checks.all(axis=1).mean())
    return out


# -- everything ----------------------------------------------------------------------------------
@dataclass
class MoleculeEvaluation:
    """Flat ``metrics`` plus what the report draws: per-sample SMILES / validity and distributions."""

    metrics: dict[str, float]
    smiles: list[str | None]
    valid_mols: list[Chem.Mol]
    sample_dist: MoleculeDistributions
    reference_dist: MoleculeDistributions | None


def _rates(mols: list[Chem.Mol | None], reference: set[str] | None, suffix: str, connected: bool = True, diversity: bool = True) -> dict[str, float]:
    """Validity (+ valid and connected), uniqueness and novelty of per-sample valid molecules (None: invalid)."""
    smiles = [canonical_smiles(m) if m is not None else None for m in mols]
    valid = [s for s in smiles if s is not None]
    out = {f"validity{suffix}": len(valid) / len(smiles)}
    if not diversity:
        return out
    if connected:
        out[f"validity{suffix}_connected"] = sum(m is not None and s is not None and is_single_fragment(m) for m, s in zip(mols, smiles)) / len(smiles)
    unique = set(valid)
    out[f"uniqueness{suffix}"] = len(unique) / len(valid) if valid else 0.0
    if reference is not None:
        out[f"novelty{suffix}"] = len(unique - reference) / len(valid) if valid else 0.0
    return out


def file_has_bonds(written: list[Chem.Mol | None]) -> bool:
    """Whether molecules read from a file carry their own bonds (any bond, or a ``bond_source`` property)."""
    return any(m is not None and (m.GetNumBonds() > 0 or m.HasProp("bond_source")) for m in written)


def evaluate_molecules(
    sets: list[TokenSet],
    reference_smiles: Iterable[str] | None = None,
    reference_sets: list[TokenSet] | None = None,
    openbabel: bool = True,
    posebusters: bool = False,
    written: list[Chem.Mol | None] | None = None,
) -> MoleculeEvaluation:
    """All molecule metrics of the module docstring for ``sets``.

    ``reference_smiles`` (e.g. QM9 train) enables novelty; ``reference_sets`` (e.g. a QM9 train
    subset) enables the distribution distances. Both are optional so any file can be scored.
    ``written``: the same molecules as the file wrote them, with its bonds (None where a record has
    none, e.g. XYZ frames); when the file carries bonds the headline is scored on them.
    """
    if not sets:
        raise ValueError("evaluate_molecules needs at least one molecule")
    written = [None] * len(sets) if written is None else written
    if len(written) != len(sets):
        raise ValueError(f"written has {len(written)} molecules for {len(sets)} sets")
    reference = canonicalize_smiles(reference_smiles) if reference_smiles is not None else None
    perceived = [rdkit_molecule(ts) for ts in sets]
    on_file = file_has_bonds(written)
    from_file = [strict_sanitized(m) if m is not None else None for m in written]
    headline = from_file if on_file else perceived
    metrics = {"n_samples": float(len(sets)), "headline_file_bonds": float(on_file), **_rates(headline, reference, "")}
    if on_file:
        sources = [m.GetProp("bond_source") if m is not None and m.HasProp("bond_source") else "" for m in written]
        metrics["file_bonds_decoded"] = float(np.mean([s == "decoded" for s in sources]))
        metrics["file_bonds_decoded_constrained"] = float(np.mean([s == "decoded_constrained" for s in sources]))
        metrics["file_bonds_decoded_joint"] = float(np.mean([s == "decoded_joint" for s in sources]))
        metrics.update(_rates(from_file, reference, "_file_bonds"))
    metrics.update(_rates(perceived, reference, "_perceived"))
    metrics.update(_rates([rdkit_molecule(ts, hueckel_retry=True) for ts in sets], None, "_rdkit_hueckel_retry", diversity=False))
    if openbabel:
        metrics.update(_rates([openbabel_molecule(ts) for ts in sets], reference, "_openbabel", connected=False))
    metrics["connected"] = float(np.mean([is_connected(ts) for ts in sets]))
    metrics["overlapping_atoms"] = float(np.mean([min_distance(ts) < OVERLAP_DISTANCE for ts in sets]))
    stab = [edm_stability(ts) for ts in sets]
    metrics["atom_stability"] = sum(s[0] for s in stab) / sum(s[1] for s in stab)
    metrics["molecule_stability"] = float(np.mean([s[2] for s in stab]))
    sample_dist = MoleculeDistributions.of(sets)
    reference_dist = MoleculeDistributions.of(reference_sets) if reference_sets else None
    if reference_dist is not None:
        metrics.update(distribution_distances(sample_dist, reference_dist))
    valid_mols = [m for m in headline if m is not None]
    if posebusters:
        metrics.update(posebusters_rates(valid_mols))
    smiles = [canonical_smiles(m) if m is not None else None for m in headline]
    return MoleculeEvaluation(metrics, smiles, valid_mols, sample_dist, reference_dist)
