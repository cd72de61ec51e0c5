"""The all-atom VAE: set equivariance, padding invariance, losses, decoding to physical units."""

import pytest
import torch
from ase.build import bulk, molecule

from sciDiT.batch import Domain, collate
from sciDiT.models.vae import build_vae, circle_to_frac, features_to_lattice, frac_to_circle, lattice_to_features
from sciDiT.tokenizers import CrystalTokenizer, MoleculeTokenizer
from sciDiT.training.augment import augment, corrupt, random_rotations


def _mixed_batch():
    mt, ct = MoleculeTokenizer(), CrystalTokenizer()
    sets = [mt.from_ase(molecule("CH3CH2OH")), ct.from_ase(bulk("NaCl", "rocksalt", a=5.64, cubic=True)), mt.from_ase(molecule("H2O"))]
    return collate(sets)


def test_encoder_decoder_are_permutation_equivariant():
    torch.manual_seed(0)
    vae = build_vae("VAE-T").eval()
    batch = _mixed_batch()
    perm = torch.randperm(batch.types.shape[1])  # padding slots move too
    pb = type(batch)(types=batch.types[:, perm], pos=batch.pos[:, perm], frac=batch.frac[:, perm], values=batch.values[:, perm],
                     mask=batch.mask[:, perm], lattice=batch.lattice, domain=batch.domain)
    mu, _ = vae.encode(batch)
    mu_p, _ = vae.encode(pb)
    torch.testing.assert_close(mu_p[pb.mask], mu[:, perm][pb.mask], atol=1e-5, rtol=1e-4)
    logits, pos, frac, lat = vae.decode(mu, batch.mask, batch.domain)
    logits_p, pos_p, frac_p, lat_p = vae.decode(mu_p, pb.mask, pb.domain)
    torch.testing.assert_close(pos_p[pb.mask], pos[:, perm][pb.mask], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lat_p, lat, atol=1e-5, rtol=1e-4)


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    vae = build_vae("VAE-T").eval()
    mt = MoleculeTokenizer()
    alone = collate([mt.from_ase(molecule("H2O"))])
    padded = collate([mt.from_ase(molecule("H2O")), mt.from_ase(molecule("C6H6"))])
    mu_a, _ = vae.encode(alone)
    mu_p, _ = vae.encode(padded)
    torch.testing.assert_close(mu_p[0, :3], mu_a[0], atol=1e-5, rtol=1e-4)


def test_lattice_features_and_frac_circle_points_invert():
    lat = torch.tensor([[5.64, 5.64, 5.64, 90.0, 90.0, 90.0], [3.0, 4.0, 12.0, 70.0, 100.0, 120.0]])
    feat = lattice_to_features(lat, torch.ones(2))
    torch.testing.assert_close(features_to_lattice(feat), lat)
    frac = torch.tensor([[0.0, 0.25, 0.999], [0.5, 0.75, 0.0001]])
    torch.testing.assert_close(circle_to_frac(frac_to_circle(frac)), frac, atol=1e-5, rtol=0)
    # points near the wrap 0.999 / 0.0001 are close on the circle, as they are in the crystal
    assert (frac_to_circle(torch.tensor([0.999])) - frac_to_circle(torch.tensor([0.0001]))).norm() < 0.01


def test_augmentation_is_a_rigid_motion():
    batch = _mixed_batch()
    rots = random_rotations(64, torch.Generator().manual_seed(0))
    torch.testing.assert_close(rots @ rots.transpose(1, 2), torch.eye(3).expand(64, 3, 3), atol=1e-5, rtol=0)
    assert torch.allclose(torch.linalg.det(rots), torch.ones(64), atol=1e-5)
    aug = augment(batch, torch.Generator().manual_seed(1))
    dist = lambda p: torch.cdist(p, p)  # noqa: E731
    m = batch.mask[0]
    torch.testing.assert_close(dist(aug.pos[0][m]), dist(batch.pos[0][m]), atol=1e-4, rtol=1e-4)
    # crystal: translated fractional coordinates stay in [0, 1) and the lattice is untouched
    xi = int((batch.domain == Domain.CRYSTAL).nonzero()[0])
    assert (aug.frac[xi] >= 0).all() and (aug.frac[xi] < 1).all()
    torch.testing.assert_close(aug.lattice, batch.lattice)


def test_corruption_masks_types_and_jitters_only_real_tokens():
    batch = _mixed_batch()
    noisy = corrupt(batch, type_mask_prob=1.0, pos_noise=0.1, generator=torch.Generator().manual_seed(0))
    assert (noisy.types[batch.mask] == 119).all() and (noisy.types[~batch.mask] == 0).all()
    assert (noisy.pos[~batch.mask] == 0).all() and not torch.equal(noisy.pos, batch.pos)


def test_a_few_steps_reduce_the_loss_and_decoding_gives_physical_units():
    torch.manual_seed(0)
    vae = build_vae("VAE-T")
    batch = _mixed_batch()
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    losses = []
    for _ in range(150):
        terms = vae.loss(vae(batch, sample=False), batch)
        loss = terms["types"] + terms["pos"] + 10 * terms["frac"] + terms["lattice"] + 1e-5 * terms["kl"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    recon = vae.reconstruct(batch)
    assert recon.types.shape == batch.types.shape and (recon.types[~batch.mask] == 0).all()
    xi = batch.domain == Domain.CRYSTAL
    assert torch.allclose(recon.lattice[xi], batch.lattice[xi], rtol=0.1)
    assert (recon.lattice[~xi] == 0).all()


def test_local_distance_loss_is_the_squared_error_of_close_pairs_of_molecules():
    from sciDiT.models.vae import LOCAL_CUTOFF, POS_SCALE, VAEOutput

    vae = build_vae("VAE-T").eval()
    batch = _mixed_batch()
    out = vae(batch, sample=False)
    target = batch.pos / POS_SCALE
    exact = VAEOutput(out.type_logits, target.clone(), out.frac, out.lattice, out.mu, out.logvar)
    assert vae.loss(exact, batch)["dist"] == 0.0
    # stretch water (set 2) along x by 10%: each O-H and the H-H pair (all < 2 A) changes by 10% of its length
    moved = target.clone()
    moved[2, :3, 0] *= 1.1
    stretched = VAEOutput(out.type_logits, moved, out.frac, out.lattice, out.mu, out.logvar)
    d = lambda p, i, j: (p[i] - p[j]).norm()  # noqa: E731
    water = [(0, 1), (0, 2), (1, 2)]
    ethanol = batch.pos[0][batch.mask[0]]
    n_ethanol = sum(int(d(ethanol, i, j) < LOCAL_CUTOFF) for i in range(len(ethanol)) for j in range(i + 1, len(ethanol)))
    expected = sum((d(moved[2], i, j) - d(target[2], i, j)) ** 2 for i, j in water) / (n_ethanol + len(water))
    torch.testing.assert_close(vae.loss(stretched, batch)["dist"], expected, rtol=1e-5, atol=1e-8)


def test_latent_noise_perturbs_the_decoder_input_only_when_asked():
    vae = build_vae("VAE-T").eval()
    batch = _mixed_batch()
    clean = vae(batch, sample=False)
    torch.testing.assert_close(vae(batch, sample=False, latent_noise=0.0).pos, clean.pos)
    torch.manual_seed(0)
    noisy = vae(batch, sample=False, latent_noise=0.5)
    torch.testing.assert_close(noisy.mu, clean.mu)  # the encoder's output is untouched
    assert not torch.allclose(noisy.pos, clean.pos)


def test_latent_noise_per_domain_leaves_noise_free_domains_untouched():
    from sciDiT.training.vae_module import domain_noise_table

    ranges = domain_noise_table({"molecule": 0.5, "crystal": 0.0})
    assert ranges.tolist() == [[0.5, 0.5], [0.0, 0.0], [0.0, 0.0]]  # cells default to no noise
    torch.testing.assert_close(domain_noise_table(0.2), torch.full((3, 2), 0.2))
    assert domain_noise_table({"molecule": [0.0, 0.6]}).tolist()[0] == pytest.approx([0.0, 0.6])  # each set's sigma drawn in the range
    table = ranges[:, 0]
    vae = build_vae("VAE-T").eval()
    batch = _mixed_batch()  # ethanol, NaCl, water
    clean = vae(batch, sample=False)
    torch.manual_seed(0)
    noisy = vae(batch, sample=False, latent_noise=table[batch.domain])
    torch.testing.assert_close(noisy.pos[1], clean.pos[1])  # the crystal: sigma 0, decoded exactly as without noise
    torch.testing.assert_close(noisy.lattice[1], clean.lattice[1])
    assert not torch.allclose(noisy.pos[0], clean.pos[0]) and not torch.allclose(noisy.pos[2], clean.pos[2])


def test_latent_noise_config_errors_are_one_line():
    import pytest

    from sciDiT.errors import SciDiTInputError
    from sciDiT.training.vae_module import domain_noise_table

    with pytest.raises(SciDiTInputError, match="unknown domain"):
        domain_noise_table({"rock": 0.1})
    with pytest.raises(SciDiTInputError, match=">= 0"):
        domain_noise_table({"molecule": -0.1})
    with pytest.raises(SciDiTInputError, match="low <= high"):
        domain_noise_table({"molecule": [0.5, 0.1]})
    with pytest.raises(SciDiTInputError, match=r"takes a sigma or \[low, high\]"):
        domain_noise_table({"molecule": "lots"})
