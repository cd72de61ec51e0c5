"""Crash-safe checkpoints: atomic writes, no non-finite weights, and the RNG state for exact resumes.

:class:`AtomicCheckpointIO` is the Trainer's checkpoint writer: each checkpoint is written to a
temporary file in its own folder, fsynced and renamed over the target (``os.replace`` is atomic
within a filesystem), so a kill at any moment leaves the previous checkpoint intact; a temporary
file left by such a kill is removed by :func:`remove_stale_temp_files` when the stage starts again.
It refuses to write weights that are not finite. Loading is Lightning's ``TorchCheckpointIO``'s
(a safe loader can override ``load_checkpoint`` alone). :class:`LastAndBestCheckpoint` refreshes
``last.ckpt`` at every validation (Lightning's ``ModelCheckpoint`` only does when a best checkpoint
was saved too, so a run whose validation loss stopped improving would resume from long before).

:class:`RNGState` puts the torch (CPU and CUDA), NumPy and Python RNG states into every checkpoint
(as tensors and plain numbers) and restores them just before the first training batch after a
resume, so the resumed run draws the same augmentation and noise as an uninterrupted one.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

TEMP_SUFFIX = ".tmp"


class NonFiniteWeightsError(RuntimeError):
    """A checkpoint about to be written holds NaN or infinite weights."""


def non_finite_weights(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` holding NaN or inf."""
    return [k for k, v in state_dict.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` through a temporary file in the same folder, fsync and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path


def remove_stale_temp_files(folder: str | Path, pattern: str = f".*.ckpt.*{TEMP_SUFFIX}") -> list[Path]:
    """Delete the temporary files of interrupted atomic writes (``pattern``) in ``folder``; returns them.

    Call only while nothing writes there (at the start of a stage).
    """
    folder = Path(folder)
    stale = sorted(folder.glob(pattern)) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO with atomic saves that refuse non-finite weights (see module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        bad = non_finite_weights(checkpoint.get("state_dict", {}))
        if bad:
            raise NonFiniteWeightsError(f"refusing to write {path}: non-finite weights in {bad[0]}" + (f" and {len(bad) - 1} more" if len(bad) > 1 else ""))
        atomic_torch_save(checkpoint, path)


class LastAndBestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) that also writes ``last.ckpt`` at validations without a new best."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer) and not self._should_save_on_train_epoch_end(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class StepSnapshots(L.Callback):
    """Full checkpoints ``step-<k>.ckpt`` beside the others when training reaches each of ``steps``.

    An earlier snapshot of a DiT is a weak model for autoguidance at no extra training
    (``python -m sciDiT.sample ... guide=<dir>/step-<k>.ckpt autoguidance=2``). ``dirpath`` is set per stage by
    the entry point, as for the checkpoint callback.
    """

    def __init__(self, steps: list[int] | None = None, dirpath: str | None = None):
        self.steps, self.dirpath = frozenset(steps or ()), dirpath

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step in self.steps and self.dirpath is not None:
            trainer.save_checkpoint(str(Path(self.dirpath) / f"step-{trainer.global_step}.ckpt"))


# -- RNG state ----------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The torch (CPU, CUDA), NumPy and Python RNG states as tensors and plain numbers."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGState(L.Callback):
    """Saves every rank's RNG states in checkpoints; restores them before the first training batch after a resume.

    Restoring that late (not while the checkpoint is read) skips the draws a fresh process makes
    while setting up (loaders, model construction), which an uninterrupted run never made. A run
    resumed with another number of ranks gives every rank rank 0's state.
    """

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        """``{"ranks": [state of rank 0, rank 1, ...]}`` (Lightning dumps checkpoints on every rank, so all take part)."""
        state = rng_state()
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_world_size() == 1:
            return {"ranks": [state]}
        states: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(states, state)
        return {"ranks": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = list(state_dict["ranks"])

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            same_ranks = len(self._pending) == trainer.world_size
            set_rng_state(self._pending[trainer.global_rank if same_ranks else 0])
            self._pending = None
