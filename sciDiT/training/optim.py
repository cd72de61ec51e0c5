"""Optimiser and learning-rate schedule shared by the VAE and DiT stages, and the plain loop that trains the small heads
(guidance heads, the geometry refiner) under a step or wall-time budget."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import _get_fused_kernels_supported_devices

ADAMW_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for-loop")


def adamw(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, implementation: str = "auto", **kwargs) -> torch.optim.AdamW:
    """AdamW with the fastest update kernel the parameters' device supports.

    ``auto`` takes the fused kernel (one kernel for all parameters; on CPU since torch 2.4) when every
    parameter is a floating-point tensor on a device with fused kernels, else the multi-tensor
    ``foreach`` path; ``fused`` falls back to ``foreach`` with a one-line warning where it is not
    supported; ``for-loop`` is the per-parameter reference. All give the same update up to rounding.
    """
    if implementation not in ADAMW_IMPLEMENTATIONS:
        raise ValueError(f"unknown AdamW implementation {implementation!r}; expected one of {ADAMW_IMPLEMENTATIONS}")
    params = list(params)
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    if implementation == "for-loop":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=False, fused=False, **kwargs)
    fusable = all(p.is_floating_point() and p.device.type in _get_fused_kernels_supported_devices() for p in tensors)
    if implementation in ("auto", "fused") and fusable:
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True, **kwargs)
        except (RuntimeError, ValueError) as err:  # a device/dtype this torch build has no fused kernel for
            reason = str(err).splitlines()[0]
    else:
        reason = "parameters on a device without fused kernels"
    if implementation == "fused":
        warnings.warn(f"fused AdamW unavailable ({reason}); using foreach AdamW", stacklevel=2)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True, **kwargs)


def adamw_for(trainer: object) -> str:
    """The AdamW implementation a Lightning ``trainer`` can run: ``foreach`` under mixed precision with gradient clipping, else ``auto``.

    Lightning's mixed-precision plugin refuses to clip the gradients of a fused optimizer (it
    assumes the fused step unscales them itself), even for bf16, which has no gradient scaler.
    """
    mixed = str(getattr(trainer, "precision", "")).endswith("-mixed")
    clipping = (getattr(trainer, "gradient_clip_val", None) or 0) > 0
    return "foreach" if mixed and clipping else "auto"


def build_optimizer(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, warmup_steps: int, max_steps: int, implementation: str = "auto"
) -> dict:
    """AdamW (see :func:`adamw`) with linear warm-up then cosine decay to 10% of ``lr`` over ``max_steps`` (constant if max_steps <= 0)."""
    opt = adamw(params, lr=lr, weight_decay=weight_decay, implementation=implementation, betas=(0.9, 0.99))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if max_steps is None or max_steps <= 0:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fit(model: nn.Module, batch_loss: Callable[[], Tensor], *, lr: float, steps: int, minutes: float, log_every: int, name: str) -> dict[str, Any]:
    """Minimise ``batch_loss()`` (each call draws its own batch) with AdamW, gradient clipping at 1, and a cosine decay
    over ``steps`` or ``minutes`` of wall time, whichever ends first; the training facts."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    start, step, budget = time.monotonic(), 0, minutes * 60.0
    model.train()
    while step < steps and time.monotonic() - start < budget:
        frac = max(step / steps, (time.monotonic() - start) / budget)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if log_every and step % log_every == 0:
            print(f"step {step} {name} {loss.item():.4f} ({time.monotonic() - start:.0f} s)", flush=True)
    model.eval()
    return {"steps": step, "lr": lr, "train_seconds": round(time.monotonic() - start, 1), "threads": torch.get_num_threads()}
