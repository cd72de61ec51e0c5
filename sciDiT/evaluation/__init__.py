"""Evaluation on exported samples: VAE reconstruction and the field's domain metrics (offline, on files)."""

from sciDiT.evaluation.crystals import evaluate_crystals
from sciDiT.evaluation.io import read_crystals, read_molecules, write_cifs, write_sdf
from sciDiT.evaluation.molecules import evaluate_molecules
from sciDiT.evaluation.reconstruction import crystal_reconstruction, kabsch_rmsd, molecule_reconstruction

__all__ = [
    "crystal_reconstruction",
    "evaluate_crystals",
    "evaluate_molecules",
    "kabsch_rmsd",
    "molecule_reconstruction",
    "read_crystals",
    "read_molecules",
    "write_cifs",
    "write_sdf",
]
