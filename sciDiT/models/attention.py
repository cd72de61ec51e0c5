"""Set attention: multi-head self-attention over an unordered, padded or packed token set.

No positional or index embedding exists anywhere in sciDiT, so every block built from this layer
is permutation-equivariant over tokens. Attention runs through
``torch.nn.functional.scaled_dot_product_attention`` with a boolean mask (the fused kernels), except
for the short sets of molecules and crystals on CPU, where a plain float32 softmax attention is
faster (:func:`attention`). Two layouts:

- padded: ``x [B, N, D]`` with a key mask ``[B, N]`` (True = real token), one set per row;
- packed (:func:`pack_sets`): several whole sets per row of ``L`` slots, ``x [R, L, D]`` with a
  block-diagonal mask ``[R, L, L]`` (a token attends to the tokens of its own set only), so the
  result is the same set attention with padding shrunk to the rows' unfilled tails.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SetAttention(nn.Module):
    """Masked multi-head self-attention; ``mask`` is a key mask ``[B, N]`` or a full mask ``[B, N, N]``."""

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
        attn_mask = mask[:, None, None, :] if mask.dim() == 2 else mask[:, None]  # [B, 1, 1 or N, N]: True = attend
        out = attention(q, k, v, attn_mask)  # [B, H, N, Dh]
        out = out.transpose(1, 2).reshape(bsz, n, dim)  # [B, N, D]
        return self.proj(out)  # [B, N, D]


# CPU set lengths up to this run attention as plain softmax(QK^T)V in float32: 2-3x faster forward + backward
# than the fused SDPA kernel at molecule and crystal sizes (7-19 tokens), about even at 64, slower beyond
# (experiments/benchmark_dit_cpu.md, "Finding 3").
MATH_ATTENTION_MAX_TOKENS = 64


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor) -> Tensor:
    """Masked attention ``[B, H, N, Dh]`` in the fastest kernel and precision for the device.

    GPUs: SDPA in the autocast / input precision. CPUs: float32 (CPU autocast would run SDPA in bf16,
    whose fused kernel is no faster forward and 4-12x slower backward at DiT shapes, even with AMX; the
    linear layers around it are where bf16 pays), through :func:`math_attention` for sets of at most
    ``MATH_ATTENTION_MAX_TOKENS`` tokens and the fused SDPA kernel beyond. The output has the dtype
    autocast would give it.
    """
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, H, N, Dh]
    out_dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
    dtype = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast("cpu", enabled=False):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        if k.shape[-2] <= MATH_ATTENTION_MAX_TOKENS:
            out = math_attention(q, k, v, attn_mask)  # [B, H, N, Dh]
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, H, N, Dh]
    return out.to(out_dtype)


def math_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(Dh)) v`` over the keys ``attn_mask`` allows (True = attend); a query with no
    allowed key averages all of them instead of giving NaN (only padding slots have none)."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # [B, H, N, N]
    scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)  # [B, H, N, N]
    return scores.softmax(dim=-1) @ v  # [B, H, N, Dh]


@dataclass(frozen=True)
class Packing:
    """Where the real tokens of a padded batch ``[B, N]`` sit in a packed layout of ``R`` rows of ``L`` slots.

    ``index [R, L]``: flat position ``b * N + n`` of the token in each slot (0 in empty slots);
    ``segment [R, L]``: its set ``b`` (-1 in empty slots). Built by :func:`pack_sets`.
    """

    index: Tensor
    segment: Tensor

    @property
    def attn_mask(self) -> Tensor:
        """Block-diagonal ``[R, L, L]``: slots attend within their own set (empty slots among themselves)."""
        return self.segment[:, :, None] == self.segment[:, None, :]

    @property
    def set_index(self) -> Tensor:
        """``[R, L]`` set of each slot, for gathering per-set vectors (empty slots read set 0; they are discarded)."""
        return self.segment.clamp_min(0)

    def pack(self, x: Tensor) -> Tensor:
        """Padded ``[B, N, ...]`` -> packed ``[R, L, ...]`` (empty slots hold a copy of token 0)."""
        return x.reshape(-1, *x.shape[2:])[self.index]

    def unpack(self, y: Tensor, mask: Tensor) -> Tensor:
        """Packed ``[R, L, ...]`` -> padded ``[B, N, ...]`` on ``mask [B, N]``, zeros at padding."""
        real = self.segment >= 0  # [R, L]
        flat = y.new_zeros(mask.numel(), *y.shape[2:])  # [B * N, ...]
        flat[self.index[real]] = y[real]
        return flat.view(*mask.shape, *y.shape[2:])


@torch.compiler.disable  # host-side planning (a Python loop over set sizes): never traced by torch.compile
def pack_sets(mask: Tensor, length: int = 0) -> Packing:
    """Pack the sets of ``mask [B, N]`` whole into rows of ``max(length, N)`` slots, first-fit by decreasing size.

    Any set fits in a row, so the layout always exists; the fewer empty slots, the less wasted work.
    """
    bsz, n_max = mask.shape
    length = max(length, n_max)
    sizes = mask.sum(dim=1)  # [B]
    size_of = sizes.tolist()
    free: list[int] = []  # free slots per row
    row_of, offset_of = [0] * bsz, [0] * bsz
    for b in sorted(range(bsz), key=lambda i: -size_of[i]):
        size = size_of[b]
        row = next((r for r, f in enumerate(free) if f >= size), len(free))
        if row == len(free):
            free.append(length)
        row_of[b], offset_of[b] = row, length - free[row]
        free[row] -= size
    device = mask.device
    pos = mask.flatten().nonzero().squeeze(1)  # [T] flat positions of the real tokens, set by set
    tok_set = pos // n_max  # [T]
    start = torch.cumsum(sizes, 0) - sizes  # [B] first token of each set in pos
    rank = torch.arange(pos.numel(), device=device) - start[tok_set]  # [T] rank within its set
    rows, offsets = torch.tensor(row_of, device=device), torch.tensor(offset_of, device=device)
    slot = rows[tok_set] * length + offsets[tok_set] + rank  # [T]
    index = torch.zeros(len(free) * length, dtype=torch.long, device=device).index_copy(0, slot, pos)
    segment = torch.full((len(free) * length,), -1, dtype=torch.long, device=device).index_copy(0, slot, tok_set)
    return Packing(index.view(-1, length), segment.view(-1, length))


class Mlp(nn.Module):
    """Two-layer feed-forward network with GELU.

    The exact (erf) GELU, not DiT's tanh approximation: the two differ by at most 4.7e-4, below the
    rounding of the bf16 activations they run in, and the exact one is 2.7x faster forward + backward
    on CPU (``experiments/benchmark_dit_cpu.md``, "Finding 3"); models trained with either load and run
    with this one.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
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
