"""The crystal refiner: symmetries, closed forms of its cell maths, training on real MP-20 crystals, its file,
packing and use in the generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from sciDiT.batch import collate
from sciDiT.errors import SciDiTInputError
from sciDiT.models.crystal_refiner import (
    CRYSTAL_REFINER_SIZES,
    CrystalRefiner,
    crystal_refiner_loss,
    image_distances,
    metric_tensor,
    wrapped_offsets,
)
from sciDiT.models.vae import element_log_probs, features_to_lattice, lattice_to_features
from sciDiT.tokenizers.crystal import lattice_matrix
from sciDiT.tokenizers.elements import NUM_ATOM_TYPES
from sciDiT.training.crystal_refiner import (load_crystal_refiner, overlap_atoms, save_crystal_refiner, size_batches,
                                            train_crystal_refiner)


@pytest.fixture(scope="module")
def crystals(data_dir, cache_dir):
    from sciDiT.data.cdvae import load_cdvae

    data = load_cdvae("mp20", "val", data_dir, cache_dir, limit=120, workers=1)
    return [data[i] for i in range(len(data))]


def _random_refiner(seed: int = 0) -> CrystalRefiner:
    """A CR-T refiner whose outputs are switched on (they start as the identity)."""
    torch.manual_seed(seed)
    refiner = CrystalRefiner(NUM_ATOM_TYPES, **CRYSTAL_REFINER_SIZES["CR-T"])
    with torch.no_grad():
        for head in (refiner.type_head, refiner.lattice_head[-1], *(layer.coord[-1] for layer in refiner.layers)):
            head.weight.normal_(0, 0.3)
    return refiner.eval()


def _inputs(batch, seed: int = 1):
    """Decoder-like inputs of a batch of real crystals: noisy one-hot element log-probabilities, jittered sites, the cell."""
    g = torch.Generator().manual_seed(seed)
    logits = 4.0 * torch.nn.functional.one_hot(batch.types, NUM_ATOM_TYPES).float() + torch.randn(*batch.types.shape, NUM_ATOM_TYPES, generator=g)
    frac = torch.remainder(batch.frac + 0.02 * torch.randn(batch.frac.shape, generator=g), 1.0) * batch.mask[..., None]
    feat = lattice_to_features(batch.lattice, torch.ones(batch.batch_size))
    return element_log_probs(logits), frac, feat


def test_metric_and_image_distances_match_lattice_matrices_and_pymatgen(crystals):
    ts = crystals[3]
    feat = lattice_to_features(ts.lattice[None], torch.ones(1))
    mat = lattice_matrix(features_to_lattice(feat).double())[0]  # [3, 3] row vectors
    assert torch.allclose(metric_tensor(feat)[0].double(), mat @ mat.T, atol=1e-3)  # G = L L^T
    d = image_distances(wrapped_offsets(ts.frac[None].double()), (mat @ mat.T)[None])[0]  # [n, n]
    structure = Structure(Lattice(mat.numpy()), ts.types.tolist(), ts.frac.double().numpy())
    off = ~np.eye(ts.num_tokens, dtype=bool)
    assert np.allclose(d.numpy()[off], structure.distance_matrix[off], atol=1e-4)


def test_refiner_is_permutation_and_translation_equivariant_periodic_and_ignores_padding(crystals):
    refiner = _random_refiner()
    batch = collate(crystals[:4])
    lp, frac, feat = _inputs(batch)
    logits, out, cell = refiner(lp, frac, feat, batch.mask)
    assert not torch.allclose(out[batch.mask], frac[batch.mask], atol=1e-4)  # it moves sites
    n = int(batch.mask[0].sum())
    one = (lp[:1, :n], frac[:1, :n], feat[:1], torch.ones(1, n, dtype=torch.bool))
    alone = refiner(*one)
    assert torch.allclose(alone[0][0], logits[0, :n], atol=1e-4) and torch.allclose(alone[1][0], out[0, :n], atol=1e-5)
    assert torch.allclose(alone[2], cell[:1], atol=1e-5)  # padding and the other crystals change nothing
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    shuffled = refiner(lp[:1, :n][:, perm], frac[:1, :n][:, perm], feat[:1], one[3])
    assert torch.allclose(shuffled[0][0], alone[0][0][perm], atol=1e-4) and torch.allclose(shuffled[1][0], alone[1][0][perm], atol=1e-5)
    shift = torch.tensor([0.3, -0.45, 0.8])
    moved = refiner(lp[:1, :n], torch.remainder(frac[:1, :n] + shift, 1.0), feat[:1], one[3])
    diff = moved[1][0] - torch.remainder(alone[1][0] + shift, 1.0)
    assert torch.allclose(diff - torch.round(diff), torch.zeros_like(diff), atol=1e-5)  # sites move with a common shift
    assert torch.allclose(moved[0][0], alone[0][0], atol=1e-4) and torch.allclose(moved[2], alone[2], atol=1e-5)
    wrapped = refiner(lp[:1, :n], frac[:1, :n] + torch.randint(-2, 3, (1, n, 3)).float(), feat[:1], one[3])
    assert torch.allclose(wrapped[1], alone[1], atol=1e-4)  # a site and its periodic image are the same input


def test_an_untrained_refiner_is_the_identity_and_the_loss_is_closed_form(crystals):
    batch = collate(crystals[:3])
    lp, frac, feat = _inputs(batch)
    logits, out, cell = CrystalRefiner(NUM_ATOM_TYPES, **CRYSTAL_REFINER_SIZES["CR-T"])(lp, frac, feat, batch.mask)
    assert torch.equal(logits, lp) and torch.allclose(out, frac) and torch.equal(cell, feat)
    truth = lattice_to_features(batch.lattice, torch.ones(3))
    sure = 50.0 * torch.nn.functional.one_hot(batch.types, NUM_ATOM_TYPES).float()
    terms = crystal_refiner_loss(sure, batch.frac, truth, batch.types, batch.frac, truth, batch.mask)
    assert terms["loss"].item() == pytest.approx(0.0, abs=1e-6)
    shifted = crystal_refiner_loss(sure, torch.remainder(batch.frac + 0.37, 1.0), truth, batch.types, batch.frac, truth, batch.mask)
    assert shifted["loss"].item() == pytest.approx(0.0, abs=1e-4)  # a common translation is no error
    one = torch.zeros_like(batch.frac)
    one[0, 0, 0] = 0.1  # one atom of crystal 0 moved by a tenth of its a axis
    moved = crystal_refiner_loss(sure, batch.frac + one, truth, batch.types, batch.frac, truth, batch.mask)
    k = int(batch.mask[0].sum())
    expected = (0.1 * float(batch.lattice[0, 0])) ** 2 * (1 - 1 / k) / float(batch.mask.sum())  # mean shift removed
    assert moved["sites"].item() == pytest.approx(expected, rel=1e-3)


def test_rounds_chain_passes_and_survive_the_file(crystals, tiny_dit_ckpt, tmp_path):
    from sciDiT.generate import load_generator

    batch = collate(crystals[:3])
    lp, frac, feat = _inputs(batch)
    refiner = _random_refiner()
    first = refiner.refine_once(lp, frac, feat, batch.mask)
    second = refiner.refine_once(element_log_probs(first[0]), first[1], first[2], batch.mask)
    refiner.set_rounds(2)
    twice = refiner(lp, frac, feat, batch.mask)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(twice, second))
    assert not torch.allclose(twice[1], first[1], atol=1e-4)  # the second pass reads the first one's crystal
    gen = load_generator(tiny_dit_ckpt)
    path = save_crystal_refiner(tmp_path / "c2.pt", refiner, gen.model.latent_mean, gen.model.latent_std, {})
    assert load_crystal_refiner(path, gen.model.latent_mean, gen.model.latent_std)[0].rounds == 2
    old = {k: v for k, v in refiner.sizes.items() if k != "rounds"}  # files written before rounds existed
    assert CrystalRefiner(**old).rounds == 1
    with pytest.raises(ValueError, match="rounds"):
        refiner.set_rounds(0)


def test_overlap_augmentation_moves_one_atom_onto_another(crystals):
    batch = collate(crystals[:40])
    moved = overlap_atoms(batch.frac, batch.mask, 0.5, torch.Generator().manual_seed(0), jitter=0.0)
    changed = (moved != batch.frac).any(-1)  # [B, N]
    assert torch.equal(moved[~changed], batch.frac[~changed]) and not (changed & ~batch.mask).any()
    per_crystal = changed.sum(1)
    assert set(per_crystal.tolist()) <= {0, 1} and 10 <= int(per_crystal.sum()) <= 30  # about half, one atom each
    for b, i in changed.nonzero().tolist():
        others = batch.frac[b, batch.mask[b]]
        assert (moved[b, i] - others).abs().sum(-1).min() < 1e-6  # now on another atom's site


def test_size_batches_cover_an_epoch_with_little_padding():
    sizes = np.random.default_rng(0).integers(1, 21, 1000)
    batches = size_batches(sizes, 64, np.random.default_rng(1))
    seen = np.concatenate(batches)
    assert len(batches) == 15 and len(set(seen.tolist())) == len(seen) == 960
    assert np.mean([sizes[b].max() - sizes[b].min() for b in batches]) <= 2


def test_training_lowers_the_held_out_loss_of_decodes(crystals, tiny_dit_ckpt):
    from sciDiT.generate import load_generator
    from sciDiT.training.crystal_refiner import decoded_crystals

    gen = load_generator(tiny_dit_ckpt)  # an untrained VAE: its decodes carry little of the crystal, so this checks learning only
    train, test = crystals[:100], collate(crystals[100:])
    refiner, facts = train_crystal_refiner(train, gen.model, size="CR-T", batch_size=16, lr=3e-3, steps=150, minutes=60.0,
                                           latent_noise=0.1, log_every=0)
    assert facts["steps"] == 150 and facts["train_sets"] == 100
    inputs = decoded_crystals(gen.model, test, torch.zeros(test.batch_size), torch.Generator().manual_seed(0))
    truth = (test.types, test.frac, lattice_to_features(test.lattice, torch.ones(test.batch_size)), test.mask)
    with torch.no_grad():
        before = crystal_refiner_loss(*CrystalRefiner(NUM_ATOM_TYPES, **CRYSTAL_REFINER_SIZES["CR-T"])(*inputs, test.mask), *truth)
        after = crystal_refiner_loss(*refiner(*inputs, test.mask), *truth)
    # measured: cell 5.3 -> 1.0, distances 3.0 -> 1.1, elements 4.82 -> 4.64 (sites of an untrained decoder: no signal)
    assert after["lattice"] < 0.5 * before["lattice"] and after["dist"] < 0.5 * before["dist"] and after["types"] < before["types"]


def test_crystal_refiner_file_round_trip_and_one_line_errors(tiny_dit_ckpt, tmp_path):
    from sciDiT.generate import load_generator

    gen = load_generator(tiny_dit_ckpt)
    refiner = _random_refiner()
    path = save_crystal_refiner(tmp_path / "c.pt", refiner, gen.model.latent_mean, gen.model.latent_std, {"steps": 1})
    loaded, contents = load_crystal_refiner(path, gen.model.latent_mean, gen.model.latent_std)
    assert contents["info"] == {"steps": 1}
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), refiner.state_dict().values()))
    with pytest.raises(SciDiTInputError, match="another VAE"):
        load_crystal_refiner(path, gen.model.latent_mean + 1.0, gen.model.latent_std)
    with pytest.raises(SciDiTInputError, match="not a crystal refiner file"):
        load_crystal_refiner(tiny_dit_ckpt, gen.model.latent_mean, gen.model.latent_std)


def test_refine_crystals_in_the_generator_the_cif_manifest_and_the_packed_model(tiny_dit_ckpt, tmp_path):
    from sciDiT.generate import load_generator
    from sciDiT.pretrained import export_pretrained

    gen = load_generator(tiny_dit_ckpt)
    kwargs = dict(n=3, steps=4, seed=0, progress=False, num_atoms=5)
    with pytest.raises(SciDiTInputError, match="refine=true needs a crystal refiner"):
        gen.generate_token_sets("crystal", refine=True, **kwargs)
    path = save_crystal_refiner(tmp_path / "c.pt", _random_refiner(), gen.model.latent_mean, gen.model.latent_std, {})
    refined_gen = load_generator(tiny_dit_ckpt, crystal_refiner=path)
    plain = refined_gen.generate_token_sets("crystal", refine=False, **kwargs)
    assert {ts.meta["structure_source"] for ts in plain} == {"decoded"}
    assert all(torch.equal(a.frac, b.frac) for a, b in zip(plain, gen.generate_token_sets("crystal", **kwargs)))  # auto: off without one
    refined = refined_gen.generate_token_sets("crystal", **kwargs)  # auto: on
    assert {ts.meta["structure_source"] for ts in refined} == {"refined"}
    assert all(not torch.allclose(a.frac, b.frac) for a, b in zip(plain, refined))
    with pytest.raises(SciDiTInputError, match="refine=true needs a geometry refiner"):
        refined_gen.generate_token_sets("molecule", refine=True, **kwargs)
    out = refined_gen.export(refined, tmp_path / "xtals")
    assert "refined" in (out / "manifest.tsv").read_text()

    packed = load_generator(str(export_pretrained(tiny_dit_ckpt, tmp_path / "packed.pt", crystal_refiner=path)))
    again = packed.generate_token_sets("crystal", **kwargs)
    assert all(torch.equal(a.frac, b.frac) and torch.equal(a.types, b.types) for a, b in zip(refined, again))
    assert "crystal_refiner" in torch.load(export_pretrained(tmp_path / "packed.pt", tmp_path / "again.pt"), weights_only=True)
    other = save_crystal_refiner(tmp_path / "o.pt", _random_refiner(), gen.model.latent_mean + 1.0, gen.model.latent_std, {})
    with pytest.raises(SciDiTInputError, match="another VAE"):
        export_pretrained(tiny_dit_ckpt, tmp_path / "bad.pt", crystal_refiner=other)
    assert not (tmp_path / "bad.pt").exists()
