"""Plain torch modules: the maths of sciDiT (no Lightning, no Hydra, no chemistry)."""
