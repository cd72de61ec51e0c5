"""Tokenizers: the only code that knows chemistry or biology.

Each turns a domain object into a :class:`~sciDiT.batch.TokenSet` and back, losslessly:
``decode(encode(x))`` gives ``x`` back within float tolerance.
"""

from sciDiT.tokenizers.cell import CellTokenizer
from sciDiT.tokenizers.crystal import CrystalTokenizer
from sciDiT.tokenizers.elements import MASK_TYPE, NUM_ELEMENTS, atomic_number, symbol
from sciDiT.tokenizers.molecule import MoleculeTokenizer

__all__ = ["CellTokenizer", "CrystalTokenizer", "MoleculeTokenizer", "MASK_TYPE", "NUM_ELEMENTS", "atomic_number", "symbol"]
