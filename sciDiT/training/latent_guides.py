"""Train the heads that guide sampling on noisy latents (a property regressor, a discriminator), and read / write their files.

    python experiments/property_guidance/train_regressor.py qm9_mp20_cpu --properties gap --minutes 10 \\
        --out outputs/property_guidance/qm9_gap.pt

The regressor (:class:`sciDiT.models.latent_guides.LatentPropertyRegressor`) learns ``p(y | x_t)``
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

The discriminator (:class:`sciDiT.models.latent_guides.LatentDiscriminator`) tells noised latents of real
sets from noised latents of the generator's own samples; its logit is the log density ratio that
discriminator guidance adds to the generator's score (:class:`sciDiT.flow.DiscriminatorGuidance`,
``load_generator(..., discriminator=FILE)``). Its file holds the same facts and the domain it was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sciDiT.batch import collate
from sciDiT.checkpoint import build_module, latent_stat_mismatch, load_checkpoint
from sciDiT.errors import SciDiTInputError
from sciDiT.models.latent_diffusion import LatentDiffusion
from sciDiT.models.latent_guides import HEAD_SIZES, LatentDiscriminator, LatentPropertyRegressor, gaussian_nll
from sciDiT.training.optim import fit

REGRESSOR_KIND = "scidit_property_regressor"
DISCRIMINATOR_KIND = "scidit_discriminator"
KINDS = {  # kind -> what it is, the argument that takes it, the command that trains it
    REGRESSOR_KIND: ("property regressor", "property_guide", "experiments/property_guidance/train_regressor.py"),
    DISCRIMINATOR_KIND: ("latent discriminator", "discriminator", "experiments/discriminator_guidance/train_discriminator.py"),
}


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


def train_regressor(latents: Sequence[Tensor], targets: np.ndarray, *, size: str = "H-T", batch_size: int = 128, lr: float = 1e-3,
                    steps: int = 100_000, minutes: float = 10.0, seed: int = 0, log_every: int = 500) -> tuple[LatentPropertyRegressor, dict[str, Any]]:
    """A regressor trained on ``latents`` (one ``[n_i, L]`` per set) and standardised ``targets [S, P]`` (NaN = unknown),
    by the Gaussian negative log-likelihood at uniform flow times."""
    torch.manual_seed(seed)
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    model = LatentPropertyRegressor(latent_dim=latents[0].shape[-1], num_properties=targets.shape[1], **HEAD_SIZES[size])
    y_all = torch.tensor(np.nan_to_num(targets), dtype=torch.float32)  # [S, P]
    known_all = torch.tensor(np.isfinite(targets), dtype=torch.float32)  # [S, P]

    def batch_loss() -> Tensor:
        idx = rng.choice(len(latents), batch_size, replace=False)
        x1, mask = pad_latents([latents[i] for i in idx])  # [B, N, L], [B, N]
        t = torch.rand(batch_size, generator=gen)  # [B]
        mean, log_var = model(noised(x1, mask, t, gen), t, mask)  # [B, P], [B, P]
        return gaussian_nll(mean, log_var, y_all[idx], known_all[idx])

    facts = fit(model, batch_loss, lr=lr, steps=steps, minutes=minutes, log_every=log_every, name="nll")
    return model, {**facts, "batch_size": batch_size, "size": size, "train_sets": len(latents)}


def train_discriminator(real: Sequence[Tensor], fake: Sequence[Tensor], *, size: str = "H-T", batch_size: int = 128, lr: float = 1e-3,
                        steps: int = 100_000, minutes: float = 10.0, seed: int = 0, log_every: int = 500) -> tuple[LatentDiscriminator, dict[str, Any]]:
    """A discriminator between noised ``real`` latents (data encoded by the VAE) and noised ``fake`` ones (the model's
    samples), each ``[n_i, L]``: binary cross-entropy on balanced batches, one flow time per pair of sets."""
    torch.manual_seed(seed)
    gen, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    model = LatentDiscriminator(latent_dim=real[0].shape[-1], **HEAD_SIZES[size])
    half = batch_size // 2
    labels = torch.cat([torch.ones(half), torch.zeros(half)])  # [B]: 1 = data

    def batch_loss() -> Tensor:
        pick = [rng.choice(len(kind), half, replace=len(kind) < half) for kind in (real, fake)]  # a kind smaller than half a batch repeats
        sets = [real[i] for i in pick[0]] + [fake[i] for i in pick[1]]
        x1, mask = pad_latents(sets)  # [B, N, L], [B, N]
        t = torch.rand(half, generator=gen).repeat(2)  # [B]: the same times for both halves
        return nn.functional.binary_cross_entropy_with_logits(model(noised(x1, mask, t, gen), t, mask), labels)

    facts = fit(model, batch_loss, lr=lr, steps=steps, minutes=minutes, log_every=log_every, name="bce")
    return model, {**facts, "batch_size": batch_size, "size": size, "real_sets": len(real), "fake_sets": len(fake)}


def _noised_outputs(head: Callable[[Tensor, Tensor, Tensor], Tensor], sets: Sequence[Tensor], t_value: float, gen: torch.Generator,
                    batch_size: int) -> Tensor:
    """``head(x_t, t, mask)`` of ``sets`` noised at flow time ``t_value``, in batches, concatenated in order."""
    out = []
    for start in range(0, len(sets), batch_size):
        x1, mask = pad_latents(sets[start : start + batch_size])
        t = torch.full((len(x1),), float(t_value))
        out.append(head(noised(x1, mask, t, gen), t, mask))
    return torch.cat(out)


@torch.no_grad()
def discriminator_accuracy(model: LatentDiscriminator, real: Sequence[Tensor], fake: Sequence[Tensor], times: Sequence[float] = (1.0, 0.8, 0.5),
                           batch_size: int = 512, seed: int = 0) -> dict[float, float]:
    """Balanced accuracy of ``model`` on held-out ``real`` / ``fake`` sets, noised at each flow time (0.5 = cannot tell)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for t in times:
        hits_real = (_noised_outputs(model, real, t, gen, batch_size) > 0).float().mean().item()
        hits_fake = (_noised_outputs(model, fake, t, gen, batch_size) <= 0).float().mean().item()
        out[float(t)] = 0.5 * (hits_real + hits_fake)
    return out


@torch.no_grad()
def test_errors(model: LatentPropertyRegressor, latents: Sequence[Tensor], targets: np.ndarray, times: Sequence[float] = (1.0, 0.8, 0.5),
                batch_size: int = 512, seed: int = 0) -> dict[float, np.ndarray]:
    """Mean absolute error ``[P]`` (standardised units) of the predicted mean at each flow time."""
    gen = torch.Generator().manual_seed(seed)

    def mean(x: Tensor, t: Tensor, mask: Tensor) -> Tensor:
        return model(x, t, mask)[0]  # [B, P]

    return {float(t): np.nanmean(np.abs(_noised_outputs(mean, latents, t, gen, batch_size).numpy() - targets), axis=0) for t in times}


# ----------------------------------------------------------------------------------------------
# The file
# ----------------------------------------------------------------------------------------------


def save_property_regressor(path: str | Path, model: LatentPropertyRegressor, properties: Sequence[str], stats: dict[str, dict[str, Any]],
                            latent_mean: Tensor, latent_std: Tensor, info: dict[str, Any]) -> Path:
    """Write the weights-only regressor file (atomically)."""
    hparams = {"latent_dim": model.latent_dim, "num_properties": model.num_properties, **model.sizes}
    return _save(path, REGRESSOR_KIND, model, hparams, latent_mean, latent_std, info, properties=list(properties), condition_stats=stats)


def save_discriminator(path: str | Path, model: LatentDiscriminator, domain: str, latent_mean: Tensor, latent_std: Tensor,
                       info: dict[str, Any]) -> Path:
    """Write the weights-only discriminator file (atomically); ``domain``: the sets it tells apart (``molecule`` / ``crystal``)."""
    return _save(path, DISCRIMINATOR_KIND, model, {"latent_dim": model.latent_dim, **model.sizes}, latent_mean, latent_std, info, domain=domain)


def load_property_regressor(path: str | Path, latent_mean: Tensor, latent_std: Tensor) -> tuple[LatentPropertyRegressor, dict[str, Any]]:
    """The regressor of ``path`` (eval mode) and the file's contents; one-line error for a file of another kind
    or one trained on other latents than those of ``latent_mean`` / ``latent_std`` (a generator's)."""
    return _load(path, REGRESSOR_KIND, LatentPropertyRegressor, latent_mean, latent_std)  # type: ignore[return-value]


def load_discriminator(path: str | Path, latent_mean: Tensor, latent_std: Tensor) -> tuple[LatentDiscriminator, dict[str, Any]]:
    """The discriminator of ``path`` (eval mode) and the file's contents; errors as :func:`load_property_regressor`."""
    return _load(path, DISCRIMINATOR_KIND, LatentDiscriminator, latent_mean, latent_std)  # type: ignore[return-value]


def _save(path: str | Path, kind: str, model: nn.Module, hparams: dict[str, Any], latent_mean: Tensor, latent_std: Tensor,
          info: dict[str, Any], **extra: Any) -> Path:
    from sciDiT.training.checkpoint import atomic_torch_save

    contents = {"kind": kind, "hparams": hparams, "latent_mean": latent_mean.detach().cpu().float(),
                "latent_std": latent_std.detach().cpu().float(), "state_dict": model.state_dict(), "info": info, **extra}
    return atomic_torch_save(contents, path)


def _load(path: str | Path, kind: str, cls: type[nn.Module], latent_mean: Tensor, latent_std: Tensor) -> tuple[nn.Module, dict[str, Any]]:
    what, argument, script = KINDS[kind]
    raw = load_checkpoint(path, f"{what} ({argument})")
    if raw.get("kind") != kind:
        raise SciDiTInputError(f"not a {what} file (train one with {script})", path)
    mean, std = latent_mean.detach().cpu().float(), latent_std.detach().cpu().float()
    if raw["latent_mean"].shape[-1] != mean.shape[-1]:  # [L] (files before per-domain statistics: the same for all) or [D, L]
        raise SciDiTInputError(f"its latents have width {raw['latent_mean'].shape[-1]}, the model's {mean.shape[-1]}: train it on this model's VAE", path)
    mismatch = latent_stat_mismatch(mean, std, raw["latent_mean"], raw["latent_std"])
    if mismatch:
        raise SciDiTInputError(f"it was trained on other latents than the model's ({mismatch}): train it on this model's VAE", path)
    return build_module(cls, raw["hparams"], raw["state_dict"], path), raw


def packed_discriminator(entry: dict[str, Any], source: str | Path) -> LatentDiscriminator:
    """The discriminator of a weights section packed in a shipped model (``sciDiT.pretrained.discriminator_entry``:
    sizes and bfloat16 weights), in float32 and eval mode; ``source`` names the file in errors."""
    return build_module(LatentDiscriminator, entry["hparams"], entry["state_dict"], source)  # type: ignore[return-value]
