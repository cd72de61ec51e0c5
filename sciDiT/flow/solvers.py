"""Sampling side of flow matching: ODE / SDE solvers, classifier-free guidance and self-conditioning.

The solvers integrate ``dx/dt = v(x, t)`` from ``t = 0`` (noise) to ``t = 1`` (data) on a uniform
grid (``sde``: a stochastic equation with the same marginals, which corrects the drift of an
imperfect velocity field toward the data) and only ever call a velocity function
``v(x [B, N, D], t [B]) -> [B, N, D]``, so they work
for any model (and for closed-form velocity fields in the tests). :func:`model_velocity` turns a
:class:`~sciDiT.flow.path.VelocityModel` into such a function, adding classifier-free guidance
(one batched forward for both branches) and self-conditioning (each call receives the previous
call's ``x1`` estimate). :class:`AutoGuidance` guides a model with a weaker version of itself,
:class:`PropertyGuidance` with a regressor of properties on the noisy latents (classifier guidance),
:class:`DiscriminatorGuidance` with a discriminator between its own samples and the data.
:func:`sample` is the one-call entry point.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

import torch
from torch import Tensor, nn

from sciDiT.flow.path import VelocityModel, sample_noise, x1_from_velocity

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""``v(x [B, N, D], t [B]) -> velocity [B, N, D]``."""

SelfCondVelocityFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""``v(x, t, x_self_cond) -> velocity``: a velocity function that also takes an ``x1`` estimate."""

NoiseFn = Callable[[], Tensor]
"""``() -> [B, N, D]``: fresh standard normal noise shaped like the state (zeros at padding), for ``sde``."""

DEFAULT_SDE_NOISE = 2.0  # experiments/decoder_finetune: 1-8 all gain over the ODE on QM9; 2 keeps the OpenBabel figure


# ----------------------------------------------------------------------------------------------
# ODE solvers (fixed uniform grid on [0, 1])
# ----------------------------------------------------------------------------------------------


def _time(x: Tensor, value: float) -> Tensor:
    """``t [B]`` filled with ``value`` on ``x``'s device."""
    return torch.full((x.shape[0],), value, device=x.device, dtype=torch.float32)


def euler(velocity_fn: VelocityFn, x0: Tensor, steps: int) -> Tensor:
    """Explicit Euler, ``steps`` velocity evaluations; first order. Returns x at t = 1."""
    h, x = 1.0 / steps, x0
    for k in range(steps):
        x = x + h * velocity_fn(x, _time(x, k * h))  # [B, N, D]
    return x


def midpoint(velocity_fn: VelocityFn, x0: Tensor, steps: int) -> Tensor:
    """Explicit midpoint rule, ``2 * steps`` evaluations; second order. Returns x at t = 1."""
    h, x = 1.0 / steps, x0
    for k in range(steps):
        t = k * h
        x_mid = x + 0.5 * h * velocity_fn(x, _time(x, t))  # [B, N, D]
        x = x + h * velocity_fn(x_mid, _time(x, t + 0.5 * h))  # [B, N, D]
    return x


def heun(velocity_fn: VelocityFn, x0: Tensor, steps: int) -> Tensor:
    """Heun's method (explicit trapezoid), ``2 * steps`` evaluations; second order. Returns x at t = 1."""
    h, x = 1.0 / steps, x0
    for k in range(steps):
        t = k * h
        v0 = velocity_fn(x, _time(x, t))  # [B, N, D]
        v1 = velocity_fn(x + h * v0, _time(x, t + h))  # [B, N, D]
        x = x + 0.5 * h * (v0 + v1)  # [B, N, D]
    return x


def stochastic_euler(velocity_fn: VelocityFn, x0: Tensor, steps: int, noise_fn: NoiseFn | None = None,
                     sde_noise: float = DEFAULT_SDE_NOISE) -> Tensor:
    """Euler-Maruyama, ``steps`` evaluations, on the SDE with the same marginals as the flow's ODE.

    On the linear path ``x_t = t x1 + (1 - t) x0`` the score is ``-(x - t v) / (1 - t)``; with the
    diffusion ``g(t)^2 = 2 sde_noise (1 - t)`` (vanishing at the data end) the SDE is
    ``dx = [v - sde_noise (x - t v)] dt + g(t) dW``: Langevin corrections that pull a sample back
    toward where the model's data lie (SiT, Ma et al. 2024). ``sde_noise = 0`` is :func:`euler`.
    ``noise_fn`` draws each step's noise (default: ``randn_like``; pass one that is zero at padding).
    """
    if sde_noise < 0:
        raise ValueError(f"sde_noise must be >= 0, got {sde_noise}")
    draw = noise_fn if noise_fn is not None else (lambda: torch.randn_like(x0))
    h, x = 1.0 / steps, x0
    for k in range(steps):
        t = k * h
        v = velocity_fn(x, _time(x, t))  # [B, N, D]
        x = x + h * (v - sde_noise * (x - t * v))  # [B, N, D]
        if sde_noise > 0:
            x = x + (2.0 * sde_noise * (1.0 - t) * h) ** 0.5 * draw().to(x)  # [B, N, D]
    return x


SOLVERS: dict[str, Callable[..., Tensor]] = {"euler": euler, "midpoint": midpoint, "heun": heun, "sde": stochastic_euler}


def network_evaluations(method: str, steps: int, cfg_scale: float = 1.0, autoguidance: tuple[float, float] | None = None) -> int:
    """Forwards of the velocity network per sample: the cost measure for comparing samplers.

    One per step for Euler, two for midpoint / Heun; guidance (``cfg_scale != 1``) doubles it, the
    conditional and the unconditional branch (batched into one call, but twice the work).
    ``autoguidance``: the ``[t_min, t_max]`` interval of :class:`AutoGuidance`, whose weak model adds one
    forward at each evaluation time inside it (counted as a full one, though the weak model may be smaller).
    """
    if method not in SOLVERS:
        raise ValueError(f"unknown ODE solver {method!r}; expected one of {sorted(SOLVERS)}")
    h = 1.0 / steps
    offsets = {"euler": (0.0,), "sde": (0.0,), "midpoint": (0.0, 0.5), "heun": (0.0, 1.0)}[method]
    times = [(k + o) * h for k in range(steps) for o in offsets]  # where the solver evaluates the network
    weak = 0 if autoguidance is None else sum(autoguidance[0] <= t <= autoguidance[1] for t in times)
    return (len(times) + weak) * (1 if cfg_scale == 1.0 else 2)


def integrate(velocity_fn: VelocityFn, x0: Tensor, steps: int = 100, method: str = "euler", noise_fn: NoiseFn | None = None,
              sde_noise: float = DEFAULT_SDE_NOISE) -> Tensor:
    """Transport ``x0`` (t = 0) to t = 1 with the named solver (``euler``, ``midpoint``, ``heun`` or
    ``sde``; ``noise_fn`` and ``sde_noise`` apply to ``sde`` only, see :func:`stochastic_euler`)."""
    if method not in SOLVERS:
        raise ValueError(f"unknown ODE solver {method!r}; expected one of {sorted(SOLVERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if method == "sde":
        return stochastic_euler(velocity_fn, x0, steps, noise_fn=noise_fn, sde_noise=sde_noise)
    return SOLVERS[method](velocity_fn, x0, steps)


# ----------------------------------------------------------------------------------------------
# Classifier-free guidance and self-conditioning
# ----------------------------------------------------------------------------------------------


def _twice(a: Tensor) -> Tensor:
    """The batch stacked on itself, ``[B, ...] -> [2B, ...]``."""
    return torch.cat([a, a], dim=0)


def guided_velocity(
    model: VelocityModel,
    x: Tensor,
    t: Tensor,
    mask: Tensor,
    cond: dict[str, Tensor] | None,
    scale: float | Mapping[str, float],
    x_self_cond: Tensor | None = None,
) -> Tensor:
    """Classifier-free guided velocity.

    ``scale`` a number: ``v_u + scale * (v_c - v_u)``, the unconditional branch nulling every
    condition (``drop_cond``). ``scale`` a dict ``{name: s_k}`` (per-condition guidance):
    ``v_c + sum_k (s_k - 1) (v_c - v_{c without k})``, where ``v_{c without k}`` nulls condition
    ``k`` only (``cond["{k}_null"]``); with one condition this is the usual CFG on it, and all
    ``s_k = 1`` is the plain conditional model. Every branch runs in ONE forward over a stacked
    batch; ``scale = 1`` (or a dict of ones) skips the stacking.
    """
    if isinstance(scale, Mapping):
        return _per_condition_guided(model, x, t, mask, cond or {}, scale, x_self_cond)
    if scale == 1.0:
        return model(x, t, mask, cond, x_self_cond=x_self_cond)
    bsz = x.shape[0]
    drop = torch.cat([torch.zeros(bsz, dtype=torch.bool, device=x.device), torch.ones(bsz, dtype=torch.bool, device=x.device)])
    v = model(
        _twice(x),  # [2B, N, D]
        _twice(t),  # [2B]
        _twice(mask),  # [2B, N]
        {k: _twice(c) for k, c in (cond or {}).items()},
        x_self_cond=None if x_self_cond is None else _twice(x_self_cond),
        drop_cond=drop,  # [2B]
    )  # [2B, N, D]
    v_c, v_u = v.chunk(2, dim=0)  # 2 x [B, N, D]
    return v_u + scale * (v_c - v_u)


def _per_condition_guided(
    model: VelocityModel, x: Tensor, t: Tensor, mask: Tensor, cond: dict[str, Tensor], scale: Mapping[str, float], x_self_cond: Tensor | None
) -> Tensor:
    """Per-condition guidance (see :func:`guided_velocity`): branch 0 conditional, branch j nulls condition k_j."""
    guided = [(k, float(s)) for k, s in scale.items() if float(s) != 1.0]
    missing = [k for k, _ in guided if k not in cond]
    if missing:
        raise ValueError(f"guidance on condition(s) {missing} that the batch does not carry")
    if not guided:
        return model(x, t, mask, cond, x_self_cond=x_self_cond)
    bsz, copies = x.shape[0], len(guided) + 1

    def rep(a: Tensor) -> Tensor:
        return torch.cat([a] * copies, dim=0)  # [B, ...] -> [(K+1)B, ...]

    stacked = {k: rep(c) for k, c in cond.items()}
    for j, (k, _) in enumerate(guided, start=1):
        null = torch.zeros(copies * bsz, dtype=torch.bool, device=x.device)  # [(K+1)B]
        null[j * bsz : (j + 1) * bsz] = True
        stacked[f"{k}_null"] = null | stacked[f"{k}_null"] if f"{k}_null" in stacked else null
    v = model(rep(x), rep(t), rep(mask), stacked, x_self_cond=None if x_self_cond is None else rep(x_self_cond))  # [(K+1)B, N, D]
    v_c, *v_without = v.chunk(copies, dim=0)  # (K+1) x [B, N, D]
    out = v_c
    for (_, s), v_k in zip(guided, v_without):
        out = out + (s - 1.0) * (v_c - v_k)
    return out


class AutoGuidance(nn.Module):
    """Autoguidance: a velocity model guided by a weaker model of the same latents (Karras et al.,
    "Guiding a diffusion model with a bad version of itself", NeurIPS 2024).

    ``v = v_weak + scale * (v_main - v_weak)`` for samples whose ``t`` lies in ``[t_min, t_max]`` (a
    guidance interval, Kynkaenniemi et al. 2024), ``v_main`` elsewhere. The weak model (less trained or
    smaller) errs like the main one, only more, so the difference points away from those errors rather
    than away from the unconditional distribution as classifier-free guidance does; late in the path
    (``t_min`` ~ 0.5) it sharpens fine detail (coordinates) and leaves the coarse choices to the main
    model. ``scale = 1`` is the main model. A :class:`~sciDiT.flow.path.VelocityModel` itself, so it
    composes with classifier-free guidance (``drop_cond`` reaches both models) and self-conditioning.
    """

    def __init__(self, main: nn.Module, weak: nn.Module, scale: float, t_min: float = 0.0, t_max: float = 1.0):
        super().__init__()
        if not 0.0 <= t_min < t_max <= 1.0:
            raise ValueError(f"the autoguidance interval must satisfy 0 <= t_min < t_max <= 1, got [{t_min}, {t_max}]")
        self.main, self.weak, self.scale, self.t_min, self.t_max = main, weak, float(scale), float(t_min), float(t_max)
        self.self_condition = bool(getattr(main, "self_condition", False))

    def forward(self, x: Tensor, t: Tensor, mask: Tensor, cond: dict[str, Tensor] | None = None,
                x_self_cond: Tensor | None = None, drop_cond: Tensor | None = None) -> Tensor:
        v = self.main(x, t, mask, cond, x_self_cond=x_self_cond, drop_cond=drop_cond)  # [B, N, D]
        inside = (t >= self.t_min) & (t <= self.t_max)  # [B]
        if self.scale == 1.0 or not bool(inside.any()):
            return v
        weak_self_cond = x_self_cond if getattr(self.weak, "self_condition", False) else None
        v_weak = self.weak(x, t, mask, cond, x_self_cond=weak_self_cond, drop_cond=drop_cond)  # [B, N, D]
        guided = v_weak + self.scale * (v - v_weak)  # [B, N, D]
        return torch.where(inside[:, None, None], guided, v)  # [B, N, D]


PROPERTY_TARGET_KEY = "property_target"  # cond entry [B, P]: standardised property targets of PropertyGuidance
PROPERTY_KNOWN_KEY = "property_known"  # cond entry [B, P]: 1 where the target is requested, 0 elsewhere


class ScoreGuidance(nn.Module):
    """A velocity model whose score is guided by ``scale * grad_x log r(x_t)`` for some log density (ratio) ``r``.

    On the linear path ``x_t = (1 - t) x0 + t x1`` with Gaussian ``x0``, the velocity and the score are tied by
    ``v = x / t + (1 - t) / t * score``, so a term added to the score adds ``(1 - t) / t`` times it to the
    velocity. Applied for ``t`` in ``[t_min, t_max]`` (``t_min > 0``: the factor diverges at the noise end);
    ``scale = 0`` is the model alone. The gradient is taken in float32 outside any autocast. Subclasses say
    what ``log r`` is (:meth:`log_density`) and which ``cond`` entries are theirs (:meth:`take`), so that
    classifier-free guidance stacks those with the batch and the model never sees them.
    """

    def __init__(self, main: nn.Module, scale: float, t_min: float, t_max: float):
        super().__init__()
        if not 0.0 < t_min < t_max <= 1.0:
            raise ValueError(f"the guidance interval must satisfy 0 < t_min < t_max <= 1, got [{t_min}, {t_max}]")
        self.main, self.scale, self.t_min, self.t_max = main, float(scale), float(t_min), float(t_max)
        self.self_condition = bool(getattr(main, "self_condition", False))

    def take(self, cond: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """Remove this guidance's entries from ``cond`` and return them (None: nothing to guide)."""
        return {}

    def log_density(self, x: Tensor, t: Tensor, mask: Tensor, extra: dict[str, Tensor]) -> Tensor:
        """``log r(x_t)`` summed over the batch (a scalar to differentiate; float32)."""
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor, mask: Tensor, cond: dict[str, Tensor] | None = None,
                x_self_cond: Tensor | None = None, drop_cond: Tensor | None = None) -> Tensor:
        cond = dict(cond or {})
        extra = self.take(cond)
        v = self.main(x, t, mask, cond, x_self_cond=x_self_cond, drop_cond=drop_cond)  # [B, N, D]
        inside = (t >= self.t_min) & (t <= self.t_max)  # [B]
        if extra is None or self.scale == 0.0 or not bool(inside.any()):
            return v
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            xg = x.detach().float().requires_grad_(True)  # [B, N, D]
            (grad,) = torch.autograd.grad(self.log_density(xg, t.float(), mask, extra), xg)  # [B, N, D]
        tt = t.float().clamp_min(self.t_min).view(-1, 1, 1)  # [B, 1, 1]
        guided = v + (self.scale * (1.0 - tt) / tt * grad * mask[..., None]).to(v.dtype)  # [B, N, D]
        return torch.where(inside[:, None, None], guided, v)  # [B, N, D]


class PropertyGuidance(ScoreGuidance):
    """Classifier guidance (Dhariwal & Nichol 2021) by a regressor ``p(y | x_t)``: ``log r = log p(y | x_t)``.

    The regressor (e.g. :class:`~sciDiT.models.latent_guides.LatentPropertyRegressor`) returns a Gaussian
    mean and log variance per property; its variance, held fixed in the gradient, weighs each request by how
    much ``x_t`` tells about it (little early in the path). The targets ride in ``cond``
    (:data:`PROPERTY_TARGET_KEY` ``[B, P]``, :data:`PROPERTY_KNOWN_KEY` ``[B, P]``, 1 where requested).
    """

    def __init__(self, main: nn.Module, regressor: nn.Module, scale: float, t_min: float = 0.1, t_max: float = 1.0):
        super().__init__(main, scale, t_min, t_max)
        self.regressor = regressor

    def take(self, cond: dict[str, Tensor]) -> dict[str, Tensor] | None:
        target, known = cond.pop(PROPERTY_TARGET_KEY, None), cond.pop(PROPERTY_KNOWN_KEY, None)
        if target is None:
            return None
        return {"target": target, "known": torch.ones_like(target) if known is None else known}

    def log_density(self, x: Tensor, t: Tensor, mask: Tensor, extra: dict[str, Tensor]) -> Tensor:
        mean, log_var = self.regressor(x, t, mask)  # [B, P], [B, P]
        return -0.5 * ((extra["target"].float() - mean) ** 2 * torch.exp(-log_var.detach()) * extra["known"].float()).sum()


class DiscriminatorGuidance(ScoreGuidance):
    """Discriminator guidance (Kim et al. 2023): ``log r = log d / (1 - d)``, a discriminator's logit between noised
    data and noised samples of the guided model itself (:class:`~sciDiT.models.latent_guides.LatentDiscriminator`),
    i.e. the log density ratio ``p_data / p_model`` at ``x_t`` that corrects the model's score."""

    def __init__(self, main: nn.Module, discriminator: nn.Module, scale: float, t_min: float = 0.1, t_max: float = 1.0):
        super().__init__(main, scale, t_min, t_max)
        self.discriminator = discriminator

    def log_density(self, x: Tensor, t: Tensor, mask: Tensor, extra: dict[str, Tensor]) -> Tensor:
        return self.discriminator(x, t, mask).sum()


class SelfConditioning:
    """Wraps ``v(x, t, x_self_cond)`` into ``v(x, t)`` that feeds each call the previous call's ``x1`` estimate.

    The first call gets None (the model uses zeros); after each call ``x1_hat = x + (1 - t) v`` is
    kept for the next. Make a fresh wrapper per sampling run.
    """

    def __init__(self, velocity_fn: SelfCondVelocityFn):
        self.velocity_fn = velocity_fn
        self.x1_hat: Tensor | None = None

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        v = self.velocity_fn(x, t, self.x1_hat)  # [B, N, D]
        self.x1_hat = x1_from_velocity(x, t, v)  # [B, N, D]
        return v


def model_velocity(
    model: VelocityModel,
    mask: Tensor,
    cond: dict[str, Tensor] | None = None,
    *,
    cfg_scale: float | Mapping[str, float] = 1.0,
    self_condition: bool = False,
) -> VelocityFn:
    """A solver-ready ``v(x, t)`` for ``model`` on the token sets of ``mask``, with guidance and self-conditioning."""

    def guided(x: Tensor, t: Tensor, x_self_cond: Tensor | None) -> Tensor:
        return guided_velocity(model, x, t, mask, cond, cfg_scale, x_self_cond=x_self_cond)

    if self_condition:
        return SelfConditioning(guided)
    return lambda x, t: guided(x, t, None)


@torch.no_grad()
def sample(
    model: VelocityModel,
    mask: Tensor,
    latent_dim: int,
    cond: dict[str, Tensor] | None = None,
    *,
    steps: int = 100,
    method: str = "euler",
    cfg_scale: float = 1.0,
    self_condition: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Generate latents ``[B, N, latent_dim]`` (zeros at padding) for the set sizes given by ``mask [B, N]``.

    Noise comes from ``generator`` (same seed -> same samples). Put the model in eval mode first
    (training mode applies random label dropout).
    """
    x0 = sample_noise(mask, latent_dim, generator=generator)  # [B, N, D]
    velocity_fn = model_velocity(model, mask, cond, cfg_scale=cfg_scale, self_condition=self_condition)
    return integrate(velocity_fn, x0, steps=steps, method=method, noise_fn=lambda: sample_noise(mask, latent_dim, generator=generator))  # [B, N, D]
