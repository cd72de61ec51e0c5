"""Flow matching against a closed form: the Gaussian-to-Gaussian flow.

With x0 ~ N(0, I) and x1 ~ N(mu, s^2 I) drawn independently, x_t = (1 - t) x0 + t x1 is Gaussian with
mean t mu and variance sigma_t^2 = (1 - t)^2 + t^2 s^2 per feature, the marginal velocity is

    v*(x, t) = E[x1 - x0 | x_t = x] = mu + (t s^2 - (1 - t)) / sigma_t^2 * (x - t mu),

its ODE maps x0 exactly to mu + s x0, and the flow-matching loss of v* is the conditional variance
Var(x1 - x0 | x_t) = 1 + s^2 - (t s^2 - (1 - t))^2 / sigma_t^2 (the loss's irreducible minimum).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from sciDiT.flow import (
    AutoGuidance,
    SelfConditioning,
    flow_matching_loss,
    guided_velocity,
    integrate,
    interpolate,
    masked_mse,
    network_evaluations,
    sample_noise,
    stochastic_euler,
    sample_time,
    target_velocity,
    x1_from_velocity,
)

MU = torch.tensor([1.5, -2.0, 0.5])
S = torch.tensor([0.5, 2.0, 1.0])


def exact_velocity(x: Tensor, t: Tensor) -> Tensor:
    """Closed-form marginal velocity of the Gaussian-to-Gaussian linear path."""
    tt = t.view(-1, 1, 1)
    var = (1 - tt) ** 2 + tt**2 * S**2
    return MU + (tt * S**2 - (1 - tt)) / var * (x - tt * MU)


def exact_model(x, t, mask, cond=None, x_self_cond=None, drop_cond=None):
    return exact_velocity(x, t)


def padded_gaussian_data(gen: torch.Generator, bsz: int = 2048, n: int = 6) -> tuple[Tensor, Tensor]:
    """x1 ~ N(mu, s^2) on real tokens, absurd values at padding (which must be ignored)."""
    mask = torch.arange(n)[None, :] < torch.randint(1, n + 1, (bsz, 1), generator=gen)  # [B, N]
    x1 = MU + S * torch.randn(bsz, n, 3, generator=gen)
    return torch.where(mask[..., None], x1, torch.full_like(x1, 1e6)), mask


def test_path_endpoints_and_marginal_moments():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(20000, 1, 3, generator=gen)
    x1 = MU + S * torch.randn(20000, 1, 3, generator=gen)
    ones = torch.ones(20000)
    assert torch.equal(interpolate(x0, x1, 0 * ones), x0)
    assert torch.equal(interpolate(x0, x1, ones), x1)
    assert torch.equal(target_velocity(x0, x1), x1 - x0)
    t = 0.3
    xt = interpolate(x0, x1, t * ones).squeeze(1)
    torch.testing.assert_close(xt.mean(0), t * MU, atol=0.03, rtol=0)
    torch.testing.assert_close(xt.std(0), ((1 - t) ** 2 + t**2 * S**2).sqrt(), atol=0.03, rtol=0)
    # x1 recovered from the conditional velocity is exact on the linear path
    torch.testing.assert_close(x1_from_velocity(xt[:, None], t * ones, target_velocity(x0, x1)), x1)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_loss_of_exact_velocity_is_the_conditional_variance(t):
    gen = torch.Generator().manual_seed(1)
    x1, mask = padded_gaussian_data(gen)
    tt = torch.full((x1.shape[0],), t)
    var_t = (1 - t) ** 2 + t**2 * S**2
    irreducible = (1 + S**2 - (t * S**2 - (1 - t)) ** 2 / var_t).mean()
    x0 = sample_noise(mask, 3, generator=gen)
    loss = flow_matching_loss(exact_model, x1, mask, t=tt, x0=x0)
    assert torch.isfinite(loss)
    assert abs(float(loss) - float(irreducible)) < 0.04 * float(irreducible)
    # any other field pays exactly its squared distance to v* on top (same noise, same t)
    shifted = lambda x, t, mask, cond=None, x_self_cond=None: exact_velocity(x, t) + 0.3  # noqa: E731
    excess = flow_matching_loss(shifted, x1, mask, t=tt, x0=x0) - loss
    assert abs(float(excess) - 0.09) < 0.01


def test_noise_is_zero_at_padding_and_loss_ignores_padding():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    x0 = sample_noise(mask, 4, generator=torch.Generator().manual_seed(0))
    assert torch.all(x0[~mask] == 0) and torch.all(x0[mask] != 0)
    pred = torch.zeros(2, 3, 4)
    target = torch.ones(2, 3, 4)
    target[~mask] = 1e9
    assert float(masked_mse(pred, target, mask)) == 1.0


@pytest.mark.parametrize("method,steps", [("euler", 200), ("heun", 20), ("midpoint", 20)])
def test_solvers_transport_noise_to_target_gaussian(method, steps):
    x0 = torch.randn(8192, 2, 3, generator=torch.Generator().manual_seed(2))
    x = integrate(exact_velocity, x0, steps=steps, method=method).reshape(-1, 3)
    torch.testing.assert_close(x.mean(0), MU, atol=0.05, rtol=0)
    torch.testing.assert_close(x.std(0), S, atol=0.05, rtol=0)


def test_sde_has_the_flow_marginals_and_is_euler_without_noise():
    """Euler-Maruyama on dx = [v - s (x - t v)] dt + sqrt(2 s (1 - t)) dW with the exact v lands on N(mu, s^2)
    (the Langevin terms leave every marginal unchanged); s = 0 is Euler to the bit."""
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(8192, 2, 3, generator=gen)
    for strength in (2.0, 8.0):
        x = integrate(exact_velocity, x0, steps=400, method="sde", sde_noise=strength,
                      noise_fn=lambda: torch.randn(x0.shape, generator=gen)).reshape(-1, 3)
        torch.testing.assert_close(x.mean(0), MU, atol=0.06, rtol=0)
        torch.testing.assert_close(x.std(0), S, atol=0.06, rtol=0)
    assert torch.equal(stochastic_euler(exact_velocity, x0, 20, sde_noise=0.0), integrate(exact_velocity, x0, 20, method="euler"))
    with pytest.raises(ValueError, match="sde_noise must be >= 0"):
        integrate(exact_velocity, x0, 5, method="sde", sde_noise=-1.0)


def test_second_order_solvers_beat_euler_at_few_steps():
    x0 = torch.randn(512, 1, 3, generator=torch.Generator().manual_seed(3))
    exact = MU + S * x0  # the exact ODE map of this flow
    err = {m: float((integrate(exact_velocity, x0, steps=4, method=m) - exact).abs().max()) for m in ("euler", "heun", "midpoint")}
    assert err["heun"] < 0.25 * err["euler"]
    assert err["midpoint"] < 0.25 * err["euler"]
    # second order: halving the step cuts Heun's error by about 4
    err8 = float((integrate(exact_velocity, x0, steps=8, method="heun") - exact).abs().max())
    assert 2.5 < err["heun"] / err8 < 6


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "sde"])
def test_network_evaluations_counts_the_solver_calls(method):
    calls = []

    def counting(x: Tensor, t: Tensor) -> Tensor:
        calls.append(1)
        return exact_velocity(x, t)

    integrate(counting, torch.zeros(2, 1, 3), steps=7, method=method)
    assert network_evaluations(method, 7) == len(calls)
    assert network_evaluations(method, 7, cfg_scale=2.0) == 2 * len(calls)  # guided: two branches per call
    with pytest.raises(ValueError, match="unknown ODE solver"):
        network_evaluations("rk45", 7)


def test_solver_rejects_unknown_method_and_zero_steps():
    x0 = torch.zeros(1, 1, 3)
    with pytest.raises(ValueError, match="unknown ODE solver"):
        integrate(exact_velocity, x0, method="rk45")
    with pytest.raises(ValueError, match="steps"):
        integrate(exact_velocity, x0, steps=0)


def test_time_sampling():
    gen = torch.Generator().manual_seed(4)
    t = sample_time(50000, "uniform", generator=gen)
    assert t.shape == (50000,) and 0 <= float(t.min()) and float(t.max()) < 1
    assert abs(float(t.mean()) - 0.5) < 0.01
    t = sample_time(50000, "logit_normal", loc=0.5, scale=0.8, generator=gen)
    logit = torch.logit(t.double())
    assert abs(float(logit.mean()) - 0.5) < 0.02 and abs(float(logit.std()) - 0.8) < 0.02
    with pytest.raises(ValueError, match="unknown time schedule"):
        sample_time(4, "cosine")


def test_self_conditioning_in_the_loss():
    """With probability 1 the trained pass receives the detached x1 estimate of a first pass."""
    calls: list[Tensor | None] = []

    def model(x, t, mask, cond=None, x_self_cond=None, drop_cond=None):
        calls.append(x_self_cond)
        return exact_velocity(x, t) + (0 if x_self_cond is None else 0.5)

    gen = torch.Generator().manual_seed(5)
    x1, mask = padded_gaussian_data(gen, bsz=8)
    t, x0 = torch.full((8,), 0.4), sample_noise(mask, 3, generator=gen)
    flow_matching_loss(model, x1, mask, t=t, x0=x0, self_condition_prob=1.0)
    assert len(calls) == 2 and calls[0] is None
    xt = interpolate(x0, x1, t)
    torch.testing.assert_close(calls[1], x1_from_velocity(xt, t, exact_velocity(xt, t)))
    calls.clear()
    flow_matching_loss(model, x1, mask, t=t, x0=x0, self_condition_prob=0.0)
    assert calls == [None]


def test_sampling_self_conditioning_feeds_previous_estimate():
    seen: list[Tensor | None] = []

    def v(x, t, x_self_cond):
        seen.append(x_self_cond)
        return exact_velocity(x, t)

    x0 = torch.randn(16, 2, 3, generator=torch.Generator().manual_seed(6))
    integrate(SelfConditioning(v), x0, steps=3, method="euler")
    assert len(seen) == 3 and seen[0] is None
    t0, t1 = torch.zeros(16), torch.full((16,), 1 / 3)
    x_1 = x0 + exact_velocity(x0, t0) / 3  # state after the first Euler step
    torch.testing.assert_close(seen[1], x1_from_velocity(x0, t0, exact_velocity(x0, t0)))
    torch.testing.assert_close(seen[2], x1_from_velocity(x_1, t1, exact_velocity(x_1, t1)))


def test_guidance_is_one_batched_forward_and_combines_branches():
    calls = []

    def model(x, t, mask, cond=None, x_self_cond=None, drop_cond=None):
        calls.append(x.shape[0])
        label = cond["domain"].float().view(-1, 1, 1)
        keep = torch.ones_like(label) if drop_cond is None else (~drop_cond).float().view(-1, 1, 1)
        return x + keep * label  # conditional branch adds the label, null branch does not

    x = torch.randn(4, 5, 2)
    t = torch.rand(4)
    mask = torch.ones(4, 5, dtype=torch.bool)
    cond = {"domain": torch.tensor([0, 1, 2, 1])}
    v = guided_velocity(model, x, t, mask, cond, scale=3.0)
    assert calls == [8]
    torch.testing.assert_close(v, x + 3.0 * cond["domain"].float().view(-1, 1, 1))
    calls.clear()
    torch.testing.assert_close(guided_velocity(model, x, t, mask, cond, scale=1.0), model(x, t, mask, cond))
    assert calls == [4, 4]


def test_autoguidance_extrapolates_from_the_weak_model_inside_its_interval_only():
    class Affine(torch.nn.Module):
        """v = a x + b; counts its calls; records the self-conditioning input it got."""

        def __init__(self, a: float, b: float, self_condition: bool):
            super().__init__()
            self.a, self.b, self.self_condition, self.calls, self.got = a, b, self_condition, 0, []

        def forward(self, x, t, mask, cond=None, x_self_cond=None, drop_cond=None):
            self.calls += 1
            self.got.append(x_self_cond)
            return self.a * x + self.b

    main, weak = Affine(2.0, 1.0, True), Affine(1.0, 0.0, False)
    guided = AutoGuidance(main, weak, scale=3.0, t_min=0.5)
    x, mask = torch.randn(4, 5, 3), torch.ones(4, 5, dtype=torch.bool)
    t = torch.tensor([0.0, 0.49, 0.5, 1.0])
    v = guided(x, t, mask, x_self_cond=torch.zeros_like(x))
    expected = x + 3.0 * ((2 * x + 1) - x)  # v_weak + s (v_main - v_weak)
    assert torch.allclose(v[2:], expected[2:]) and torch.allclose(v[:2], (2 * x + 1)[:2])
    assert weak.got == [None] and main.got[0] is not None  # a weak model without self-conditioning gets none
    assert guided.self_condition  # the sampler self-conditions when the main model does
    weak.calls = 0
    assert torch.equal(guided(x, torch.full((4,), 0.2), mask), 2 * x + 1) and weak.calls == 0  # outside: the main model alone
    assert torch.equal(AutoGuidance(main, weak, scale=1.0)(x, t, mask), 2 * x + 1) and weak.calls == 0
    with pytest.raises(ValueError, match="interval"):
        AutoGuidance(main, weak, 2.0, t_min=0.7, t_max=0.6)


def test_network_evaluations_count_the_weak_models_calls_inside_the_interval():
    assert network_evaluations("euler", 100, autoguidance=(0.5, 1.0)) == 150  # t = 0.50 .. 0.99
    assert network_evaluations("euler", 10, cfg_scale=2.0, autoguidance=(0.0, 1.0)) == 40
    assert network_evaluations("heun", 4, autoguidance=(0.5, 1.0)) == 8 + 5  # evaluations at 0.5, 0.75 (x2), 1.0
