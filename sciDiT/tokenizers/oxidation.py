"""Oxidation states and charge balance of crystal compositions (SMACT's rules), for scoring and decoding.

* :func:`smact_validity` - CDVAE's compositional validity of a reduced formula: one element, or only
  metals (alloys), or some assignment of one oxidation state per element - from SMACT's *original*
  oxidation-state table (``Element.oxidation_states_smact14``; smact 4.x changed the default table) -
  that is charge neutral and passes the Pauling electronegativity test (every cation less
  electronegative than every anion; elements without Pauling data pass). Written from that
  definition rather than calling smact 4.x's changed ``neutral_ratios``.
* :func:`balanced_types` - decoding: the most probable element assignment of a crystal's atoms, under
  the decoder's per-atom distributions, whose composition passes that test. Assignments are visited in
  order of decreasing probability (each atom among its few most probable elements, best-first over
  the product), the first charge-balanced one is taken; where none is found within the budget the
  per-atom argmax is kept, so nothing is dropped.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import Counter
from functools import reduce

import numpy as np

from sciDiT.tokenizers.elements import symbol


def reduced_counts(types: list[int]) -> tuple[list[str], list[int]]:
    """Element symbols (by atomic number) and their counts in the reduced formula of atomic numbers ``types``."""
    counts = Counter(types)
    g = reduce(math.gcd, counts.values())
    elems = sorted(counts)
    return [symbol(z) for z in elems], [counts[z] // g for z in elems]


def _pauling_ok(ox: tuple[int, ...], eneg: list[float | None]) -> bool:
    """SMACT's Pauling test as CDVAE ran it: pairs in order; a pair of opposite signs that lacks
    electronegativity data raises inside SMACT, which CDVAE counts as a pass for the whole test."""
    for (o1, e1), (o2, e2) in itertools.combinations(zip(ox, eneg), 2):
        if (o1 > 0 > o2) or (o1 < 0 < o2):
            if e1 is None or e2 is None:
                return True
            if (o1 > 0 and e1 >= e2) or (o1 < 0 and e1 <= e2):
                return False
    return True


def neutral_assignment(ox_lists: list[list[int]], counts: list[int], eneg: list[float | None]) -> tuple[int, ...] | None:
    """The first charge-neutral assignment (one state of ``ox_lists[i]`` per element ``i``, in list order) that passes
    :func:`_pauling_ok`, or None: a depth-first search.

    Same answer as enumerating the full product (CDVAE's loop), but prunes partial assignments
    whose charge can no longer reach zero or - when every electronegativity is known, so the test
    does not depend on pair order - whose cation/anion pairs already fail. Keeps many-element
    generated samples fast.
    """
    known = all(e is not None for e in eneg)
    lo = [min(o) * c for o, c in zip(ox_lists, counts)]
    hi = [max(o) * c for o, c in zip(ox_lists, counts)]
    rest_lo = np.cumsum(lo[::-1])[::-1].tolist() + [0]
    rest_hi = np.cumsum(hi[::-1])[::-1].tolist() + [0]
    chosen: list[int] = []

    def dfs(i: int, charge: int, max_cation: float, min_anion: float) -> bool:
        if i == len(counts):
            return charge == 0 and (known or _pauling_ok(tuple(chosen), eneg))
        if not rest_lo[i] <= -charge <= rest_hi[i]:
            return False
        for o in ox_lists[i]:
            mc, ma = max_cation, min_anion
            if known:
                mc = max(mc, eneg[i]) if o > 0 else mc
                ma = min(ma, eneg[i]) if o < 0 else ma
                if mc >= ma:
                    continue
            chosen.append(o)
            if dfs(i + 1, charge + o * counts[i], mc, ma):
                return True
            chosen.pop()
        return False

    return tuple(chosen) if dfs(0, 0, -np.inf, np.inf) else None


def smact_validity(symbols: list[str], counts: list[int]) -> bool:
    """CDVAE compositional validity of a reduced formula (module docstring), SMACT's original tables."""
    import smact

    if len(set(symbols)) == 1:
        return True
    if all(s in smact.metals for s in symbols):
        return True
    try:
        elements = [smact.Element(s) for s in symbols]
    except KeyError:  # SMACT has no data for the element (e.g. Lv, Og): no oxidation states to assign
        return False
    ox_lists = [e.oxidation_states_smact14 or [] for e in elements]
    if any(not o for o in ox_lists):
        return False  # an element without oxidation states (noble gases): no assignment exists
    return neutral_assignment(ox_lists, counts, [e.pauling_eneg for e in elements]) is not None


def balanced_types(log_probs: np.ndarray, candidates: int = 3, min_prob: float = 1e-2, max_visits: int = 2000,
                   required: list[int] | None = None, multiplicity: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Most probable atomic numbers ``[n]`` whose composition is SMACT-valid, and whether one was found.

    ``log_probs [n, T]``: per-atom log-probabilities over atomic numbers (index = Z; entries that are
    not elements must be ``-inf``). Each atom may take one of its ``candidates`` most probable
    elements with probability >= ``min_prob`` (its argmax always); assignments are visited best-first
    by total log-probability, at most ``max_visits`` of them. ``required`` (a requested element set):
    every atom takes one of these elements, each of them appears, and ``candidates`` / ``min_prob``
    do not apply. ``multiplicity [n]``: how many atoms of the crystal each row stands for (the orbits of an
    asymmetric unit; 0: an atom the crystal drops): compositions count each row that many times, and so
    does its log-probability. Not found: the (restricted) argmax and False.
    """
    weight = np.ones(len(log_probs), dtype=np.int64) if multiplicity is None else np.asarray(multiplicity, dtype=np.int64)
    if required is not None:
        keep = np.zeros(log_probs.shape[1], dtype=bool)
        keep[required] = True
        log_probs, candidates, min_prob = np.where(keep, log_probs, -np.inf), len(required), 0.0
    order = np.argsort(-log_probs, axis=1, kind="stable")[:, :candidates]  # [n, C] candidates, best first
    lp = np.take_along_axis(log_probs, order, 1)  # [n, C]
    allowed = lp >= math.log(min_prob) if min_prob > 0 else lp > -np.inf  # [n, C]
    allowed[:, 0] = True  # the first candidate always
    allowed[weight == 0, 1:] = False  # a dropped atom keeps its argmax: nothing depends on it
    loss = (lp[:, :1] - lp) * weight[:, None]  # [n, C] log-probability lost by taking candidate c instead of the first
    wanted = None if required is None else set(required)
    seen: dict[tuple[tuple[str, ...], tuple[int, ...]], bool] = {}
    heap = [(0.0, (0,) * len(lp), 0)]
    for _ in range(max_visits):
        if not heap:
            break
        cost, choice, first = heapq.heappop(heap)
        types = order[np.arange(len(choice)), choice]  # [n]
        if wanted is None or set(types[weight > 0].tolist()) == wanted:
            key = tuple(map(tuple, reduced_counts(np.repeat(types, weight).tolist())))
            if key not in seen:
                seen[key] = smact_validity(*key)
            if seen[key]:
                return types, True
        for i in range(first, len(choice)):  # successors: raise one atom at or after the last raised one (each vector once)
            c = choice[i] + 1
            if c < order.shape[1] and allowed[i, c]:
                nxt = choice[:i] + (c,) + choice[i + 1:]
                heapq.heappush(heap, (cost + loss[i, c] - loss[i, c - 1], nxt, i))
    return order[:, 0], False
