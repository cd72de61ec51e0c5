"""The one batch type every model sees.

A *token set* is an unordered set of tokens with per-token fields and per-set fields. Tokenizers
(``sciDiT.tokenizers``) are the only code that knows what a token means (an atom, a gene); models,
the flow-matching code and the training loops see only :class:`TokenSet` and :class:`TokenBatch`.

Fields (``n`` tokens in a set, ``B`` sets padded to ``N`` tokens in a batch):

==========  ===============  ==================================================================
field       shape            meaning
==========  ===============  ==================================================================
types       [n] long         token identity: atomic number (atoms) or gene index (cells)
pos         [n, 3] float     Cartesian position in Angstrom (zeros for cells)
frac        [n, 3] float     fractional coordinates in [0, 1) (crystals only, else zeros)
values      [n] float        scalar value per token: expression (cells only, else zeros)
lattice     [6] float        a, b, c (Angstrom), alpha, beta, gamma (degrees); zeros if none
domain      int              :class:`Domain`
bonds       [n_bonds, 3]     molecules with a known graph: (i, j, order), i < j, order 1/2/3
            long or None     (single/double/triple, kekulized); None = no graph (crystals, cells)
charges     [n] long / None  formal charge per atom, given with ``bonds`` (None without a graph)
==========  ===============  ==================================================================

In a :class:`TokenBatch` the graph is a dense bond-order matrix ``bonds`` [B, N, N] (0 = no bond,
1/2/3, :data:`NO_GRAPH` = -1 where unknown: sets without a graph, padding, the diagonal) and
``charges`` [B, N] (0 where unknown); both are None when no set of the batch has a graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from enum import IntEnum
from typing import Any

import torch
from torch import Tensor


class Domain(IntEnum):
    """Modality of a token set; also the index of its conditioning embedding."""

    MOLECULE = 0
    CRYSTAL = 1
    CELL = 2


@dataclass
class TokenSet:
    """One molecule, crystal or cell as a set of tokens (see module docstring for fields)."""

    types: Tensor
    pos: Tensor
    frac: Tensor
    values: Tensor
    lattice: Tensor
    domain: Domain
    meta: dict[str, Any] = field(default_factory=dict)
    bonds: Tensor | None = None
    charges: Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.types.shape[0])

    def permute(self, perm: Tensor) -> "TokenSet":
        """The same set with its tokens reordered (a set has no order: models must not care)."""
        bonds, charges = self.bonds, self.charges
        if bonds is not None:
            new_index = torch.empty_like(perm)
            new_index[perm] = torch.arange(len(perm))  # old token k is now token new_index[k]
            ij = new_index[bonds[:, :2]].sort(dim=1).values  # [n_bonds, 2], i < j again
            bonds = torch.cat([ij, bonds[:, 2:]], dim=1)[torch.argsort(ij[:, 0] * len(perm) + ij[:, 1])]  # rows sorted by (i, j)
        if charges is not None:
            charges = charges[perm]
        return replace(self, types=self.types[perm], pos=self.pos[perm], frac=self.frac[perm], values=self.values[perm],
                       bonds=bonds, charges=charges)


NO_GRAPH = -1  # bond-order matrix entry where the graph is unknown (no target, no prediction)


def bond_matrix(bonds: Tensor, n: int) -> Tensor:
    """Bond list [n_bonds, 3] (i, j, order) -> symmetric [n, n] long order matrix (0 = no bond, diagonal NO_GRAPH)."""
    mat = torch.zeros(n, n, dtype=torch.long)
    mat[bonds[:, 0], bonds[:, 1]] = bonds[:, 2]
    mat[bonds[:, 1], bonds[:, 0]] = bonds[:, 2]
    mat.fill_diagonal_(NO_GRAPH)
    return mat


def bond_list(mat: Tensor) -> Tensor:
    """Inverse of :func:`bond_matrix`: the pairs i < j with order > 0 of an [n, n] matrix, as [n_bonds, 3] long."""
    i, j = torch.triu_indices(mat.shape[0], mat.shape[0], offset=1)
    order = mat[i, j]
    keep = order > 0
    return torch.stack([i[keep], j[keep], order[keep]], dim=1).long()


_TOKEN_FIELDS = ("types", "pos", "frac", "values")


@dataclass
class TokenBatch:
    """A padded batch of token sets: ``mask[b, i]`` is True where token ``i`` of set ``b`` is real.

    ``cond`` carries extra per-set conditioning tensors (e.g. perturbation token ids, or the property
    conditions of :mod:`sciDiT.data.conditions`) keyed by name, with ``{name}_null [B]`` bool marking
    the sets that have no value for that condition (the DiT uses its null embedding there);
    ``meta`` keeps the per-set metadata (ids, SMILES) for export and evaluation.
    """

    types: Tensor  # [B, N] long, 0 at padding
    pos: Tensor  # [B, N, 3]
    frac: Tensor  # [B, N, 3]
    values: Tensor  # [B, N]
    mask: Tensor  # [B, N] bool
    lattice: Tensor  # [B, 6]
    domain: Tensor  # [B] long
    cond: dict[str, Tensor] = field(default_factory=dict)
    meta: list[dict[str, Any]] = field(default_factory=list)
    bonds: Tensor | None = None  # [B, N, N] long bond orders, NO_GRAPH where unknown (see module docstring)
    charges: Tensor | None = None  # [B, N] long formal charges (0 where unknown)

    @property
    def has_graph(self) -> Tensor:
        """[B] bool: sets whose bond graph is known (False for all when the batch carries none)."""
        if self.bonds is None:
            return torch.zeros(self.batch_size, dtype=torch.bool, device=self.types.device)
        return (self.bonds != NO_GRAPH).flatten(1).any(1)

    @property
    def batch_size(self) -> int:
        return int(self.types.shape[0])

    @property
    def num_tokens(self) -> Tensor:
        """Real tokens per set, [B] long."""
        return self.mask.sum(dim=1)

    @property
    def padding_fraction(self) -> float:
        """Share of the [B, N] slots that are padding (wasted compute)."""
        return 1.0 - float(self.mask.float().mean())

    def to(self, device: torch.device | str) -> "TokenBatch":
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if isinstance(getattr(self, f.name), Tensor)}
        return replace(self, **moved, cond={k: v.to(device) for k, v in self.cond.items()})

    def unbatch(self) -> list[TokenSet]:
        """Split back into token sets (padding dropped)."""
        out = []
        has_graph = self.has_graph.tolist()
        for b in range(self.batch_size):
            m = self.mask[b]
            known = has_graph[b]
            out.append(
                TokenSet(
                    types=self.types[b][m],
                    pos=self.pos[b][m],
                    frac=self.frac[b][m],
                    values=self.values[b][m],
                    lattice=self.lattice[b],
                    domain=Domain(int(self.domain[b])),
                    meta=self.meta[b] if b < len(self.meta) else {},
                    bonds=bond_list(self.bonds[b][m][:, m]) if known else None,
                    charges=self.charges[b][m] if known else None,
                )
            )
        return out


def collate(sets: list[TokenSet], cond: dict[str, Tensor] | None = None) -> TokenBatch:
    """Pad a list of token sets to the largest one; the default ``collate_fn`` of every loader."""
    if not sets:
        raise ValueError("collate() needs at least one token set")
    n_max = max(s.num_tokens for s in sets)
    bsz = len(sets)
    types = torch.zeros(bsz, n_max, dtype=torch.long)
    pos = torch.zeros(bsz, n_max, 3)
    frac = torch.zeros(bsz, n_max, 3)
    values = torch.zeros(bsz, n_max)
    mask = torch.zeros(bsz, n_max, dtype=torch.bool)
    any_graph = any(s.bonds is not None for s in sets)
    bonds = torch.full((bsz, n_max, n_max), NO_GRAPH, dtype=torch.long) if any_graph else None
    charges = torch.zeros(bsz, n_max, dtype=torch.long) if any_graph else None
    for b, s in enumerate(sets):
        n = s.num_tokens
        types[b, :n] = s.types
        pos[b, :n] = s.pos
        frac[b, :n] = s.frac
        values[b, :n] = s.values
        mask[b, :n] = True
        if any_graph and s.bonds is not None:
            bonds[b, :n, :n] = bond_matrix(s.bonds, n)
            if s.charges is not None:
                charges[b, :n] = s.charges
    return TokenBatch(
        types=types,
        pos=pos,
        frac=frac,
        values=values,
        mask=mask,
        lattice=torch.stack([s.lattice.float() for s in sets]),
        domain=torch.tensor([int(s.domain) for s in sets], dtype=torch.long),
        cond=cond or {},
        meta=[s.meta for s in sets],
        bonds=bonds,
        charges=charges,
    )
