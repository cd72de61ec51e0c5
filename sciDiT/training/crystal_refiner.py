"""Train the crystal refiner (:mod:`sciDiT.models.crystal_refiner`) of a generator, and read / write its file.

    python experiments/crystal_refiner/train_crystal_refiner.py qm9_mp20_cpu --minutes 20 --out outputs/crystal_refiner.pt

Each step draws real crystals and gives the refiner what the generator's own VAE decodes from their latents plus
Gaussian noise of up to ``latent_noise`` latent standard deviations (the errors of decoding a DiT's imperfect
latents): per-token element distributions, fractional sites and the cell. Targets are the true crystal's elements,
sites and cell, token by token. The file is weights-only: the refiner's sizes and weights, the latent statistics of
the VAE whose decodes it learned (checked when it is loaded beside a generator) and the training facts.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sciDiT.batch import Domain, TokenBatch, TokenSet, collate
from sciDiT.checkpoint import build_module
from sciDiT.errors import SciDiTInputError
from sciDiT.models.crystal_refiner import CRYSTAL_REFINER_SIZES, CrystalRefiner, crystal_refiner_loss
from sciDiT.models.latent_diffusion import LatentDiffusion
from sciDiT.models.vae import circle_to_frac, element_log_probs, lattice_to_features
from sciDiT.tokenizers.elements import NUM_ATOM_TYPES
from sciDiT.training.optim import fit
from sciDiT.training.refiner import refiner_file, size_name, write_refiner_file

CRYSTAL_REFINER_KIND = "scidit_crystal_refiner"


@torch.no_grad()
def decoded_crystals(model: LatentDiffusion, batch: TokenBatch, sigma: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """What ``model``'s VAE decodes from the batch's latents plus Gaussian noise of ``sigma [B]`` standardised units:
    element log-probabilities ``[B, N, T]``, fractional sites ``[B, N, 3]`` and cell features ``[B, 6]``, token by token
    in the batch's order."""
    x1 = model.latents(batch)  # [B, N, L] standardised
    x1 = x1 + torch.randn(x1.shape, generator=generator).to(x1.device) * sigma[:, None, None] * batch.mask[..., None]
    z = model.to_vae(x1, batch.domain)  # [B, N, L]
    type_logits, _, frac, lattice_feat = model.vae.decode(z, batch.mask, batch.domain)
    return element_log_probs(type_logits), circle_to_frac(frac.float()), lattice_feat.float()


def overlap_atoms(frac: Tensor, mask: Tensor, share: float, generator: torch.Generator, jitter: float = 0.02) -> Tensor:
    """``frac [B, N, 3]`` with, in a ``share`` of the crystals, one atom moved onto another atom's site plus Gaussian
    jitter of ``jitter`` (fractional units): the DiT's main structural failure (two atoms of a cell within 0.5 A, one of
    them off its site), which Gaussian latent noise rarely makes. The moved atom keeps its element distribution; its
    target stays its true site. Sets are left-aligned (padding at the end)."""
    frac = frac.clone()
    sizes = mask.sum(1)  # [B]
    chosen = (torch.rand(frac.shape[0], generator=generator) < share).to(mask.device) & (sizes >= 2)  # [B]
    for b in chosen.nonzero().flatten().tolist():
        i, j = torch.randperm(int(sizes[b]), generator=generator)[:2].tolist()
        frac[b, i] = torch.remainder(frac[b, j] + torch.randn(3, generator=generator).to(frac) * jitter, 1.0)
    return frac


def size_batches(sizes: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of index batches of similar set sizes (little padding: pair features cost N^2), in random order: a
    shuffle, stably sorted by size, cut into ``batch_size`` chunks (the remainder waits for the next epoch)."""
    order = rng.permutation(len(sizes))
    order = order[np.argsort(sizes[order], kind="stable")]
    chunks = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    return [chunks[i] for i in rng.permutation(len(chunks))]


def train_crystal_refiner(sets: Sequence[TokenSet], model: LatentDiffusion, *, size: str = "CR-S", batch_size: int = 64,
                          lr: float = 1e-3, steps: int = 100_000, minutes: float = 20.0, latent_noise: float = 0.6,
                          dist_weight: float = 1.0, overlap_share: float = 0.0, rounds: int = 1,
                          init: CrystalRefiner | None = None, bf16: bool = False, device: str = "cpu", seed: int = 0,
                          log_every: int = 200) -> tuple[CrystalRefiner, dict[str, Any]]:
    """A refiner trained on crystals ``sets`` to restore their elements, sites and cells from ``model``'s VAE decodes of
    their latents at noise ~ U[0, ``latent_noise``] per crystal (:func:`decoded_crystals`), and in ``overlap_share`` of
    them one atom put onto another's site (:func:`overlap_atoms`), by
    :func:`~sciDiT.models.crystal_refiner.crystal_refiner_loss` of the output after ``rounds`` passes (the passes it will
    make when decoding; saved with its sizes). ``init``: a trained refiner to continue from (a copy;
    its sizes replace ``size``). ``bf16``: the network's matrix products in bfloat16
    autocast (inputs and the loss stay float32). Random draws come from one seeded CPU generator."""
    if any(ts.domain != Domain.CRYSTAL for ts in sets):
        raise SciDiTInputError("the crystal refiner trains on crystals; some sets are not")
    torch.manual_seed(seed)
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    refiner = (CrystalRefiner(NUM_ATOM_TYPES, **CRYSTAL_REFINER_SIZES[size]) if init is None else copy.deepcopy(init)).to(device).train()
    refiner.set_rounds(rounds)
    if init is not None:
        size = size_name(CRYSTAL_REFINER_SIZES, refiner.sizes)
    model.to(device).eval()

    sizes, queue = np.array([ts.num_tokens for ts in sets]), []

    def batch_loss() -> Tensor:
        if not queue:
            queue.extend(size_batches(sizes, batch_size, rng))
        batch = collate([sets[i] for i in queue.pop()]).to(device)
        sigma = torch.rand(batch.batch_size, generator=gen).to(device) * latent_noise  # [B]
        log_probs, frac, lattice_feat = decoded_crystals(model, batch, sigma, gen)
        if overlap_share > 0:
            frac = overlap_atoms(frac, batch.mask, overlap_share, gen)
        target_feat = lattice_to_features(batch.lattice, torch.ones(batch.batch_size, device=device))  # [B, 6]
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            out = refiner(log_probs, frac, lattice_feat, batch.mask)
        logits, frac_out, feat_out = (t.float() for t in out)
        return crystal_refiner_loss(logits, frac_out, feat_out, batch.types, batch.frac, target_feat, batch.mask, dist_weight)["loss"]

    facts = fit(refiner, batch_loss, lr=lr, steps=steps, minutes=minutes, log_every=log_every, name="loss")
    return refiner.cpu(), {**facts, "batch_size": batch_size, "size": size, "train_sets": len(sets),
                           "latent_noise": latent_noise, "dist_weight": dist_weight,
                           "overlap_share": overlap_share, "rounds": rounds, "continued": init is not None, "bf16": bf16}


# ----------------------------------------------------------------------------------------------
# The file
# ----------------------------------------------------------------------------------------------


def save_crystal_refiner(path: str | Path, refiner: CrystalRefiner, latent_mean: Tensor, latent_std: Tensor, info: dict[str, Any]) -> Path:
    """Write the weights-only crystal refiner file (atomically)."""
    return write_refiner_file(path, CRYSTAL_REFINER_KIND, refiner, latent_mean, latent_std, info)


def load_crystal_refiner(path: str | Path, latent_mean: Tensor, latent_std: Tensor,
                         packed_key: str | None = None) -> tuple[CrystalRefiner, dict[str, Any]]:
    """The crystal refiner of ``path`` (eval mode) and its contents; one line naming the file for a file of another
    kind or one that learned the decodes of another VAE than that of ``latent_mean`` / ``latent_std``.
    ``packed_key``: ``path`` may also be a model file that packs one in that section."""
    raw = refiner_file(path, CRYSTAL_REFINER_KIND, "crystal refiner", "experiments/crystal_refiner/train_crystal_refiner.py",
                       latent_mean, latent_std, packed_key)
    return packed_crystal_refiner(raw, path), raw


def packed_crystal_refiner(entry: dict[str, Any], source: str | Path) -> CrystalRefiner:
    """The crystal refiner of a file or of a packed section (sizes and weights), float32, eval mode; ``source`` names
    the file in errors."""
    return build_module(CrystalRefiner, entry["hparams"], entry["state_dict"], source)  # type: ignore[return-value]
