"""Charge-balanced crystal decoding (sciDiT.tokenizers.oxidation.balanced_types): closed-form cases,
brute force, no balanced candidate, and the decoder hook (crystals only)."""

import itertools
import math

import numpy as np
import pytest
import torch

from sciDiT.tokenizers.oxidation import balanced_types, reduced_counts, smact_validity

pytest.importorskip("smact")
NA, CL, O, MG, F, HE = 11, 17, 8, 12, 9, 2
T = 120


def _log_probs(rows: list[dict[int, float]]) -> np.ndarray:
    """[N, T] log-probabilities: listed elements get their probability, the others share the rest."""
    lp = np.full((len(rows), T), -np.inf)
    for i, row in enumerate(rows):
        lp[i, 1:119] = math.log(max(1.0 - sum(row.values()), 1e-9) / 118)
        for z, p in row.items():
            lp[i, z] = math.log(p)
    return lp


def _valid(types) -> bool:
    return smact_validity(*reduced_counts(list(types)))


def test_an_unbalanced_argmax_moves_to_the_most_probable_balanced_composition():
    lp = _log_probs([{NA: 0.9}, {CL: 0.9}, {CL: 0.6, O: 0.3, NA: 0.05}])  # argmax NaCl2 is not charge balanced
    types, found = balanced_types(lp)
    assert not _valid([NA, CL, CL]) and found and types.tolist() == [NA, CL, O]  # NaClO: Na+ Cl+ O2-


def test_a_balanced_argmax_is_kept_and_a_hopeless_set_falls_back_to_the_argmax():
    lp = _log_probs([{NA: 0.9}, {CL: 0.9}])
    assert balanced_types(lp)[0].tolist() == [NA, CL] and balanced_types(lp)[1]
    hopeless = _log_probs([{HE: 0.999}, {NA: 0.999}])  # no other candidate above 1%
    types, found = balanced_types(hopeless)
    assert types.tolist() == [HE, NA] and not found


def _random_log_probs(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, T] random log-probabilities over a small pool of elements."""
    pool = [NA, CL, O, MG, F]
    lp = np.full((n, T), -np.inf)
    lp[:, pool] = rng.normal(0, 1.5, (n, len(pool)))
    return lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)


def _score(lp: np.ndarray, types, mult: np.ndarray) -> float:
    return sum(m * lp[i, z] for i, (z, m) in enumerate(zip(types, mult)))


def _brute_force_best(lp: np.ndarray, mult: np.ndarray) -> float | None:
    """Best score over every assignment balanced_types may visit (a row's top 3 elements of >= 1%, its argmax
    always; a dropped row only its argmax) whose expanded composition is SMACT-valid; None if there is none."""
    top = np.argsort(-lp, 1)[:, :3]
    options = [[z for z in top[i] if (lp[i, z] >= math.log(1e-2) and mult[i] > 0) or z == top[i, 0]] for i in range(len(lp))]
    scores = [_score(lp, a, mult) for a in itertools.product(*options) if _valid(np.repeat(a, mult))]
    return max(scores) if scores else None


def test_balanced_types_is_the_brute_force_optimum():
    rng = np.random.default_rng(0)
    ones = np.ones(4, dtype=np.int64)
    for _ in range(30):
        lp = _random_log_probs(rng, 4)
        types, found = balanced_types(lp, max_visits=10_000)
        best = _brute_force_best(lp, ones)
        assert found == (best is not None)
        if best is not None:
            assert _valid(types) and _score(lp, types, ones) == pytest.approx(best)


def test_decode_hook_balances_crystals_only():
    from ase.build import bulk, molecule

    from sciDiT.batch import Domain, collate
    from sciDiT.models.vae import build_vae
    from sciDiT.tokenizers import CrystalTokenizer, MoleculeTokenizer

    torch.manual_seed(0)
    vae = build_vae("VAE-T").eval()
    batch = collate([MoleculeTokenizer().from_ase(molecule("CH3CH2OH")), CrystalTokenizer().from_ase(bulk("NaCl", "rocksalt", a=5.64, cubic=True))])
    z = torch.randn(*batch.mask.shape, vae.latent_dim) * batch.mask[..., None]
    off = vae.decode_to_batch(z, batch.mask, batch.domain)
    on = vae.decode_to_batch(z, batch.mask, batch.domain, charge_balanced=True)
    assert torch.equal(on.types[0], off.types[0]) and torch.equal(on.frac, off.frac)
    xtal = (batch.domain == Domain.CRYSTAL).nonzero().item()
    balanced = on.types[xtal][batch.mask[xtal]].tolist()
    assert _valid(balanced) or balanced == off.types[xtal][batch.mask[xtal]].tolist()


def test_a_required_element_set_is_used_exactly_and_balanced_where_possible():
    lp = _log_probs([{NA: 0.9}, {NA: 0.8, CL: 0.1}, {NA: 0.7, O: 0.2}])  # argmax Na3
    types, found = balanced_types(lp, required=[NA, O])
    assert found and types.tolist() == [NA, NA, O]  # Na2O, the only balanced Na-O choice here
    types, found = balanced_types(lp, required=[NA, CL, O])
    assert found and sorted(types.tolist()) == sorted([NA, CL, O])  # NaClO
    types, found = balanced_types(_log_probs([{NA: 0.9}, {CL: 0.9}]), required=[NA, MG])  # Na-Mg: an alloy, all metals
    assert found and sorted(types.tolist()) == [NA, MG]


def test_multiplicities_weight_compositions_and_log_probabilities_like_the_expanded_crystal():
    """An asymmetric unit with orbit multiplicities: the same optimum as brute force over the expanded counts,
    each row's log-probability counted once per atom it stands for; a dropped row (0) keeps its argmax."""
    rng = np.random.default_rng(1)
    for _ in range(30):
        lp = _random_log_probs(rng, 3)
        mult = rng.choice([1, 2, 4, 0], size=3, p=[0.3, 0.3, 0.3, 0.1])
        mult[0] = max(mult[0], 1)
        types, found = balanced_types(lp, max_visits=10_000, multiplicity=mult)
        best = _brute_force_best(lp, mult)
        assert found == (best is not None)
        if best is not None:
            assert _valid(np.repeat(types, mult)) and _score(lp, types, mult) == pytest.approx(best)
    nacl = _log_probs([{NA: 0.9}, {CL: 0.6, O: 0.35}])
    assert balanced_types(nacl, multiplicity=np.array([2, 1]))[0].tolist() == [NA, O]  # Na2O, where 1:1 would be NaCl
