"""Element vocabulary shared by molecules and crystals: token type = atomic number.

Type 0 is padding and :data:`MASK_TYPE` is the "masked atom" used by the VAE's input corruption,
so atom-type embeddings have ``NUM_ELEMENTS + 2`` rows.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
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


def formula(numbers: Sequence[int]) -> str:
    """Atomic numbers, one per atom -> the cell's formula, elements by electronegativity as pymatgen writes them (``Li4Fe4P4O16``)."""
    from pymatgen.core import Composition

    counts = np.bincount(np.asarray(numbers, dtype=np.int64))
    with warnings.catch_warnings():  # noble gases have no Pauling electronegativity: pymatgen warns and orders them last
        warnings.simplefilter("ignore", UserWarning)
        parts = Composition({symbol(z): int(c) for z, c in enumerate(counts) if c}).formula.split()  # ["Li4", "Fe4", "P4", "O16"]
    return "".join(p[:-1] if p[-1] == "1" and not p[-2].isdigit() else p for p in parts)


OXIDATION_STATES = tuple(range(-4, 9))  # the states a feature row marks: -4..+8
# where each block of an element_features row starts: period (7), group (18), block (s/p/d/f), oxidation states, then
# electronegativity / 4, "no electronegativity" and "metal"
_PERIOD, _GROUP, _BLOCK, _STATES = 0, 7, 25, 29
_ENEG = _STATES + len(OXIDATION_STATES)


@lru_cache(maxsize=1)
def element_features() -> np.ndarray:
    """Chemistry of each type id as numbers, ``[NUM_ELEMENTS + 1, 45]`` float32 (row 0, padding, is zero), for models
    that should share what they learn between similar elements: one-hot period (7), group (18) and block (s/p/d/f),
    pymatgen's common oxidation states among -4..+8 (multi-hot, 13), Pauling electronegativity / 4 and a flag for
    its absence, and a metal flag."""
    from pymatgen.core import Element

    rows = np.zeros((NUM_ELEMENTS + 1, _ENEG + 3), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns of elements without electronegativity data
        for z in range(1, NUM_ELEMENTS + 1):
            el, row = Element.from_Z(z), rows[z]
            row[_PERIOD + el.row - 1] = 1.0
            row[_GROUP + el.group - 1] = 1.0
            row[_BLOCK + "spdf".index(el.block)] = 1.0
            for ox in el.common_oxidation_states:
                if ox in OXIDATION_STATES:
                    row[_STATES + OXIDATION_STATES.index(ox)] = 1.0
            row[_ENEG: _ENEG + 2] = (0.0, 1.0) if math.isnan(el.X) else (el.X / 4.0, 0.0)
            row[_ENEG + 2] = float(el.is_metal)
    return rows
