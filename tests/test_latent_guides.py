"""Score guidance by heads on noisy latents (a property regressor, a discriminator): closed forms, training, files, requests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from sciDiT.errors import SciDiTInputError
from sciDiT.flow import PROPERTY_KNOWN_KEY, PROPERTY_TARGET_KEY, DiscriminatorGuidance, PropertyGuidance
from sciDiT.models.latent_guides import LatentDiscriminator, LatentPropertyRegressor, gaussian_nll
from sciDiT.training.latent_guides import (discriminator_accuracy, encode_sets, load_property_regressor, noised, pad_latents, save_discriminator,
                                          save_property_regressor, train_discriminator, train_regressor)

S2, TAU2 = 2.0, 0.5  # data x1 ~ N(0, S2) per latent coordinate; the property y = x1 + N(0, TAU2)


def _var(t: Tensor) -> Tensor:
    return t**2 * S2 + (1 - t) ** 2  # Var(x_t) on the linear path


class ExactVelocity(nn.Module):
    """The marginal velocity E[x1 - x0 | x_t] of Gaussian data N(0, s2): (t s2 - (1 - t)) x / Var(x_t)."""

    def __init__(self, s2: float = S2):
        super().__init__()
        self.s2 = s2

    def forward(self, x, t, mask, cond=None, x_self_cond=None, drop_cond=None):
        tt = t.view(-1, 1, 1)
        return (tt * self.s2 - (1 - tt)) * x / (tt**2 * self.s2 + (1 - tt) ** 2)


class ExactLogRatio(nn.Module):
    """log p_data,t(x) - log p_model,t(x) for data N(0, S2) and a model N(0, s2_model): the ideal discriminator's logit."""

    def __init__(self, s2_model: float):
        super().__init__()
        self.s2_model = s2_model

    def forward(self, x, t, mask):
        tt = t.view(-1, 1, 1)
        v_data, v_model = _var(tt), tt**2 * self.s2_model + (1 - tt) ** 2
        return (-0.5 * x**2 / v_data + 0.5 * x**2 / v_model - 0.5 * torch.log(v_data / v_model)).sum((1, 2))


class ExactRegressor(nn.Module):
    """p(y | x_t) in closed form: mean t S2 x / Var(x_t), variance S2 - t^2 S2^2 / Var(x_t) + TAU2."""

    def forward(self, x, t, mask):
        tt = t.view(-1, 1)
        mean = tt * S2 * x[:, 0, :] / _var(tt)  # [B, 1]
        var = S2 - tt**2 * S2**2 / _var(tt) + TAU2
        return mean, var.log().expand_as(mean)


def test_property_guidance_at_scale_one_is_the_exact_conditional_velocity():
    """Bayes' rule in closed form: guiding the exact marginal velocity by the exact p(y | x_t) gives the velocity of the
    posterior data distribution N(S2 y / (S2 + TAU2), S2 TAU2 / (S2 + TAU2))."""
    y = 1.7
    mu, sigma2 = S2 * y / (S2 + TAU2), S2 * TAU2 / (S2 + TAU2)
    x = torch.linspace(-2.0, 2.0, 9).view(9, 1, 1)  # one token of one coordinate per set
    mask = torch.ones(9, 1, dtype=torch.bool)
    cond = {PROPERTY_TARGET_KEY: torch.full((9, 1), y), PROPERTY_KNOWN_KEY: torch.ones(9, 1)}
    guided = PropertyGuidance(ExactVelocity(), ExactRegressor(), scale=1.0, t_min=0.05)
    for t_value in (0.1, 0.5, 0.9):
        t = torch.full((9,), t_value)
        v_cond = mu + (t_value * sigma2 - (1 - t_value)) * (x - t_value * mu) / (t_value**2 * sigma2 + (1 - t_value) ** 2)
        torch.testing.assert_close(guided(x, t, mask, dict(cond)), v_cond, atol=1e-5, rtol=1e-5)


def test_discriminator_guidance_with_the_ideal_discriminator_turns_a_wrong_model_into_the_data_velocity():
    """A model of N(0, 0.5) corrected by the exact log density ratio to data N(0, S2) moves as the data's flow."""
    x, mask = torch.linspace(-2.0, 2.0, 9).view(9, 1, 1), torch.ones(9, 1, dtype=torch.bool)
    guided = DiscriminatorGuidance(ExactVelocity(0.5), ExactLogRatio(0.5), scale=1.0, t_min=0.05)
    for t_value in (0.1, 0.5, 0.9):
        t = torch.full((9,), t_value)
        torch.testing.assert_close(guided(x, t, mask), ExactVelocity(S2)(x, t, mask), atol=1e-5, rtol=1e-5)


def test_a_discriminator_learns_to_tell_shifted_sets_apart():
    torch.manual_seed(0)
    real = [torch.randn(int(n), 3) for n in torch.randint(3, 9, (300,))]
    fake = [torch.randn(int(n), 3) + 1.0 for n in torch.randint(3, 9, (300,))]
    model, facts = train_discriminator(real[50:], fake[50:], batch_size=64, steps=150, log_every=0)
    accuracy = discriminator_accuracy(model, real[:50], fake[:50], times=(1.0, 0.05))
    assert facts["steps"] == 150 and accuracy[1.0] > 0.9 and accuracy[0.05] < accuracy[1.0]
    x, mask = pad_latents(real[:2])
    assert torch.equal(LatentDiscriminator(latent_dim=3, hidden_size=32, depth=1, num_heads=2)(x, torch.ones(2), mask), torch.zeros(2))  # even odds


def test_property_guidance_leaves_the_model_alone_outside_its_interval_without_targets_or_at_scale_zero():
    x, mask = torch.randn(3, 2, 1), torch.ones(3, 2, dtype=torch.bool)
    cond = {PROPERTY_TARGET_KEY: torch.ones(3, 1), PROPERTY_KNOWN_KEY: torch.ones(3, 1)}
    main, reg = ExactVelocity(), ExactRegressor()
    t = torch.tensor([0.05, 0.5, 0.95])
    plain = main(x, t, mask)
    out = PropertyGuidance(main, reg, scale=2.0, t_min=0.2, t_max=0.9)(x, t, mask, dict(cond))
    assert torch.equal(out[0], plain[0]) and torch.equal(out[2], plain[2]) and not torch.allclose(out[1], plain[1])
    assert torch.equal(PropertyGuidance(main, reg, scale=2.0)(x, t, mask, {}), plain)  # no request
    assert torch.equal(PropertyGuidance(main, reg, scale=0.0)(x, t, mask, dict(cond)), plain)
    unknown = {PROPERTY_TARGET_KEY: torch.ones(3, 1), PROPERTY_KNOWN_KEY: torch.zeros(3, 1)}  # nothing requested
    assert torch.allclose(PropertyGuidance(main, reg, scale=2.0)(x, t, mask, unknown), plain)
    with pytest.raises(ValueError, match="guidance interval must satisfy 0 < t_min < t_max <= 1"):
        PropertyGuidance(main, reg, 1.0, t_min=0.0)


def test_regressor_is_permutation_invariant_and_ignores_padding():
    torch.manual_seed(0)
    reg = LatentPropertyRegressor(latent_dim=4, num_properties=2, hidden_size=32, depth=2, num_heads=2)
    for p in reg.parameters():  # leave the zero-initialised head and adaLN gates non-trivial
        p.data.normal_(0, 0.1)
    x, t = torch.randn(2, 5, 4), torch.tensor([0.3, 0.8])
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    mean, log_var = reg(x, t, mask)
    perm = torch.tensor([3, 0, 4, 1, 2])
    mean_p, _ = reg(x[:, perm], t, mask[:, perm])
    torch.testing.assert_close(mean_p, mean, atol=1e-5, rtol=1e-5)
    x2 = x.clone()
    x2[1, 3:] = 100.0  # padding content changes nothing
    torch.testing.assert_close(reg(x2, t, mask)[0], mean)
    assert mean.shape == log_var.shape == (2, 2)


def test_untrained_regressor_predicts_the_prior_and_training_lowers_the_nll():
    torch.manual_seed(0)
    latents = [torch.randn(int(n), 3) for n in torch.randint(3, 9, (256,))]
    y = np.array([[float(x.sum())] for x in latents])  # an extensive property of the set
    y = (y - y.mean()) / y.std()
    reg = LatentPropertyRegressor(latent_dim=3, num_properties=1, hidden_size=32, depth=1, num_heads=2)
    x, mask = pad_latents(latents)
    mean, log_var = reg(x[:4], torch.ones(4), mask[:4])
    assert torch.equal(mean, torch.zeros(4, 1)) and torch.equal(log_var, torch.zeros(4, 1))  # N(0, 1): the standardised prior
    trained, facts = train_regressor(latents, y, size="H-T", batch_size=64, steps=150, minutes=5, log_every=0)
    with torch.no_grad():
        t = torch.ones(len(latents))
        before = gaussian_nll(*reg(x, t, mask), torch.tensor(y, dtype=torch.float32), torch.ones(len(y), 1))
        after = gaussian_nll(*trained(x, t, mask), torch.tensor(y, dtype=torch.float32), torch.ones(len(y), 1))
    assert facts["steps"] == 150 and after < before - 0.5


def test_noised_is_the_flow_path():
    x1, mask = torch.ones(2, 3, 2), torch.tensor([[True, True, False], [True, True, True]])
    assert torch.equal(noised(x1, mask, torch.ones(2)), x1)
    x0 = noised(x1, mask, torch.zeros(2), torch.Generator().manual_seed(0))
    assert torch.equal(x0[0, 2], torch.zeros(2)) and x0.abs().sum() > 0


@pytest.fixture(scope="module")
def regressor_file(tiny_dit_ckpt, data_dir, cache_dir, tmp_path_factory):
    """A regressor of the QM9 gap on the tiny checkpoint's latents (30 steps: it exercises the path, it is not good)."""
    from sciDiT.data.conditions import condition_stats
    from sciDiT.data.qm9 import load_qm9_properties, load_qm9_split
    from sciDiT.generate import load_generator

    gen = load_generator(tiny_dit_ckpt)
    data = load_qm9_split("train", data_dir, cache_dir, limit=200)
    gap = load_qm9_properties(("gap",), data_dir, cache_dir)["gap"].reindex(np.asarray(data.meta_column("qm9_index"))).to_numpy()
    stats = condition_stats(["gap"], [(data, {"gap": gap})])
    latents = encode_sets(gen.model, [data[i] for i in range(len(data))])
    y = ((gap - stats["gap"]["mean"]) / stats["gap"]["std"])[:, None]
    model, facts = train_regressor(latents, y, batch_size=16, steps=30, log_every=0)
    path = tmp_path_factory.mktemp("regressor") / "gap.pt"
    save_property_regressor(path, model, ["gap"], stats, gen.model.latent_mean, gen.model.latent_std, facts)
    return path


def test_a_gap_request_steered_by_the_regressor_changes_the_samples_and_is_written(tiny_dit_ckpt, regressor_file):
    from sciDiT.generate import load_generator

    gen = load_generator(tiny_dit_ckpt, property_guide=regressor_file)
    assert list(gen.request_stats) == ["gap"] and gen.condition_stats == {}
    kwargs = dict(n=4, steps=4, seed=0, progress=False, bond_decoding="argmax", num_atoms=[5, 6, 7, 8])
    plain = gen.generate_token_sets("molecule", **kwargs)
    sizes_only = gen.generate_token_sets("molecule", condition={"gap": 7.0}, property_guidance=0.0, **kwargs)
    steered = gen.generate_token_sets("molecule", condition={"gap": 7.0}, property_guidance=50.0, **kwargs)
    assert all(torch.equal(a.pos, b.pos) for a, b in zip(plain, sizes_only))  # scale 0: the model alone
    assert any(not torch.allclose(a.pos, b.pos) for a, b in zip(plain, steered))
    assert json.loads(steered[0].meta["request"]) == {"gap": 7.0}


def test_property_guide_errors_are_one_line(tiny_dit_ckpt, regressor_file, tmp_path):
    from sciDiT.generate import load_generator

    with pytest.raises(SciDiTInputError, match="not a property regressor file"):
        load_generator(tiny_dit_ckpt, property_guide=tiny_dit_ckpt)
    raw = torch.load(regressor_file, weights_only=True)
    raw["latent_mean"] = raw["latent_mean"] + 1.0
    other = tmp_path / "other.pt"
    torch.save(raw, other)
    with pytest.raises(SciDiTInputError, match="trained on other latents than the model's"):
        load_generator(tiny_dit_ckpt, property_guide=other)
    gen = load_generator(tiny_dit_ckpt, property_guide=regressor_file)
    with pytest.raises(SciDiTInputError, match="outside the training range"):
        gen.generate_token_sets("molecule", 2, condition={"gap": 100.0}, steps=2, progress=False)
    with pytest.raises(SciDiTInputError, match="takes property_guidance="):
        gen.generate_token_sets("molecule", 2, condition={"gap": 7.0}, guidance={"gap": 2.0}, steps=2, progress=False)
    with pytest.raises(SciDiTInputError, match="property_guidance_interval must satisfy"):
        gen.generate_token_sets("molecule", 2, condition={"gap": 7.0}, property_guidance_interval=(0.0, 1.0), steps=2, progress=False)
    with pytest.raises(SciDiTInputError, match="can steer it"):
        load_generator(tiny_dit_ckpt).generate_token_sets("molecule", 2, condition={"gap": 7.0}, steps=2, progress=False)
    model, _ = load_property_regressor(regressor_file, gen.model.latent_mean, gen.model.latent_std)
    assert not model.training


def test_discriminator_guidance_in_the_generator(tiny_dit_ckpt, tmp_path):
    from sciDiT.generate import load_generator

    gen = load_generator(tiny_dit_ckpt)
    kwargs = dict(n=3, steps=4, seed=0, progress=False, bond_decoding="argmax", num_atoms=6)
    with pytest.raises(SciDiTInputError, match="discriminator_guidance needs a latent discriminator"):
        gen.generate_token_sets("molecule", discriminator_guidance=1.0, **kwargs)
    torch.manual_seed(0)
    disc = LatentDiscriminator(latent_dim=gen.model.vae.latent_dim, hidden_size=32, depth=1, num_heads=2)
    for p in disc.parameters():
        p.data = p.data.normal_(0, 0.3).bfloat16().float()  # values bfloat16 holds: its packed copy is the same model
    path = save_discriminator(tmp_path / "d.pt", disc, "molecule", gen.model.latent_mean, gen.model.latent_std, {})
    with pytest.raises(SciDiTInputError, match="not a latent discriminator file"):
        load_generator(tiny_dit_ckpt, discriminator=tiny_dit_ckpt)
    guided = load_generator(tiny_dit_ckpt, discriminator=path)
    plain = gen.generate_token_sets("molecule", **kwargs)
    assert all(torch.equal(a.pos, b.pos) for a, b in zip(plain, guided.generate_token_sets("molecule", **kwargs)))  # off by default
    moved = guided.generate_token_sets("molecule", discriminator_guidance=5.0, **kwargs)
    assert any(not torch.allclose(a.pos, b.pos) for a, b in zip(plain, moved))
    with pytest.raises(SciDiTInputError, match=r"discriminator of crystals \(this model has one for molecules only\)"):
        guided.generate_token_sets("crystal", discriminator_guidance=1.0, **{**kwargs, "bond_decoding": "joint"})

    from sciDiT.pretrained import export_pretrained

    packed = load_generator(str(export_pretrained(tiny_dit_ckpt, tmp_path / "packed.pt", discriminators=[path])))
    assert set(packed.discriminators) == {"molecule"}  # packed once, used with no file
    assert torch.load(tmp_path / "packed.pt", weights_only=True)["discriminators"]["molecule"]["state_dict"]["x_embedder.weight"].dtype == torch.bfloat16
    assert all(torch.equal(a.pos, b.pos) for a, b in zip(moved, packed.generate_token_sets("molecule", discriminator_guidance=5.0, **kwargs)))
    again = torch.load(export_pretrained(tmp_path / "packed.pt", tmp_path / "again.pt"), weights_only=True)
    assert set(again["discriminators"]) == {"molecule"}  # re-exporting keeps the packed section
    other = save_discriminator(tmp_path / "o.pt", disc, "molecule", gen.model.latent_mean + 1.0, gen.model.latent_std, {})
    with pytest.raises(SciDiTInputError, match="trained on other latents"):
        export_pretrained(tiny_dit_ckpt, tmp_path / "bad.pt", discriminators=[other])
    assert not (tmp_path / "bad.pt").exists()


def test_screening_keeps_the_candidate_whose_reading_is_most_probable_under_the_request():
    from types import SimpleNamespace

    from sciDiT.generate import Generator

    class FirstCoordinate(nn.Module):  # reads the property off the first latent coordinate of the first token, unit variance
        def forward(self, x, t, mask):
            return x[:, 0, :1], torch.zeros(len(x), 1)

    x1 = torch.tensor([0.0, 2.0, 5.0, 1.0, -3.0, 4.0]).view(6, 1, 1).expand(6, 2, 1).clone()  # 2 samples x 3 candidates
    mask = torch.ones(6, 2, dtype=torch.bool)
    chosen = Generator._screened(SimpleNamespace(regressor=FirstCoordinate()), x1, mask, torch.tensor([[1.6]]), torch.ones(1, 1), 3)
    assert chosen[:, 0, 0].tolist() == [2.0, 1.0]


def test_property_screen_in_the_generator(tiny_dit_ckpt, regressor_file):
    from sciDiT.generate import load_generator

    gen = load_generator(tiny_dit_ckpt, property_guide=regressor_file)
    kwargs = dict(n=4, steps=4, seed=0, progress=False, bond_decoding="argmax", condition={"gap": 7.0}, property_guidance=0.0)
    once = gen.generate_token_sets("molecule", **kwargs)
    assert all(torch.equal(a.pos, b.pos) for a, b in zip(once, gen.generate_token_sets("molecule", property_screen=1, **kwargs)))
    screened = gen.generate_token_sets("molecule", property_screen=4, **kwargs)
    assert [ts.num_tokens for ts in screened] == [ts.num_tokens for ts in once]  # candidates share their sample's size
    assert any(not torch.allclose(a.pos, b.pos) for a, b in zip(once, screened))
    with pytest.raises(SciDiTInputError, match="property_screen chooses by the screening predictors or the property regressor"):
        gen.generate_token_sets("molecule", n=2, steps=2, progress=False, property_screen=2)
