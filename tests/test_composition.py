"""Coherent element sets and enforced composition requests (sciDiT.models.composition): closed-form
cases, brute force, invariance, switched off = argmax."""

import itertools
import math

import pytest
import torch

from sciDiT.models.composition import (
    MAX_ELEMENTS,
    coherent_types,
    num_distinct,
    num_elements_counts,
    num_elements_log_prior,
    requested_types,
)

S, SE, O, NA, LI = 16, 34, 8, 11, 3  # atomic numbers used below
T = 120


def _log_probs(rows: list[dict[int, float]]) -> torch.Tensor:
    """[1, N, T] log-probabilities: each token's listed elements get their probability, the rest share 1e-6."""
    lp = torch.full((1, len(rows), T), math.log(1e-6))
    for i, row in enumerate(rows):
        for z, p in row.items():
            lp[0, i, z] = math.log(p)
    lp[..., 0] = lp[..., T - 1] = -torch.inf
    return lp


def _prior(pi_k: dict[int, float], n_max: int = 8) -> torch.Tensor:
    """log pi(k | n) that is the same for every n (k outside ``pi_k``: -inf)."""
    lp = torch.full((n_max + 1, MAX_ELEMENTS + 1), -torch.inf)
    for k, p in pi_k.items():
        lp[:, k] = math.log(p)
    return lp


def test_stray_neighbour_element_merges_when_the_prior_prefers_fewer_elements():
    # Na2 S Se-ish: the third anion token is 0.55 Se / 0.45 S. Argmax gives 3 elements; with pi(2) = 0.9, pi(3) = 0.1
    # the merged assignment costs log(0.55 / 0.45) = 0.20 nats of likelihood and gains log 9 = 2.2 nats of prior.
    rows = [{NA: 0.99}, {NA: 0.99}, {S: 0.99}, {SE: 0.55, S: 0.45}]
    lp, mask = _log_probs(rows), torch.ones(1, 4, dtype=torch.bool)
    assert lp.argmax(-1).tolist() == [[NA, NA, S, SE]]
    assert coherent_types(lp, mask, _prior({2: 0.9, 3: 0.1})).tolist() == [[NA, NA, S, S]]
    # a prior that favours three elements by more than the 0.20 nats keeps the argmax
    assert coherent_types(lp, mask, _prior({2: 0.4, 3: 0.6})).tolist() == [[NA, NA, S, SE]]


def test_confident_tokens_are_not_merged_by_a_weak_prior():
    # Se at 0.99 vs S at 1e-6: merging costs log(0.99 / 1e-6) = 13.8 nats, more than the prior's log 9
    rows = [{NA: 0.99}, {S: 0.99}, {SE: 0.99}]
    lp, mask = _log_probs(rows), torch.ones(1, 3, dtype=torch.bool)
    assert coherent_types(lp, mask, _prior({2: 0.9, 3: 0.1})).tolist() == [[NA, S, SE]]


def test_merge_can_choose_an_element_that_is_no_tokens_argmax():
    # both tokens put 0.45 on O; their argmaxes are S and Se (0.5 each). With one element forced (pi(1) = 1) the
    # best single element is O: 2 log 0.45 > log 0.5 + log 0.05 for S or Se.
    rows = [{S: 0.5, O: 0.45, SE: 0.05}, {SE: 0.5, O: 0.45, S: 0.05}]
    lp, mask = _log_probs(rows), torch.ones(1, 2, dtype=torch.bool)
    assert coherent_types(lp, mask, _prior({1: 1.0})).tolist() == [[O, O]]


def test_flat_prior_gives_the_argmax():
    torch.manual_seed(0)
    lp = torch.randn(5, 7, T).log_softmax(-1)
    mask = torch.arange(7)[None] < torch.tensor([7, 3, 1, 5, 6])[:, None]
    flat = torch.zeros(8, MAX_ELEMENTS + 1)
    assert torch.equal(coherent_types(lp, mask, flat), lp.argmax(-1) * mask)


def test_permuting_tokens_permutes_the_types():
    torch.manual_seed(1)
    lp = (3 * torch.randn(4, 9, T)).log_softmax(-1)
    mask = torch.arange(9)[None] < torch.tensor([9, 6, 4, 8])[:, None]
    prior = num_elements_log_prior(num_elements_counts(torch.tensor([2, 4, 4, 6, 8, 9]), torch.tensor([2, 2, 3, 3, 3, 4]), 16))
    out = coherent_types(lp, mask, prior)
    perm = torch.randperm(9)
    torch.testing.assert_close(coherent_types(lp[:, perm], mask[:, perm], prior), out[:, perm], rtol=0, atol=0)
    # and padding does not matter: the same set alone, without padding slots
    torch.testing.assert_close(coherent_types(lp[2:3, :4], mask[2:3, :4], prior), out[2:3, :4], rtol=0, atol=0)


def test_never_more_elements_than_argmax_and_never_a_worse_posterior():
    torch.manual_seed(2)
    lp = (2 * torch.randn(64, 12, T)).log_softmax(-1)
    mask = torch.arange(12)[None] < torch.randint(1, 13, (64,))[:, None]
    prior = num_elements_log_prior(num_elements_counts(torch.randint(1, 13, (500,)), torch.randint(1, 5, (500,)), 16))
    arg = lp.argmax(-1) * mask
    out = coherent_types(lp, mask, prior)
    k_arg, k_out = num_distinct(arg, mask, T), num_distinct(out, mask, T)
    assert (k_out <= k_arg).all() and (k_out < k_arg).any()

    def posterior(types, k):
        return (lp.gather(-1, types[..., None]).squeeze(-1) * mask).sum(1) + prior[mask.sum(1), k.clamp(max=MAX_ELEMENTS)]

    assert (posterior(out, k_out) >= posterior(arg, k_arg) - 1e-5).all()


def test_prior_from_counts_is_normalised_feasible_and_backs_off_to_the_marginal():
    n = torch.tensor([1, 2, 2, 4, 4, 4, 4])
    k = torch.tensor([1, 2, 2, 2, 3, 3, 3])
    prior = num_elements_log_prior(num_elements_counts(n, k, 8))
    torch.testing.assert_close(prior[1:].exp().sum(1), torch.ones(8))
    assert prior[1, 1] == 0.0 and torch.isinf(prior[1, 2:]).all()  # one atom: one element
    assert torch.isinf(prior[:, 0]).all() and torch.isinf(prior[2, 3:]).all()
    # n = 4: counts (k=2: 1, k=3: 3) plus one pseudo-count spread as the marginal (1/7, 3/7, 3/7 over k = 1, 2, 3)
    torch.testing.assert_close(prior[4, 1:4].exp(), torch.tensor([1 / 7, 1 + 3 / 7, 3 + 3 / 7]) / 5)
    # n = 6 was never seen: the marginal over k <= 6
    torch.testing.assert_close(prior[6, 1:4].exp(), torch.tensor([1 / 7, 3 / 7, 3 / 7]))


def test_decode_hook_applies_to_crystals_only_and_is_argmax_when_off():
    from ase.build import bulk, molecule

    from sciDiT.batch import Domain, collate
    from sciDiT.models.vae import build_vae
    from sciDiT.tokenizers import CrystalTokenizer, MoleculeTokenizer

    torch.manual_seed(0)
    vae = build_vae("VAE-T").eval()
    batch = collate([MoleculeTokenizer().from_ase(molecule("CH3CH2OH")), CrystalTokenizer().from_ase(bulk("NaCl", "rocksalt", a=5.64, cubic=True))])
    z = torch.randn(*batch.mask.shape, vae.latent_dim) * batch.mask[..., None]  # untrained decoder: many stray elements
    off = vae.decode_to_batch(z, batch.mask, batch.domain)
    flat = vae.decode_to_batch(z, batch.mask, batch.domain, element_log_prior=torch.zeros(16, MAX_ELEMENTS + 1))
    one = vae.decode_to_batch(z, batch.mask, batch.domain, element_log_prior=_prior({1: 1.0}, n_max=16))
    assert torch.equal(flat.types, off.types)
    assert torch.equal(one.types[0], off.types[0])  # the molecule keeps its per-atom types
    xtal = batch.domain == Domain.CRYSTAL
    assert num_distinct(off.types[xtal], batch.mask[xtal], T) > 1 and num_distinct(one.types[xtal], batch.mask[xtal], T) == 1
    assert torch.equal(one.frac, off.frac) and torch.equal(one.lattice, off.lattice)


def test_training_counts_of_atoms_and_distinct_elements():
    from ase.build import bulk

    from sciDiT.data.cache import TokenSetDataset
    from sciDiT.tokenizers import CrystalTokenizer

    ct = CrystalTokenizer()
    data = TokenSetDataset.from_sets([ct.from_ase(bulk("NaCl", "rocksalt", a=5.64, cubic=True)),  # 8 atoms, 2 elements
                                      ct.from_ase(bulk("Cu", "fcc", a=3.6, cubic=True)),  # 4 atoms, 1 element
                                      ct.from_ase(bulk("Cu", "fcc", a=3.6))])  # 1 atom, 1 element
    assert data.num_distinct_types().tolist() == [2, 1, 1]
    counts = num_elements_counts(torch.from_numpy(data.num_tokens), torch.from_numpy(data.num_distinct_types()), 8)
    expected = torch.zeros(9, MAX_ELEMENTS + 1)
    expected[8, 2] = expected[4, 1] = expected[1, 1] = 1
    assert torch.equal(counts, expected)


def test_requested_types_use_exactly_the_request_at_the_brute_force_optimum():
    torch.manual_seed(3)
    lp = (2 * torch.randn(40, 5, T)).log_softmax(-1)
    mask = torch.arange(5)[None] < torch.randint(3, 6, (40,))[:, None]
    request = [LI, O, NA]
    allowed = torch.zeros(40, T, dtype=torch.bool)
    allowed[:, request] = True
    out = requested_types(lp, mask, allowed)
    for b in range(40):
        n = int(mask[b].sum())
        assert set(out[b, :n].tolist()) == set(request) and (out[b, n:] == 0).all()
        score = lp[b, torch.arange(n), out[b, :n]].sum()
        best = max(lp[b, torch.arange(n), torch.tensor(a)].sum() for a in itertools.product(request, repeat=n) if set(a) == set(request))
        torch.testing.assert_close(score, best)


def test_requested_types_keep_confident_tokens_and_permute_with_them():
    # two confident O, one token that would rather be Na than Li: the only Li candidate takes Li
    lp = _log_probs([{O: 0.99}, {O: 0.98}, {NA: 0.6, LI: 0.3}])
    allowed = torch.zeros(1, T, dtype=torch.bool)
    allowed[0, [LI, O]] = True
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert requested_types(lp, mask, allowed).tolist() == [[O, O, LI]]
    perm = torch.tensor([2, 0, 1])
    assert requested_types(lp[:, perm], mask, allowed).tolist() == [[LI, O, O]]


def test_requested_types_refuse_sets_smaller_than_the_request():
    allowed = torch.zeros(1, T, dtype=torch.bool)
    allowed[0, [LI, O, NA]] = True
    with pytest.raises(ValueError, match="fewer atoms than requested elements"):
        requested_types(_log_probs([{O: 0.9}, {LI: 0.9}]), torch.ones(1, 2, dtype=torch.bool), allowed)
