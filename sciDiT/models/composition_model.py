"""A generative model of compositions: which atoms a set holds, drawn before where they go.

Composition-first generation splits a crystal into ``p(composition) p(structure | composition)``: this
module is the first factor, a DiT conditioned on ``condition.composition`` the second (experiments/
composition_first). A composition is a multiset of type ids, one per atom; written in ascending order
it is a sequence, and :class:`CompositionModel` is a small causal transformer over
``BOS, id_1 <= id_2 <= ... <= id_n, EOS``. Sampling draws each next token from the model with ids below the
previous one removed (training sequences never descend, so no mass the data shows is lost) and stops at
EOS or ``max_atoms``; each draw inverts the CDF at a given uniform number, so a caller that owns one random
stream per sample gets the same composition for it whatever the batch. The model knows ids, not chemistry: the tokenizers say which id is which element.

Sections in data-flow order: sizes, the model (embedding -> causal blocks -> next-token logits), the
loss, sampling.
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
    """Autoregressive model of sorted id multisets (module docstring): ``forward`` gives next-token logits.

    ``dropout`` (training only) keeps a model of a few thousand compositions from memorising them."""

    def __init__(self, num_types: int, max_atoms: int, hidden_size: int = 128, depth: int = 3, num_heads: int = 4, dropout: float = 0.0):
        super().__init__()
        self.sizes = {"num_types": num_types, "max_atoms": max_atoms, "hidden_size": hidden_size, "depth": depth, "num_heads": num_heads,
                      "dropout": dropout}
        self.num_types, self.max_atoms = num_types, max_atoms
        self.bos, self.eos = num_types, num_types + 1  # ids 0..num_types-1 are types (0: none)
        self.token_embed = nn.Embedding(num_types + 2, hidden_size)
        self.pos_embed = nn.Embedding(max_atoms + 2, hidden_size)  # a place in the sorted sequence, not an atom index
        layer = nn.TransformerEncoderLayer(hidden_size, num_heads, 4 * hidden_size, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, num_types + 2)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """All initialisation in one place: small normal embeddings, Xavier linears, a zero output head."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed.weight, std=0.02)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-token logits ``[B, S, V]`` for token sequences ``tokens [B, S]`` (BOS first; causal)."""
        s = tokens.shape[1]
        h = self.token_embed(tokens) + self.pos_embed(torch.arange(s, device=tokens.device))  # [B, S, H]
        causal = torch.triu(torch.full((s, s), float("-inf"), device=tokens.device), diagonal=1)  # [S, S]
        h = self.blocks(h, mask=causal, is_causal=True)  # [B, S, H]
        return self.head(self.norm(h))  # [B, S, V]

    # -- sequences ----------------------------------------------------------------------------
    def encode(self, compositions: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Inputs ``[B, S]`` (BOS + sorted ids, padded with EOS) and targets ``[B, S]`` (sorted ids + EOS, padding -100)."""
        rows = [sorted(int(z) for z in c) for c in compositions]
        if any(not r or len(r) > self.max_atoms or r[0] < 1 or r[-1] >= self.num_types for r in rows):
            raise ValueError(f"a composition is empty, has more than {self.max_atoms} atoms, or an id outside 1..{self.num_types - 1}")
        s = max(len(r) for r in rows) + 1
        inputs = torch.full((len(rows), s), self.eos, dtype=torch.long)  # [B, S]
        targets = torch.full((len(rows), s), -100, dtype=torch.long)  # [B, S]
        for b, r in enumerate(rows):
            inputs[b, : len(r) + 1] = torch.tensor([self.bos, *r])
            targets[b, : len(r) + 1] = torch.tensor([*r, self.eos])
        return inputs, targets

    # -- the loss ------------------------------------------------------------------------------
    def nll(self, compositions: Sequence[Sequence[int]]) -> Tensor:
        """Negative log-likelihood ``[B]`` (nats) of each composition under the model (with its end token)."""
        inputs, targets = self.encode(compositions)
        inputs, targets = inputs.to(self.head.weight.device), targets.to(self.head.weight.device)
        logits = self(inputs)  # [B, S, V]
        per_token = nn.functional.cross_entropy(logits.transpose(1, 2).float(), targets, ignore_index=-100, reduction="none")  # [B, S]
        return per_token.sum(1)  # [B]

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, uniforms: Tensor, temperature: float = 1.0) -> list[list[int]]:
        """One composition (sorted ids, one per atom) per row of ``uniforms [n, max_atoms + 1]``, U[0, 1) draws one per
        token: each token by inverse-CDF sampling (module docstring), so a composition depends on its own row alone."""
        device = self.head.weight.device
        n = uniforms.shape[0]
        u = uniforms.to(device).float().clamp(min=1e-12)  # [n, A + 1]; 0 would pick a token of zero probability
        seq = torch.full((n, 1), self.bos, dtype=torch.long, device=device)  # [n, 1]
        done = torch.zeros(n, dtype=torch.bool, device=device)  # [n]
        ids = torch.arange(self.num_types + 2, device=device)  # [V]
        for step in range(self.max_atoms + 1):
            logits = self(seq)[:, -1].float() / temperature  # [n, V]
            last = seq[:, -1].where(seq[:, -1] < self.num_types, torch.ones_like(seq[:, -1]))  # [n] previous id (1 after BOS)
            banned = (ids[None, :] < last[:, None]) | (ids[None, :] == 0) | (ids[None, :] == self.bos)  # [n, V]
            if step == 0:
                banned |= ids[None, :] == self.eos  # at least one atom
            if step == self.max_atoms:
                banned |= ids[None, :] != self.eos  # no more than max_atoms
            cdf = logits.masked_fill(banned, float("-inf")).softmax(-1).cumsum(-1)  # [n, V]
            nxt = (cdf < u[:, step, None] * cdf[:, -1:]).sum(-1).clamp(max=len(ids) - 1)  # [n] first token whose CDF reaches u
            nxt = torch.where(done, torch.full_like(nxt, self.eos), nxt)  # [n]
            seq = torch.cat([seq, nxt[:, None]], 1)  # [n, step + 2]
            done |= nxt == self.eos
            if done.all():
                break
        return [[int(z) for z in row[1:] if int(z) < self.num_types] for row in seq.cpu()]
