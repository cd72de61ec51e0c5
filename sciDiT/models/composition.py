"""Coherent element sets: decode a crystal's atom types jointly instead of one argmax per token.

The VAE decoder gives each token an independent distribution ``p_i(e)`` over elements. Taking the
argmax per token lets a crystal collect one stray element per uncertain atom (e.g. S and Se in one
cell, where the data has one chalcogen), which adds elements and breaks charge balance. Here a
crystal's types are the MAP assignment under the decoder's per-token likelihood times a prior on the
number of distinct elements ``k`` given the number of atoms ``n``:

    a* = argmax_a  sum_i log p_i(a_i) + log pi(k(a) | n),      k(a) = |{a_1, ..., a_n}|

For a fixed element set ``S`` the best assignment gives each token its most likely element within
``S``, so ``L(S) = sum_i max_{e in S} log p_i(e)`` is the likelihood of a set. ``L`` is a
facility-location objective (monotone submodular); greedy forward selection gives one set per size
``k`` (exact for ``k = 1``). The candidates, the per-token argmax and the assignment within each
greedy set, are each scored exactly (likelihood plus the prior of the number of elements the
assignment really uses) and the best one is kept. So the rule only merges: it never uses more
elements than the argmax, and its posterior is never below the argmax's. Scores are sums over
tokens and maxima over elements (ties broken by element index), so the result does not depend on
token order. With a flat prior it returns the per-token argmax; ``log_prior=None`` in
``AllAtomVAE.decode_to_batch`` means exactly that (today's decoding).

A composition request (``condition.elements``) can also be enforced at decoding,
:func:`requested_types`: each token takes its most likely element *within* the requested set ``S``,
and every element of ``S`` must appear. Forcing element ``e`` onto token ``i`` costs
``c(e, i) = max_{f in S} log p_i(f) - log p_i(e)``; the cheapest way to give every element of ``S``
one token is a linear assignment of ``S`` to distinct tokens (exact, scipy's
``linear_sum_assignment``), the other tokens keep their best element in ``S``.

A whole composition (``condition.composition``: how many atoms of each element) is enforced by
:func:`counted_types`, the most likely assignment of exactly those atoms to the tokens: a linear
assignment of the ``n`` requested atoms to the ``n`` tokens at cost ``-log p_i(e)``.

The prior :func:`num_elements_log_prior` is data-derived: counts of (atoms, distinct elements) in
the training sets, with one pseudo-count spread as the marginal over ``k <= n`` so that unseen
sizes back off to the marginal. It is applied to crystals only (molecules are decoded per atom).
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

MAX_ELEMENTS = 8  # most distinct elements a decoded set may have under the prior (MP-20 has <= 7)
MAX_PRIOR_TOKENS = 64  # sets with more atoms share the prior row of this size


def num_elements_counts(num_tokens: Tensor, num_elements: Tensor, max_tokens: int) -> Tensor:
    """Joint counts ``[max_tokens + 1, MAX_ELEMENTS + 1]`` of (atoms n, distinct elements k) over training sets."""
    n = num_tokens.long().clamp_max(max_tokens)
    k = num_elements.long().clamp_max(MAX_ELEMENTS)
    counts = torch.zeros(max_tokens + 1, MAX_ELEMENTS + 1)
    counts.index_put_((n, k), torch.ones(len(n)), accumulate=True)
    return counts


def num_elements_log_prior(counts: Tensor) -> Tensor:
    """``log pi(k | n)`` ``[n_max + 1, MAX_ELEMENTS + 1]`` from joint counts; -inf where ``k = 0`` or ``k > n``.

    ``pi(k | n) = (c(n, k) + pi(k) [k <= n]) / sum``, with ``pi(k)`` the marginal of ``k``: one
    pseudo-count per size, so sizes never seen in training get the marginal restricted to ``k <= n``.
    """
    counts = counts.float()
    n = torch.arange(counts.shape[0])[:, None]
    k = torch.arange(counts.shape[1])[None, :]
    feasible = (k >= 1) & (k <= n)  # [n_max + 1, K + 1]
    marginal = counts.sum(0) / counts.sum().clamp_min(1.0)  # [K + 1]
    smoothed = (counts + marginal[None, :]) * feasible  # [n_max + 1, K + 1]
    smoothed = torch.where(smoothed.sum(1, keepdim=True) > 0, smoothed, feasible.float())  # no data for k <= n: uniform
    prob = smoothed / smoothed.sum(1, keepdim=True).clamp_min(1e-12)
    return torch.where(feasible, prob.log(), torch.full_like(prob, -torch.inf))


def num_distinct(types: Tensor, mask: Tensor, num_types: int) -> Tensor:
    """Distinct types among the real tokens of each set: ``[B]`` from ``types, mask [B, N]``."""
    present = torch.zeros(types.shape[0], num_types, device=types.device).scatter_add_(1, types, mask.float())  # [B, T]
    return (present > 0).sum(1)


def coherent_types(log_probs: Tensor, mask: Tensor, log_prior: Tensor) -> Tensor:
    """MAP element assignment ``[B, N]`` (module docstring) from per-token ``log_probs [B, N, T]``.

    ``log_prior [n_max + 1, K + 1]``: ``log pi(k | n)`` (rows indexed by the set size, clamped to
    ``n_max``). Candidates are the per-token argmax and, for each ``k <= K``, the assignment within
    the greedy ``k``-element set; each is scored exactly, ``sum_i log p_i(a_i) + log pi(k(a) | n)``
    with ``k(a)`` the elements it really uses, and the best wins (ties: the earlier candidate, argmax
    first). Entries of ``log_probs`` that must never be chosen (padding type, mask token) should be
    ``-inf``. Padding tokens get type 0.
    """
    bsz, n_tok, num_types = log_probs.shape
    max_k = min(log_prior.shape[1] - 1, n_tok, num_types)
    w = mask.to(log_probs.dtype)[..., None]  # [B, N, 1]
    lp = torch.where(mask[..., None], log_probs, torch.zeros_like(log_probs))  # [B, N, T] padding contributes 0
    prior = log_prior.to(log_probs)[mask.sum(1).clamp(max=log_prior.shape[0] - 1)]  # [B, K + 1]
    prior = torch.cat([prior, torch.full_like(prior[:, :1], -torch.inf)], 1)  # [B, K + 2]: more than K elements: -inf
    candidates = [log_probs.argmax(-1) * mask]  # each [B, N]
    best = torch.full((bsz, n_tok), -torch.inf, dtype=log_probs.dtype, device=log_probs.device)  # [B, N]
    chosen = torch.zeros(bsz, num_types, dtype=torch.bool, device=log_probs.device)  # [B, T]
    for _ in range(max_k):
        gain = (torch.maximum(best[..., None], lp) * w).sum(1)  # [B, T]: L(S + {e})
        pick = gain.masked_fill(chosen, -torch.inf).nan_to_num(nan=-torch.inf).argmax(-1)  # [B] lowest index on ties
        chosen = chosen.clone()
        chosen[torch.arange(bsz), pick] = True
        best = torch.maximum(best, lp.gather(-1, pick[:, None, None].expand(bsz, n_tok, 1)).squeeze(-1))  # [B, N]
        candidates.append(log_probs.masked_fill(~chosen[:, None, :], -torch.inf).argmax(-1) * mask)
    types = torch.stack(candidates, 1)  # [B, C, N]
    loglik = (lp[:, None].expand(-1, types.shape[1], -1, -1).gather(-1, types[..., None]).squeeze(-1) * w[:, None, :, 0]).sum(-1)  # [B, C]
    k = torch.stack([num_distinct(t, mask, num_types) for t in candidates], 1).clamp(max=prior.shape[1] - 1)  # [B, C]
    score = loglik + prior.gather(1, k)  # [B, C]
    return types[torch.arange(bsz), score.argmax(1)]  # [B, N]


def requested_types(log_probs: Tensor, mask: Tensor, allowed: Tensor) -> Tensor:
    """Most likely element assignment ``[B, N]`` that uses exactly the requested elements (module docstring).

    ``log_probs [B, N, T]``: per-token log-probabilities; ``mask [B, N]``: real tokens; ``allowed
    [B, T]``: each set's requested elements. Every set needs at least as many tokens as requested
    elements (ValueError otherwise). Padding tokens get type 0.
    """
    if (allowed.sum(1) > mask.sum(1)).any():
        raise ValueError("a set has fewer atoms than requested elements, so it cannot contain them all")
    lp = log_probs.float().masked_fill(~allowed[:, None, :], -torch.inf)  # [B, N, T] requested elements only
    best, types = lp.max(-1)  # [B, N] each token's best element within the request
    types = types * mask
    for b in range(lp.shape[0]):
        elements = allowed[b].nonzero().squeeze(1)  # [E]
        tokens = mask[b].nonzero().squeeze(1)  # [n]
        cost = best[b, tokens][None, :] - lp[b, tokens][:, elements].T  # [E, n] log-likelihood lost by forcing e onto token i
        rows, cols = linear_sum_assignment(cost.double().cpu().numpy())
        types[b, tokens[torch.as_tensor(cols)]] = elements[torch.as_tensor(rows)]
    return types


def counted_types(log_probs: Tensor, mask: Tensor, counts: Tensor) -> Tensor:
    """Most likely element assignment ``[B, N]`` with exactly ``counts [B, T]`` atoms of each element (module docstring).

    ``log_probs [B, N, T]``: per-token log-probabilities; ``mask [B, N]``: real tokens. Each set's counts must sum
    to its number of tokens (ValueError otherwise). Padding tokens get type 0.
    """
    if (counts.sum(1) != mask.sum(1)).any():
        raise ValueError("a set's requested composition has another number of atoms than the set")
    types = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)  # [B, N]
    for b in range(log_probs.shape[0]):
        tokens = mask[b].nonzero().squeeze(1)  # [n]
        atoms = torch.repeat_interleave(torch.arange(counts.shape[1], device=counts.device), counts[b])  # [n] one element per requested atom
        cost = -log_probs[b, tokens][:, atoms].double().cpu().numpy()  # [n, n] -log p_i(e) of putting atom j on token i
        rows, cols = linear_sum_assignment(cost)
        types[b, tokens[torch.as_tensor(rows)]] = atoms[torch.as_tensor(cols)]
    return types
