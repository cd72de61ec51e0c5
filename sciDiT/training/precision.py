"""Pick the fastest safe Lightning precision for the accelerator at hand.

bf16 autocast is the fast path on GPUs with bf16 support and on CPUs with native bf16 matrix
instructions (AVX-512 BF16 or AMX). On CPUs without them (e.g. AVX2-only), bf16 is emulated and
several times slower than fp32, so ``auto`` falls back to ``32-true`` there.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch


@cache
def cpu_has_native_bf16() -> bool:
    """True when /proc/cpuinfo lists avx512_bf16 or amx_bf16 (Linux; False elsewhere)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, accelerator: str) -> str:
    """``precision`` unless it is ``auto``: then bf16-mixed where bf16 is native, else 32-true."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
