"""Crystal refiner: a learned second stage of decoding that restores a decoded crystal's types, sites and cell.

Why: the VAE decodes the latents of real MP-20 crystals to 87% SMACT-valid compositions and 100% structurally
valid cells, but the same latents with Gaussian noise of 0.1 standardised units (less than a DiT's error) fall to
75% SMACT, and at 0.5 units 7% of the cells hold two atoms closer than 0.5 A: the decoder reads each token's
element and site alone, and a small error of one token's latent becomes a stray element (a chemical neighbour,
breaking charge balance) or an atom on top of another (``experiments/crystal_refiner/README.md``). The refiner
sees the whole decoded crystal at once: every token's element distribution, the fractional offsets to every other
token and the cell, and predicts the crystal the decoder meant, trained on real MP-20 crystals decoded from noisy
latents (:mod:`sciDiT.training.crystal_refiner`). It knows elements as indices and nothing of chemistry: no
oxidation states, no charge-balance rule.

Symmetries: sites move by sums over pairs of periodic functions of the fractional offsets (sine series), so
outputs permute with the atoms, shift with a common translation of all sites, are continuous across the
periodic wrap, and do not change under a rotation of the Cartesian frame (frac and cell parameters are
frame-free); there is no positional index.

Sections, in data-flow order: pair features -> periodic layer -> the refiner -> loss -> size registry.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciDiT.models.attention import masked_mean, xavier_linear_init
from sciDiT.models.refiner import radial_basis
from sciDiT.models.vae import element_log_probs, features_to_lattice

# the 27 cell translations (-1, 0, 1)^3 that hold every site's nearest image in a cell of sane shape
IMAGES = torch.tensor([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=torch.float32)
LOCAL_CUTOFF = 3.5  # Angstrom: pairs of the true crystal closer than this get the distance loss (first shells)


#################################################################################
#                                 Pair features                                 #
#################################################################################


def metric_tensor(lattice_feat: Tensor) -> Tensor:
    """The VAE's normalised cell features ``[B, 6]`` -> metric tensors ``G_ij = a_i . a_j`` ``[B, 3, 3]`` (A^2).

    The metric, not a lattice matrix: distances need only lengths and angle cosines (no arccos, whose gradient is
    infinite at a flat cell), and it is free of any Cartesian frame."""
    params = features_to_lattice(lattice_feat)  # [B, 6] a, b, c, alpha, beta, gamma
    a, cos = params[:, :3], torch.cos(torch.deg2rad(params[:, 3:]))  # [B, 3] x 2
    one = torch.ones_like(cos[:, 0])
    cosines = torch.stack([torch.stack([one, cos[:, 2], cos[:, 1]], -1), torch.stack([cos[:, 2], one, cos[:, 0]], -1),
                           torch.stack([cos[:, 1], cos[:, 0], one], -1)], -2)  # [B, 3, 3]
    return a[:, :, None] * a[:, None, :] * cosines


def wrapped_offsets(frac: Tensor) -> Tensor:
    """Fractional offsets ``frac_j - frac_i`` of all pairs, wrapped to [-0.5, 0.5): ``[B, N, 3] -> [B, N, N, 3]``."""
    d = frac[:, None] - frac[:, :, None]  # [B, N, N, 3]
    return d - torch.round(d)


def image_distances(offsets: Tensor, metric: Tensor) -> Tensor:
    """Shortest distance (Angstrom) over the 27 nearest images of each pair: offsets ``[B, N, N, 3]``, metric tensors
    ``[B, 3, 3]`` -> ``[B, N, N]`` (continuous across the wrap: a minimum of smooth maps)."""
    images = offsets[..., None, :] + IMAGES.to(offsets)  # [B, N, N, 27, 3]
    sq = torch.einsum("bijmk,bkl,bijml->bijm", images, metric, images)  # [B, N, N, 27]
    return sq.amin(-1).clamp_min(1e-10).sqrt()  # [B, N, N]


def fourier_offsets(offsets: Tensor, num_freqs: int) -> Tensor:
    """sin / cos(2 pi k d), k = 1..K of offsets ``[..., 3]`` -> ``[..., 6K]``: periodic, so blind to the wrap."""
    k = torch.arange(1, num_freqs + 1, device=offsets.device, dtype=offsets.dtype)  # [K]
    angles = 2 * math.pi * offsets[..., None] * k  # [..., 3, K]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # [..., 6K]


#################################################################################
#                                 Periodic layer                                #
#################################################################################


class PeriodicLayer(nn.Module):
    """Messages between all pairs of a cell from both atoms' states, the pair's shortest image distance and its
    periodic offset features; sites move by a learned sine series of the offsets, ``sum_j sum_k a_k(m_ij)
    sin(2 pi k d_ij) / (2 pi k)`` per axis (odd and periodic: no jump where an offset wraps), states by the summed
    messages."""

    def __init__(self, hidden_size: int, num_rbf: int, num_freqs: int):
        super().__init__()
        self.num_rbf, self.num_freqs = num_rbf, num_freqs
        self.src = nn.Linear(hidden_size, hidden_size)
        self.dst = nn.Linear(hidden_size, hidden_size, bias=False)
        self.radial = nn.Linear(num_rbf + 1, hidden_size, bias=False)
        self.periodic = nn.Linear(6 * num_freqs, hidden_size, bias=False)
        self.message = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, hidden_size), nn.SiLU())
        self.coord = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, 3 * num_freqs))
        self.norm = nn.LayerNorm(hidden_size)
        self.update = nn.Sequential(nn.Linear(2 * hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, h: Tensor, frac: Tensor, metric: Tensor, pair_mask: Tensor) -> tuple[Tensor, Tensor]:
        d = wrapped_offsets(frac)  # [B, N, N, 3]
        dist = image_distances(d, metric)  # [B, N, N]
        radial = torch.cat([radial_basis(dist, self.num_rbf), dist[..., None]], dim=-1)  # [B, N, N, R + 1]
        pre = self.src(h)[:, :, None] + self.dst(h)[:, None] + self.radial(radial) + self.periodic(fourier_offsets(d, self.num_freqs))  # [B, N, N, H]
        m = self.message(pre) * pair_mask[..., None]  # [B, N, N, H]
        k = torch.arange(1, self.num_freqs + 1, device=frac.device, dtype=frac.dtype)  # [K]
        series = torch.sin(2 * math.pi * d[..., None] * k) / (2 * math.pi * k)  # [B, N, N, 3, K]
        coeff = self.coord(m).unflatten(-1, (3, self.num_freqs))  # [B, N, N, 3, K]
        frac = frac + (series * coeff).sum((2, 4))  # [B, N, 3]
        h = h + self.update(torch.cat([self.norm(h), m.sum(2) / 8.0], dim=-1))  # [B, N, H]
        return h, frac


#################################################################################
#                                 The refiner                                   #
#################################################################################


class CrystalRefiner(nn.Module):
    """Decoded crystal (per-token element log-probabilities, fractional sites, cell features) -> refined element
    logits, sites and cell features; starts as the identity (zero-initialised output layers)."""

    def __init__(self, num_types: int, hidden_size: int = 64, depth: int = 4, num_rbf: int = 32, num_freqs: int = 4,
                 rounds: int = 1):
        super().__init__()
        self.sizes = {"num_types": num_types, "hidden_size": hidden_size, "depth": depth, "num_rbf": num_rbf, "num_freqs": num_freqs}
        self.set_rounds(rounds)
        self.type_embed = nn.Linear(num_types, hidden_size, bias=False)  # element probabilities -> state (a soft embedding)
        self.lattice_embed = nn.Linear(6, hidden_size)
        self.layers = nn.ModuleList(PeriodicLayer(hidden_size, num_rbf, num_freqs) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden_size)
        self.type_head = nn.Linear(hidden_size, num_types)
        self.lattice_head = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, 6))
        self.initialize_weights()

    @property
    def rounds(self) -> int:
        """Passes per call (kept with the sizes, so a file keeps them)."""
        return self.sizes["rounds"]

    def set_rounds(self, rounds: int) -> None:
        """Apply the network ``rounds`` times per call, each pass reading the last one's crystal (a refiner is trained
        for the rounds it is used with: ``train_crystal_refiner(rounds=...)``)."""
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds}")
        self.sizes["rounds"] = rounds

    def forward(self, type_log_probs: Tensor, frac: Tensor, lattice_feat: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``type_log_probs [B, N, T]``, ``frac [B, N, 3]``, ``lattice_feat [B, 6]`` (the VAE's normalised cell
        features, :func:`sciDiT.models.vae.lattice_to_features`), ``mask [B, N]`` -> refined type logits
        ``[B, N, T]``, sites ``[B, N, 3]`` in [0, 1) and cell features ``[B, 6]``, after :attr:`rounds` passes."""
        logits, frac, lattice_feat = self.refine_once(type_log_probs, frac, lattice_feat, mask)  # [B, N, T], [B, N, 3], [B, 6]
        for _ in range(self.rounds - 1):  # each further pass reads the last one's distribution, sites and cell
            logits, frac, lattice_feat = self.refine_once(element_log_probs(logits), frac, lattice_feat, mask)
        return logits, frac, lattice_feat

    def refine_once(self, type_log_probs: Tensor, frac: Tensor, lattice_feat: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One pass of the network (shapes as :meth:`forward`)."""
        h = self.type_embed(type_log_probs.exp()) + self.lattice_embed(lattice_feat)[:, None]  # [B, N, H]
        metric = metric_tensor(lattice_feat)  # [B, 3, 3] A^2
        eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)  # [N, N]
        pair_mask = (mask[:, :, None] & mask[:, None] & ~eye).to(frac.dtype)  # [B, N, N] real pairs i != j
        x = frac  # [B, N, 3]
        for layer in self.layers:
            h, x = layer(h, x, metric, pair_mask)  # [B, N, H], [B, N, 3]
        h = self.out_norm(h)  # [B, N, H]
        logits = type_log_probs + self.type_head(h)  # [B, N, T] a correction of the decoder's distribution
        lattice_feat = lattice_feat + self.lattice_head(masked_mean(h, mask))  # [B, 6]
        frac = torch.where(mask[..., None], torch.remainder(x, 1.0), frac)  # [B, N, 3]
        return logits, frac, lattice_feat

    def initialize_weights(self) -> None:
        self.apply(xavier_linear_init)
        nn.init.normal_(self.type_embed.weight, std=1.0)
        for head in (self.type_head, self.lattice_head[-1], *(layer.coord[-1] for layer in self.layers)):
            nn.init.zeros_(head.weight)  # identity at the start: decoder's types, sites and cell unchanged
            nn.init.zeros_(head.bias)


#################################################################################
#                                     Loss                                      #
#################################################################################


def crystal_refiner_loss(logits: Tensor, frac: Tensor, lattice_feat: Tensor, target_types: Tensor, target_frac: Tensor,
                         target_lattice_feat: Tensor, mask: Tensor, dist_weight: float = 1.0) -> dict[str, Tensor]:
    """Cross-entropy of elements; squared Cartesian error (A^2, in the true cell) of the sites after removing the
    crystal's mean fractional shift (a common translation is no error); squared error of the cell features; and the
    squared error of the shortest-image distances of pairs closer than :data:`LOCAL_CUTOFF` in the true crystal, in
    the predicted cell (what structural validity reads: atoms on top of each other). ``loss`` = types + sites + cell +
    ``dist_weight`` * distances."""
    m = mask.to(frac.dtype)  # [B, N]
    atoms = m.sum().clamp_min(1)
    true_metric, pred_metric = metric_tensor(target_lattice_feat), metric_tensor(lattice_feat)  # [B, 3, 3] x 2
    disp = frac - target_frac
    disp = disp - torch.round(disp)  # [B, N, 3] wrapped
    disp = disp - (disp * m[..., None]).sum(1, keepdim=True) / m.sum(1).clamp_min(1)[:, None, None]  # [B, N, 3]
    sites = torch.einsum("bnk,bkl,bnl->bn", disp, true_metric, disp)  # [B, N] squared Cartesian length
    eye = torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)  # [N, N]
    d_true = image_distances(wrapped_offsets(target_frac), true_metric)  # [B, N, N]
    local = mask[:, :, None] & mask[:, None] & ~eye & (d_true < LOCAL_CUTOFF)  # [B, N, N]
    d_pred = image_distances(wrapped_offsets(frac), pred_metric)  # [B, N, N]
    terms = {"types": F.cross_entropy(logits[mask], target_types[mask]), "sites": (sites * m).sum() / atoms,
             "lattice": (lattice_feat - target_lattice_feat).square().sum(-1).mean(),
             "dist": ((d_pred - d_true).square() * local).sum() / local.sum().clamp_min(1)}
    return {"loss": terms["types"] + terms["sites"] + terms["lattice"] + dist_weight * terms["dist"], **terms}


#################################################################################
#                                 Size registry                                 #
#################################################################################

CRYSTAL_REFINER_SIZES: dict[str, dict[str, int]] = {
    "CR-T": dict(hidden_size=32, depth=2, num_rbf=16, num_freqs=2),  # tests
    "CR-S": dict(hidden_size=64, depth=4, num_rbf=32, num_freqs=4),  # CPU training
    "CR-M": dict(hidden_size=128, depth=4, num_rbf=32, num_freqs=4),
    "CR-B": dict(hidden_size=256, depth=6, num_rbf=32, num_freqs=4),  # GPU
}
