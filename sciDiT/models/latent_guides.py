"""Heads on noisy latent token sets that guide any DiT on the same latents: a property regressor, a discriminator.

Classifier guidance (Dhariwal & Nichol, 2021) steers an unconditional (or conditional) diffusion
model towards ``p(x | y)`` by adding ``grad_x log p(y | x_t)`` to its score; the regressor here
provides ``p(y | x_t)`` as a Gaussian per property, mean and variance, at every point ``x_t`` of the
flow path (``sciDiT.flow.path``: ``t = 0`` noise, ``t = 1`` data). Its variance grows where ``x_t`` says
little about the property (early in the path), so the guidance fades there by itself. It sees what
the DiT sees: standardised latent tokens with a padding mask, no positional index (set attention,
permutation-invariant output), the time through adaLN-Zero blocks. It knows nothing of chemistry:
which properties it predicts, and their units, are the training code's business.

Discriminator guidance (Kim et al., "Refining generative process with discriminator guidance in
score-based diffusion models", ICML 2023) corrects a trained model's own errors instead: a
discriminator between noised data and noised samples of the model estimates the density ratio
``p_data / p_model`` at ``x_t``, and its gradient is the missing part of the model's score.

Sections, in data-flow order: the shared set trunk (with its weight initialisation), the two heads, the
regressor's loss, the size registry.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sciDiT.models.attention import xavier_linear_init
from sciDiT.models.dit import DiTBlock, TimestepEmbedder

LOG_VAR_RANGE = (-9.0, 4.0)  # standardised units: std from ~0.01 to ~7.4 (a target std of 1 is the ignorant prior)


# ----------------------------------------------------------------------------------------------
# The set trunk and the heads
# ----------------------------------------------------------------------------------------------


class LatentSetHead(nn.Module):
    """Set transformer over noisy latent tokens ``x_t [B, N, L]`` at flow time ``t [B]`` -> ``out_dim`` numbers per set.

    Time drives adaLN-Zero blocks (as in the DiT); the set is pooled by its masked mean (intensive) and its sum
    over 8 (extensive), so the output is invariant to the order of the tokens and blind to padding.
    """

    def __init__(self, latent_dim: int, out_dim: int, hidden_size: int = 128, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        self.latent_dim = latent_dim
        self.sizes = {"hidden_size": hidden_size, "depth": depth, "num_heads": num_heads, "mlp_ratio": mlp_ratio}  # constructor arguments
        self.x_embedder = nn.Linear(latent_dim, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Sequential(nn.Linear(2 * hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, out_dim))
        self.initialize_weights()

    def features(self, x: Tensor, t: Tensor, mask: Tensor) -> Tensor:
        """``[B, out_dim]`` in float32."""
        h = self.x_embedder(x)  # [B, N, H]
        c = self.t_embedder(t)  # [B, H]
        for block in self.blocks:
            h = block(h, c, mask)  # [B, N, H]
        h = self.norm(h) * mask[..., None]  # [B, N, H], zeros at padding
        count = mask.sum(1, keepdim=True).clamp_min(1).to(h.dtype)  # [B, 1]
        pooled = torch.cat([h.sum(1) / count, h.sum(1) / 8.0], dim=-1)  # [B, 2H]: mean (intensive) and scaled sum (extensive)
        return self.head(pooled).float()  # [B, out_dim]

    # ------------------------------------------------------------------------------------------
    # Weight initialisation (all of it, in one place)
    # ------------------------------------------------------------------------------------------

    def initialize_weights(self) -> None:
        """Xavier linears, N(0, 0.02) time MLP, zeroed adaLN (every block starts as the identity), and a zero
        head: the untrained head outputs zeros (a regressor's prior, a discriminator's even odds)."""
        self.apply(xavier_linear_init)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)


class LatentPropertyRegressor(LatentSetHead):
    """Gaussian ``p(y | x_t)`` over ``num_properties`` standardised properties: mean and log variance (clamped to
    :data:`LOG_VAR_RANGE`); untrained, the standardised prior N(0, 1). Sizes: ``HEAD_SIZES``."""

    def __init__(self, latent_dim: int = 8, num_properties: int = 1, hidden_size: int = 128, depth: int = 4,
                 num_heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__(latent_dim, 2 * num_properties, hidden_size, depth, num_heads, mlp_ratio)
        self.num_properties = num_properties

    def forward(self, x: Tensor, t: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log variance ``[B, P]`` of the standardised properties of sets ``x [B, N, L]`` at time ``t [B]``."""
        mean, log_var = self.features(x, t, mask).chunk(2, dim=-1)  # 2 x [B, P]
        return mean, log_var.clamp(*LOG_VAR_RANGE)


class LatentDiscriminator(LatentSetHead):
    """Logit ``log d / (1 - d)`` ``[B]`` that a noisy latent set comes from the data rather than from a generator:
    the density-ratio correction of discriminator guidance (Kim et al. 2023). Sizes: ``HEAD_SIZES``."""

    def __init__(self, latent_dim: int = 8, hidden_size: int = 128, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__(latent_dim, 1, hidden_size, depth, num_heads, mlp_ratio)

    def forward(self, x: Tensor, t: Tensor, mask: Tensor) -> Tensor:
        return self.features(x, t, mask)[:, 0]  # [B]


def gaussian_log_likelihood(mean: Tensor, log_var: Tensor, target: Tensor, known: Tensor) -> Tensor:
    """Per set ``[B]``: the Gaussian log-likelihood (constant dropped) of the ``known [B, P]`` entries of ``target [B, P]``."""
    return -0.5 * ((log_var + (target - mean) ** 2 * torch.exp(-log_var)) * known).sum(-1)


def gaussian_nll(mean: Tensor, log_var: Tensor, target: Tensor, known: Tensor) -> Tensor:
    """Mean Gaussian negative log-likelihood (constant dropped) over the ``known [B, P]`` entries of ``target [B, P]``."""
    return -gaussian_log_likelihood(mean, log_var, target, known).sum() / known.sum().clamp_min(1)


# ----------------------------------------------------------------------------------------------
# Size registry
# ----------------------------------------------------------------------------------------------

HEAD_SIZES: dict[str, dict[str, Any]] = {
    "H-T": {"depth": 4, "hidden_size": 128, "num_heads": 4},  # CPU
    "H-S": {"depth": 8, "hidden_size": 256, "num_heads": 4},
}
