"""sciDiT: set-based Diffusion Transformers for molecules, crystals and cells."""

from sciDiT.batch import Domain, TokenBatch, TokenSet, collate

__all__ = ["Domain", "TokenBatch", "TokenSet", "collate"]
__version__ = "0.1.0"
