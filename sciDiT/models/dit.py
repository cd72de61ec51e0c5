"""Latent Diffusion Transformer over token sets (ADiT style), laid out like DiT's models.py.

The DiT sees a set of latent tokens ``x_t [B, N, latent_dim]`` on the flow-matching path
(``sciDiT.flow``) with a padding ``mask [B, N]``, the time ``t [B]`` in [0, 1] and a dict of
conditions, and predicts the velocity ``x1 - x0`` of the linear path for every real token.
There is no positional or index embedding: tokens interact only through masked set attention, so
the network is permutation-equivariant over tokens. Time and conditions are summed into one vector
``c [B, hidden]`` that drives adaLN-Zero modulation of every block.

Conditions are declared by a plain dict so a Hydra config can list them::

    conditions = {
        "domain": {"kind": "class", "num_classes": 3},          # cond["domain"]: [B] long
        "spacegroup": {"kind": "class", "num_classes": 230},    # cond["spacegroup"]: [B] long in 0..229
        "properties": {"kind": "vector", "dim": 4},             # cond["properties"]: [B, 4] float
        "perturbation": {"kind": "token_set", "num_tokens": G}, # cond["perturbation"]: [B, M] long,
    }                                                           # cond["perturbation_mask"]: [B, M] bool

Each condition has a learned null embedding used when it is dropped (label dropout with
``dropout`` or ``class_dropout_prob`` during training, ``drop_cond`` for classifier-free guidance)
or absent from the ``cond`` dict (absent = unconditional for that condition); ``cond["{name}_null"]``
(``[B]`` bool) nulls one condition for chosen samples only, e.g. a gene-identity channel for targets
the model never saw perturbed.

Sections, in data-flow order: embedding layers, the DiT block, the final layer, the model, weight
initialisation, the size registry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sciDiT.batch import Domain
from sciDiT.models.attention import Mlp, SetAttention, pack_sets, xavier_linear_init

DEFAULT_CONDITIONS: dict[str, dict[str, Any]] = {"domain": {"kind": "class", "num_classes": len(Domain)}}


ATTENTION_LAYOUTS = ("padded", "packed")


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation of tokens ``x [B, N, H]`` by per-set ``[B, 1, H]`` or per-token ``[B, N, H]`` shift and scale."""
    return x * (1 + scale) + shift


def per_token(v: Tensor, set_index: Tensor | None) -> Tensor:
    """Per-set vectors ``[B, K]`` broadcast to tokens: ``[B, 1, K]`` (padded), or gathered ``[R, L, K]`` (packed)."""
    return v.unsqueeze(1) if set_index is None else v[set_index]


# ----------------------------------------------------------------------------------------------
# Embedding layers for time and conditions
# ----------------------------------------------------------------------------------------------


class TimestepEmbedder(nn.Module):
    """Flow time ``t [B]`` in [0, 1] -> ``[B, H]``: sinusoidal features of ``1000 t``, then an MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, time_scale: float = 1000.0):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.time_scale = time_scale
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    @staticmethod
    def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        """Sinusoidal features ``[B, dim]`` of scalar times ``t [B]`` (transformer-style frequencies)."""
        half = dim // 2
        dtype = torch.promote_types(t.dtype, torch.float32)  # at least float32: bf16 would blur the high frequencies
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=dtype) / half)  # [dim/2]
        args = t.to(dtype)[:, None] * freqs[None]  # [B, dim/2]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, dim]

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.timestep_embedding(self.time_scale * t, self.frequency_embedding_size))  # [B, H]


class ClassEmbedder(nn.Module):
    """Class label ``[B] long`` in 0..num_classes-1 -> ``[B, H]``; row ``num_classes`` is the null class."""

    def __init__(self, key: str, hidden_size: int, num_classes: int, dropout: float):
        super().__init__()
        self.key, self.num_classes, self.dropout = key, num_classes, dropout
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, cond: Mapping[str, Tensor], drop: Tensor) -> Tensor:
        labels = torch.where(drop, self.num_classes, cond[self.key])  # [B]
        return self.embedding_table(labels)  # [B, H]

    def null(self, batch_size: int) -> Tensor:
        return self.embedding_table.weight[self.num_classes].expand(batch_size, -1)  # [B, H]


class VectorEmbedder(nn.Module):
    """Real-valued vector ``[B, dim]`` (e.g. target properties) -> ``[B, H]`` by an MLP; learned null."""

    def __init__(self, key: str, hidden_size: int, dim: int, dropout: float):
        super().__init__()
        self.key, self.dropout = key, dropout
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.null_embedding = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, cond: Mapping[str, Tensor], drop: Tensor) -> Tensor:
        emb = self.mlp(cond[self.key].float())  # [B, H]
        return torch.where(drop[:, None], self.null_embedding.to(emb.dtype), emb)  # [B, H]

    def null(self, batch_size: int) -> Tensor:
        return self.null_embedding.expand(batch_size, -1)  # [B, H]


class TokenSetEmbedder(nn.Module):
    """A set of token ids ``[B, M]`` (e.g. perturbed genes) with ``{key}_mask [B, M]`` -> ``[B, H]``.

    Embeds each id (in its own table, or a shared ``table`` such as the VAE's gene embedding, which
    is then neither re-initialised here nor copied), layer-normalises each token, sums over the real
    ids (an empty set, e.g. a control cell, sums to zero) and maps the sum through an MLP. Without
    ``{key}_mask`` every id is real. The per-token normalisation matters for a shared table: rows the
    owner never trains (a VAE's extra target genes) keep their tiny initial scale, and without it they
    would all look like "no perturbation" to the MLP. ``normalize=False`` keeps the rows' scale, for
    tables whose row norm means something (a data-derived gene profile: a weak one should stay weak).
    """

    def __init__(self, key: str, hidden_size: int, num_tokens: int, dropout: float, table: nn.Module | None = None, normalize: bool = True):
        super().__init__()
        self.key, self.dropout = key, dropout
        self.owns_table = table is None
        self.table = nn.Embedding(num_tokens, hidden_size) if table is None else table
        self.norm = nn.LayerNorm(self.table.embedding_dim, elementwise_affine=False) if normalize else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(self.table.embedding_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.null_embedding = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, cond: Mapping[str, Tensor], drop: Tensor) -> Tensor:
        ids = cond[self.key]  # [B, M]
        mask = cond.get(f"{self.key}_mask", torch.ones_like(ids, dtype=torch.bool))  # [B, M]
        tokens = self.norm(self.table(ids)) * mask.unsqueeze(-1).to(self.table.weight.dtype)  # [B, M, E]
        emb = self.mlp(tokens.sum(dim=1))  # [B, H]
        return torch.where(drop[:, None], self.null_embedding.to(emb.dtype), emb)  # [B, H]

    def null(self, batch_size: int) -> Tensor:
        return self.null_embedding.expand(batch_size, -1)  # [B, H]


CONDITION_KINDS: dict[str, type[nn.Module]] = {"class": ClassEmbedder, "vector": VectorEmbedder, "token_set": TokenSetEmbedder}


def build_condition_embedder(
    key: str, spec: Mapping[str, Any], hidden_size: int, default_dropout: float, table: nn.Module | None = None
) -> nn.Module:
    """One condition embedder from its spec ``{"kind": ..., **kwargs, "dropout": p (optional)}``."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in CONDITION_KINDS:
        raise ValueError(f"condition {key!r}: unknown kind {kind!r}; expected one of {sorted(CONDITION_KINDS)}")
    dropout = float(spec.pop("dropout", default_dropout))
    if table is not None:
        if kind != "token_set":
            raise ValueError(f"condition {key!r}: a shared embedding table needs kind 'token_set', not {kind!r}")
        spec["table"] = table
    try:
        return CONDITION_KINDS[kind](key, hidden_size, dropout=dropout, **spec)
    except TypeError as err:
        raise ValueError(f"condition {key!r} ({kind}): bad spec {dict(spec)}: {err}") from None


# ----------------------------------------------------------------------------------------------
# Core DiT block
# ----------------------------------------------------------------------------------------------


class DiTBlock(nn.Module):
    """Set-attention + MLP block with adaLN-Zero conditioning (shift, scale, gate per branch from c)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SetAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor, mask: Tensor, set_index: Tensor | None = None) -> Tensor:
        """``x [B, N, H]``, ``c [B, H]``, key mask ``[B, N]``; packed: ``x [R, L, H]``, mask ``[R, L, L]``, ``set_index [R, L]``."""
        mod = per_token(self.adaLN_modulation(c), set_index)  # [B, 1, 6H] or [R, L, 6H]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)  # 6 x [B, 1 or N, H]
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), mask)  # [B, N, H]
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))  # [B, N, H]
        return x


# ----------------------------------------------------------------------------------------------
# Final layer
# ----------------------------------------------------------------------------------------------


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map from hidden tokens to latent velocities."""

    def __init__(self, hidden_size: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor, set_index: Tensor | None = None) -> Tensor:
        shift, scale = per_token(self.adaLN_modulation(c), set_index).chunk(2, dim=-1)  # 2 x [B, 1 or N, H]
        return self.linear(modulate(self.norm_final(x), shift, scale))  # [B, N, D_out]


# ----------------------------------------------------------------------------------------------
# The DiT
# ----------------------------------------------------------------------------------------------


class DiT(nn.Module):
    """Permutation-equivariant latent DiT predicting the flow-matching velocity ``x1 - x0`` per token.

    Args:
        latent_dim: width of the VAE latent tokens (input and output).
        hidden_size, depth, num_heads, mlp_ratio: transformer size (see ``DIT_SIZES``).
        conditions: ``{name: {"kind": "class" | "vector" | "token_set", ...}}``; ``{}`` for none.
            Defaults to ``DEFAULT_CONDITIONS`` (the ``domain`` label: molecule / crystal / cell).
        class_dropout_prob: training-time probability of replacing each condition by its null
            embedding (per sample, per condition; a spec's ``dropout`` overrides it), for CFG.
        self_condition: take a previous ``x1`` estimate as extra input (ADiT self-conditioning).
        shared_embeddings: ``{name: table}`` for ``token_set`` conditions to use instead of their own
            (an ``nn.Embedding`` or any module mapping ids to rows with ``weight`` and ``embedding_dim``;
            registered as submodules; freeze them by ``requires_grad_(False)``).
        attention_layout: ``padded`` (one set per row, key mask) or ``packed`` (whole sets packed
            into rows of ``pack_length`` slots with block-diagonal attention,
            :func:`~sciDiT.models.attention.pack_sets`): the same function, less padding work
            when set sizes in a batch differ widely. Inputs and outputs are padded either way.
        activation_checkpointing: in training, keep only each block's input and recompute the
            block in the backward pass (``torch.utils.checkpoint``): activation memory ~1/depth,
            for one extra forward of the blocks. Outputs and gradients are unchanged.
    """

    def __init__(
        self,
        latent_dim: int = 8,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        conditions: Mapping[str, Mapping[str, Any]] | None = None,
        class_dropout_prob: float = 0.1,
        self_condition: bool = True,
        shared_embeddings: Mapping[str, nn.Module] | None = None,
        attention_layout: str = "padded",
        pack_length: int = 64,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        if attention_layout not in ATTENTION_LAYOUTS:
            raise ValueError(f"unknown attention_layout {attention_layout!r}; expected one of {ATTENTION_LAYOUTS}")
        self.attention_layout, self.pack_length = attention_layout, pack_length
        self.activation_checkpointing = activation_checkpointing
        conditions = DEFAULT_CONDITIONS if conditions is None else conditions
        shared_embeddings = dict(shared_embeddings or {})
        unknown = sorted(set(shared_embeddings) - set(conditions))
        if unknown:
            raise ValueError(f"shared_embeddings for undeclared conditions {unknown}")
        self.latent_dim = latent_dim
        self.self_condition = self_condition
        self.x_embedder = nn.Linear(latent_dim * (2 if self_condition else 1), hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.cond_embedders = nn.ModuleDict(
            {
                name: build_condition_embedder(name, spec, hidden_size, class_dropout_prob, shared_embeddings.get(name))
                for name, spec in conditions.items()
            }
        )
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, latent_dim)
        self.initialize_weights()

    def embed_conditions(self, cond: Mapping[str, Tensor], drop_cond: Tensor | None, t_emb: Tensor) -> Tensor:
        """``c [B, H]`` = time embedding + the sum of all condition embeddings (null where dropped or absent)."""
        bsz = t_emb.shape[0]
        c = t_emb  # [B, H]
        for name, embedder in self.cond_embedders.items():
            if name not in cond:
                c = c + embedder.null(bsz).to(c.dtype)  # [B, H]
                continue
            if drop_cond is not None:
                drop = drop_cond  # [B] bool, forced (guidance)
            elif self.training and embedder.dropout > 0:
                drop = torch.rand(bsz, device=t_emb.device) < embedder.dropout  # [B] bool, label dropout
            else:
                drop = torch.zeros(bsz, dtype=torch.bool, device=t_emb.device)  # [B] bool
            if f"{name}_null" in cond:
                drop = drop | cond[f"{name}_null"]  # [B] bool, nulled per sample by the caller
            c = c + embedder(cond, drop).to(c.dtype)  # [B, H]
        return c

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        mask: Tensor,
        cond: Mapping[str, Tensor] | None = None,
        x_self_cond: Tensor | None = None,
        drop_cond: Tensor | None = None,
    ) -> Tensor:
        """Velocity ``[B, N, latent_dim]`` of the linear path at ``x [B, N, latent_dim]``, time ``t [B]``.

        ``mask [B, N]`` marks real tokens (padded outputs are zero); ``x_self_cond`` is the previous
        ``x1`` estimate (zeros when None; self-conditioning models only); ``drop_cond [B]`` bool
        forces null conditions per sample (for classifier-free guidance).
        """
        if self.self_condition:
            x_self_cond = torch.zeros_like(x) if x_self_cond is None else x_self_cond  # [B, N, D]
            x = torch.cat([x, x_self_cond.to(x.dtype)], dim=-1)  # [B, N, 2D]
        elif x_self_cond is not None:
            raise ValueError("x_self_cond given to a DiT built with self_condition=False")
        h = self.x_embedder(x)  # [B, N, H]
        c = self.embed_conditions(cond or {}, drop_cond, self.t_embedder(t))  # [B, H]
        packing = pack_sets(mask, self.pack_length) if self.attention_layout == "packed" else None
        if packing is not None:
            h, attn_mask, set_index = packing.pack(h), packing.attn_mask, packing.set_index  # [R, L, H], [R, L, L], [R, L]
        else:
            attn_mask, set_index = mask, None  # [B, N], -
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if recompute:
                h = checkpoint(block, h, c, attn_mask, set_index, use_reentrant=False)  # [B, N, H] or [R, L, H]
            else:
                h = block(h, c, attn_mask, set_index)  # [B, N, H] or [R, L, H]
        out = self.final_layer(h, c, set_index)  # [B, N, D] or [R, L, D]
        if packing is not None:
            out = packing.unpack(out, mask)  # [B, N, D]
        return torch.where(mask.unsqueeze(-1), out, torch.zeros((), dtype=out.dtype, device=out.device))  # [B, N, D]

    # ------------------------------------------------------------------------------------------
    # Weight initialisation (all of it, in one place)
    # ------------------------------------------------------------------------------------------

    def initialize_weights(self) -> None:
        """DiT initialisation: xavier linears, N(0, 0.02) embeddings, zeroed adaLN and output (adaLN-Zero).

        With the zeroed gates every block starts as the identity and the output is exactly zero.
        Shared embedding tables are left as they are.
        """

        self.apply(xavier_linear_init)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for embedder in self.cond_embedders.values():
            if isinstance(embedder, ClassEmbedder):
                nn.init.normal_(embedder.embedding_table.weight, std=0.02)
            if isinstance(embedder, (VectorEmbedder, TokenSetEmbedder)):
                nn.init.normal_(embedder.null_embedding, std=0.02)
            if isinstance(embedder, TokenSetEmbedder) and embedder.owns_table:
                nn.init.normal_(embedder.table.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def zero_conditions(self, names: Iterable[str]) -> None:
        """Make conditions ``names`` add exactly zero to ``c``, whatever their value (zeroed class rows,
        null embeddings and last MLP layers), as MatterGen's adapters start: a trained DiT fine-tuned with
        new conditions begins as the same function and learns them from there."""
        for name in names:
            embedder = self.cond_embedders[name]
            if isinstance(embedder, ClassEmbedder):
                nn.init.zeros_(embedder.embedding_table.weight)
            else:
                nn.init.zeros_(embedder.null_embedding)
                nn.init.zeros_(embedder.mlp[-1].weight)
                nn.init.zeros_(embedder.mlp[-1].bias)


# ----------------------------------------------------------------------------------------------
# Size registry
# ----------------------------------------------------------------------------------------------

DIT_SIZES: dict[str, dict[str, int]] = {
    "DiT-T": {"depth": 4, "hidden_size": 128, "num_heads": 4},  # tests / CPU
    "DiT-XS": {"depth": 6, "hidden_size": 256, "num_heads": 4},  # CPU smoke runs
    "DiT-S": {"depth": 12, "hidden_size": 384, "num_heads": 6},
    "DiT-B": {"depth": 12, "hidden_size": 768, "num_heads": 12},
    "DiT-L": {"depth": 24, "hidden_size": 1024, "num_heads": 16},
}


def dit(size: str, **kwargs: Any) -> DiT:
    """A DiT of a registered size (``DIT_SIZES``); other constructor kwargs pass through."""
    if size not in DIT_SIZES:
        raise ValueError(f"unknown DiT size {size!r}; expected one of {sorted(DIT_SIZES)}")
    return DiT(**DIT_SIZES[size], **kwargs)
