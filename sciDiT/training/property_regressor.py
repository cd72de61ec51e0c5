"""Train a noisy-latent property regressor for classifier guidance, and read / write its file.

    python experiments/property_guidance/train_regressor.py qm9_mp20_cpu --properties gap --minutes 10 \\
        --out outputs/property_guidance/qm9_gap.pt

The regressor (:class:`sciDiT.models.property_regressor.LatentPropertyRegressor`) learns ``p(y | x_t)``
on the latents of a generator's own VAE: the training molecules are encoded once by that VAE
(standardised as the DiT sees them), then noised along the flow path at a uniform random time each
step, and the Gaussian negative log-likelihood of the standardised properties is minimised. Any DiT
on the same VAE can then be steered with it (:class:`sciDiT.flow.PropertyGuidance`,
``load_generator(..., property_guide=FILE)``, ``python -m sciDiT.sample ... property_guide=FILE
condition.gap=6.5``). The experiment script trains it on half B of the QM9 train split
(:func:`sciDiT.data.qm9.edm_property_halves`), the generator's half of EDM's conditional protocol, so
the half-A predictors of ``sciDiT.evaluate`` judge it on data it never saw.

The file is weights-only (``torch.load(weights_only=True)``): the regressor's sizes and weights, the
property names, their statistics and training ranges with the tables of set sizes given each value
(:func:`sciDiT.data.conditions.condition_stats`, the same that a conditional checkpoint carries, so
requests are validated and sized alike), the latent statistics of the VAE it was trained on (checked
against the generator's when loaded), and the training facts (steps, seconds, test errors).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sciDiT.batch import collate
from sciDiT.checkpoint import load_checkpoint
from sciDiT.errors import SciDiTInputError
from sciDiT.models.latent_diffusion import LatentDiffusion
from sciDiT.models.property_regressor import REGRESSOR_SIZES, LatentPropertyRegressor, gaussian_nll

FILE_KIND = "scidit_property_regressor"
LATENT_STAT_TOLERANCE = 0.05  # as sciDiT.pretrained: latent mean shift (in stds) and |log std ratio| that still count as the same latents


# ----------------------------------------------------------------------------------------------
# Data: a generator's standardised latents of token sets
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_sets(model: LatentDiffusion, sets: Sequence[Any], batch_size: int = 512) -> list[Tensor]:
    """The standardised latents ``[n_i, L]`` of each token set (what the DiT samples), in order."""
    model.eval()
    out: list[Tensor] = []
    for start in range(0, len(sets), batch_size):
        batch = collate(list(sets[start : start + batch_size]))
        x1 = model.latents(batch)  # [b, N, L]
        out.extend(x1[b, batch.mask[b]].clone() for b in range(x1.shape[0]))
    return out


def pad_latents(latents: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Padded ``[B, N, L]`` latents and their mask ``[B, N]``."""
    n_max = max(len(x) for x in latents)
    x = torch.zeros(len(latents), n_max, latents[0].shape[-1])
    mask = torch.zeros(len(latents), n_max, dtype=torch.bool)
    for b, lat in enumerate(latents):
        x[b, : len(lat)], mask[b, : len(lat)] = lat, True
    return x, mask


def noised(x1: Tensor, mask: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``x_t = (1 - t) x0 + t x1`` with Gaussian ``x0`` (zeros at padding), ``t [B]``."""
    x0 = torch.randn(x1.shape, generator=generator) * mask[..., None]  # [B, N, L]
    tt = t.view(-1, 1, 1)  # [B, 1, 1]
    return (1.0 - tt) * x0 + tt * x1  # [B, N, L]


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def train_regressor(latents: Sequence[Tensor], targets: np.ndarray, *, size: str = "R-T", batch_size: int = 128, lr: float = 1e-3,
                    steps: int = 100_000, minutes: float = 10.0, seed: int = 0, log_every: int = 500) -> tuple[LatentPropertyRegressor, dict[str, Any]]:
    """A regressor trained on ``latents`` (one ``[n_i, L]`` per set) and standardised ``targets [S, P]`` (NaN = unknown).

    AdamW, cosine decay over ``steps`` or ``minutes`` of wall time (whichever ends first), uniform flow times.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = LatentPropertyRegressor(latent_dim=latents[0].shape[-1], num_properties=targets.shape[1], **REGRESSOR_SIZES[size])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    y_all = torch.tensor(np.nan_to_num(targets), dtype=torch.float32)  # [S, P]
    known_all = torch.tensor(np.isfinite(targets), dtype=torch.float32)  # [S, P]
    rng = np.random.default_rng(seed)
    start, step, budget = time.monotonic(), 0, minutes * 60.0
    model.train()
    while step < steps and time.monotonic() - start < budget:
        frac = max(step / steps, (time.monotonic() - start) / budget)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        idx = rng.choice(len(latents), batch_size, replace=False)
        x1, mask = pad_latents([latents[i] for i in idx])  # [B, N, L], [B, N]
        t = torch.rand(batch_size, generator=gen)  # [B]
        mean, log_var = model(noised(x1, mask, t, gen), t, mask)  # [B, P], [B, P]
        loss = gaussian_nll(mean, log_var, y_all[idx], known_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if log_every and step % log_every == 0:
            print(f"step {step} nll {loss.item():.4f} ({time.monotonic() - start:.0f} s)", flush=True)
    model.eval()
    facts = {"steps": step, "batch_size": batch_size, "lr": lr, "size": size, "train_seconds": round(time.monotonic() - start, 1),
             "threads": torch.get_num_threads(), "train_sets": len(latents)}
    return model, facts


@torch.no_grad()
def test_errors(model: LatentPropertyRegressor, latents: Sequence[Tensor], targets: np.ndarray, times: Sequence[float] = (1.0, 0.8, 0.5),
                batch_size: int = 512, seed: int = 0) -> dict[float, np.ndarray]:
    """Mean absolute error ``[P]`` (standardised units) of the predicted mean at each flow time."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for t_value in times:
        preds = []
        for start in range(0, len(latents), batch_size):
            x1, mask = pad_latents(latents[start : start + batch_size])
            t = torch.full((len(x1),), float(t_value))
            preds.append(model(noised(x1, mask, t, gen), t, mask)[0])
        pred = torch.cat(preds).numpy()
        out[float(t_value)] = np.nanmean(np.abs(pred - targets), axis=0)
    return out


# ----------------------------------------------------------------------------------------------
# The file
# ----------------------------------------------------------------------------------------------


def save_property_regressor(path: str | Path, model: LatentPropertyRegressor, properties: Sequence[str], stats: dict[str, dict[str, Any]],
                            latent_mean: Tensor, latent_std: Tensor, size: str, info: dict[str, Any]) -> Path:
    """Write the weights-only regressor file (atomically)."""
    from sciDiT.training.checkpoint import atomic_torch_save

    contents = {"kind": FILE_KIND, "size": size, "hparams": {"latent_dim": model.latent_dim, "num_properties": model.num_properties, **REGRESSOR_SIZES[size]},
                "properties": list(properties), "condition_stats": stats, "latent_mean": latent_mean.detach().cpu().float(),
                "latent_std": latent_std.detach().cpu().float(), "state_dict": model.state_dict(), "info": info}
    return atomic_torch_save(contents, path)


def load_property_regressor(path: str | Path, latent_mean: Tensor, latent_std: Tensor) -> tuple[LatentPropertyRegressor, dict[str, Any]]:
    """The regressor of ``path`` (eval mode) and the file's contents; one-line error for a file of another kind
    or one trained on other latents than those of ``latent_mean`` / ``latent_std`` (a generator's)."""
    raw = load_checkpoint(path, "property regressor (property_guide)")
    if raw.get("kind") != FILE_KIND:
        raise SciDiTInputError("not a property regressor file (train one with experiments/property_guidance/train_regressor.py)", path)
    mean, std = latent_mean.detach().cpu().float(), latent_std.detach().cpu().float()
    if raw["latent_mean"].shape != mean.shape:
        raise SciDiTInputError(f"its latents have width {raw['latent_mean'].numel()}, the model's {mean.numel()}: train it on this model's VAE", path)
    shift = ((raw["latent_mean"] - mean) / std).abs().max().item()
    scale = (raw["latent_std"] / std).log().abs().max().item()
    if max(shift, scale) > LATENT_STAT_TOLERANCE:
        raise SciDiTInputError(f"it was trained on other latents than the model's (mean by {shift:.3f} std, log std by {scale:.3f}; "
                               f"tolerance {LATENT_STAT_TOLERANCE}): train it on this model's VAE", path)
    model = LatentPropertyRegressor(**raw["hparams"])
    try:
        model.load_state_dict(raw["state_dict"])
    except RuntimeError as err:
        raise SciDiTInputError(f"its weights do not fit its sizes: {str(err).splitlines()[0]}", path) from None
    return model.eval(), raw
