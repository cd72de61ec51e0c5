"""Augmentation and input corruption for the all-atom VAE, on :class:`TokenBatch` (geometry only).

Augmentation changes the frame, not the structure: a random rotation for every set and, for
crystals, a random periodic translation of the fractional coordinates. Corruption (masked atom
types, jittered positions) is applied to the encoder input only, so the VAE learns to denoise.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from sciDiT.batch import Domain, TokenBatch
from sciDiT.tokenizers.crystal import lattice_matrix
from sciDiT.tokenizers.elements import MASK_TYPE


def random_rotations(n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """[n, 3, 3] rotation matrices drawn uniformly from SO(3) (QR of a Gaussian, sign-fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # unique, Haar-distributed
    q[torch.linalg.det(q) < 0, :, 0] *= -1  # reflections -> rotations
    return q.to(dtype)


def augment(batch: TokenBatch, generator: torch.Generator | None = None, rotate: bool = True, translate_crystals: bool = True) -> TokenBatch:
    """Random rigid motion of each set: the augmented batch is the same molecules/crystals in another frame."""
    is_xtal = batch.domain == Domain.CRYSTAL  # [B]
    frac, pos = batch.frac, batch.pos
    if translate_crystals and is_xtal.any():
        shift = torch.rand(batch.batch_size, 1, 3, generator=generator).to(frac) * is_xtal[:, None, None]  # [B, 1, 3]
        frac = torch.where(batch.mask[..., None], torch.remainder(frac + shift, 1.0), frac)  # [B, N, 3]
        xtal_pos = frac.double() @ lattice_matrix(batch.lattice.double())  # [B, N, 3]
        pos = torch.where(is_xtal[:, None, None] & batch.mask[..., None], xtal_pos.to(pos.dtype), pos)
    if rotate:
        rot = random_rotations(batch.batch_size, generator, pos.dtype).to(pos.device)  # [B, 3, 3]
        pos = pos @ rot.transpose(1, 2)  # [B, N, 3]
    return replace(batch, pos=pos, frac=frac)


def corrupt(batch: TokenBatch, type_mask_prob: float, pos_noise: float, generator: torch.Generator | None = None) -> TokenBatch:
    """Encoder input corruption: mask a fraction of atom types, jitter positions by ``pos_noise`` Angstrom.

    For crystals the fractional coordinates receive the same Cartesian jitter (through the inverse
    lattice), so the corrupted input stays self-consistent.
    """
    types, pos, frac = batch.types, batch.pos, batch.frac
    if type_mask_prob > 0:
        drop = (torch.rand(types.shape, generator=generator) < type_mask_prob).to(types.device) & batch.mask
        types = torch.where(drop, torch.full_like(types, MASK_TYPE), types)
    if pos_noise > 0:
        noise = torch.randn(pos.shape, generator=generator).to(pos) * pos_noise * batch.mask[..., None]  # [B, N, 3]
        pos = pos + noise
        is_xtal = (batch.domain == Domain.CRYSTAL)[:, None, None]
        if is_xtal.any():
            inv = torch.linalg.inv(lattice_matrix(batch.lattice.double()).where(is_xtal, torch.eye(3, dtype=torch.float64)))
            frac = torch.where(is_xtal, frac + (noise.double() @ inv).to(frac.dtype), frac)
    return replace(batch, types=types, pos=pos, frac=frac)
