"""NonFiniteGuard on a one-weight regression (the guard's mechanics, no data involved): a bad step is skipped with
the weights untouched, isolated bad steps do not stop training, ``patience`` bad steps in a row do."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from sciDiT.training.guards import NonFiniteGuard, NonFiniteTrainingError


class _Line(L.LightningModule):
    """Fits w in loss = (w - 1)^2 with SGD(lr=0.25): w moves 2 -> 1.5 -> 1.25 -> ... (halving the gap each step).

    At the 1-based steps in ``bad`` the loss (``where="loss"``) or only its gradient (``where="grad"``) is NaN.
    """

    def __init__(self, bad: set[int], where: str = "loss"):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(2.0))
        self.bad, self.where = bad, where
        self.history: list[float] = []

    def training_step(self, batch, batch_idx):
        step = self.trainer.global_step + 1
        w = self.w
        if step in self.bad and self.where == "grad":
            w = w.clone()
            w.register_hook(lambda g: torch.full_like(g, float("nan")))
        loss = (w - 1.0) ** 2
        return loss * float("nan") if step in self.bad and self.where == "loss" else loss

    def on_train_batch_end(self, *args):
        self.history.append(float(self.w.detach()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.25)


def _fit(module: _Line, steps: int, patience: int = 3) -> None:
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[NonFiniteGuard(patience=patience)])
    trainer.fit(module, DataLoader(range(100), batch_size=1))


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_single_bad_steps_are_skipped_not_applied(where):
    module = _Line(bad={2, 4, 5}, where=where)
    _fit(module, steps=6)
    # steps 1, 3 and 6 halve the gap to 1; the bad steps 2, 4, 5 leave w as it was
    assert module.history == [1.5, 1.5, 1.25, 1.25, 1.25, 1.125]


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_patience_bad_steps_in_a_row_stop_training(where):
    module = _Line(bad={3, 4, 5}, where=where)
    with pytest.raises(NonFiniteTrainingError, match=r"stopped at step 5: .* 3 consecutive steps \(3-5\)"):
        _fit(module, steps=10)
    assert module.history == [1.5, 1.25, 1.25, 1.25] and float(module.w.detach()) == 1.25  # finite: the bad steps never applied
    module = _Line(bad={3, 4, 5}, where=where)
    _fit(module, steps=6, patience=4)
    assert module.history[-1] == 1.125


def test_patience_must_be_positive():
    with pytest.raises(ValueError, match="patience"):
        NonFiniteGuard(patience=0)
