"""Cell VAE: a set of gene tokens -> K latent tokens -> expression of every gene of the vocabulary.

Why this shape. A cell is an unordered set of gene tokens (``sciDiT.tokenizers.cell``: gene id +
log-expression value, nonzero genes only), so the encoder uses the shared set-attention blocks with
no gene order. Per-gene latents (as the all-atom VAE's per-atom latents) would be *larger* than the
cell (299 genes x 8 dims > 299 values), so the encoder pools the gene tokens into a small fixed set
of ``K`` latent tokens of ``latent_dim`` each (default 8 x 8 = 64 numbers for a 299-gene cell): ``K``
learned queries cross-attend to the gene tokens (Perceiver / Set-Transformer PMA pooling), which is
permutation-invariant over genes. The latent tokens are again a set (no slot ids), so the latent
DiT treats them like atoms.

The decoder asks every measured gene for its value: gene queries (the gene-identity embedding)
attend to the latent tokens (invariant to the latent tokens' order). Log-normalised expression is zero-inflated, so each gene gets a
hurdle likelihood: a Bernoulli "detected" logit and, when detected, a Gaussian on the log value with
a learned per-gene scale. Sampling from it gives cells with realistic drop-outs and noise (a plain
mean decoder gives over-smooth cells whose distribution distances to real cells are poor).

The gene-identity table ``gene_embedding`` (padding 0, measured genes 1..G, extra target genes
G+1..) is the one the latent DiT's perturbation token-set condition shares, so a perturbation is a
set of rows of this table: a combination is a larger set, an unseen target still has a row.

Sections, in data-flow order: gene tokens, cross-attention block, encoder, decoder, the VAE
(forward, loss, sampling), weight initialisation, size registry.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciDiT.batch import TokenBatch
from sciDiT.models.attention import Mlp, TransformerBlock, xavier_linear_init

# ----------------------------------------------------------------------------------------------
# Gene tokens
# ----------------------------------------------------------------------------------------------


class GeneTokenEmbedder(nn.Module):
    """Gene token ``(id, value)`` -> ``[H]``: gene-identity embedding + an MLP of the expression value."""

    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.gene_embedding = nn.Embedding(vocab_size, hidden_size, padding_idx=0)
        self.value_mlp = nn.Sequential(nn.Linear(1, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, types: Tensor, values: Tensor) -> Tensor:
        return self.gene_embedding(types) + self.value_mlp(values.unsqueeze(-1))  # [B, N, H]


# ----------------------------------------------------------------------------------------------
# Cross-attention block (queries attend to a padded key set)
# ----------------------------------------------------------------------------------------------


class CrossAttentionBlock(nn.Module):
    """Pre-LN block: ``q = q + Attn(q, kv)``, ``q = q + MLP(q)``; padded keys are never attended to."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, q: Tensor, kv: Tensor, kv_mask: Tensor) -> Tensor:
        bsz, m, dim = q.shape
        n, dh = kv.shape[1], dim // self.num_heads
        qh = self.q(self.norm_q(q)).view(bsz, m, self.num_heads, dh).transpose(1, 2)  # [B, h, M, Dh]
        k, v = self.kv(self.norm_kv(kv)).view(bsz, n, 2, self.num_heads, dh).permute(2, 0, 3, 1, 4)  # 2 x [B, h, N, Dh]
        out = F.scaled_dot_product_attention(qh, k, v, attn_mask=kv_mask[:, None, None, :])  # [B, h, M, Dh]
        q = q + self.proj(out.transpose(1, 2).reshape(bsz, m, dim))  # [B, M, D]
        return q + self.mlp(self.norm2(q))  # [B, M, D]


# ----------------------------------------------------------------------------------------------
# Encoder: gene tokens -> K latent tokens (mean, log-variance)
# ----------------------------------------------------------------------------------------------


class CellEncoder(nn.Module):
    """Set attention over gene tokens, then ``K`` learned queries pool them into ``K`` latent tokens."""

    def __init__(self, embedder: GeneTokenEmbedder, hidden_size: int, depth: int, num_heads: int, mlp_ratio: float, num_latent_tokens: int, latent_dim: int):
        super().__init__()
        self.embedder = embedder
        self.gene_blocks = nn.ModuleList([TransformerBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.queries = nn.Parameter(torch.zeros(num_latent_tokens, hidden_size))
        self.pool = CrossAttentionBlock(hidden_size, num_heads, mlp_ratio)
        self.latent_block = TransformerBlock(hidden_size, num_heads, mlp_ratio)
        self.norm = nn.LayerNorm(hidden_size)
        self.to_moments = nn.Linear(hidden_size, 2 * latent_dim)

    def forward(self, types: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h = self.embedder(types, values)  # [B, N, H]
        for block in self.gene_blocks:
            h = block(h, mask)  # [B, N, H]
        q = self.queries.unsqueeze(0).expand(h.shape[0], -1, -1)  # [B, K, H]
        z = self.pool(q, h, mask)  # [B, K, H]
        z = self.latent_block(z, torch.ones(z.shape[:2], dtype=torch.bool, device=z.device))  # [B, K, H]
        mean, logvar = self.to_moments(self.norm(z)).chunk(2, dim=-1)  # 2 x [B, K, d]
        return mean, logvar.clamp(-10.0, 5.0)


# ----------------------------------------------------------------------------------------------
# Decoder: K latent tokens -> per-gene hurdle parameters for every measured gene
# ----------------------------------------------------------------------------------------------


class CellDecoder(nn.Module):
    """Set attention over the latent tokens, then one read-out attention: every measured gene's query attends to them.

    The gene queries depend only on the gene, not on the cell, so they are projected once per
    forward (``[G, H]``) and the per-cell cost is an attention over ``K`` keys plus a linear head:
    a per-gene MLP over ``B x G`` tokens would cost ~G times more and dominates CPU training.
    Output per gene = head(gene query + attended latent values), i.e. a per-gene baseline plus a
    cell-specific, attention-weighted correction.
    """

    def __init__(self, embedder: GeneTokenEmbedder, num_genes: int, hidden_size: int, depth: int, num_heads: int, mlp_ratio: float, latent_dim: int):
        super().__init__()
        self.embedder = embedder  # shared with the encoder: the gene queries are the gene-identity rows
        self.num_genes, self.num_heads = num_genes, num_heads
        self.latent_in = nn.Linear(latent_dim, hidden_size)
        self.latent_blocks = nn.ModuleList([TransformerBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm_q = nn.LayerNorm(hidden_size)
        self.norm_kv = nn.LayerNorm(hidden_size)
        self.q = nn.Linear(hidden_size, hidden_size)
        self.kv = nn.Linear(hidden_size, 2 * hidden_size)
        self.head = nn.Linear(hidden_size, 2)  # detected logit, log-expression mean
        self.log_scale = nn.Parameter(torch.zeros(num_genes))  # per-gene log std of detected values

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        bsz, k = z.shape[:2]
        latent_mask = torch.ones(bsz, k, dtype=torch.bool, device=z.device)  # [B, K]
        h = self.latent_in(z)  # [B, K, H]
        for block in self.latent_blocks:
            h = block(h, latent_mask)  # [B, K, H]
        genes = self.embedder.gene_embedding(torch.arange(1, self.num_genes + 1, device=z.device))  # [G, H]
        dim, dh = genes.shape[-1], genes.shape[-1] // self.num_heads
        q = self.q(self.norm_q(genes)).view(1, self.num_genes, self.num_heads, dh).transpose(1, 2)  # [1, h, G, Dh]
        key, val = self.kv(self.norm_kv(h)).view(bsz, k, 2, self.num_heads, dh).permute(2, 0, 3, 1, 4)  # 2 x [B, h, K, Dh]
        read = F.scaled_dot_product_attention(q.expand(bsz, -1, -1, -1), key, val)  # [B, h, G, Dh]
        read = read.transpose(1, 2).reshape(bsz, self.num_genes, dim)  # [B, G, H]
        logit, mean = self.head(genes + read).unbind(-1)  # 2 x [B, G]
        return logit, mean


# ----------------------------------------------------------------------------------------------
# The cell VAE
# ----------------------------------------------------------------------------------------------


class CellVAE(nn.Module):
    """Gene-token set -> ``K x latent_dim`` latent set -> hurdle distribution over the ``num_genes`` measured genes.

    Args:
        vocab_size: rows of the gene table (``CellTokenizer.vocab_size``: padding + measured + extra targets).
        num_genes: measured genes G (``CellTokenizer.num_genes``); the decoder outputs [B, G].
        num_latent_tokens, latent_dim: the latent is ``[B, K, d]``; ``K * d`` should be well below G.
        hidden_size, encoder_depth, decoder_depth, num_heads, mlp_ratio: transformer size (``CELL_VAE_SIZES``).
    """

    def __init__(
        self,
        vocab_size: int,
        num_genes: int,
        num_latent_tokens: int = 8,
        latent_dim: int = 8,
        hidden_size: int = 64,
        encoder_depth: int = 0,
        decoder_depth: int = 1,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
    ):
        super().__init__()
        if num_genes >= vocab_size:
            raise ValueError(f"vocab_size {vocab_size} must exceed num_genes {num_genes} (id 0 is padding)")
        self.num_genes, self.num_latent_tokens, self.latent_dim = num_genes, num_latent_tokens, latent_dim
        self.embedder = GeneTokenEmbedder(vocab_size, hidden_size)
        self.encoder = CellEncoder(self.embedder, hidden_size, encoder_depth, num_heads, mlp_ratio, num_latent_tokens, latent_dim)
        self.decoder = CellDecoder(self.embedder, num_genes, hidden_size, decoder_depth, num_heads, mlp_ratio, latent_dim)
        self.initialize_weights()

    @property
    def gene_embedding(self) -> nn.Embedding:
        """The gene-identity table, shared with the DiT's perturbation condition."""
        return self.embedder.gene_embedding

    def dense_expression(self, batch: TokenBatch) -> Tensor:
        """Expression ``[B, G]`` of a batch of gene-token sets (genes without a token are 0)."""
        x = torch.zeros(batch.batch_size, self.num_genes + 1, device=batch.values.device)  # [B, G+1], column 0 = padding
        x.scatter_(1, batch.types, torch.where(batch.mask, batch.values, 0.0))  # [B, G+1]
        return x[:, 1:]  # [B, G]

    def encode(self, batch: TokenBatch) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance, each ``[B, K, d]``."""
        return self.encoder(batch.types, batch.values, batch.mask)

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Hurdle parameters of every measured gene: detected logit and log-expression mean, each ``[B, G]``."""
        return self.decoder(z)

    def forward(self, batch: TokenBatch, sample: bool = True) -> dict[str, Tensor]:
        mean, logvar = self.encode(batch)  # 2 x [B, K, d]
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if sample else mean  # [B, K, d]
        logit, mu = self.decode(z)  # 2 x [B, G]
        return {"mean": mean, "logvar": logvar, "logit": logit, "mu": mu}

    def loss(self, out: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """Terms: ``detect`` (BCE of detected genes), ``value`` (Gaussian NLL of detected values), ``kl``; all per gene / latent dim."""
        detected = target > 0  # [B, G]
        scale = self.decoder.log_scale.exp()  # [G]
        nll = 0.5 * ((target - out["mu"]) / scale) ** 2 + self.decoder.log_scale  # [B, G]
        kl = 0.5 * (out["mean"] ** 2 + out["logvar"].exp() - 1.0 - out["logvar"])  # [B, K, d]
        return {
            "detect": F.binary_cross_entropy_with_logits(out["logit"], detected.float()),
            "value": (nll * detected).sum() / detected.sum().clamp_min(1),
            "kl": kl.mean(),
        }

    def expected_expression(self, z: Tensor) -> Tensor:
        """Mean log-expression under the decoder, ``P(detected) * max(mu, 0)``, ``[B, G]``."""
        logit, mu = self.decode(z)  # 2 x [B, G]
        return torch.sigmoid(logit) * mu.clamp_min(0.0)

    def sample_expression(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One cell per latent drawn from the hurdle likelihood (non-negative log-expression), ``[B, G]``."""
        logit, mu = self.decode(z)  # 2 x [B, G]
        draw = generator.device if generator is not None else z.device
        u = torch.rand(logit.shape, generator=generator, device=draw).to(z.device)  # [B, G]
        eps = torch.randn(logit.shape, generator=generator, device=draw).to(z.device)  # [B, G]
        values = (mu + eps * self.decoder.log_scale.exp()).clamp_min(0.0)  # [B, G]
        return torch.where(u < torch.sigmoid(logit), values, torch.zeros((), device=z.device))

    # ------------------------------------------------------------------------------------------
    # Weight initialisation (all of it, in one place)
    # ------------------------------------------------------------------------------------------

    def initialize_weights(self) -> None:
        """Xavier linears with zero bias; N(0, 0.02) gene rows and latent queries; per-gene scales 0.5.

        The scale of detected values starts at 0.5 (the typical spread of a detected gene's
        log1p-normalised value) rather than 1: a short CPU run moves it little, and a too-wide
        scale makes sampled cells far noisier than real ones.

        The small gene-row scale also means that rows of extra target genes, which only the DiT's
        perturbation condition reads, start near zero (near "no perturbation") rather than at
        large random vectors.
        """

        self.apply(xavier_linear_init)
        nn.init.normal_(self.embedder.gene_embedding.weight, std=0.02)
        with torch.no_grad():
            self.embedder.gene_embedding.weight[0].zero_()
        nn.init.normal_(self.encoder.queries, std=0.02)
        nn.init.constant_(self.decoder.log_scale, math.log(0.5))


# ----------------------------------------------------------------------------------------------
# Size registry
# ----------------------------------------------------------------------------------------------

CELL_VAE_SIZES: dict[str, dict[str, Any]] = {
    "CellVAE-T": {"hidden_size": 32, "encoder_depth": 1, "decoder_depth": 1, "num_heads": 2, "num_latent_tokens": 4, "latent_dim": 4},  # tests
    "CellVAE-S": {"hidden_size": 64, "encoder_depth": 0, "decoder_depth": 1, "num_heads": 4, "num_latent_tokens": 8, "latent_dim": 8},  # CPU
    "CellVAE-B": {"hidden_size": 256, "encoder_depth": 4, "decoder_depth": 4, "num_heads": 8, "num_latent_tokens": 16, "latent_dim": 8},
}


def cell_vae(size: str, vocab_size: int, num_genes: int, **kwargs: Any) -> CellVAE:
    """A cell VAE of a registered size (``CELL_VAE_SIZES``); other constructor kwargs override it."""
    if size not in CELL_VAE_SIZES:
        raise ValueError(f"unknown cell VAE size {size!r}; expected one of {sorted(CELL_VAE_SIZES)}")
    return CellVAE(vocab_size, num_genes, **{**CELL_VAE_SIZES[size], **kwargs})
