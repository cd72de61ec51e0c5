"""Crystals <-> token sets: one token per atom of the unit cell.

Each token has its atomic number, fractional coordinates wrapped into [0, 1) and the Cartesian
position in the canonical frame of the lattice parameters (pymatgen's ``Lattice.from_parameters``),
so the token set is fully determined by (lattice parameters, species, fractional coordinates).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from ase import Atoms
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter

from sciDiT.batch import Domain, TokenSet
from sciDiT.errors import SciDiTInputError
from sciDiT.tokenizers.elements import NUM_ELEMENTS


def lattice_matrix(params: torch.Tensor) -> torch.Tensor:
    """Row-vector lattice matrices [..., 3, 3] from parameters [..., 6] (a, b, c, alpha, beta, gamma in degrees).

    Same convention as pymatgen's ``Lattice.from_parameters`` (c along z); differentiable, batched.
    """
    a, b, c = params[..., 0], params[..., 1], params[..., 2]
    al, be, ga = (torch.deg2rad(params[..., i]) for i in (3, 4, 5))
    val = (torch.cos(al) * torch.cos(be) - torch.cos(ga)) / (torch.sin(al) * torch.sin(be))
    gamma_star = torch.arccos(val.clamp(-1.0, 1.0))
    zeros = torch.zeros_like(a)
    va = torch.stack([a * torch.sin(be), zeros, a * torch.cos(be)], dim=-1)
    vb = torch.stack([-b * torch.sin(al) * torch.cos(gamma_star), b * torch.sin(al) * torch.sin(gamma_star), b * torch.cos(al)], dim=-1)
    vc = torch.stack([zeros, zeros, c], dim=-1)
    return torch.stack([va, vb, vc], dim=-2)


class CrystalTokenizer:
    """Encode crystals (pymatgen, ASE, CIF) as token sets and decode them back to pymatgen/ASE/CIF."""

    domain = Domain.CRYSTAL

    # -- encode ---------------------------------------------------------------------------------
    def from_structure(self, structure: Structure, meta: dict | None = None) -> TokenSet:
        """Token set from an ordered pymatgen ``Structure`` (partial occupancies are rejected)."""
        if not structure.is_ordered:
            raise SciDiTInputError(f"disordered structure {structure.composition.reduced_formula} (partial occupancies) cannot be tokenized")
        if len(structure) == 0:
            raise SciDiTInputError("structure has no sites")
        numbers = np.array([site.specie.Z for site in structure], dtype=np.int64)
        if (numbers < 1).any() or (numbers > NUM_ELEMENTS).any():
            raise SciDiTInputError(f"structure contains a non-element species: {structure.composition}")
        lat = structure.lattice
        params = torch.tensor([*lat.abc, *lat.angles], dtype=torch.float64)
        frac = torch.from_numpy(np.mod(structure.frac_coords, 1.0))
        frac = torch.where(frac >= 1.0, frac - 1.0, frac)  # np.mod(-1e-17, 1) == 1.0
        pos = frac @ lattice_matrix(params)
        n = numbers.shape[0]
        return TokenSet(
            types=torch.from_numpy(numbers),
            pos=pos.float(),
            frac=frac.float(),
            values=torch.zeros(n),
            lattice=params.float(),
            domain=self.domain,
            meta=dict(meta or {}),
        )

    def from_ase(self, atoms: Atoms, meta: dict | None = None) -> TokenSet:
        if not atoms.pbc.all():
            raise SciDiTInputError("ASE Atoms for a crystal must be periodic in all three directions")
        return self.from_structure(AseAtomsAdaptor.get_structure(atoms), meta)

    def from_cif(self, text: str, meta: dict | None = None, where: object | None = None) -> TokenSet:
        """Token set from CIF text (first data block); errors name ``where``."""
        structure = parse_cif(text, where)
        try:
            return self.from_structure(structure, meta)
        except SciDiTInputError as err:
            if where is None or err.path is not None:
                raise
            raise SciDiTInputError(str(err), where) from None

    # -- decode ---------------------------------------------------------------------------------
    def to_structure(self, ts: TokenSet) -> Structure:
        params = ts.lattice.double().cpu().tolist()
        lattice = Lattice.from_parameters(*params)
        species = ts.types.cpu().tolist()
        return Structure(lattice, species, ts.frac.double().cpu().numpy(), coords_are_cartesian=False)

    def to_ase(self, ts: TokenSet) -> Atoms:
        return AseAtomsAdaptor.get_atoms(self.to_structure(ts))

    def to_cif(self, ts: TokenSet) -> str:
        return str(CifWriter(self.to_structure(ts)))


def parse_cif(text: str, where: object | None = None) -> Structure:
    """Parse CIF text with pymatgen into a ``Structure``; one-line error on malformed input."""
    if not isinstance(text, str) or "_cell_length_a" not in text:
        raise SciDiTInputError("not a CIF (no _cell_length_a)", where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Structure.from_str(text, fmt="cif")
    except Exception as err:  # pymatgen raises ValueError, KeyError, IndexError... on bad CIFs
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, ZeroDivisionError):  # pymatgen's loop parser on a loop_ header without values
            first = "truncated or incomplete (a loop_ has column names but no complete rows)"
        raise SciDiTInputError(f"malformed CIF: {first}", where) from err
