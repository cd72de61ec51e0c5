"""Pick the fastest safe precision for the device at hand, for training (Lightning) and sampling.

bf16 autocast is the fast path on GPUs with bf16 support and on CPUs with native bf16 matrix
instructions (AVX-512 BF16 or AMX). On CPUs without them (e.g. AVX2-only), bf16 is emulated and
several times slower than fp32, so ``auto`` falls back to fp32 there. Autocast only lowers the
matmul inputs: parameters, gradients, the loss, the EMA copy and the optimiser state stay fp32.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch


def read_cpuinfo() -> str:
    """The text of /proc/cpuinfo ('' where there is none, e.g. not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


@cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU flags list avx512_bf16 or amx_bf16 (Linux; False elsewhere)."""
    flags = set(read_cpuinfo().split())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, accelerator: str) -> str:
    """``precision`` unless it is ``auto``: then bf16-mixed where bf16 is native, else 32-true."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_native_bf16() else "32-true"


def resolve_bf16(bf16: bool | str, device: torch.device | str) -> bool:
    """Whether to run under bf16 autocast on ``device``: ``True``/``False`` as given, ``"auto"`` where bf16 is native."""
    if isinstance(bf16, bool):
        return bf16
    if bf16 != "auto":
        raise ValueError(f"bf16 must be true, false or 'auto', got {bf16!r}")
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()
