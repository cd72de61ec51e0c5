"""Crystals by symmetry: a space group plus its asymmetric unit, and back to the full cell.

A crystal in space group G is fixed by G's standard setting (spglib's Hall number), the standardised
conventional lattice and one representative atom per Wyckoff orbit (the asymmetric unit). Generating
that and expanding it with G's operations gives crystals that hold the group exactly, as symmetry-aware
generators (DiffCSP++, WyFormer) do, where a free unit cell almost never does.

:func:`asymmetric_unit` reduces a crystal (spglib, at ``symprec``); :func:`expand` rebuilds the cell:
the lattice is set to the metric of G's crystal system, each representative is moved to the
special position of its site symmetry (the mean of its images under the operations that map it
within ``site_tol`` angstrom of itself: an exact projection once that set is a group), and its orbit
is generated; an atom whose special position an earlier atom already holds is dropped (counted). :func:`expand` of :func:`asymmetric_unit` gives back the crystal (tests).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import spglib
from pymatgen.core import Lattice, Structure

from sciDiT.batch import TokenSet
from sciDiT.errors import SciDiTInputError
from sciDiT.tokenizers.crystal import CrystalTokenizer

DEFAULT_SYMPREC = 0.1  # angstrom: spglib's tolerance when reducing training crystals (MP-20's space groups use 0.1)
SITE_TOL = 0.5  # angstrom: how close an image must come to its atom to count in the atom's site symmetry
HALL_META = "hall_number"  # meta key of an asymmetric unit's token set: the Hall setting it is expanded in


@lru_cache(maxsize=None)
def operations(hall_number: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotations ``[k, 3, 3]`` (integer, fractional) and translations ``[k, 3]`` of a Hall setting (spglib's database)."""
    ops = spglib.get_symmetry_from_database(int(hall_number))
    if ops is None:
        raise SciDiTInputError(f"hall_number={hall_number} is not a setting in spglib's database (1..530)")
    return np.asarray(ops["rotations"], dtype=np.float64), np.asarray(ops["translations"], dtype=np.float64)


@lru_cache(maxsize=None)
def spacegroup_number(hall_number: int) -> int:
    """International space-group number of a Hall setting."""
    return int(spglib.get_spacegroup_type(int(hall_number)).number)


def symmetric_lattice(params: np.ndarray, number: int) -> np.ndarray:
    """Lattice parameters (a, b, c, alpha, beta, gamma) with the metric of space group ``number``'s
    crystal system in its standard setting (monoclinic: unique axis b; trigonal: hexagonal axes)."""
    a, b, c, al, be, ga = (float(v) for v in params)
    if number >= 195:  # cubic
        a = b = c = (a + b + c) / 3.0
        al = be = ga = 90.0
    elif number >= 143:  # trigonal (hexagonal axes) and hexagonal
        a = b = (a + b) / 2.0
        al, be, ga = 90.0, 90.0, 120.0
    elif number >= 75:  # tetragonal
        a = b = (a + b) / 2.0
        al = be = ga = 90.0
    elif number >= 16:  # orthorhombic
        al = be = ga = 90.0
    elif number >= 3:  # monoclinic, unique axis b
        al = ga = 90.0
    return np.array([a, b, c, al, be, ga])


@lru_cache(maxsize=None)
def standard_hall_number(number: int) -> int:
    """The Hall setting spglib standardises space group ``number`` into (the first of its settings)."""
    if not 1 <= int(number) <= 230:
        raise SciDiTInputError(f"space group {number} is not in 1..230")
    return next(h for h in range(1, 531) if spacegroup_number(h) == int(number))


def asymmetric_unit(structure: Structure, symprec: float = DEFAULT_SYMPREC) -> tuple[int, Structure]:
    """``(hall number, asymmetric unit)`` of an ordered crystal: one atom per orbit of the standardised
    conventional cell (spglib at ``symprec``), in that cell's lattice and fractional coordinates."""
    cell = (structure.lattice.matrix, structure.frac_coords, [site.specie.Z for site in structure])
    data = spglib.get_symmetry_dataset(cell, symprec=symprec)
    if data is None:
        raise SciDiTInputError(f"spglib found no symmetry for {structure.composition.reduced_formula} at symprec={symprec}")
    lattice = Lattice(data.std_lattice)
    frac, types = np.mod(data.std_positions, 1.0), np.asarray(data.std_types)
    rot, trans = operations(data.hall_number)
    keep: list[int] = []
    covered = np.zeros(len(frac), dtype=bool)
    for i in range(len(frac)):
        if covered[i]:
            continue
        keep.append(i)
        images = np.einsum("kij,j->ki", rot, frac[i]) + trans  # [k, 3]
        delta = frac[None, :, :] - images[:, None, :]  # [k, n, 3]
        delta -= np.round(delta)
        dist = np.linalg.norm(delta @ lattice.matrix, axis=-1)  # [k, n] angstrom
        covered |= (dist < max(symprec, 1e-3)).any(0) & (types == types[i])
    return int(data.hall_number), Structure(lattice, types[keep].tolist(), frac[keep])


def site_projection(x: np.ndarray, matrix: np.ndarray, rot: np.ndarray, trans: np.ndarray, site_tol: float = SITE_TOL) -> np.ndarray:
    """Fractional ``x [3]`` moved to the special position of its site symmetry: the mean of its images
    (unwrapped next to it) under the operations that map it within ``site_tol`` angstrom of itself."""
    for _ in range(3):  # a projected point can gain or lose near-stabilisers at the edge of site_tol
        images = np.einsum("kij,j->ki", rot, x) + trans  # [k, 3]
        delta = images - x
        delta -= np.round(delta)
        near = np.linalg.norm(delta @ matrix, axis=-1) < site_tol  # [k], the identity always
        moved = x + delta[near].mean(0)
        if np.allclose(moved, x, atol=1e-9):
            break
        x = moved
    return np.mod(x, 1.0)


def orbit(x: np.ndarray, rot: np.ndarray, trans: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    """Distinct images ``[m, 3]`` in [0, 1) of fractional ``x [3]`` under the operations."""
    images = np.mod(np.einsum("kij,j->ki", rot, x) + trans, 1.0)  # [k, 3]
    out: list[np.ndarray] = []
    for p in images:
        if not any(np.abs((p - q) - np.round(p - q)).max() < tol for q in out):
            out.append(p)
    return np.array(out)


def _orbits(hall_number: int, lattice: np.ndarray, frac: np.ndarray, site_tol: float = SITE_TOL) -> tuple[Lattice, list[np.ndarray | None]]:
    """The symmetric lattice of ``lattice`` parameters ``[6]`` in setting ``hall_number``, and the orbit ``[m, 3]``
    of each atom of ``frac [n, 3]`` after projection onto its special position; None for an atom whose special
    position an earlier atom already holds (two atoms cannot share a site)."""
    rot, trans = operations(hall_number)
    lat = Lattice.from_parameters(*symmetric_lattice(np.asarray(lattice, dtype=np.float64), spacegroup_number(hall_number)))
    orbits: list[np.ndarray | None] = []
    for x in np.asarray(frac, dtype=np.float64):
        points = orbit(site_projection(x, lat.matrix, rot, trans, site_tol), rot, trans)
        placed = [o for o in orbits if o is not None]
        orbits.append(None if placed and _occupied(points[0], np.concatenate(placed)) else points)
    return lat, orbits


def multiplicities(hall_number: int, lattice: np.ndarray, frac: np.ndarray, site_tol: float = SITE_TOL) -> np.ndarray:
    """How many atoms of the full cell each atom of an asymmetric unit becomes (:func:`expand`; 0 if dropped):
    the weights of a unit's composition."""
    return np.array([0 if o is None else len(o) for o in _orbits(hall_number, lattice, frac, site_tol)[1]], dtype=np.int64)


def expand(hall_number: int, lattice: np.ndarray, types: np.ndarray, frac: np.ndarray, site_tol: float = SITE_TOL) -> tuple[Structure, int]:
    """The full conventional cell of an asymmetric unit (``lattice`` parameters ``[6]``, ``types [n]``,
    fractional ``frac [n, 3]``) in the setting ``hall_number``: symmetric metric, special positions, orbits;
    and how many atoms of the unit were dropped because an earlier one already holds their special position
    (two atoms cannot share a site; atoms merely close to each other are kept, for the validity check to judge)."""
    lat, orbits = _orbits(hall_number, lattice, frac, site_tol)
    kept = [(int(z), o) for z, o in zip(np.asarray(types).tolist(), orbits) if o is not None]
    species = [z for z, o in kept for _ in range(len(o))]
    return Structure(lat, species, np.concatenate([o for _, o in kept])), len(orbits) - len(kept)


def _occupied(x: np.ndarray, placed: np.ndarray, tol: float = 1e-4) -> bool:
    """Fractional ``x [3]`` coincides with one of ``placed [m, 3]`` (periodically)."""
    delta = placed - x
    return bool((np.abs(delta - np.round(delta)).max(1) < tol).any())


def asymmetric_token_set(ts: TokenSet, symprec: float = DEFAULT_SYMPREC) -> TokenSet:
    """A crystal's token set -> its asymmetric unit's (meta keeps the crystal's and adds ``hall_number``).
    A structure spglib cannot reduce (degenerate) stays whole in P1."""
    tok = CrystalTokenizer()
    try:
        hall, unit = asymmetric_unit(tok.to_structure(ts), symprec)
    except SciDiTInputError:
        hall, unit = 1, tok.to_structure(ts)
    return tok.from_structure(unit, meta={**ts.meta, HALL_META: hall})


def expand_token_set(ts: TokenSet, hall_number: int, site_tol: float = SITE_TOL) -> TokenSet:
    """An asymmetric unit's token set -> the full crystal's in setting ``hall_number`` (:func:`expand`)."""
    full, dropped = expand(hall_number, ts.lattice.double().numpy(), ts.types.numpy(), ts.frac.double().numpy(), site_tol)
    return CrystalTokenizer().from_structure(full, meta={**ts.meta, HALL_META: int(hall_number), "shared_sites": dropped})
