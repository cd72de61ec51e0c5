"""The geometry refiner: equivariance, training on real molecules, its file, packing and use in the generator."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sciDiT.batch import collate
from sciDiT.errors import SciDiTInputError
from sciDiT.models.refiner import REFINER_SIZES, GeometryRefiner, refiner_loss
from sciDiT.training.refiner import ROUGH_KEY, load_refiner, refine_batch, rough_positions, save_refiner, train_refiner


def _random_refiner(seed: int = 0) -> GeometryRefiner:
    """An R-T refiner whose position updates are switched on (they start as the identity)."""
    torch.manual_seed(seed)
    refiner = GeometryRefiner(**REFINER_SIZES["R-T"])
    with torch.no_grad():
        for layer in refiner.layers:
            layer.coord[-1].weight.normal_(0, 0.3)
    return refiner.eval()


@pytest.fixture(scope="module")
def molecules(data_dir, cache_dir):
    from sciDiT.data.qm9 import load_qm9_split

    data = load_qm9_split("train", data_dir, cache_dir, limit=300)
    return [s for s in (data[i] for i in range(len(data))) if s.bonds is not None]


def _rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed)))
    return q * torch.sign(torch.linalg.det(q))  # a proper rotation


def test_refiner_is_rotation_translation_and_permutation_equivariant_and_ignores_padding(molecules):
    refiner = _random_refiner()
    batch = collate(molecules[:4])
    rough = batch.pos + 0.2 * torch.randn(batch.pos.shape, generator=torch.Generator().manual_seed(1))
    out = refine_batch(refiner, replace(batch, pos=rough))  # [B, N, 3]
    assert not torch.allclose(out, rough)  # it moves atoms
    rot, shift = _rotation(2), torch.tensor([1.0, -2.0, 0.5])
    moved = refiner(batch.types, batch.charges, batch.bonds, (rough @ rot.T + shift) * batch.mask[..., None], batch.mask)
    assert torch.allclose(moved[batch.mask], out[batch.mask] @ rot.T + shift, atol=1e-4)
    n = int(batch.mask[0].sum())
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    one = molecules[0]
    alone = refiner(one.types[None], one.charges[None], _dense(one)[None], rough[0, :n][None], torch.ones(1, n, dtype=torch.bool))[0]
    assert torch.allclose(alone, out[0, :n], atol=1e-5)  # padding and the other molecules change nothing
    shuffled = refiner(one.types[perm][None], one.charges[perm][None], _dense(one)[perm][:, perm][None], rough[0, perm][None],
                       torch.ones(1, n, dtype=torch.bool))[0]
    assert torch.allclose(shuffled, alone[perm], atol=1e-5)


def _dense(ts) -> torch.Tensor:
    n = ts.num_tokens
    bonds = torch.zeros(n, n, dtype=torch.long)
    bonds[ts.bonds[:, 0], ts.bonds[:, 1]] = bonds[ts.bonds[:, 1], ts.bonds[:, 0]] = ts.bonds[:, 2]
    return bonds


def test_an_untrained_refiner_is_the_identity_and_the_loss_of_the_truth_is_zero(molecules):
    batch = collate(molecules[:3])
    refiner = GeometryRefiner(**REFINER_SIZES["R-T"])
    assert torch.equal(refine_batch(refiner, batch), batch.pos)
    terms = refiner_loss(batch.pos, batch.pos, batch.mask)
    assert terms["loss"].item() == pytest.approx(0.0, abs=1e-10)
    shifted = refiner_loss(batch.pos + torch.tensor([0.1, 0.0, 0.0]), batch.pos, batch.mask)
    assert shifted["pos"].item() == pytest.approx(0.01, rel=1e-5) and shifted["dist"].item() == pytest.approx(0.0, abs=1e-8)


def test_training_restores_bond_lengths_of_noised_real_molecules(molecules):
    train, test = molecules[:200], molecules[200:260]
    refiner, facts = train_refiner(train, None, size="R-T", batch_size=32, lr=3e-3, steps=300, minutes=60.0, pos_noise=0.15, log_every=0)
    assert facts["steps"] == 300
    batch = collate(test)
    rough = batch.pos + 0.1 * torch.randn(batch.pos.shape, generator=torch.Generator().manual_seed(0)) * batch.mask[..., None]
    refined = refine_batch(refiner, replace(batch, pos=rough))
    bonded = batch.bonds > 0
    true = torch.cdist(batch.pos, batch.pos)[bonded]
    before = (torch.cdist(rough, rough)[bonded] - true).abs().mean()
    after = (torch.cdist(refined, refined)[bonded] - true).abs().mean()
    assert after < 0.6 * before  # noise of 0.1 A per coordinate: bond errors ~0.1 A before


def test_rounds_train_the_passes_unrolled(molecules, monkeypatch):
    import numpy as np

    import sciDiT.training.refiner as training

    seen, loss = [], training.refiner_loss

    def recording(pred, *args):
        seen.append(pred.detach())
        return loss(pred, *args)

    monkeypatch.setattr(training, "refiner_loss", recording)
    start = _random_refiner()  # not the identity, so the passes differ; lr 0 keeps it as it is
    refiner, facts = train_refiner(molecules[:40], None, batch_size=8, lr=0.0, steps=1, minutes=60.0, log_every=0, init=start, rounds=3)
    assert facts["rounds"] == 3 and len(seen) == 1
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)  # the run's draws: seed 0
    batch = collate([molecules[i] for i in rng.choice(40, 8, replace=False)])
    one = pos = rough_positions(batch, None, 0.5, 0.3, gen)
    with torch.no_grad():
        for k in range(3):
            pos = refiner(batch.types, batch.charges, batch.bonds, pos, batch.mask)
            one = pos if k == 0 else one
    assert torch.allclose(seen[0], pos, atol=1e-5) and not torch.allclose(seen[0], one, atol=1e-3)  # the loss saw the third pass


def test_weights_decide_which_sets_are_drawn(molecules):
    poisoned = [replace(ts, pos=torch.full_like(ts.pos, float("nan"))) for ts in molecules[:20]]  # a draw makes the weights NaN
    sets = molecules[20:120] + poisoned
    kwargs = dict(size="R-T", batch_size=16, lr=1e-3, steps=10, minutes=60.0, log_every=0)
    weighted, _ = train_refiner(sets, None, weights=[1.0] * 100 + [0.0] * 20, **kwargs)
    assert all(torch.isfinite(p).all() for p in weighted.parameters())
    uniform, _ = train_refiner(sets, None, **kwargs)
    assert not all(torch.isfinite(p).all() for p in uniform.parameters())


def test_sets_with_rough_positions_of_their_own_get_them_as_input(molecules):
    own = replace(molecules[1], meta={ROUGH_KEY: molecules[1].pos + 0.25})
    batch = collate([molecules[0], own, molecules[2]])
    rough = rough_positions(batch, None, latent_noise=0.5, pos_noise=0.3, generator=torch.Generator().manual_seed(0))  # [3, N, 3]
    n = own.num_tokens
    assert torch.equal(rough[1, :n], own.meta[ROUGH_KEY])  # its own input, no drawn noise
    assert torch.equal(rough[1, n:], torch.zeros_like(rough[1, n:]))  # padding stays zero
    for b in (0, 2):
        m = batch.mask[b]
        assert 0 < (rough[b][m] - batch.pos[b][m]).abs().max() < 2.0  # the others: true positions plus drawn noise


def test_decoding_alternates_refinement_and_graph_decoding_on_the_refined_geometry(tiny_dit_ckpt):
    from sciDiT.generate import load_generator
    from sciDiT.models.vae import REFINE_PASSES, REFINE_ROUNDS

    gen = load_generator(tiny_dit_ckpt)
    vae, refiner = gen.model.vae, _random_refiner()
    torch.manual_seed(0)
    z, mask = torch.randn(3, 6, vae.latent_dim), torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    domain = torch.zeros(3, dtype=torch.long)  # molecules
    calls = []

    def recording(types, charges, bonds, pos, mask_):
        calls.append((bonds.clone(), pos.clone()))
        return refiner(types, charges, bonds, pos, mask_)

    out = vae.decode_to_batch(z, mask, domain, refiner=recording)
    plain = vae.decode_to_batch(z, mask, domain)
    assert len(calls) == max(REFINE_ROUNDS, REFINE_PASSES)
    assert torch.equal(calls[0][0], plain.bonds) and torch.equal(calls[0][1], plain.pos)  # first round: the decoded graph
    h = vae.decode_states(z, mask, domain)
    first = refiner(plain.types, plain.charges, plain.bonds, plain.pos, mask)
    again = vae.decode_graph(h, mask, domain, first, plain.types, torch.zeros(3, 6, 1), None)[1]  # argmax graph at the refined places
    assert torch.equal(calls[1][0], again)
    last = refiner(out.types, out.charges, calls[-1][0], calls[-1][1], mask)
    kept = [b for b, meta in enumerate(out.meta) if meta["geometry_source"] == "refined"]  # not undone as collapsed
    assert kept and all(torch.allclose(out.pos[b], last[b], atol=1e-6) for b in kept)


def test_passes_after_the_graph_rounds_keep_the_last_graph(tiny_dit_ckpt, monkeypatch):
    import sciDiT.models.vae as vae_module
    from sciDiT.generate import load_generator

    gen = load_generator(tiny_dit_ckpt)
    vae, refiner = gen.model.vae, _random_refiner()
    torch.manual_seed(0)
    z, mask, domain = torch.randn(2, 5, vae.latent_dim), torch.ones(2, 5, dtype=torch.bool), torch.zeros(2, dtype=torch.long)
    calls, graphs = [], []
    decode_graph = vae.decode_graph

    def recording(types, charges, bonds, pos, mask_):
        calls.append((bonds.clone(), pos.clone(), types.clone(), charges.clone()))
        return refiner(types, charges, bonds, pos, mask_)

    def counting(*args, **kwargs):
        graphs.append(1)
        return decode_graph(*args, **kwargs)

    monkeypatch.setattr(vae, "decode_graph", counting)
    monkeypatch.setattr(vae_module, "REFINE_PASSES", vae_module.REFINE_ROUNDS + 2)
    vae.decode_to_batch(z, mask, domain, refiner=recording)
    rounds = vae_module.REFINE_ROUNDS
    assert len(calls) == rounds + 2 and len(graphs) == rounds  # the first decoding, then one after each round but the last
    assert all(torch.equal(c[0], calls[rounds - 1][0]) for c in calls[rounds:])  # the last graph, kept
    for k in range(rounds - 1, rounds + 1):  # each later pass reads the last one's positions
        bonds, pos, types, charges = calls[k]
        assert torch.allclose(calls[k + 1][1], refiner(types, charges, bonds, pos, mask).float(), atol=1e-6)


def test_a_refinement_that_collapses_atoms_is_undone_for_that_molecule(tiny_dit_ckpt):
    from sciDiT.generate import load_generator
    from sciDiT.models.vae import REFINED_MIN_DISTANCE

    vae = load_generator(tiny_dit_ckpt).model.vae
    torch.manual_seed(0)
    z, mask = torch.randn(3, 6, vae.latent_dim), torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    domain = torch.zeros(3, dtype=torch.long)  # molecules

    def collapse_second(types, charges, bonds, pos, mask_):  # moves molecule 1's atom 1 onto its atom 0, shifts the others
        out = pos + 0.25
        out[1, 1] = out[1, 0] + 0.5 * REFINED_MIN_DISTANCE
        return out

    plain = vae.decode_to_batch(z, mask, domain)
    out = vae.decode_to_batch(z, mask, domain, refiner=collapse_second)
    assert [m["geometry_source"] for m in out.meta] == ["refined", "decoded", "refined"]
    assert torch.equal(out.pos[1], plain.pos[1]) and torch.equal(out.bonds[1], plain.bonds[1])  # as decoded, graph and all
    assert not torch.allclose(out.pos[0][mask[0]], plain.pos[0][mask[0]])


def test_refiner_file_round_trip_and_one_line_errors(tiny_dit_ckpt, tmp_path):
    from sciDiT.generate import load_generator

    gen = load_generator(tiny_dit_ckpt)
    refiner = _random_refiner()
    path = save_refiner(tmp_path / "r.pt", refiner, gen.model.latent_mean, gen.model.latent_std, {"steps": 1})
    loaded, contents = load_refiner(path, gen.model.latent_mean, gen.model.latent_std)
    assert contents["info"] == {"steps": 1}
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), refiner.state_dict().values()))
    with pytest.raises(SciDiTInputError, match="another VAE"):
        load_refiner(path, gen.model.latent_mean + 1.0, gen.model.latent_std)
    with pytest.raises(SciDiTInputError, match="not a geometry refiner file"):
        load_refiner(tiny_dit_ckpt, gen.model.latent_mean, gen.model.latent_std)


def test_refine_in_the_generator_the_sd_file_and_the_packed_model(tiny_dit_ckpt, tmp_path):
    from rdkit import Chem

    from sciDiT.generate import load_generator
    from sciDiT.pretrained import export_pretrained

    gen = load_generator(tiny_dit_ckpt)
    kwargs = dict(n=3, steps=4, seed=0, progress=False, num_atoms=6)
    with pytest.raises(SciDiTInputError, match="refine=true needs a geometry refiner"):
        gen.generate_token_sets("molecule", refine=True, **kwargs)
    path = save_refiner(tmp_path / "r.pt", _random_refiner(), gen.model.latent_mean, gen.model.latent_std, {})
    refined_gen = load_generator(tiny_dit_ckpt, refiner=path)
    with pytest.raises(SciDiTInputError, match="refine=true needs a crystal refiner"):
        refined_gen.generate_token_sets("crystal", refine=True, **kwargs)
    plain = refined_gen.generate_token_sets("molecule", refine=False, **kwargs)
    assert {ts.meta["geometry_source"] for ts in plain} == {"decoded"}
    assert all(torch.equal(a.pos, b.pos) for a, b in zip(plain, gen.generate_token_sets("molecule", **kwargs)))  # auto: off without one
    refined = refined_gen.generate_token_sets("molecule", refine=True, **kwargs)
    assert {ts.meta["geometry_source"] for ts in refined} == {"refined"}
    assert all(torch.equal(a.pos, b.pos) for a, b in zip(refined, refined_gen.generate_token_sets("molecule", **kwargs)))  # auto: on
    assert len(refined_gen.generate_token_sets("crystal", **kwargs)) == 3  # auto leaves crystals alone
    assert all(a.num_tokens == b.num_tokens and not torch.allclose(a.pos, b.pos) for a, b in zip(plain, refined))
    sdf = refined_gen.export(refined, tmp_path / "m.sdf")
    assert [m.GetProp("geometry_source") for m in Chem.SDMolSupplier(str(sdf), sanitize=False, removeHs=False)] == ["refined"] * 3

    packed = load_generator(str(export_pretrained(tiny_dit_ckpt, tmp_path / "packed.pt", refiner=path)))
    again = packed.generate_token_sets("molecule", refine=True, **kwargs)
    assert all(torch.equal(a.pos, b.pos) for a, b in zip(refined, again))  # packed in float32: the same refiner
    borrowed = load_generator(tiny_dit_ckpt, refiner=tmp_path / "packed.pt")  # a model file that packs one lends it
    assert all(torch.equal(a.pos, b.pos) for a, b in zip(refined, borrowed.generate_token_sets("molecule", **kwargs)))
    assert "refiner" in torch.load(export_pretrained(tmp_path / "packed.pt", tmp_path / "again.pt"), weights_only=True)  # kept
    other = save_refiner(tmp_path / "o.pt", _random_refiner(), gen.model.latent_mean + 1.0, gen.model.latent_std, {})
    with pytest.raises(SciDiTInputError, match="another VAE"):
        export_pretrained(tiny_dit_ckpt, tmp_path / "bad.pt", refiner=other)
    assert not (tmp_path / "bad.pt").exists()
