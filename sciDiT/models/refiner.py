"""Geometry refiner: moves a decoded molecule's atoms to the geometry its decoded graph implies.

Why: the VAE decodes positions to ~0.15 A (RMSD of its reconstructions), while every figure that
re-perceives bonds from coordinates (ADiT's OpenBabel path, EDM's stability, PoseBusters' bond
lengths) needs each bond within a few pm. Of the shipped model's guided molecules 96% have a valid
decoded graph but 0.1% are EDM-stable; minimising the same graphs with MMFF94 makes 79.5% stable
(``experiments/geometry_refiner/README.md``). The refiner is a learned second stage of decoding
that closes this gap without a force field: given elements, formal charges, bond orders and rough
positions, it predicts the positions, trained on real QM9 geometries that the VAE decoded or that
were perturbed by noise (:mod:`sciDiT.training.refiner`).

It is an E(n)-equivariant graph network (EGNN: Satorras, Hoogeboom & Welling, ICML 2021) on the
complete graph of each molecule, each pair carrying its bond order: position updates are sums of
pair difference vectors weighted by invariant messages, so outputs rotate and translate with the
input positions and permute with the atoms; there is no positional index. It knows elements and
bond orders as integers and nothing else of chemistry.

Sections, in data-flow order: pair features -> equivariant layer -> the refiner -> loss -> size registry.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sciDiT.models.attention import xavier_linear_init

NUM_BOND_CLASSES = 5  # pair classes: no bond, single, double, triple, unknown (NO_GRAPH)
UNKNOWN_BOND = 4
NUM_CHARGE_CLASSES = 5  # formal charges -2..+2
CHARGE_OFFSET = 2
MAX_ELEMENT = 119
RBF_RANGE = 5.0  # Angstrom covered by the radial basis
LOCAL_CUTOFF = 2.6  # Angstrom: pairs of the true geometry closer than this get the distance loss (bonds, 1-3 pairs)


#################################################################################
#                                 Pair features                                 #
#################################################################################


def radial_basis(dist: Tensor, num_rbf: int) -> Tensor:
    """Gaussian radial basis of distances ``[...]`` (Angstrom) on ``num_rbf`` centres over [0, RBF_RANGE] -> ``[..., num_rbf]``."""
    centres = torch.linspace(0.0, RBF_RANGE, num_rbf, device=dist.device, dtype=dist.dtype)  # [R]
    width = RBF_RANGE / (num_rbf - 1)
    return torch.exp(-((dist[..., None] - centres) / width).square())  # [..., R]


def bond_classes(bonds: Tensor) -> Tensor:
    """Bond-order matrix ``[B, N, N]`` (0..3, negative = unknown) -> pair classes 0..4 (:data:`UNKNOWN_BOND` for unknown)."""
    return torch.where((bonds >= 0) & (bonds <= 3), bonds, torch.full_like(bonds, UNKNOWN_BOND))


#################################################################################
#                             Equivariant layer                                 #
#################################################################################


class EquivariantLayer(nn.Module):
    """One EGNN layer on a padded complete graph: invariant messages from both atoms, the pair's distance and
    bond order; positions move along the pair differences, atom states by the summed messages."""

    def __init__(self, hidden_size: int, num_rbf: int):
        super().__init__()
        self.num_rbf = num_rbf
        self.src = nn.Linear(hidden_size, hidden_size)
        self.dst = nn.Linear(hidden_size, hidden_size, bias=False)
        self.radial = nn.Linear(num_rbf + 1, hidden_size, bias=False)
        self.bond = nn.Embedding(NUM_BOND_CLASSES, hidden_size)
        self.message = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, hidden_size), nn.SiLU())
        self.coord = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, 1))
        self.norm = nn.LayerNorm(hidden_size)
        self.update = nn.Sequential(nn.Linear(2 * hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, h: Tensor, x: Tensor, pair_class: Tensor, pair_mask: Tensor) -> tuple[Tensor, Tensor]:
        diff = x[:, :, None] - x[:, None]  # [B, N, N, 3]
        dist = diff.square().sum(-1).clamp_min(1e-10).sqrt()  # [B, N, N]
        radial = torch.cat([radial_basis(dist, self.num_rbf), dist[..., None]], dim=-1)  # [B, N, N, R + 1]
        pre = self.src(h)[:, :, None] + self.dst(h)[:, None] + self.radial(radial) + self.bond(pair_class)  # [B, N, N, H]
        m = self.message(pre) * pair_mask[..., None]  # [B, N, N, H]
        x = x + (diff / (dist[..., None] + 1.0) * self.coord(m)).sum(2)  # [B, N, 3]
        h = h + self.update(torch.cat([self.norm(h), m.sum(2) / 8.0], dim=-1))  # [B, N, H]
        return h, x


#################################################################################
#                                 The refiner                                   #
#################################################################################


class GeometryRefiner(nn.Module):
    """Molecule graph + rough positions -> refined positions (Angstrom), E(3)- and permutation-equivariant."""

    def __init__(self, hidden_size: int = 64, depth: int = 4, num_rbf: int = 32):
        super().__init__()
        self.sizes = {"hidden_size": hidden_size, "depth": depth, "num_rbf": num_rbf}  # constructor arguments
        self.element_embed = nn.Embedding(MAX_ELEMENT, hidden_size)
        self.charge_embed = nn.Embedding(NUM_CHARGE_CLASSES, hidden_size)
        self.layers = nn.ModuleList(EquivariantLayer(hidden_size, num_rbf) for _ in range(depth))
        self.initialize_weights()

    def forward(self, types: Tensor, charges: Tensor, bonds: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        """``types [B, N]`` atomic numbers, ``charges [B, N]`` formal charges, ``bonds [B, N, N]`` orders (negative =
        unknown), ``pos [B, N, 3]`` Angstrom, ``mask [B, N]`` real atoms -> refined ``[B, N, 3]`` (padding unchanged)."""
        charge_class = (charges + CHARGE_OFFSET).clamp(0, NUM_CHARGE_CLASSES - 1)  # [B, N]
        h = self.element_embed(types.clamp(0, MAX_ELEMENT - 1)) + self.charge_embed(charge_class)  # [B, N, H]
        eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)  # [N, N]
        pair_mask = (mask[:, :, None] & mask[:, None] & ~eye).to(pos.dtype)  # [B, N, N] real pairs i != j
        pair_class = bond_classes(bonds)  # [B, N, N]
        x = pos  # [B, N, 3]
        for layer in self.layers:
            h, x = layer(h, x, pair_class, pair_mask)  # [B, N, H], [B, N, 3]
        return torch.where(mask[..., None], x, pos)  # [B, N, 3]

    def initialize_weights(self) -> None:
        self.apply(xavier_linear_init)
        for emb in (self.element_embed, self.charge_embed):
            nn.init.normal_(emb.weight, std=1.0)
        for layer in self.layers:
            nn.init.normal_(layer.bond.weight, std=1.0)
            nn.init.zeros_(layer.coord[-1].weight)  # each layer starts as the identity on positions
            nn.init.zeros_(layer.coord[-1].bias)


#################################################################################
#                                     Loss                                      #
#################################################################################


def refiner_loss(pred: Tensor, target: Tensor, mask: Tensor, dist_weight: float = 1.0) -> dict[str, Tensor]:
    """Squared position error (A^2, mean over atoms) and squared error of local distances (pairs of the target closer
    than :data:`LOCAL_CUTOFF`: bonds and 1-3 pairs, which fix bond perception), and ``loss`` = pos + ``dist_weight`` * dist.

    Why weight distances: where a noisy input leaves an atom's direction uncertain, the position term's best answer is
    the average place, which shortens bonds; bond perception from coordinates needs lengths to a few pm."""
    pos = (pred - target).square().sum(-1)  # [B, N]
    d_pred = (pred[:, :, None] - pred[:, None]).square().sum(-1).clamp_min(1e-12).sqrt()  # [B, N, N]
    d_true = (target[:, :, None] - target[:, None]).square().sum(-1).sqrt()  # [B, N, N]
    upper = torch.ones_like(d_true, dtype=torch.bool).triu(1)  # [B, N, N]
    local = mask[:, :, None] & mask[:, None] & upper & (d_true < LOCAL_CUTOFF)  # [B, N, N]
    pos_term = (pos * mask).sum() / mask.sum().clamp_min(1)
    dist_term = ((d_pred - d_true).square() * local).sum() / local.sum().clamp_min(1)
    return {"loss": pos_term + dist_weight * dist_term, "pos": pos_term, "dist": dist_term}


#################################################################################
#                                 Size registry                                 #
#################################################################################

REFINER_SIZES: dict[str, dict[str, int]] = {
    "R-T": dict(hidden_size=32, depth=2, num_rbf=16),  # tests
    "R-S": dict(hidden_size=64, depth=4, num_rbf=32),  # CPU training (the shipped one)
    "R-B": dict(hidden_size=128, depth=6, num_rbf=32),  # GPU
}
