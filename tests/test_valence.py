"""Valence-constrained graph decoding: closed-form cases and the sampling path."""

import numpy as np
import torch
from rdkit import Chem

from sciDiT.tokenizers.valence import constrained_bond_orders


def _log_probs(n: int, pairs: dict[tuple[int, int], list[float]]) -> np.ndarray:
    """[n, n, 4] log-probabilities: "no bond" for sure except the given pairs' order distributions."""
    p = np.zeros((n, n, 4))
    p[..., 0] = 1.0
    for (i, j), dist in pairs.items():
        p[i, j] = p[j, i] = dist
    return np.log(np.clip(p, 1e-12, None))


def test_benzene_ring_with_undecided_orders_is_decoded_as_a_kekule_structure():
    # C0..C5 ring, H6..H11 on each carbon; ring bonds 50/50 single/double (per-pair argmax cannot kekulize)
    ring = {(k, (k + 1) % 6): [0.0, 0.5, 0.5, 0.0] for k in range(6)}
    ring = {tuple(sorted(p)): v for p, v in ring.items()}
    ch = {(k, k + 6): [0.05, 0.95, 0.0, 0.0] for k in range(6)}
    types = np.array([6] * 6 + [1] * 6)
    bonds = constrained_bond_orders(types, np.zeros(12, int), _log_probs(12, {**ring, **ch}))
    assert bonds is not None and (bonds == bonds.T).all()
    ring_orders = [bonds[k, (k + 1) % 6] for k in range(6)]
    assert sorted(ring_orders) == [1, 1, 1, 2, 2, 2] and all(ring_orders[k] != ring_orders[(k + 1) % 6] for k in range(6))
    assert all(bonds[k, k + 6] == 1 for k in range(6)) and bonds.sum() == 2 * (9 + 6)


def test_the_most_probable_valid_graph_wins_and_impossible_valences_give_none():
    # formaldehyde C0 O1 H2 H3: C=O at 40% vs C-O at 60% per pair, but only C=O gives C and O their valences
    types = np.array([6, 8, 1, 1])
    pairs = {(0, 1): [0.0, 0.6, 0.4, 0.0], (0, 2): [0.1, 0.9, 0, 0], (0, 3): [0.1, 0.9, 0, 0]}
    bonds = constrained_bond_orders(types, np.zeros(4, int), _log_probs(4, pairs))
    assert bonds[0, 1] == 2 and bonds[0, 2] == bonds[0, 3] == 1
    # CH3 (odd electron count): no closed-shell graph exists
    assert constrained_bond_orders(np.array([6, 1, 1, 1]), np.zeros(4, int), _log_probs(4, {(0, k): [0.1, 0.9, 0, 0] for k in (1, 2, 3)})) is None
    # an element without a valence entry
    assert constrained_bond_orders(np.array([26, 1]), np.zeros(2, int), _log_probs(2, {(0, 1): [0.1, 0.9, 0, 0]})) is None


def test_pairs_below_min_prob_are_never_bonded():
    # water whose second O-H the head thinks unlikely (p = 1e-4): no graph with that bond is allowed
    types = np.array([8, 1, 1])
    lp = _log_probs(3, {(0, 1): [0.1, 0.9, 0, 0], (0, 2): [1 - 1e-4, 1e-4, 0, 0]})
    assert constrained_bond_orders(types, np.zeros(3, int), lp, min_prob=1e-3) is None
    assert constrained_bond_orders(types, np.zeros(3, int), lp, min_prob=1e-5)[0, 2] == 1


def test_the_vae_puts_the_graph_decoders_orders_in_place_and_keeps_argmax_where_it_gives_none():
    from ase.build import molecule

    from sciDiT.batch import NO_GRAPH, collate
    from sciDiT.models.vae import build_vae
    from sciDiT.tokenizers import MoleculeTokenizer

    torch.manual_seed(0)
    vae = build_vae("VAE-T").eval()
    mt = MoleculeTokenizer()
    batch = collate([mt.from_ase(molecule("H2O")), mt.from_ase(molecule("CH4"))])
    mu, _ = vae.encode(batch)
    seen = []

    def decoder(types, charges, log_probs):  # bond everything to atom 0 in the first molecule, give up on the second
        seen.append((types.shape, charges.shape, log_probs.shape))
        if len(seen) == 2:
            return None
        orders = torch.zeros(len(types), len(types), dtype=torch.long)
        orders[0, 1:] = orders[1:, 0] = 1
        return orders

    plain = vae.decode_to_batch(mu, batch.mask, batch.domain)
    out = vae.decode_to_batch(mu, batch.mask, batch.domain, graph_decoder=decoder)
    assert seen == [((3,), (3,), (3, 3, 4)), ((5,), (5,), (5, 5, 4))]  # each molecule alone, without padding
    assert [m["graph_source"] for m in out.meta] == ["decoded_constrained", "decoded"]
    assert out.bonds[0, :3, :3].tolist() == [[NO_GRAPH, 1, 1], [1, NO_GRAPH, 0], [1, 0, NO_GRAPH]]
    assert torch.equal(out.bonds[1], plain.bonds[1]) and torch.equal(out.pos, plain.pos)


def test_generator_bond_decoding_changes_only_the_bonds(tiny_dit_ckpt):
    import pytest

    from sciDiT.errors import SciDiTInputError
    from sciDiT.generate import load_generator

    gen = load_generator(tiny_dit_ckpt)
    sets = gen.generate_token_sets("molecule", n=4, steps=2, seed=0, progress=False, bond_decoding="constrained")
    argmax = gen.generate_token_sets("molecule", n=4, steps=2, seed=0, progress=False)
    for s, a in zip(sets, argmax):
        assert torch.equal(s.types, a.types) and torch.equal(s.pos, a.pos)
        assert a.meta["graph_source"] == "decoded" and s.meta["graph_source"] in ("decoded", "decoded_constrained")
    with pytest.raises(SciDiTInputError, match="bond_decoding"):
        gen.generate_token_sets("molecule", n=1, steps=1, progress=False, bond_decoding="greedy")
