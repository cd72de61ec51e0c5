"""Train the geometry refiner (:mod:`sciDiT.models.refiner`) of a generator, and read / write its file.

    python experiments/geometry_refiner/train_refiner.py qm9_mp20_cpu --minutes 20 --out outputs/refiner.pt

Each step draws real molecules with their graphs and gives the refiner rough positions to correct:
half of each batch as the generator's own VAE decodes them from latents with Gaussian noise of up to
``latent_noise`` latent standard deviations (the errors of decoding a DiT's imperfect latents), the
other half with Gaussian noise of up to ``pos_noise`` Angstrom on the true positions; targets are the true
(DFT) positions, inputs keep the true elements, charges and bond orders. A set may instead carry its own rough
positions (``meta[ROUGH_KEY]``, in the frame of its ``pos``): e.g. a generator's raw decode of a molecule paired with
that molecule minimised by a force field, so that the refiner learns the very errors it meets when sampling. The file is weights-only: the
refiner's sizes and weights, the latent statistics of the VAE whose decodes it learned (checked when
it is loaded beside a generator) and the training facts.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sciDiT.batch import TokenBatch, TokenSet, collate
from sciDiT.checkpoint import build_module, latent_stat_mismatch, load_checkpoint
from sciDiT.errors import SciDiTInputError
from sciDiT.models.latent_diffusion import LatentDiffusion
from sciDiT.models.refiner import REFINER_SIZES, GeometryRefiner, refiner_loss
from sciDiT.models.vae import POS_SCALE
from sciDiT.training.optim import fit

REFINER_KIND = "scidit_geometry_refiner"
ROUGH_KEY = "rough_pos"  # meta key of a set's own rough positions [n, 3] (Angstrom): its input, instead of drawn noise


@torch.no_grad()
def decoded_positions(model: LatentDiffusion, batch: TokenBatch, sigma: Tensor, generator: torch.Generator) -> Tensor:
    """Positions ``[B, N, 3]`` (Angstrom) that ``model``'s VAE decodes from the batch's latents plus Gaussian noise of
    ``sigma [B]`` standardised latent units (the units the DiT samples in), atom by atom in the batch's order."""
    x1 = model.latents(batch)  # [B, N, L] standardised
    x1 = x1 + torch.randn(x1.shape, generator=generator).to(x1.device) * sigma[:, None, None] * batch.mask[..., None]
    z = model.to_vae(x1, batch.domain)  # [B, N, L]
    h = model.vae.decode_states(z, batch.mask, batch.domain)  # [B, N, D]
    return model.vae.pos_head(h).float() * POS_SCALE * batch.mask[..., None]  # [B, N, 3]


def rough_positions(batch: TokenBatch, model: LatentDiffusion | None, latent_noise: float, pos_noise: float,
                    generator: torch.Generator) -> Tensor:
    """The refiner's inputs ``[B, N, 3]`` for a batch of real molecules: the first half decoded by ``model``'s VAE
    (latent noise ~ U[0, ``latent_noise``]), the rest the true positions plus noise of U[0, ``pos_noise``] Angstrom
    per molecule (all of the batch when ``model`` is None); a set with rough positions of its own
    (``meta[ROUGH_KEY]``) gets those."""
    b = batch.mask.shape[0]
    n_vae = b // 2 if model is not None else 0
    sigma = torch.rand(b, generator=generator).to(batch.pos.device)  # [B]
    noise = torch.randn(batch.pos.shape, generator=generator).to(batch.pos.device)  # [B, N, 3]
    pos = batch.pos + noise * (sigma * pos_noise)[:, None, None]  # [B, N, 3]
    if n_vae:
        part = replace(batch, **{f: getattr(batch, f)[:n_vae] for f in ("types", "pos", "frac", "values", "mask", "lattice", "domain")},
                       bonds=None, charges=None, cond={}, meta=batch.meta[:n_vae])
        pos[:n_vae] = decoded_positions(model, part, sigma[:n_vae] * latent_noise, generator)
    for i, meta in enumerate(batch.meta):
        if ROUGH_KEY in meta:
            rough = torch.as_tensor(meta[ROUGH_KEY], dtype=pos.dtype, device=pos.device)  # [n, 3]
            pos[i, : len(rough)] = rough
    return pos * batch.mask[..., None]


def train_refiner(sets: Sequence[TokenSet], model: LatentDiffusion | None = None, *, size: str = "R-S", batch_size: int = 64,
                  lr: float = 1e-3, steps: int = 100_000, minutes: float = 20.0, latent_noise: float = 0.5, pos_noise: float = 0.3,
                  dist_weight: float = 10.0, bf16: bool = False, device: str = "cpu", seed: int = 0, log_every: int = 200,
                  init: GeometryRefiner | None = None, weights: Sequence[float] | None = None,
                  rounds: int = 1) -> tuple[GeometryRefiner, dict[str, Any]]:
    """A refiner trained on molecules ``sets`` (each with its graph) to restore their positions from rough ones
    (:func:`rough_positions`; ``model``: the generator whose VAE decodes half of each batch), by :func:`refiner_loss` with
    ``dist_weight`` on the local distances. ``bf16``: the network's
    matrix products in bfloat16 autocast (positions and the loss stay float32). Random draws come from one seeded CPU
    generator, so a seed gives the same batches and noise on every ``device``. ``init``: a trained refiner to continue
    from (a copy; its sizes replace ``size``), e.g. to widen the noise it learned on. ``weights``: relative chance of each
    set to be drawn (default uniform), e.g. to give a small set of extra molecules a fixed share of each batch.
    ``rounds``: passes per step, each reading the last one's positions, with the loss on the last (trained unrolled, as
    decoding refines :data:`sciDiT.models.vae.REFINE_PASSES` times)."""
    if any(ts.bonds is None for ts in sets):
        raise SciDiTInputError("the refiner trains on molecules with a known graph; some sets have none")
    torch.manual_seed(seed)
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    p = None if weights is None else np.asarray(weights, dtype=float) / np.sum(weights)
    refiner = (GeometryRefiner(**REFINER_SIZES[size]) if init is None else copy.deepcopy(init).train()).to(device)
    if model is not None:
        model.to(device).eval()

    def batch_loss() -> Tensor:
        batch = collate([sets[i] for i in rng.choice(len(sets), batch_size, replace=False, p=p)]).to(device)
        rough = rough_positions(batch, model, latent_noise, pos_noise, gen)  # [B, N, 3]
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            pred = rough  # [B, N, 3]
            for _ in range(rounds):
                pred = refiner(batch.types, batch.charges, batch.bonds, pred, batch.mask).float()  # [B, N, 3]
        return refiner_loss(pred, batch.pos, batch.mask, dist_weight)["loss"]

    facts = fit(refiner, batch_loss, lr=lr, steps=steps, minutes=minutes, log_every=log_every, name="loss")
    size = size if init is None else size_name(REFINER_SIZES, refiner.sizes)
    return refiner.cpu(), {**facts, "batch_size": batch_size, "size": size, "continued": init is not None, "train_sets": len(sets), "latent_noise": latent_noise,
                     "pos_noise": pos_noise, "dist_weight": dist_weight, "rounds": rounds, "bf16": bf16}


@torch.no_grad()
def refine_batch(refiner: GeometryRefiner, batch: TokenBatch) -> Tensor:
    """Refined positions ``[B, N, 3]`` of a batch of molecules with their graphs."""
    return refiner(batch.types, batch.charges, batch.bonds, batch.pos.float(), batch.mask)


# ----------------------------------------------------------------------------------------------
# The file
# ----------------------------------------------------------------------------------------------


def save_refiner(path: str | Path, refiner: GeometryRefiner, latent_mean: Tensor, latent_std: Tensor, info: dict[str, Any]) -> Path:
    """Write the weights-only refiner file (atomically)."""
    return write_refiner_file(path, REFINER_KIND, refiner, latent_mean, latent_std, info)


def write_refiner_file(path: str | Path, kind: str, refiner: torch.nn.Module, latent_mean: Tensor, latent_std: Tensor,
                       info: dict[str, Any]) -> Path:
    """Write a weights-only refiner file of ``kind`` (atomically): its sizes (``refiner.sizes``) and weights, the latent
    statistics of the VAE whose decodes it learned, and the training facts ``info``; :func:`refiner_file` reads it."""
    from sciDiT.training.checkpoint import atomic_torch_save

    contents = {"kind": kind, "hparams": dict(refiner.sizes), "latent_mean": latent_mean.detach().cpu().float(),
                "latent_std": latent_std.detach().cpu().float(), "state_dict": refiner.state_dict(), "info": info}
    return atomic_torch_save(contents, path)


def load_refiner(path: str | Path, latent_mean: Tensor, latent_std: Tensor,
                 packed_key: str | None = None) -> tuple[GeometryRefiner, dict[str, Any]]:
    """The refiner of ``path`` (eval mode) and its contents; one line naming the file for a file of another kind or
    one that learned the decodes of another VAE than that of ``latent_mean`` / ``latent_std``. ``packed_key``: ``path``
    may also be a model file that packs a refiner in that section (checked against the model's latent statistics)."""
    raw = refiner_file(path, REFINER_KIND, "geometry refiner", "experiments/geometry_refiner/train_refiner.py", latent_mean, latent_std,
                       packed_key)
    return packed_refiner(raw, path), raw


def size_name(registry: dict[str, dict[str, Any]], sizes: dict[str, Any]) -> str:
    """The registry's name for a network of these sizes (``"custom"`` if none): what a continued refiner records."""
    return next((name for name, entry in registry.items() if all(sizes.get(k) == v for k, v in entry.items())), "custom")


def refiner_file(path: str | Path, kind: str, what: str, script: str, latent_mean: Tensor, latent_std: Tensor,
                 packed_key: str | None) -> dict[str, Any]:
    """The contents of a refiner file of ``kind`` (a ``what``, trained by ``script``), or of the section ``packed_key`` of
    a model file; one line naming the file for another kind or for the decodes of another VAE than ``latent_mean`` /
    ``latent_std``'s (a refiner learns one VAE decoder's errors)."""
    raw = load_checkpoint(path, what)
    if packed_key is not None and packed_key in raw:
        stats = {k: raw["state_dict"][f"model.{k}"] for k in ("latent_mean", "latent_std")}
        raw = {**raw[packed_key], **stats, "kind": kind}
    if raw.get("kind") != kind:
        raise SciDiTInputError(f"not a {what} file (train one with {script})", path)
    mismatch = latent_stat_mismatch(latent_mean.detach().cpu().float(), latent_std.detach().cpu().float(), raw["latent_mean"],
                                    raw["latent_std"]) if raw["latent_mean"].shape == latent_mean.shape else "another latent width"
    if mismatch:
        raise SciDiTInputError(f"it learned the decodes of another VAE than the model's ({mismatch}): train it on this model", path)
    return raw


def packed_refiner(entry: dict[str, Any], source: str | Path) -> GeometryRefiner:
    """The refiner of a file or of a section packed in a shipped model (sizes and weights), in float32 and eval mode;
    ``source`` names the file in errors."""
    return build_module(GeometryRefiner, entry["hparams"], entry["state_dict"], source)  # type: ignore[return-value]
