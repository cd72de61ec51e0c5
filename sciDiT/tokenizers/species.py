"""Compositions as ions: each element of a composition labelled with one oxidation state, for a composition model.

A composition model that draws element ids one by one learns charge balance only implicitly. Drawn as *species*
(element, oxidation state), a composition carries its charge: the running sum over the atoms drawn so far is a
number the model can be shown (:class:`sciDiT.models.composition_model.CompositionModel` ``max_charge``), and a
complete ionic composition ends at zero. The labels follow SMACT validity's rules, on SMACT's original table
(:mod:`sciDiT.tokenizers.oxidation`): one state per element; a single element or an all-metal composition (an
alloy) gets state 0 throughout; otherwise the first charge-neutral assignment that passes the Pauling test among
pymatgen's common states of the elements (SMACT's states that pymatgen calls common), and only where there is none
among all of SMACT's states, common ones first (LiFePO4: Li+ Fe2+ P5+ O2-, not the Fe4+ P3+ a search of all states
meets first). A composition with no such
assignment (about a tenth of MP-20) is labelled by ``unbalanced``: ``"zero"``, state 0 throughout as an alloy, so
that every labelled composition has charge zero and a model sees no exception to the rule it should learn; or
``"first"``, each element's first state, so its charge does not sum to zero. Decoding drops the states.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

from sciDiT.tokenizers.elements import NUM_ELEMENTS, OXIDATION_STATES, element_features, symbol
from sciDiT.tokenizers.oxidation import neutral_assignment


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[int, list[int]], dict[int, list[int]], dict[int, float | None], frozenset[int]]:
    """Per element: its oxidation states in SMACT's original table, pymatgen's common ones first ([] if none); those of
    them pymatgen calls common; its Pauling electronegativity (None if unknown); and SMACT's metals."""
    import smact
    from pymatgen.core import Element

    states: dict[int, list[int]] = {}
    common: dict[int, list[int]] = {}
    pauling: dict[int, float | None] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for z in range(1, NUM_ELEMENTS + 1):
            try:
                el = smact.Element(symbol(z))
                table, pauling[z] = list(el.oxidation_states_smact14 or []), el.pauling_eneg
            except KeyError:  # SMACT has no data for the element
                table, pauling[z] = [], None
            common[z] = [s for s in Element.from_Z(z).common_oxidation_states if s in table]
            states[z] = common[z] + [s for s in table if s not in common[z]]  # in pymatgen's order, then SMACT's
    metals = frozenset(z for z in range(1, NUM_ELEMENTS + 1) if symbol(z) in smact.metals)
    return states, common, pauling, metals


UNBALANCED = ("zero", "first")


def oxidation_labels(types: Iterable[int], unbalanced: str = "zero") -> dict[int, int]:
    """One oxidation state per element of a composition (atomic numbers, one per atom), by the module's rules;
    ``unbalanced``: the labels of a composition without a neutral assignment (module docstring)."""
    if unbalanced not in UNBALANCED:
        raise ValueError(f"unbalanced={unbalanced!r} is not one of {UNBALANCED}")
    return dict(_labels(tuple(sorted(Counter(int(z) for z in types).items())), unbalanced))


@lru_cache(maxsize=65536)
def _labels(element_counts: tuple[tuple[int, int], ...], unbalanced: str) -> tuple[tuple[int, int], ...]:
    """:func:`oxidation_labels` of ``((Z, count), ...)``, cached: training labels each batch's substitutes afresh."""
    counts = dict(element_counts)
    zs = sorted(counts)
    states, common, pauling, metals = _tables()
    if len(zs) == 1 or all(z in metals for z in zs):
        return tuple((z, 0) for z in zs)
    for table in (common, states):  # common states only, then all
        if all(table[z] for z in zs):
            found = neutral_assignment([table[z] for z in zs], [counts[z] for z in zs], [pauling[z] for z in zs])
            if found is not None:
                return tuple(zip(zs, found))
    return tuple((z, states[z][0] if states[z] and unbalanced == "first" else 0) for z in zs)


class SpeciesVocabulary:
    """Ids of species (element, oxidation state): id 0 is no species, then every element with state 0 and each of its
    SMACT states, in ascending (element, state) order, so sorted species ids keep an element's atoms together;
    ``unbalanced``: how :meth:`encode` labels a composition without a neutral assignment (module docstring)."""

    def __init__(self, unbalanced: str = "zero") -> None:
        if unbalanced not in UNBALANCED:
            raise ValueError(f"unbalanced={unbalanced!r} is not one of {UNBALANCED}")
        self.unbalanced = unbalanced
        pairs = sorted({(z, s) for z in range(1, NUM_ELEMENTS + 1) for s in [0, *_tables()[0][z]]})
        self.species: list[tuple[int, int]] = [(0, 0), *pairs]
        self._index = {p: i for i, p in enumerate(self.species)}

    def __len__(self) -> int:
        return len(self.species)

    def encode(self, types: Sequence[int]) -> list[int]:
        """Atomic numbers (one per atom) -> sorted species ids, states from :func:`oxidation_labels`."""
        labels = oxidation_labels(types, self.unbalanced)
        return sorted(self._index[(int(z), labels[int(z)])] for z in types)

    def decode(self, ids: Sequence[int]) -> list[int]:
        """Species ids -> atomic numbers (sorted), the states dropped."""
        return sorted(self.species[int(i)][0] for i in ids)

    def charges(self) -> np.ndarray:
        """The oxidation state of each id ``[V]`` (int64; id 0: 0)."""
        return np.array([s for _, s in self.species], dtype=np.int64)

    def elements(self) -> np.ndarray:
        """The atomic number of each id ``[V]`` (int64; id 0: 0)."""
        return np.array([z for z, _ in self.species], dtype=np.int64)

    def features(self) -> np.ndarray:
        """Feature rows ``[V, 45 + 13]`` float32: the element's :func:`element_features` row, then its state one-hot among
        -4..+8 (state 0 included)."""
        onehot = np.zeros((len(self), len(OXIDATION_STATES)), dtype=np.float32)
        for i, (_, s) in enumerate(self.species[1:], start=1):
            onehot[i, OXIDATION_STATES.index(s)] = 1.0
        return np.concatenate([element_features()[self.elements()], onehot], axis=1)
