"""Valence-constrained decoding of a molecular graph from the decoder's per-atom and per-pair probabilities.

A pair head decides each bond alone, but bond orders are a global problem: where the double bonds
of a ring go depends on every atom's valence. This decodes the most probable graph (the maximum of
the summed log-probabilities) among those in which every atom has exactly its valence for its
formal charge, as a small integer programme (HiGHS through :func:`scipy.optimize.milp`). It is
a decoding rule for the model's own distribution, like a constrained beam search, not a repair of
the coordinates: pairs the head gives less than ``min_prob`` of being bonded are never bonded.

Two rules, both exact for their objective (a programme that needs more than :data:`NODE_LIMIT`
branch-and-bound nodes gives None, as an infeasible one does):

- :func:`constrained_bond_orders` (``bond_decoding=constrained``): atoms fixed to their argmax
  element and charge, only the bonds are chosen. A composition with an odd number of electrons has
  no such graph (None).
- :func:`joint_graph` (``bond_decoding=joint``): element, formal charge and bonds are chosen
  together, maximising ``sum_a log p_a(element) + log p_a(charge) + sum_ij log p_ij(order)`` over
  neutral, closed-shell, connected graphs. Every atom's element (one of its :data:`MAX_ELEMENTS` most
  probable) and charge are drawn from those its heads give at least ``min_prob``, so a molecule whose
  argmax composition cannot be closed shell
  is decoded to the most probable one that can, when the decoder's own distribution has one.
  When no connected graph exists, the most probable disconnected one is taken (the evaluator's
  "connected" figure shows it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array
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
MAX_ELEMENTS = 3  # joint rule: each atom chooses among its three most probable elements (above min_prob)
NODE_LIMIT = 2000  # branch-and-bound nodes per molecule: a deterministic bound (a time limit would make outputs depend on load)


@dataclass(frozen=True)
class MolecularGraph:
    """A decoded graph: atomic numbers [n], formal charges [n], symmetric bond orders [n, n] (0 = none)."""

    types: np.ndarray
    charges: np.ndarray
    orders: np.ndarray


def _solve(options: list[list[tuple[int, int, float]]], log_probs: np.ndarray, min_prob: float,
           neutral: bool, connected: bool) -> MolecularGraph | None:
    """The integer programme behind both rules.

    ``options[a]``: atom ``a``'s allowed ``(atomic number, charge, log-probability)`` (each with an entry
    in :data:`VALENCE`); ``log_probs [n, n, 4]``: orders 0..3 per pair. Variables, in this order: one
    binary per (candidate pair, order 1..3), one binary per atom option, and with ``connected`` two
    flows per candidate pair (a single-commodity flow from atom 0 that reaches every atom only over
    chosen bonds).
    """
    n = len(options)
    i, j = np.triu_indices(n, 1)
    candidate = 1.0 - np.exp(log_probs[i, j, 0]) >= min_prob  # pairs the head can bond
    i, j = i[candidate], j[candidate]
    m = len(i)
    owner = np.repeat(np.arange(n), [len(o) for o in options])  # [O] atom of each option
    flat = [opt for opts in options for opt in opts]
    n_opt = len(flat)
    valence = np.array([VALENCE[(z, q)] for z, q, _ in flat], dtype=float)  # [O]
    n_bond, n_flow = m * MAX_ORDER, (2 * m if connected and n > 1 else 0)
    n_var = n_bond + n_opt + n_flow
    bond_var = np.arange(n_bond).reshape(m, MAX_ORDER)  # [m, 3]
    opt_var = n_bond + np.arange(n_opt)  # [O]
    orders = np.arange(1, MAX_ORDER + 1, dtype=float)  # [3]

    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, float]] = []  # (row ids, columns, values, lower, upper) blocks

    def add(cols: np.ndarray, vals: np.ndarray, row: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        rows.append((row, cols, vals, lo, hi))

    n_rows = 0
    # at most one order per pair
    add(bond_var.ravel(), np.ones(n_bond), n_rows + np.repeat(np.arange(m), MAX_ORDER), np.zeros(m), np.ones(m))
    n_rows += m
    # exactly one option per atom
    add(opt_var, np.ones(n_opt), n_rows + owner, np.ones(n), np.ones(n))
    n_rows += n
    # valence: sum of the orders of an atom's bonds = the valence of its chosen option
    ends = np.concatenate([np.repeat(i, MAX_ORDER), np.repeat(j, MAX_ORDER)])
    add(np.concatenate([bond_var.ravel()] * 2), np.tile(orders, 2 * m), n_rows + ends, np.zeros(n), np.zeros(n))
    add(opt_var, -valence, n_rows + owner, np.zeros(0), np.zeros(0))
    n_rows += n
    if neutral:  # the formal charges sum to zero
        charge = np.array([q for _, q, _ in flat], dtype=float)
        add(opt_var, charge, np.full(n_opt, n_rows), np.zeros(1), np.zeros(1))
        n_rows += 1
    if n_flow:
        fwd, bwd = n_bond + n_opt + np.arange(m), n_bond + n_opt + m + np.arange(m)  # flow i -> j, j -> i
        cap = float(n - 1)
        for flow in (fwd, bwd):  # flow only over a chosen bond: f - (n - 1) * sum_k x_k <= 0
            r = n_rows + np.arange(m)
            add(np.concatenate([flow, bond_var.ravel()]), np.concatenate([np.ones(m), np.full(n_bond, -cap)]),
                np.concatenate([r, np.repeat(r, MAX_ORDER)]), np.full(m, -np.inf), np.zeros(m))
            n_rows += m
        # net inflow: every atom but the root keeps one unit, the root sends n - 1
        net = np.full(n, 1.0)
        net[0] = -cap
        add(np.concatenate([fwd, bwd, fwd, bwd]), np.concatenate([np.ones(m), np.ones(m), -np.ones(m), -np.ones(m)]),
            n_rows + np.concatenate([j, i, i, j]), net, net)
        n_rows += n

    r = np.concatenate([b[0] for b in rows])
    c = np.concatenate([b[1] for b in rows])
    v = np.concatenate([b[2] for b in rows])
    lo = np.concatenate([b[3] for b in rows])
    hi = np.concatenate([b[4] for b in rows])
    a = coo_array((v, (r, c)), shape=(n_rows, n_var)).tocsr()
    gain = np.zeros(n_var)
    gain[:n_bond] = (log_probs[i, j, 1:] - log_probs[i, j, :1]).ravel()  # gain over "no bond"
    gain[opt_var] = [lp for _, _, lp in flat]
    integrality = np.concatenate([np.ones(n_bond + n_opt), np.zeros(n_flow)])
    upper = np.concatenate([np.ones(n_bond + n_opt), np.full(n_flow, float(n - 1))])
    result = milp(c=-gain, integrality=integrality, bounds=Bounds(0, upper), constraints=[LinearConstraint(a, lo, hi)],
                  options={"node_limit": NODE_LIMIT})
    if result.status != 0 or result.x is None:
        return None
    x = np.rint(result.x)
    chosen = x[:n_bond].reshape(m, MAX_ORDER) @ orders  # [m] order of each candidate pair
    bonds = np.zeros((n, n), dtype=np.int64)
    bonds[i, j] = bonds[j, i] = chosen.astype(np.int64)
    picked = [flat[k] for k in np.flatnonzero(x[n_bond:n_bond + n_opt])]  # one per atom, in atom order
    return MolecularGraph(np.array([z for z, _, _ in picked], dtype=np.int64), np.array([q for _, q, _ in picked], dtype=np.int64), bonds)


def constrained_bond_orders(types: np.ndarray, charges: np.ndarray, log_probs: np.ndarray, min_prob: float = 1e-3) -> np.ndarray | None:
    """Bond orders ``[N, N]`` (symmetric, 0 = none) maximising the summed log-probabilities under exact valences.

    ``types [N]`` atomic numbers, ``charges [N]`` formal charges, ``log_probs [N, N, 4]`` the
    log-probabilities of orders 0..3 for each pair (symmetric). None when an element/charge has no
    entry in :data:`VALENCE` or no graph satisfies every valence.
    """
    if any((int(z), int(q)) not in VALENCE for z, q in zip(types, charges)):
        return None
    options = [[(int(z), int(q), 0.0)] for z, q in zip(types, charges)]
    graph = _solve(options, log_probs, min_prob, neutral=False, connected=False)
    return None if graph is None else graph.orders


def joint_graph(type_log_probs: np.ndarray, charge_log_probs: np.ndarray, log_probs: np.ndarray, min_prob: float = 1e-2,
                charge_offset: int = 1) -> MolecularGraph | None:
    """The most probable neutral, closed-shell graph over elements, charges and bonds; connected when one exists.

    ``type_log_probs [N, K]`` over atomic numbers 0..K-1, ``charge_log_probs [N, C]`` over formal
    charges ``c - charge_offset``, ``log_probs [N, N, 4]`` bond orders 0..3 per pair. Each atom may take
    any (element, charge) with an entry in :data:`VALENCE` whose probabilities are both >= ``min_prob``
    (elements among its :data:`MAX_ELEMENTS` most probable), and always its argmax pair when that has an entry. None when no neutral closed-shell graph exists.
    """
    options = []
    for tlp, clp in zip(type_log_probs, charge_log_probs):
        best = (int(tlp.argmax()), int(clp.argmax()) - charge_offset)
        top = set(np.argsort(-tlp, kind="stable")[:MAX_ELEMENTS].tolist())
        opts = [(z, q, float(tlp[z] + clp[q + charge_offset])) for (z, q) in VALENCE
                if z < len(tlp) and 0 <= q + charge_offset < len(clp)
                and ((z, q) == best or z in top and min(tlp[z], clp[q + charge_offset]) >= np.log(min_prob))]
        if not opts:
            return None
        options.append(opts)
    return (_solve(options, log_probs, min_prob, neutral=True, connected=True)
            or _solve(options, log_probs, min_prob, neutral=True, connected=False))


@dataclass(frozen=True)
class ValenceGraphDecoder:
    """A ``graph_decoder`` for :meth:`sciDiT.models.vae.AllAtomVAE.decode_graph`.

    ``joint=False``: :func:`constrained_bond_orders` on the argmax atoms (``graph_source``
    ``decoded_constrained``); ``joint=True``: :func:`joint_graph` (``decoded_joint``).
    """

    joint: bool = False
    min_prob: float = 1e-2

    @property
    def source(self) -> str:
        """The ``graph_source`` / SD ``bond_source`` of the graphs this decoder returns."""
        return "decoded_joint" if self.joint else "decoded_constrained"

    def __call__(self, type_log_probs: Tensor, charge_log_probs: Tensor, log_probs: Tensor,
                 charge_offset: int) -> tuple[Tensor, Tensor, Tensor] | None:
        """(types [n], charges [n], orders [n, n]) of one molecule, or None (the caller keeps the argmax graph)."""
        tlp, clp, blp = (t.double().numpy() for t in (type_log_probs, charge_log_probs, log_probs))
        if self.joint:
            graph = joint_graph(tlp, clp, blp, self.min_prob, charge_offset)
        else:
            types, charges = tlp.argmax(-1), clp.argmax(-1) - charge_offset
            orders = constrained_bond_orders(types, charges, blp, self.min_prob)
            graph = None if orders is None else MolecularGraph(types, charges, orders)
        if graph is None:
            return None
        return torch.from_numpy(graph.types).long(), torch.from_numpy(graph.charges).long(), torch.from_numpy(graph.orders)
