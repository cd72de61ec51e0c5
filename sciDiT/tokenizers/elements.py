"""Element vocabulary shared by molecules and crystals: token type = atomic number.

Type 0 is padding and :data:`MASK_TYPE` is the "masked atom" used by the VAE's input corruption,
so atom-type embeddings have ``NUM_ELEMENTS + 2`` rows.
"""

from __future__ import annotations

from ase.data import atomic_numbers, chemical_symbols

from sciDiT.errors import SciDiTInputError

NUM_ELEMENTS = 118
MASK_TYPE = NUM_ELEMENTS + 1
NUM_ATOM_TYPES = NUM_ELEMENTS + 2  # padding (0), elements 1..118, mask


def atomic_number(sym: str, where: object | None = None) -> int:
    """Atomic number of an element symbol; a clear error for anything that is not an element."""
    z = atomic_numbers.get(sym.strip().capitalize() if len(sym.strip()) <= 2 else sym)
    if z is None or not 1 <= z <= NUM_ELEMENTS:
        raise SciDiTInputError(f"unknown element {sym!r}", where)
    return z


def symbol(z: int) -> str:
    """Element symbol of an atomic number in 1..118."""
    if not 1 <= int(z) <= NUM_ELEMENTS:
        raise SciDiTInputError(f"atomic number {int(z)} is not an element (1..{NUM_ELEMENTS})")
    return chemical_symbols[int(z)]
