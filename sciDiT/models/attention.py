"""Set attention: multi-head self-attention over an unordered, padded token set.

No positional or index embedding exists anywhere in sciDiT, so every block built from this layer
is permutation-equivariant over tokens. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` with the padding mask as a boolean key mask,
which takes the fused kernels on CPU and GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SetAttention(nn.Module):
    """Masked multi-head self-attention; padded keys are never attended to."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        bsz, n, dim = x.shape
        qkv = self.qkv(x).view(bsz, n, 3, self.num_heads, dim // self.num_heads)  # [B, N, 3, H, Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x [B, H, N, Dh]
        key_mask = mask[:, None, None, :]  # [B, 1, 1, N]: True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # [B, H, N, Dh]
        out = out.transpose(1, 2).reshape(bsz, n, dim)  # [B, N, D]
        return self.proj(out)  # [B, N, D]


class Mlp(nn.Module):
    """Two-layer feed-forward network with GELU (tanh approximation, as in DiT)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block over a token set (used by the VAE encoder and decoder)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SetAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)  # [B, N, D]
        return x + self.mlp(self.norm2(x))  # [B, N, D]


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens: x [B, N, D], mask [B, N] -> [B, D]."""
    w = mask.to(x.dtype).unsqueeze(-1)  # [B, N, 1]
    return (x * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def xavier_linear_init(module: nn.Module) -> None:
    """The basic initialisation of every sciDiT transformer: Xavier-uniform linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
