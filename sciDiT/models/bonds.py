"""Pair head of the all-atom VAE: the bond order of every atom pair, and per-atom formal charges.

Graph generators (SemlaFlow, MiDi, EQGAT-diff) output the molecular graph instead of leaving it to
bond perception from coordinates, which is valid only when every bond length is right within
~0.1 A. This head reads the decoder's per-atom states ``h`` and the decoded positions ``x``:

    logits_ij = MLP([a_i + a_j, a_i * a_j, RBF(|x_i - x_j|)]),   a = W h

Every input is symmetric in (i, j) and the only geometric input is a distance, so the logits are
symmetric, permute with the atoms and do not change when the decoded positions are rotated.
Classes are bond orders 0..3 (none, single, double, triple; kekulized, so aromaticity is derived
when the molecule is sanitized) and formal charges -1, 0, +1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

NUM_BOND_CLASSES = 4  # bond order 0 (none), 1, 2, 3
CHARGE_VALUES = (-1, 0, 1)  # formal charges the charge head can output (QM9: zwitterions, nitro groups)
NUM_CHARGE_CLASSES = len(CHARGE_VALUES)
CHARGE_OFFSET = 1  # class index = formal charge + CHARGE_OFFSET


def distance_rbf(pos: Tensor, num_rbf: int, max_distance: float) -> Tensor:
    """Gaussian radial basis of all pair distances: [B, N, 3] (Angstrom) -> [B, N, N, num_rbf].

    Centres are evenly spaced on [0, max_distance], widths equal to the spacing (0.13 A for 32 on
    [0, 4]: fine enough to tell C-C 1.54 A from C=C 1.34 A and C#C 1.20 A).
    """
    diff = pos[:, :, None, :] - pos[:, None, :, :]  # [B, N, N, 3]; x_j - x_i is exactly -(x_i - x_j)
    dist = diff.square().sum(-1).clamp_min(1e-12).sqrt()  # [B, N, N]
    centres = torch.linspace(0.0, max_distance, num_rbf, device=pos.device, dtype=pos.dtype)  # [R]
    width = max_distance / (num_rbf - 1)
    return torch.exp(-(((dist[..., None] - centres) / width) ** 2))  # [B, N, N, R]


class BondHead(nn.Module):
    """Symmetric pair logits over bond orders and per-atom charge logits from decoder states."""

    def __init__(self, hidden_size: int, pair_size: int = 64, num_rbf: int = 32, max_distance: float = 4.0):
        super().__init__()
        self.num_rbf, self.max_distance = num_rbf, max_distance
        self.atom_proj = nn.Linear(hidden_size, pair_size)
        self.pair_mlp = nn.Sequential(
            nn.Linear(2 * pair_size + num_rbf, pair_size), nn.SiLU(), nn.Linear(pair_size, NUM_BOND_CLASSES)
        )
        self.charge_head = nn.Linear(hidden_size, NUM_CHARGE_CLASSES)

    def forward(self, h: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder states [B, N, D] and positions [B, N, 3] (Angstrom) -> bond logits [B, N, N, 4], charge logits [B, N, 3]."""
        a = self.atom_proj(h)  # [B, N, P]
        pair = torch.cat(
            [a[:, :, None] + a[:, None], a[:, :, None] * a[:, None], distance_rbf(pos.to(a.dtype), self.num_rbf, self.max_distance)],
            dim=-1,
        )  # [B, N, N, 2P + R]
        return self.pair_mlp(pair), self.charge_head(h)  # [B, N, N, 4], [B, N, 3]

    def initialize_weights(self) -> None:
        """Start from 'no bond, neutral' everywhere: most pairs of a molecule are not bonded."""
        nn.init.zeros_(self.pair_mlp[-1].weight)
        with torch.no_grad():
            self.pair_mlp[-1].bias.copy_(torch.tensor([2.0, 0.0, 0.0, 0.0]))
            nn.init.zeros_(self.charge_head.weight)
            self.charge_head.bias.copy_(torch.tensor([0.0, 2.0, 0.0]))
