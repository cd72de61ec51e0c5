"""Valence-constrained graph decoding: closed-form cases and the sampling path."""

import numpy as np
import torch

from sciDiT.tokenizers.valence import constrained_bond_orders, joint_graph


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


def _atom_log_probs(rows: list[dict[int, float]], k: int = 10) -> np.ndarray:
    """[n, k] element log-probabilities: each row's {atomic number: probability}."""
    p = np.full((len(rows), k), 1e-12)
    for a, row in enumerate(rows):
        for z, q in row.items():
            p[a, z] = q
    return np.log(p / p.sum(-1, keepdims=True))


def test_joint_decoding_turns_an_odd_electron_composition_into_the_most_probable_closed_shell_one():
    # "CH3-H?" : C0 with H1, H2, H3 and atom 4 that is 70% H, 30% F. Odd electrons with argmax, and
    # atom 4 is also 0.3 bonded to C. The closed-shell answers: methane (atom 4 = H bonded to C), or
    # CH3F. Methane wins: log 0.7 > log 0.3 at equal bond gains.
    types = _atom_log_probs([{6: 1.0}, {1: 1.0}, {1: 1.0}, {1: 1.0}, {1: 0.7, 9: 0.3}])
    charges = np.log(np.tile([1e-6, 1.0 - 2e-6, 1e-6], (5, 1)))  # classes -1, 0, +1: neutral for sure
    bonds = _log_probs(5, {(0, k): [0.05, 0.95, 0, 0] for k in (1, 2, 3, 4)})
    graph = joint_graph(types, charges, bonds)
    assert graph is not None and graph.types.tolist() == [6, 1, 1, 1, 1] and graph.charges.tolist() == [0] * 5
    assert graph.orders[0].tolist() == [0, 1, 1, 1, 1]
    # ... and the argmax-only decoder has nothing to offer for "CH3" alone
    assert constrained_bond_orders(np.array([6, 1, 1, 1]), np.zeros(4, int), bonds[:4, :4]) is None
    # an element the head gives no chance (< min_prob) is never chosen: CH3 + an atom that is surely H
    # with no bond it can make is infeasible
    lonely = _log_probs(5, {(0, k): [0.05, 0.95, 0, 0] for k in (1, 2, 3)})
    assert joint_graph(_atom_log_probs([{6: 1.0}] + [{1: 1.0}] * 4), charges, lonely) is None


def test_no_bond_is_longer_than_the_geometry_allows_for_the_chosen_elements():
    # the CH3 + (70% H, 30% F) molecule of the test above, with atom 4 at 1.60 A from C: too long for
    # C-H (1.3 x (0.76 + 0.31) = 1.39 A, RDKit's radii) but not for C-F (1.3 x (0.76 + 0.57) = 1.73 A): CH3F, not methane
    types = _atom_log_probs([{6: 1.0}, {1: 1.0}, {1: 1.0}, {1: 1.0}, {1: 0.7, 9: 0.3}])
    charges = np.log(np.tile([1e-6, 1.0 - 2e-6, 1e-6], (5, 1)))
    bonds = _log_probs(5, {(0, k): [0.05, 0.95, 0, 0] for k in (1, 2, 3, 4)})
    pos = np.array([[0.0, 0, 0], [1.09, 0, 0], [-0.36, 1.03, 0], [-0.36, -0.51, 0.89], [-0.53, -0.75, -1.31]])
    pos[4] *= 1.60 / np.linalg.norm(pos[4])
    assert joint_graph(types, charges, bonds).types.tolist() == [6, 1, 1, 1, 1]
    graph = joint_graph(types, charges, bonds, pos=pos)
    assert graph.types.tolist() == [6, 1, 1, 1, 9] and graph.orders[0].tolist() == [0, 1, 1, 1, 1]
    # bonds alone (argmax atoms): methane with that H at 1.60 A has no graph the geometry supports
    assert constrained_bond_orders(np.array([6, 1, 1, 1, 1]), np.zeros(5, int), bonds) is not None
    assert constrained_bond_orders(np.array([6, 1, 1, 1, 1]), np.zeros(5, int), bonds, pos=pos) is None


def test_joint_decoding_prefers_a_connected_graph_and_keeps_the_molecule_neutral():
    # two waters O0 H1 H2, O3 H4 H5 whose H2-O3 pair the head gives 2%: the best graph is two waters,
    # but a connected one needs H2 bonded to O3: possible only as [H2O-H-OH]... which breaks valences,
    # so the decoder falls back to the disconnected pair of waters (still neutral, closed shell)
    rows = [{8: 1.0}, {1: 1.0}, {1: 1.0}, {8: 1.0}, {1: 1.0}, {1: 1.0}]
    neutral = np.log(np.tile([1e-6, 1.0 - 2e-6, 1e-6], (6, 1)))
    pairs = {(0, 1): [0.05, 0.95, 0, 0], (0, 2): [0.05, 0.95, 0, 0], (3, 4): [0.05, 0.95, 0, 0], (3, 5): [0.05, 0.95, 0, 0],
             (2, 3): [0.98, 0.02, 0, 0]}
    graph = joint_graph(_atom_log_probs(rows), neutral, _log_probs(6, pairs))
    assert graph is not None and graph.orders.sum() == 2 * 4 and graph.orders[2, 3] == 0
    # formaldehyde C0=O1 (H2, H3 on C) beside an H4-H5 molecule is the most probable graph, but the head
    # gives C-H4 and O-H5 5% each: the connected methanol (C-O single) is chosen over the two fragments
    rows = [{6: 1.0}, {8: 1.0}] + [{1: 1.0}] * 4
    pairs = {(0, 1): [0.05, 0.45, 0.5, 0], (0, 2): [0.05, 0.95, 0, 0], (0, 3): [0.05, 0.95, 0, 0], (4, 5): [0.1, 0.9, 0, 0],
             (0, 4): [0.95, 0.05, 0, 0], (1, 5): [0.95, 0.05, 0, 0]}
    lp = _log_probs(6, pairs)
    assert constrained_bond_orders(np.array([6, 8, 1, 1, 1, 1]), np.zeros(6, int), lp)[0, 1] == 2  # bonds alone: two fragments
    graph = joint_graph(_atom_log_probs(rows), np.log(np.tile([1e-6, 1.0 - 2e-6, 1e-6], (6, 1))), lp)
    assert graph is not None and graph.orders[0, 1] == 1 and graph.orders[0, 4] == graph.orders[1, 5] == 1 and graph.orders[4, 5] == 0
    # a zwitterion is allowed, a net charge is not: NH3 whose N the charge head calls 60% N+ stays neutral NH3
    rows = [{7: 1.0}, {1: 1.0}, {1: 1.0}, {1: 1.0}]
    charge = np.log(np.array([[1e-6, 0.4, 0.6]] + [[1e-6, 1.0 - 2e-6, 1e-6]] * 3))
    graph = joint_graph(_atom_log_probs(rows), charge, _log_probs(4, {(0, k): [0.05, 0.95, 0, 0] for k in (1, 2, 3)}))
    assert graph is not None and graph.charges.tolist() == [0, 0, 0, 0]


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

    class Decoder:  # bond everything to atom 0 of the first molecule and make it an ammonium N+, give up on the second
        source = "decoded_test"

        def __call__(self, type_log_probs, charge_log_probs, log_probs, pos, charge_offset):
            seen.append((type_log_probs.shape[0], charge_log_probs.shape[0], log_probs.shape, pos.shape, charge_offset))
            if len(seen) == 2:
                return None
            n = len(type_log_probs)
            orders = torch.zeros(n, n, dtype=torch.long)
            orders[0, 1:] = orders[1:, 0] = 1
            return torch.tensor([7] + [1] * (n - 1)), torch.tensor([1] + [0] * (n - 1)), orders

    plain = vae.decode_to_batch(mu, batch.mask, batch.domain)
    out = vae.decode_to_batch(mu, batch.mask, batch.domain, graph_decoder=Decoder())
    assert seen == [(3, 3, (3, 3, 4), (3, 3), 1), (5, 5, (5, 5, 4), (5, 3), 1)]  # each molecule alone, without padding
    assert [m["graph_source"] for m in out.meta] == ["decoded_test", "decoded"]
    assert out.bonds[0, :3, :3].tolist() == [[NO_GRAPH, 1, 1], [1, NO_GRAPH, 0], [1, 0, NO_GRAPH]]
    assert out.types[0, :3].tolist() == [7, 1, 1] and out.charges[0, :3].tolist() == [1, 0, 0]
    assert torch.equal(out.bonds[1], plain.bonds[1]) and torch.equal(out.types[1], plain.types[1]) and torch.equal(out.pos, plain.pos)


def test_generator_bond_decoding_changes_only_the_bonds(tiny_dit_ckpt):
    import pytest

    from sciDiT.errors import SciDiTInputError
    from sciDiT.generate import load_generator

    gen = load_generator(tiny_dit_ckpt)
    sets = gen.generate_token_sets("molecule", n=4, steps=2, seed=0, progress=False, bond_decoding="constrained")
    argmax = gen.generate_token_sets("molecule", n=4, steps=2, seed=0, progress=False, bond_decoding="argmax")
    joint = gen.generate_token_sets("molecule", n=4, steps=2, seed=0, progress=False, bond_decoding="joint")
    for s, a, j in zip(sets, argmax, joint):
        assert torch.equal(s.types, a.types) and torch.equal(s.pos, a.pos) and torch.equal(j.pos, a.pos)
        assert a.meta["graph_source"] == "decoded" and s.meta["graph_source"] in ("decoded", "decoded_constrained")
        assert j.meta["graph_source"] in ("decoded", "decoded_joint")
        if j.meta["graph_source"] == "decoded":  # no neutral closed-shell graph: the argmax atoms and graph are kept
            assert torch.equal(j.types, a.types)
    with pytest.raises(SciDiTInputError, match="bond_decoding"):
        gen.generate_token_sets("molecule", n=1, steps=1, progress=False, bond_decoding="greedy")
