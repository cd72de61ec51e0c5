"""Cheap validity figures for samples drawn during training (the full metrics live beside this)."""

from __future__ import annotations

import numpy as np

from sciDiT.batch import Domain, TokenSet
from sciDiT.evaluation.crystals import structure_validity, to_structure
from sciDiT.evaluation.molecules import rdkit_molecule


def quick_validity(sets: list[TokenSet]) -> dict[str, float]:
    """``molecule/validity`` (strict: RDKit sanitizes bonds perceived from coordinates, no radicals, no
    retry; see :mod:`sciDiT.evaluation.molecules`) and ``crystal/structural_validity``
    (CDVAE: min distance >= 0.5 A, volume >= 0.1 A^3) over the sets of each domain present."""
    out: dict[str, float] = {}
    mols = [s for s in sets if s.domain == Domain.MOLECULE]
    xtals = [s for s in sets if s.domain == Domain.CRYSTAL]
    if mols:
        out["molecule/validity"] = float(np.mean([rdkit_molecule(s) is not None for s in mols]))
    if xtals:
        out["crystal/structural_validity"] = float(np.mean([structure_validity(to_structure(s)) for s in xtals]))
    return out
