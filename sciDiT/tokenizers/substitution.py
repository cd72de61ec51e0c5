"""Ionic substitution of compositions (Hautier et al., Inorg. Chem. 2011): new, charge-neutral compositions from known ones.

A composition's elements get oxidation states from pymatgen's common ones (the first charge-neutral assignment in
which every cation is less electronegative than every anion: :func:`sciDiT.tokenizers.oxidation.neutral_assignment`,
the search SMACT validity runs); one element is then replaced, at its state, by
another element drawn from pymatgen's data-mined substitution probabilities (``SubstitutionProbability``, mined
from the ICSD and shipped with pymatgen). The result stays neutral under the same assignment. A composition with no
such assignment (an intermetallic) is returned unchanged. Used to augment a composition model's training data.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable

import numpy as np

from sciDiT.tokenizers.elements import NUM_ELEMENTS, atomic_number
from sciDiT.tokenizers.oxidation import neutral_assignment


class IonicSubstitution:
    """Draw ionic substitutes of compositions (atomic numbers, one per atom); ``allowed``: the elements a substitute may be."""

    def __init__(self, allowed: Iterable[int] | None = None, min_prob: float = 1e-3):
        from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability
        from pymatgen.core import Element

        allowed_set = set(range(1, NUM_ELEMENTS + 1) if allowed is None else allowed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns of elements without electronegativity data
            self._states = {z: [s for s in Element.from_Z(z).common_oxidation_states if s] for z in range(1, NUM_ELEMENTS + 1)}
            self._eneg = {z: Element.from_Z(z).X for z in range(1, NUM_ELEMENTS + 1)}
        table = SubstitutionProbability()
        by_state: dict[int, list] = {}
        for sp in sorted(table.species, key=lambda s: (atomic_number(s.symbol), s.oxi_state)):  # a set: its order varies by process
            by_state.setdefault(int(sp.oxi_state), []).append(sp)
        self._substitutes: dict[tuple[int, int], tuple[list[int], np.ndarray]] = {}
        for state, species in by_state.items():
            for old in species:
                z_old = atomic_number(old.symbol)
                options = [(atomic_number(new.symbol), table.cond_prob(new, old)) for new in species
                           if new.symbol != old.symbol and atomic_number(new.symbol) in allowed_set]
                options = [(z, p) for z, p in options if p >= min_prob]
                if options:
                    zs, ps = zip(*options)
                    self._substitutes[(z_old, state)] = (list(zs), np.asarray(ps) / sum(ps))
        self._assignments: dict[tuple[tuple[int, int], ...], dict[int, int] | None] = {}

    def assignment(self, types: Iterable[int]) -> dict[int, int] | None:
        """A charge-neutral oxidation state per element of ``types`` (pymatgen's common states, cations less
        electronegative than anions), or None where there is none (or one element only)."""
        counts = tuple(sorted(Counter(int(z) for z in types).items()))
        if counts not in self._assignments:
            self._assignments[counts] = self._search(counts) if len(counts) > 1 else None
        return self._assignments[counts]

    def _search(self, counts: tuple[tuple[int, int], ...]) -> dict[int, int] | None:
        zs = [z for z, _ in counts]
        if any(not self._states[z] for z in zs):
            return None
        eneg = [None if math.isnan(self._eneg[z]) else self._eneg[z] for z in zs]
        found = neutral_assignment([self._states[z] for z in zs], [c for _, c in counts], eneg)
        return None if found is None else dict(zip(zs, found))

    def __call__(self, types: list[int], rng: np.random.Generator) -> list[int]:
        """``types`` with one element replaced by an ionic substitute at its oxidation state (all its atoms), drawn from
        ``rng``; unchanged where the composition has no assignment or the element no substitute not already present."""
        states = self.assignment(types)
        if states is None:
            return list(types)
        present = set(states)
        order = rng.permutation(sorted(present))
        for z in order:
            zs, ps = self._substitutes.get((int(z), states[int(z)]), ([], np.zeros(0)))
            keep = [i for i, new in enumerate(zs) if new not in present]
            if keep:
                p = ps[keep] / ps[keep].sum()
                new = zs[keep[int(rng.choice(len(keep), p=p))]]
                return sorted(new if t == z else t for t in types)
        return list(types)

