"""Exponential moving average (EMA) of model weights, for sampling with smoothed weights.

Usage from a Lightning module (the EMA is a submodule, so it follows ``.to(device)`` and its
weights and update count are saved in and restored from checkpoints with the rest)::

    self.model = DiT(...)
    self.ema = EMA(self.model, decay=0.9999)          # build from the uncompiled model
    def on_train_batch_end(self, *args): self.ema.update(self.model)   # after each optimizer step
    with self.ema.swapped(self.model): samples = sample(self.model, ...)  # or call self.ema.module
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class EMA(nn.Module):
    """A frozen copy of ``model`` whose floating-point parameters track ``decay * ema + (1 - decay) * model``.

    With ``warmup`` the decay used at update ``n`` is ``min(decay, (1 + n) / (10 + n))`` so the
    average is not dominated by the random initial weights early in training. Buffers (e.g. norm
    statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay, self.warmup = decay, warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (call after each optimizer step)."""
        decay = self.current_decay()
        ema_params = [p for p in self.module.parameters() if p.is_floating_point()]
        params = [p.detach() for p in model.parameters() if p.is_floating_point()]
        if len(ema_params) != len(params):
            raise ValueError("EMA.update got a model whose parameters differ from the averaged one")
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for ema_buf, buf in zip(self.module.buffers(), model.buffers()):
            ema_buf.copy_(buf)
        self.num_updates += 1

    @contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the averaged weights into ``model`` (e.g. for validation sampling), then restore."""
        backup: list[Tensor] = [p.detach().clone() for p in model.parameters()]
        with torch.no_grad():
            for p, q in zip(model.parameters(), self.module.parameters()):
                p.copy_(q)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, saved in zip(model.parameters(), backup):
                    p.copy_(saved)
