"""Molecular graphs: QM9 ground truth from SMILES, the graph through tokenizer/batch/cache, the VAE's bond
head (symmetry, permutation equivariance, rotation invariance, learns real graphs), decoded-graph
export with flags, and force-field relaxation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from sciDiT.batch import NO_GRAPH, Domain, TokenSet, collate
from sciDiT.data.cache import TokenSetDataset
from sciDiT.data.qm9 import load_qm9
from sciDiT.export import relax_molecule, to_molecules, write_sdf
from sciDiT.export.sdf import force_field
from sciDiT.models.bonds import distance_rbf
from sciDiT.models.vae import POS_SCALE, build_vae
from sciDiT.tokenizers import MoleculeTokenizer
from sciDiT.training.augment import random_rotations


@pytest.fixture(scope="module")
def qm9_sets(data_dir, cache_dir) -> list[TokenSet]:
    """The first 200 real QM9 molecules with their graphs (parsed through the cache)."""
    data = load_qm9(data_dir, cache_dir, limit=200)
    return [data[i] for i in range(len(data))]


def _flat(smiles: str) -> str:
    return Chem.CanonSmiles(smiles, useChiral=0)


def _graph_smiles(ts: TokenSet) -> str:
    mol = MoleculeTokenizer().to_rdkit(ts)
    Chem.SanitizeMol(mol)
    return _flat(Chem.MolToSmiles(Chem.RemoveHs(mol)))


# -- ground truth and the data path ------------------------------------------------------------


def test_qm9_graphs_come_from_the_smiles_and_give_it_back(qm9_sets):
    sources = [ts.meta["graph_source"] for ts in qm9_sets]
    assert sources.count("smiles") >= 0.97 * len(qm9_sets)
    for ts in qm9_sets:
        if ts.meta["graph_source"] == "smiles":
            assert _graph_smiles(ts) == _flat(ts.meta["smiles"])
        assert ts.bonds is None or (ts.bonds[:, 0] < ts.bonds[:, 1]).all()
    # every bond joins atoms at a covalent distance (the SMILES graph was mapped onto the right atoms)
    for ts in qm9_sets:
        if ts.bonds is not None:
            d = (ts.pos[ts.bonds[:, 0]] - ts.pos[ts.bonds[:, 1]]).norm(dim=-1)
            assert d.max() < 1.9 and d.min() > 0.9


@pytest.mark.parametrize("smiles", ["[NH3+]CC([O-])=O", "O=N(=O)C1=CC=CN1"])  # a zwitterion; QM9's pentavalent nitro
def test_graph_from_smiles_keeps_formal_charges(smiles):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=1)
    perm = torch.randperm(mol.GetNumAtoms(), generator=torch.Generator().manual_seed(0)).tolist()
    mol = Chem.RenumberAtoms(mol, perm)  # geometry atoms in another order than the SMILES's
    tok = MoleculeTokenizer()
    numbers = [a.GetAtomicNum() for a in mol.GetAtoms()]
    bonds, charges, source = tok.graph_from_smiles(numbers, mol.GetConformer().GetPositions(), smiles)
    assert source == "smiles" and sorted(charges.tolist()) == [-1] + [0] * (len(numbers) - 2) + [1]
    ts = tok.from_arrays(numbers, mol.GetConformer().GetPositions(), bonds=bonds, charges=charges)
    assert _graph_smiles(ts) == _flat(smiles)


def test_rdkit_round_trip_keeps_the_graph(qm9_sets):
    tok = MoleculeTokenizer()
    for ts in qm9_sets[:30]:
        mol = tok.to_rdkit(ts)
        Chem.SanitizeMol(mol)  # aromatic flags set: from_rdkit must kekulize again
        back = tok.from_rdkit(mol)
        assert torch.equal(back.types, ts.types)
        assert _graph_smiles(back) == _graph_smiles(ts)
        assert torch.equal(back.charges, ts.charges)
        assert {tuple(b) for b in back.bonds[:, :2].tolist()} == {tuple(b) for b in ts.bonds[:, :2].tolist()}


def test_permute_collate_unbatch_and_cache_keep_the_graph(qm9_sets):
    ts = qm9_sets[40]
    perm = torch.randperm(ts.num_tokens, generator=torch.Generator().manual_seed(0))
    moved = ts.permute(perm)
    assert _graph_smiles(moved) == _graph_smiles(ts)
    crystal = TokenSet(torch.tensor([11, 17]), torch.zeros(2, 3), torch.rand(2, 3), torch.zeros(2), torch.tensor([5.0, 5, 5, 90, 90, 90]),
                       Domain.CRYSTAL)
    batch = collate([moved, crystal, ts])
    assert batch.bonds.shape == (3, ts.num_tokens, ts.num_tokens) and batch.has_graph.tolist() == [True, False, True]
    assert (batch.bonds[1] == NO_GRAPH).all() and (batch.bonds[0] == batch.bonds[0].T).all()
    back = batch.unbatch()
    assert back[1].bonds is None and torch.equal(back[0].bonds, moved.bonds) and torch.equal(back[2].charges, ts.charges)
    cached = TokenSetDataset.from_sets([ts, dataclasses.replace(ts, bonds=None, charges=None)])
    assert torch.equal(cached[0].bonds, ts.bonds) and torch.equal(cached[0].charges, ts.charges) and cached[1].bonds is None


# -- the bond head --------------------------------------------------------------------------------


def test_bond_logits_are_symmetric_and_permute_with_the_atoms(qm9_sets):
    torch.manual_seed(0)
    vae = build_vae("VAE-T").eval()
    batch = collate(qm9_sets[:4])
    with torch.no_grad():
        out = vae(batch, sample=False)
    torch.testing.assert_close(out.bond_logits, out.bond_logits.transpose(1, 2), atol=1e-6, rtol=0)
    perm = torch.randperm(batch.types.shape[1], generator=torch.Generator().manual_seed(1))  # padding slots move too
    pb = dataclasses.replace(batch, types=batch.types[:, perm], pos=batch.pos[:, perm], frac=batch.frac[:, perm],
                             values=batch.values[:, perm], mask=batch.mask[:, perm], bonds=batch.bonds[:, perm][:, :, perm],
                             charges=batch.charges[:, perm])
    with torch.no_grad():
        out_p = vae(pb, sample=False)
    real = pb.mask[:, :, None] & pb.mask[:, None, :]  # [B, N, N]
    torch.testing.assert_close(out_p.bond_logits[real], out.bond_logits[:, perm][:, :, perm][real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_p.charge_logits[pb.mask], out.charge_logits[:, perm][pb.mask], atol=1e-4, rtol=1e-4)
    # the decoded graph permutes too
    mu, _ = vae.encode(batch)
    mu_p, _ = vae.encode(pb)
    dec, dec_p = vae.decode_to_batch(mu, batch.mask, batch.domain), vae.decode_to_batch(mu_p, pb.mask, pb.domain)
    assert torch.equal(dec_p.bonds[real], dec.bonds[:, perm][:, :, perm][real])


def test_bond_logits_do_not_change_when_the_decoded_positions_rotate(qm9_sets):
    torch.manual_seed(0)
    vae = build_vae("VAE-T").eval()
    batch = collate(qm9_sets[:4])
    mu, _ = vae.encode(batch)
    h = vae.decode_states(mu, batch.mask, batch.domain)  # [B, N, D]
    pos = vae.output_heads(h, batch.mask)[1] * POS_SCALE  # [B, N, 3] decoded positions, Angstrom
    rot = random_rotations(4, torch.Generator().manual_seed(2))  # [B, 3, 3]
    with torch.no_grad():
        logits, charges = vae.graph_logits(h, pos)
        logits_r, charges_r = vae.graph_logits(h, pos @ rot.transpose(1, 2) + torch.tensor([1.0, -2.0, 0.5]))
    torch.testing.assert_close(logits_r, logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(charges_r, charges)


def test_distance_features_peak_at_the_pair_distance():
    pos = torch.tensor([[[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]]])
    rbf = distance_rbf(pos, num_rbf=33, max_distance=4.0)  # centres every 0.125 A
    assert int(rbf[0, 0, 1].argmax()) == 12 and torch.isclose(rbf[0, 0, 1].max(), torch.tensor(1.0))


def test_a_tiny_vae_learns_the_graphs_of_real_molecules(qm9_sets):
    """After a few hundred steps on 8 real QM9 molecules their decoded graph is their true graph."""
    torch.manual_seed(0)
    sets = [ts for ts in qm9_sets[100:200] if ts.bonds is not None][:8]
    batch = collate(sets)
    vae = build_vae("VAE-T")
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    # the rate decays to 0: at a constant rate the bond errors spike now and then (0 -> 144 of 674 pairs and back), so
    # whether step 500 met a spike hung on rounding (it did with 2 threads on an AVX2 CPU, or after other tests)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / 500)
    for _ in range(500):
        terms = vae.loss(vae(batch, sample=False), batch)
        loss = terms["types"] + terms["pos"] + terms["bonds"] + terms["charges"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    vae.eval()
    recon = vae.reconstruct(batch)
    assert torch.equal(recon.types, batch.types)
    assert torch.equal(recon.bonds, batch.bonds) and torch.equal(recon.charges, batch.charges)
    for ts, back in zip(sets, recon.unbatch()):
        assert _graph_smiles(back) == _flat(ts.meta["smiles"])


def test_crystals_get_no_graph_and_add_no_bond_loss():
    vae = build_vae("VAE-T")
    crystal = TokenSet(torch.tensor([11, 17]), torch.zeros(2, 3), torch.tensor([[0.0, 0, 0], [0.5, 0.5, 0.5]]), torch.zeros(2),
                       torch.tensor([5.0, 5, 5, 90, 90, 90]), Domain.CRYSTAL)
    batch = collate([crystal])
    terms = vae.loss(vae(batch), batch)
    assert terms["bonds"] == 0 and terms["charges"] == 0
    assert vae.reconstruct(batch).unbatch()[0].bonds is None


def test_a_vae_without_a_bond_head_decodes_no_graph():
    vae = build_vae("VAE-T", bond_head=False)
    batch = collate([MoleculeTokenizer().from_arrays([8, 1, 1], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])])
    assert vae(batch).bond_logits is None and "bonds" not in vae.loss(vae(batch), batch)
    assert vae.reconstruct(batch).bonds is None


# -- export and relaxation ------------------------------------------------------------------------


def _props(mol: Chem.Mol) -> dict:
    return mol.GetPropsAsDict(includePrivate=False)


def test_decoded_graphs_are_written_and_bad_ones_flagged(qm9_sets, tmp_path):
    good = dataclasses.replace(qm9_sets[5], meta={})  # a generated sample has no graph_source
    bad_bonds = good.bonds.clone()
    bad_bonds[:, 2] = 3  # every bond triple: impossible valences
    bad = dataclasses.replace(good, bonds=bad_bonds)
    no_graph = dataclasses.replace(good, bonds=None, charges=None)
    path = write_sdf([good, bad, no_graph], tmp_path / "decoded.sdf")
    raw = list(Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False))
    props = [_props(m) for m in raw]
    assert [p["bond_source"] for p in props] == ["decoded", "decoded", "perceived"]
    assert props[0]["sanitized"] == 1 and _flat(props[0]["smiles"]) == _flat(qm9_sets[5].meta["smiles"])
    assert props[1]["sanitized"] == 0 and "valence" in props[1]["sanitize_error"].lower()
    assert raw[1].GetNumAtoms() == good.num_tokens and all(b.GetBondTypeAsDouble() == 3 for b in raw[1].GetBonds())
    assert props[2]["bond_perception"] == "bond_orders"


def test_relaxation_keeps_the_graph_and_lowers_the_mmff_energy(qm9_sets):
    ts = qm9_sets[60]
    g = torch.Generator().manual_seed(0)
    jittered = dataclasses.replace(ts, pos=ts.pos + 0.1 * torch.randn(ts.pos.shape, generator=g), meta={})
    before, after = to_molecules([jittered]), to_molecules([jittered], relax=True)
    assert after[0].GetIntProp("relaxed") == 1 and after[0].GetProp("relax_force_field") == "MMFF94"
    assert after[0].GetIntProp("sanitized") == 1 and after[0].GetProp("smiles") == before[0].GetProp("smiles")

    def energy(mol: Chem.Mol) -> float:
        mol = Chem.Mol(mol)
        Chem.SanitizeMol(mol)
        ff, name = force_field(mol)
        assert name == "MMFF94"
        return ff.CalcEnergy()

    assert energy(after[0]) < energy(before[0]) - 1.0
    bad = dataclasses.replace(jittered, bonds=torch.cat([jittered.bonds[:, :2], torch.full_like(jittered.bonds[:, 2:], 3)], 1))
    flagged = relax_molecule(to_molecules([bad])[0])
    assert flagged.GetIntProp("relaxed") == 0  # an unsanitizable graph is written as decoded


def test_restrained_relaxation_stays_near_the_start_and_fixes_bond_lengths(qm9_sets):
    ts = qm9_sets[60]
    g = torch.Generator().manual_seed(0)
    start = ts.pos + 0.15 * torch.randn(ts.pos.shape, generator=g)
    mol = to_molecules([dataclasses.replace(ts, pos=start, meta={})])[0]
    free, held = relax_molecule(mol), relax_molecule(mol, max_displacement=0.05, restraint_k=1000.0)
    moved = {name: np.linalg.norm(m.GetConformer().GetPositions() - start.double().numpy(), axis=1) for name, m in (("free", free), ("held", held))}
    assert held.GetIntProp("relaxed") == 1 and moved["held"].max() < 0.15 < moved["free"].max()  # held near the start
    bonds = ts.bonds[:, :2].numpy()

    def bond_error(pos: np.ndarray) -> float:
        true = np.linalg.norm(ts.pos.double().numpy()[bonds[:, 0]] - ts.pos.double().numpy()[bonds[:, 1]], axis=1)
        return float(np.abs(np.linalg.norm(pos[bonds[:, 0]] - pos[bonds[:, 1]], axis=1) - true).mean())

    loose = relax_molecule(mol, max_displacement=0.3)
    assert bond_error(loose.GetConformer().GetPositions()) < 0.5 * bond_error(start.double().numpy())  # local geometry fixed
