"""Per-op timings behind sciDiT's CPU kernel choices: set attention and the MLP's GELU at DiT shapes.

    python experiments/benchmark_kernels.py --threads 2

Attention, forward + backward, inputs ``[B, H, N, Dh]`` with a key mask: the fused SDPA kernel, the same
call forced to PyTorch's math backend, and sciDiT's plain ``softmax(QK^T)V``
(:func:`sciDiT.models.attention.math_attention`), in fp32 and bf16, over molecule / crystal set lengths
and past the switch-over (``MATH_ATTENTION_MAX_TOKENS``). GELU, forward and forward + backward on a DiT-S
MLP activation ``[4864, 1536]`` (batch 256 of 19-token sets): exact (erf) against DiT's tanh
approximation, with their largest difference. Best of ``--reps`` calls; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sciDiT.models.attention import MATH_ATTENTION_MAX_TOKENS, math_attention

ATTENTION_SHAPES = [(256, 6, 7, 64), (256, 6, 10, 64), (256, 6, 19, 64), (64, 4, 18, 32), (64, 6, 64, 64), (32, 6, 128, 64), (16, 6, 256, 64)]


def best_ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def attention_rows(reps: int) -> list[str]:
    rows = ["| shape [B, H, N, Dh] | dtype | fused SDPA | SDPA math backend | plain softmax (sciDiT) | fused / plain |", "|---|---|---|---|---|---|"]
    gen = torch.Generator().manual_seed(0)
    for shape in ATTENTION_SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(shape, generator=gen).to(dtype).requires_grad_() for _ in range(3))
            grad = torch.randn(shape, generator=gen).to(dtype)
            mask = torch.rand(shape[0], shape[2], generator=gen) > 0.2
            mask[:, 0] = True
            mask = mask[:, None, None, :]

            def fused() -> None:
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask).backward(grad)

            def sdpa_math() -> None:
                with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
                    F.scaled_dot_product_attention(q, k, v, attn_mask=mask).backward(grad)

            def plain() -> None:
                math_attention(q, k, v, mask).backward(grad)

            t_fused, t_math, t_plain = (best_ms(f, reps) for f in (fused, sdpa_math, plain))
            name = "fp32" if dtype == torch.float32 else "bf16"
            rows.append(f"| {list(shape)} | {name} | {t_fused:.1f} ms | {t_math:.1f} ms | {t_plain:.1f} ms | {t_fused / t_plain:.2f}x |")
    return rows


def gelu_rows(reps: int) -> list[str]:
    rows = ["| dtype | GELU | forward | forward + backward |", "|---|---|---|---|"]
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(4864, 1536).to(dtype).requires_grad_()
        grad = torch.randn_like(x)
        for approximate in ("tanh", "none"):
            fwd = best_ms(lambda: F.gelu(x.detach(), approximate=approximate), reps)
            both = best_ms(lambda: F.gelu(x, approximate=approximate).backward(grad), reps)
            rows.append(f"| {'fp32' if dtype == torch.float32 else 'bf16'} | {'exact (erf)' if approximate == 'none' else 'tanh approximation'} | {fwd:.2f} ms | {both:.2f} ms |")
    grid = torch.linspace(-10, 10, 2_000_001, dtype=torch.float64)
    gap = (F.gelu(grid) - F.gelu(grid, approximate="tanh")).abs().max().item()
    rows.append(f"\nlargest |exact - tanh| over [-10, 10]: {gap:.2e}")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--reps", type=int, default=5, help="timed calls per cell (the best counts)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; sciDiT takes the plain softmax up to {MATH_ATTENTION_MAX_TOKENS} tokens on CPU\n")
    print("\n".join(["Attention, forward + backward:", "", *attention_rows(args.reps), "", "GELU on [4864, 1536]:", "", *gelu_rows(args.reps)]))


if __name__ == "__main__":
    main()
