"""Training side of flow matching: the linear (rectified-flow) probability path and its loss.

Convention: time runs from ``t = 0`` (Gaussian noise ``x0``) to ``t = 1`` (data ``x1``) along

    x_t = (1 - t) x0 + t x1,        target velocity  u = d x_t / d t = x1 - x0.

A network ``v(x_t, t)`` regressed onto ``u`` learns the marginal velocity ``E[x1 - x0 | x_t]``,
whose ODE carries the noise distribution to the data distribution. Token sets are padded, so every
tensor here is ``[B, N, D]`` with a ``mask [B, N]`` (True = real token) and losses average over
real tokens only. Nothing here knows about molecules, crystals or cells.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

TIME_SCHEDULES = ("uniform", "logit_normal")


class VelocityModel(Protocol):
    """What the loss and the guided samplers call: a network predicting the velocity ``x1 - x0``.

    ``sciDiT.models.dit.DiT`` satisfies it. ``x_self_cond`` is the model's own earlier estimate of
    ``x1`` (or None), ``drop_cond [B]`` forces the unconditional (null) embedding per sample.
    """

    def __call__(
        self,
        x: Tensor,
        t: Tensor,
        mask: Tensor,
        cond: dict[str, Tensor] | None = None,
        x_self_cond: Tensor | None = None,
        drop_cond: Tensor | None = None,
    ) -> Tensor: ...


# ----------------------------------------------------------------------------------------------
# The path
# ----------------------------------------------------------------------------------------------


def _draw_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device | str | None:
    """Random numbers are drawn where the generator lives (a CPU seed gives the same draws for CUDA data)."""
    return device if generator is None else generator.device


def sample_noise(mask: Tensor, dim: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard Gaussian ``x0 [B, N, dim]`` for the real tokens of ``mask [B, N]``, zeros at padding."""
    x0 = torch.randn(*mask.shape, dim, generator=generator, device=_draw_device(generator, mask.device), dtype=dtype)
    return x0.to(mask.device) * mask.unsqueeze(-1).to(dtype)  # [B, N, D]


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """Point on the linear path, ``x_t = (1 - t) x0 + t x1``; ``t [B]`` broadcasts over tokens and features."""
    tt = t.view(-1, *([1] * (x1.dim() - 1))).to(x1.dtype)  # [B, 1, 1]
    return (1.0 - tt) * x0 + tt * x1


def target_velocity(x0: Tensor, x1: Tensor) -> Tensor:
    """Conditional velocity of the linear path, ``u = x1 - x0`` (constant in t)."""
    return x1 - x0


def x1_from_velocity(x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """Data estimate implied by a velocity on the linear path: ``x1_hat = x_t + (1 - t) v``."""
    tt = t.view(-1, *([1] * (x_t.dim() - 1))).to(x_t.dtype)  # [B, 1, 1]
    return x_t + (1.0 - tt) * v


def sample_time(
    batch_size: int,
    schedule: str = "uniform",
    *,
    loc: float = 0.0,
    scale: float = 1.0,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Training times ``t [B]`` in [0, 1).

    ``uniform``: U(0, 1). ``logit_normal``: sigmoid of N(loc, scale^2), which spends more of the
    training signal on intermediate times (Esser et al. 2024, "Scaling Rectified Flow Transformers").
    """
    draw = _draw_device(generator, device)
    if schedule == "uniform":
        return torch.rand(batch_size, device=draw, generator=generator).to(device)
    if schedule == "logit_normal":
        return torch.sigmoid(loc + scale * torch.randn(batch_size, device=draw, generator=generator)).to(device)
    raise ValueError(f"unknown time schedule {schedule!r}; expected one of {TIME_SCHEDULES}")


# ----------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Squared error averaged over features and over the real tokens of the whole batch (padding ignored)."""
    w = mask.unsqueeze(-1).to(pred.dtype)  # [B, N, 1]
    sq = ((pred - target) ** 2 * w).sum()  # scalar
    return sq / (w.sum() * pred.shape[-1]).clamp_min(1.0)


def flow_matching_loss(
    model: VelocityModel,
    x1: Tensor,
    mask: Tensor,
    cond: dict[str, Tensor] | None = None,
    *,
    time_schedule: str = "uniform",
    self_condition_prob: float = 0.0,
    t: Tensor | None = None,
    x0: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Flow-matching loss of ``model`` on data latents ``x1 [B, N, D]`` with ``mask [B, N]``.

    Draws ``x0 ~ N(0, I)`` and ``t`` (unless given), regresses ``model(x_t, t)`` onto ``x1 - x0``.
    Self-conditioning (ADiT, Chen et al. 2023): with probability ``self_condition_prob`` for the
    whole batch, a first gradient-free pass estimates ``x1_hat = x_t + (1 - t) v`` and the trained
    pass receives it as ``x_self_cond``; otherwise ``x_self_cond`` is None (the model uses zeros).
    Label dropout for classifier-free guidance happens inside the model in training mode.
    """
    bsz, _, dim = x1.shape
    if x0 is None:
        x0 = sample_noise(mask, dim, generator=generator, dtype=x1.dtype)  # [B, N, D]
    if t is None:
        t = sample_time(bsz, time_schedule, device=x1.device, generator=generator)  # [B]
    x_t = interpolate(x0, x1, t)  # [B, N, D]
    x_self_cond = None
    coin = torch.rand((), device=_draw_device(generator, x1.device), generator=generator)  # one draw per batch
    if self_condition_prob > 0 and bool(coin < self_condition_prob):
        with torch.no_grad():
            x_self_cond = x1_from_velocity(x_t, t, model(x_t, t, mask, cond)).detach()  # [B, N, D]
    v = model(x_t, t, mask, cond, x_self_cond=x_self_cond)  # [B, N, D]
    return masked_mse(v.float(), target_velocity(x0, x1).float(), mask)
