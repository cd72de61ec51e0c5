"""Hydra configs shipped inside the package, so `python -m sciDiT.train` works from any folder."""
