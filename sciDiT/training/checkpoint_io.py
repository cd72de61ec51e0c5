"""Lightning's checkpoint files through sciDiT's code-free loader: a resume never unpickles code, and
every checkpoint written stores its hyper-parameters as plain data, so it loads with weights only.
Writes are atomic and refuse non-finite weights (:class:`sciDiT.training.checkpoint.AtomicCheckpointIO`)."""

from __future__ import annotations

from typing import Any

from sciDiT.checkpoint import load_checkpoint, to_plain
from sciDiT.training.checkpoint import AtomicCheckpointIO


class SafeCheckpointIO(AtomicCheckpointIO):
    """:class:`AtomicCheckpointIO` that loads with :func:`sciDiT.checkpoint.load_checkpoint` (weights only) and saves plain hyper-parameters.

    Lightning reads ``trainer.fit(ckpt_path=...)`` through the strategy's CheckpointIO; passing this one
    as a Trainer plugin covers every strategy. ``map_location`` is ignored: tensors load on the CPU
    and Lightning moves them to the module's device.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "hyper_parameters" in checkpoint:  # e.g. OmegaConf containers passed to a module by hand
            checkpoint = {**checkpoint, "hyper_parameters": to_plain(checkpoint["hyper_parameters"], "hyper_parameters")}
        super().save_checkpoint(checkpoint, path, storage_options)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, "resume checkpoint")
