"""Evaluation on exported samples: VAE reconstruction, the field's domain metrics and conditional (request) scoring, offline on files."""

from sciDiT.evaluation.conditional import crystal_condition_metrics, molecule_condition_metrics, requests_of
from sciDiT.evaluation.crystals import evaluate_crystals
from sciDiT.evaluation.io import read_crystals, read_molecules, write_cifs, write_sdf
from sciDiT.evaluation.molecules import evaluate_molecules
from sciDiT.evaluation.property_predictor import load_predictor
from sciDiT.evaluation.reconstruction import crystal_reconstruction, kabsch_rmsd, molecule_reconstruction

__all__ = [
    "crystal_condition_metrics",
    "crystal_reconstruction",
    "evaluate_crystals",
    "evaluate_molecules",
    "kabsch_rmsd",
    "load_predictor",
    "molecule_condition_metrics",
    "molecule_reconstruction",
    "read_crystals",
    "read_molecules",
    "requests_of",
    "write_cifs",
    "write_sdf",
]
