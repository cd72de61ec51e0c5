"""Valence-constrained decoding of a molecular graph from per-pair bond-order probabilities.

A pair head decides each bond alone, but bond orders are a global problem: where the double bonds
of a ring go depends on every atom's valence. This decodes the most probable graph (the maximum of
``sum_ij log p_ij(order_ij)``) among those in which every atom has exactly its valence for its
formal charge, as a small integer programme (HiGHS through :func:`scipy.optimize.milp`). It is
a decoding rule for the model's own distribution, like a constrained beam search, not a repair of
the coordinates: pairs the head gives less than ``min_prob`` of being bonded are never bonded.
Molecules for which no such graph exists (e.g. an odd number of electrons) get None.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import Tensor

# (atomic number, formal charge) -> the number of bonds (sum of orders) of a closed-shell atom
VALENCE: dict[tuple[int, int], int] = {
    (1, 0): 1,
    (6, 0): 4, (6, -1): 3, (6, 1): 3,
    (7, 0): 3, (7, 1): 4, (7, -1): 2,
    (8, 0): 2, (8, 1): 3, (8, -1): 1,
    (9, 0): 1,
    (15, 0): 3, (15, 1): 4,
    (16, 0): 2, (16, 1): 3, (16, -1): 1,
    (17, 0): 1, (35, 0): 1, (53, 0): 1,
}  # fmt: skip
MAX_ORDER = 3


def constrained_bond_orders(types: np.ndarray, charges: np.ndarray, log_probs: np.ndarray, min_prob: float = 1e-3) -> np.ndarray | None:
    """Bond orders ``[N, N]`` (symmetric, 0 = none) maximising the summed log-probabilities under exact valences.

    ``types [N]`` atomic numbers, ``charges [N]`` formal charges, ``log_probs [N, N, 4]`` the
    log-probabilities of orders 0..3 for each pair (symmetric). None when an element/charge has no
    entry in :data:`VALENCE` or no graph satisfies every valence.
    """
    n = len(types)
    try:
        valence = np.array([VALENCE[(int(z), int(q))] for z, q in zip(types, charges)], dtype=float)  # [N]
    except KeyError:
        return None
    i, j = np.triu_indices(n, 1)
    candidate = 1.0 - np.exp(log_probs[i, j, 0]) >= min_prob  # pairs the head can bond
    i, j = i[candidate], j[candidate]
    m = len(i)
    if m == 0:
        return np.zeros((n, n), dtype=np.int64) if not valence.any() else None
    # variables x[p, k-1] = 1 if pair p has order k (k = 1..3); gain over "no bond" = log p_k - log p_0
    gain = log_probs[i, j, 1:] - log_probs[i, j, :1]  # [m, 3]
    orders = np.arange(1, MAX_ORDER + 1, dtype=float)  # [3]
    one_order = np.kron(np.eye(m), np.ones((1, MAX_ORDER)))  # [m, 3m]: at most one order per pair
    atom_sum = np.zeros((n, m * MAX_ORDER))  # [N, 3m]: sum of the orders of each atom's bonds
    for p, (a, b) in enumerate(zip(i, j)):
        atom_sum[a, p * MAX_ORDER : (p + 1) * MAX_ORDER] = orders
        atom_sum[b, p * MAX_ORDER : (p + 1) * MAX_ORDER] = orders
    result = milp(
        c=-gain.ravel(),
        integrality=np.ones(m * MAX_ORDER),
        bounds=Bounds(0, 1),
        constraints=[LinearConstraint(one_order, 0, 1), LinearConstraint(atom_sum, valence, valence)],
    )
    if result.status != 0 or result.x is None:
        return None
    chosen = np.rint(result.x).reshape(m, MAX_ORDER) @ orders  # [m] order of each candidate pair
    bonds = np.zeros((n, n), dtype=np.int64)
    bonds[i, j] = bonds[j, i] = chosen.astype(np.int64)
    return bonds


def constrained_graph_decoder(min_prob: float = 1e-2) -> Callable[[Tensor, Tensor, Tensor], Tensor | None]:
    """A ``graph_decoder`` for :meth:`sciDiT.models.vae.AllAtomVAE.decode_graph`: tensors in, :func:`constrained_bond_orders` out."""

    def decode(types: Tensor, charges: Tensor, log_probs: Tensor) -> Tensor | None:
        orders = constrained_bond_orders(types.numpy(), charges.numpy(), log_probs.double().numpy(), min_prob)
        return None if orders is None else torch.from_numpy(orders)

    return decode
