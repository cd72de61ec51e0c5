"""Evaluation on exported samples: VAE reconstruction and the field's domain metrics."""

from sciDiT.evaluation.reconstruction import crystal_reconstruction, kabsch_rmsd, molecule_reconstruction

__all__ = ["crystal_reconstruction", "kabsch_rmsd", "molecule_reconstruction"]
