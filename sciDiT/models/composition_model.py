"""A generative model of compositions: which atoms a set holds, drawn before where they go.

Composition-first generation splits a crystal into ``p(composition) p(structure | composition)``: this
module is the first factor, a DiT conditioned on ``condition.composition`` the second (experiments/
composition_first). A composition is a multiset of type ids, one per atom; written in ascending order
it is a sequence ``id_1 <= id_2 <= ... <= id_n``, and

    p(composition) = p(n) prod_i p(id_i | id_<i, n)

with ``p(n)`` the training histogram of sizes (a buffer of the model, add-one smoothed) and the factors a small
causal transformer that is told ``n`` (a size embedding added at every place), so it never has to decide
when a cell is complete. Sampling draws ``n``, then each id with those below the previous one and those no
training set holds removed (neither has mass in the data). Every draw inverts a CDF at a given
uniform number, so a caller that owns one random stream per sample gets the same composition for it
whatever the batch. The model knows ids, not chemistry: the tokenizers say which id is which element,
and may give each id a row of numbers (``num_features``, :meth:`CompositionModel.set_type_features`;
for elements, their period, group, oxidation states...) that is projected into its embedding, so what
the model learns of one element carries over to those like it.

Ids may also carry a charge and a type (``max_charge`` > 0, :meth:`CompositionModel.set_type_charges`): the ids are
then refinements of types (for crystals, ions: an element at one oxidation state, :mod:`sciDiT.tokenizers.species`),
the running charge of the ids drawn so far is embedded at every place (clamped to ``+-max_charge``), so a model
can learn from data where a set's charge closes, sampling keeps one id per type within a set, and draws return
the types.

Sections in data-flow order: sizes, the model (embedding -> causal blocks -> next-id logits), the
likelihood, sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

# ----------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------

COMPOSITION_SIZES: dict[str, dict[str, int]] = {
    "CM-S": {"hidden_size": 128, "depth": 3, "num_heads": 4},
    "CM-B": {"hidden_size": 256, "depth": 4, "num_heads": 8},
}


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class CompositionModel(nn.Module):
    """``p(n) p(ids | n)`` of sorted id multisets (module docstring): ``forward`` gives next-id logits given the size.

    ``dropout`` (training only) keeps a model of a few thousand compositions from memorising them; ``num_features``
    (0: none) is the width of the per-id feature rows added to the id embeddings; ``max_charge`` (0: none) the clamp of
    the embedded running charge of ids that carry charges and types (module docstring)."""

    def __init__(self, num_types: int, max_atoms: int, hidden_size: int = 128, depth: int = 3, num_heads: int = 4, dropout: float = 0.0,
                 num_features: int = 0, max_charge: int = 0):
        super().__init__()
        self.sizes = {"num_types": num_types, "max_atoms": max_atoms, "hidden_size": hidden_size, "depth": depth, "num_heads": num_heads,
                      "dropout": dropout, "num_features": num_features, "max_charge": max_charge}
        self.num_types, self.max_atoms = num_types, max_atoms
        self.bos = num_types  # ids 0..num_types-1 are types (0: none, never drawn)
        self.register_buffer("size_counts", torch.zeros(max_atoms + 1))  # training histogram of n (set by fit_support)
        self.register_buffer("seen", torch.ones(num_types, dtype=torch.bool))  # ids of the training sets (set by fit_support)
        self.token_embed = nn.Embedding(num_types + 1, hidden_size)
        if num_features:
            self.register_buffer("type_features", torch.zeros(num_types + 1, num_features))  # per-id rows (set_type_features); BOS: 0
            self.feature_embed = nn.Linear(num_features, hidden_size, bias=False)
        if max_charge:
            self.register_buffer("type_charge", torch.zeros(num_types + 1, dtype=torch.long))  # per-id charge (set_type_charges); BOS: 0
            self.register_buffer("type_of", torch.arange(num_types))  # the type each id refines (set_type_charges)
            self.charge_embed = nn.Embedding(2 * max_charge + 1, hidden_size)  # running charge -max..max
        self.pos_embed = nn.Embedding(max_atoms, hidden_size)  # a place in the sorted sequence, not an atom index
        self.size_embed = nn.Embedding(max_atoms + 1, hidden_size)  # n, at every place
        layer = nn.TransformerEncoderLayer(hidden_size, num_heads, 4 * hidden_size, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, num_types)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """All initialisation in one place: small normal embeddings, Xavier linears, a zero output head."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for embed in (self.token_embed, self.pos_embed, self.size_embed, getattr(self, "charge_embed", None)):
            if embed is not None:
                nn.init.normal_(embed.weight, std=0.02)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def fit_support(self, compositions: Sequence[Sequence[int]]) -> None:
        """Set ``p(n)`` to the histogram of the training compositions' sizes, and the ids sampling may draw to theirs."""
        self.size_counts.copy_(torch.bincount(torch.tensor([len(c) for c in compositions]), minlength=self.max_atoms + 1).float())
        self.seen.copy_(torch.bincount(torch.tensor([z for c in compositions for z in c]), minlength=self.num_types)[: self.num_types] > 0)

    def set_type_features(self, features: Tensor) -> None:
        """Set the feature rows ``[num_types, num_features]`` of the ids (row 0, no type, is unused)."""
        if features.shape != (self.num_types, self.sizes["num_features"]):
            raise ValueError(f"type features of shape {tuple(features.shape)}; this model takes {(self.num_types, self.sizes['num_features'])}")
        self.type_features[: self.num_types].copy_(features)

    def set_type_charges(self, charges: Tensor, types: Tensor) -> None:
        """Set each id's charge and the type it refines, both ``[num_types]`` integers (a model with ``max_charge``)."""
        if not self.sizes["max_charge"] or charges.shape != (self.num_types,) or types.shape != (self.num_types,):
            raise ValueError(f"charges and types of shapes {tuple(charges.shape)}, {tuple(types.shape)}; this model takes "
                             f"{(self.num_types,)} each, and max_charge > 0")
        self.type_charge[: self.num_types].copy_(charges)
        self.type_of.copy_(types)

    def size_log_probs(self) -> Tensor:
        """``log p(n)`` ``[max_atoms + 1]``: the training histogram, add-one smoothed over sizes 1..max_atoms."""
        counts = self.size_counts.clone()
        counts[1:] += 1.0
        return (counts / counts.sum()).log()  # [A + 1]; size 0 has probability 0

    def forward(self, tokens: Tensor, size: Tensor) -> Tensor:
        """Next-id logits ``[B, S, T]`` for id sequences ``tokens [B, S]`` (BOS first; causal) of sets of ``size [B]`` atoms."""
        s = tokens.shape[1]
        h = self.token_embed(tokens) + self.pos_embed(torch.arange(s, device=tokens.device)) + self.size_embed(size)[:, None]  # [B, S, H]
        if self.sizes["num_features"]:
            h = h + self.feature_embed(self.type_features[tokens])  # [B, S, H] what the ids are, shared between like ids
        if self.sizes["max_charge"]:
            m = self.sizes["max_charge"]
            charge = self.type_charge[tokens].cumsum(1).clamp(-m, m)  # [B, S] charge of the ids up to each place
            h = h + self.charge_embed(charge + m)  # [B, S, H]
        causal = torch.triu(torch.full((s, s), float("-inf"), device=tokens.device), diagonal=1)  # [S, S]
        h = self.blocks(h, mask=causal, is_causal=True)  # [B, S, H]
        logits = self.head(self.norm(h))  # [B, S, T]
        return logits.index_fill(-1, torch.tensor([0], device=tokens.device), float("-inf"))  # [B, S, T] id 0 is no type

    # -- the likelihood ------------------------------------------------------------------------
    def encode(self, compositions: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor, Tensor]:
        """Inputs ``[B, S]`` (BOS + sorted ids but the last, padded), targets ``[B, S]`` (sorted ids, padding -100) and sizes ``[B]``."""
        rows = [sorted(int(z) for z in c) for c in compositions]
        if any(not r or len(r) > self.max_atoms or r[0] < 1 or r[-1] >= self.num_types for r in rows):
            raise ValueError(f"a composition is empty, has more than {self.max_atoms} atoms, or an id outside 1..{self.num_types - 1}")
        s = max(len(r) for r in rows)
        inputs = torch.full((len(rows), s), self.bos, dtype=torch.long)  # [B, S]
        targets = torch.full((len(rows), s), -100, dtype=torch.long)  # [B, S]
        for b, r in enumerate(rows):
            inputs[b, : len(r)] = torch.tensor([self.bos, *r[:-1]])
            targets[b, : len(r)] = torch.tensor(r)
        return inputs, targets, torch.tensor([len(r) for r in rows])

    def nll(self, compositions: Sequence[Sequence[int]], with_size: bool = True) -> Tensor:
        """Negative log-likelihood ``[B]`` (nats) of each composition: of its ids given its size, plus ``-log p(n)`` when
        ``with_size``."""
        device = self.head.weight.device
        inputs, targets, size = (t.to(device) for t in self.encode(compositions))
        logits = self(inputs, size)  # [B, S, T]
        per_token = nn.functional.cross_entropy(logits.transpose(1, 2).float(), targets, ignore_index=-100, reduction="none")  # [B, S]
        return per_token.sum(1) - (self.size_log_probs()[size] if with_size else 0.0)  # [B]

    # -- sampling ------------------------------------------------------------------------------
    def draw(self, generators: Sequence[torch.Generator], temperature: float = 1.0) -> list[list[int]]:
        """One composition per generator, from its next ``max_atoms + 1`` uniform numbers (a caller's per-sample random stream)."""
        return self.sample(torch.stack([torch.rand(self.max_atoms + 1, generator=g) for g in generators]), temperature)  # [n, A + 1] uniforms

    @torch.no_grad()
    def sample(self, uniforms: Tensor, temperature: float = 1.0) -> list[list[int]]:
        """One composition (sorted ids, one per atom; the types they refine with ``max_charge``) per row of ``uniforms
        [n, max_atoms + 1]``, U[0, 1) draws: the first draws the size, the others the ids (module docstring), so a composition
        depends on its own row alone. ``temperature`` divides the next-id logits (below 1: likelier ids more often); the size
        is always drawn from its histogram."""
        device = self.head.weight.device
        u = uniforms.to(device).float().clamp(min=1e-12)  # [n, A + 1]; 0 would pick a value of zero probability
        size_cdf = self.size_log_probs().exp().cumsum(0)  # [A + 1]
        size = (size_cdf[None, :] < u[:, :1] * size_cdf[-1]).sum(1).clamp(1, self.max_atoms)  # [n] first size whose CDF reaches u
        seq = torch.full((len(u), 1), self.bos, dtype=torch.long, device=device)  # [n, 1]
        ids = torch.arange(self.num_types, device=device)  # [T]
        for step in range(int(size.max())):
            logits = self(seq, size)[:, -1].float() / temperature  # [n, T]
            last = seq[:, -1].where(seq[:, -1] < self.num_types, torch.ones_like(seq[:, -1]))  # [n] previous id (1 after BOS)
            banned = (ids[None, :] < last[:, None]) | ~self.seen[None, :]  # [n, T] descending, or never in training
            if self.sizes["max_charge"] and step:
                banned |= (self.type_of[None, :] == self.type_of[last][:, None]) & (ids[None, :] != last[:, None])  # [n, T] a 2nd id of a type
            cdf = logits.masked_fill(banned, float("-inf")).softmax(-1).cumsum(-1)  # [n, T]
            nxt = (cdf < u[:, 1 + step, None] * cdf[:, -1:]).sum(-1).clamp(max=self.num_types - 1)  # [n] first id whose CDF reaches u
            seq = torch.cat([seq, nxt[:, None]], 1)  # [n, step + 2]
        if self.sizes["max_charge"]:
            seq = torch.cat([seq[:, :1], self.type_of[seq[:, 1:]]], 1)  # [n, 1 + max size] the types the ids refine
        return [row[1: 1 + int(k)].tolist() for row, k in zip(seq.cpu(), size.cpu())]
