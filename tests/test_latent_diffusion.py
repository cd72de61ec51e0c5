"""Latent statistics of the latent diffusion model: per-domain standardisation and its inverse."""

from __future__ import annotations

import pytest
import torch

from sciDiT.batch import Domain, collate
from sciDiT.models.latent_diffusion import LatentDiffusion

from conftest import TINY_DIT, TINY_VAE


def _batches(data_dir, cache_dir):
    from sciDiT.data.cdvae import load_cdvae
    from sciDiT.data.qm9 import load_qm9_split

    qm9 = load_qm9_split("train", data_dir, cache_dir, limit=200)
    mp20 = load_cdvae("mp20", "val", data_dir, cache_dir, limit=30, workers=1)
    return [collate([qm9[i] for i in range(64)]), collate([mp20[i] for i in range(len(mp20))]),
            collate([qm9[64], mp20[0], qm9[65], mp20[1]])]


def test_domain_stats_put_each_domain_at_unit_scale_and_invert(data_dir, cache_dir):
    torch.manual_seed(0)
    batches = _batches(data_dir, cache_dir)
    plain, per_domain = LatentDiffusion(TINY_VAE, TINY_DIT), LatentDiffusion(TINY_VAE, TINY_DIT, domain_stats=True)
    per_domain.vae.load_state_dict(plain.vae.state_dict())
    for model in (plain, per_domain):
        model.prepare(batches[:2], {})
    assert torch.equal(plain.latent_mean, per_domain.latent_mean) and torch.equal(plain.latent_std, per_domain.latent_std)
    assert torch.equal(plain.domain_std, torch.ones_like(plain.domain_std))  # off: the identity
    with torch.no_grad():
        for b in batches[:2]:
            x = per_domain.latents(b)[b.mask]  # [n, L]
            assert torch.allclose(x.mean(0), torch.zeros(x.shape[1]), atol=1e-4)
            assert torch.allclose(x.std(0), torch.ones(x.shape[1]), atol=1e-4)
        mixed = batches[2]  # sets of both domains in one batch get their own statistics
        mu = per_domain.vae.encode(mixed)[0]
        assert torch.allclose(per_domain.to_vae(per_domain.latents(mixed), mixed.domain)[mixed.mask], mu[mixed.mask], atol=1e-5)
        assert torch.allclose(plain.to_vae(plain.latents(mixed), mixed.domain)[mixed.mask], mu[mixed.mask], atol=1e-5)
    assert per_domain.domain_std[Domain.CRYSTAL].mean() != per_domain.domain_std[Domain.MOLECULE].mean()


def test_a_state_dict_without_domain_stats_loads_as_the_identity():
    model = LatentDiffusion(TINY_VAE, TINY_DIT)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("domain_")}
    model.domain_std.fill_(2.0)
    model.load_state_dict(state)
    assert torch.equal(model.domain_std, torch.ones_like(model.domain_std)) and not model.domain_mean.any()


def test_latent_heads_and_guides_must_share_the_per_domain_statistics(tiny_dit_ckpt, tmp_path):
    from sciDiT.errors import SciDiTInputError
    from sciDiT.generate import load_generator
    from sciDiT.models.latent_guides import LatentDiscriminator
    from sciDiT.pretrained import guide_section
    from sciDiT.training.latent_guides import load_discriminator, save_discriminator

    gen = load_generator(tiny_dit_ckpt)
    disc = LatentDiscriminator(latent_dim=gen.model.vae.latent_dim, hidden_size=32, depth=1, num_heads=2)
    frame = gen.model.latent_frame()  # [D, L] x 2: the identity per-domain statistics of this model
    assert torch.equal(frame[0][Domain.CRYSTAL], gen.model.latent_mean) and torch.equal(frame[1][Domain.MOLECULE], gen.model.latent_std)
    load_discriminator(save_discriminator(tmp_path / "same.pt", disc, "crystal", *frame, {}), *frame)
    crystals_apart = (frame[0], frame[1].clone())
    crystals_apart[1][Domain.CRYSTAL] *= 0.27  # a model whose crystals were standardised on their own
    other = save_discriminator(tmp_path / "other.pt", disc, "crystal", *crystals_apart, {})
    with pytest.raises(SciDiTInputError, match="trained on other latents"):
        load_discriminator(other, *frame)
    raw = torch.load(tiny_dit_ckpt, weights_only=True)
    raw["state_dict"]["model.domain_std"] = crystals_apart[1] / gen.model.latent_std
    torch.save(raw, tmp_path / "guide.ckpt")
    with pytest.raises(SciDiTInputError, match="latent statistics differ"):
        guide_section(torch.load(tiny_dit_ckpt, weights_only=True)["state_dict"], raw["hyper_parameters"], tmp_path / "guide.ckpt")
