"""Numerical-fault guard: never apply, or train on, a non-finite loss or gradient.

:class:`NonFiniteGuard` checks every optimiser step: if the loss or the total gradient norm is NaN
or infinite, the step is skipped (gradients dropped, weights untouched); after ``patience`` such
steps in a row, training stops with :class:`NonFiniteTrainingError` before any further checkpoint
is written, so the last good checkpoint stays. The entry point turns it into one line and exit code 3.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class NonFiniteTrainingError(RuntimeError):
    """Training stopped: the loss or gradient norm was not finite for ``patience`` consecutive steps."""


class NonFiniteGuard(L.Callback):
    """Skips optimiser steps with a non-finite loss or gradient norm; stops after ``patience`` in a row.

    With a gradient scaler (``16-mixed``) inf/NaN gradients are the scaler's normal overflow signal
    (it skips those steps and lowers its scale itself), so only the loss is checked there. Under DDP
    the decision is shared by all ranks, so they skip the same steps.
    """

    def __init__(self, patience: int = 3):
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"NonFiniteGuard patience must be a positive integer, got {patience!r}")
        self.patience = patience
        self.bad_steps: list[int] = []  # the current run of consecutive skipped steps (1-based step numbers)
        self._loss_finite = True

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._loss_finite = self._loss_finite and bool(torch.isfinite(loss.detach()).all())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer) -> None:
        loss_finite, self._loss_finite = self._loss_finite, True
        bad = not loss_finite
        if getattr(trainer.precision_plugin, "scaler", None) is None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            bad = bad or (bool(grads) and not bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))))
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            self.bad_steps = []
            return
        optimizer.zero_grad(set_to_none=True)  # the optimiser skips parameters without gradients
        self.bad_steps.append(trainer.global_step + 1)
        if len(self.bad_steps) >= self.patience:
            first, last = self.bad_steps[0], self.bad_steps[-1]
            raise NonFiniteTrainingError(
                f"stopped at step {last}: loss or gradient norm not finite for {len(self.bad_steps)} consecutive steps ({first}-{last}), "
                "nothing saved after them (lower the learning rate?)"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"bad_steps": list(self.bad_steps)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.bad_steps = list(state_dict.get("bad_steps", []))
