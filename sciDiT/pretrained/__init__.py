"""Models shipped inside the package, trained by sciDiT's own training command (see each model card).

``load_generator("qm9_mp20_cpu")`` and ``python -m sciDiT.sample pretrained=qm9_mp20_cpu ...`` read
them from this folder: no download, no training. A shipped file is a slim DiT-stage checkpoint made
by :func:`export_pretrained`: hyper-parameters, the frozen VAE, latent statistics, set-size
histograms and the EMA DiT weights (stored as ``model.dit.*``; the raw, non-averaged weights and the
optimiser state are dropped), loadable with ``torch.load(weights_only=True)``. The model card
``<name>.md`` beside it says data, steps, command and measured metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sciDiT.checkpoint import load_checkpoint, require_stage
from sciDiT.errors import SciDiTInputError

FOLDER = Path(__file__).resolve().parent
EMA_PREFIX, DIT_PREFIX = "ema.module.", "model.dit."


def available() -> list[str]:
    """Names of the shipped models (a ``<name>.pt`` with its ``<name>.md`` card in this folder)."""
    return sorted(p.stem for p in FOLDER.glob("*.pt") if p.with_suffix(".md").is_file())


def pretrained_path(name: str) -> Path:
    """The weights file of shipped model ``name``; one-line error naming the available ones otherwise."""
    if name not in available():
        raise SciDiTInputError(f"no pretrained model {name!r}; shipped: {', '.join(available()) or 'none'}")
    return FOLDER / f"{name}.pt"


def slim_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A DiT module's state dict with the EMA weights as ``model.dit.*`` and no separate EMA copy."""
    ema = {DIT_PREFIX + k.removeprefix(EMA_PREFIX): v for k, v in state.items() if k.startswith(EMA_PREFIX)}
    if not ema:
        raise SciDiTInputError("the checkpoint has no EMA weights (ema.module.*) to ship")
    kept = {k: v for k, v in state.items() if not k.startswith((EMA_PREFIX, DIT_PREFIX))}
    return {**kept, **ema, "ema.num_updates": state.get("ema.num_updates", torch.zeros((), dtype=torch.long))}


def restore_ema(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`slim_state` for loading: the EMA copy is the shipped ``model.dit.*`` weights."""
    if any(k.startswith(EMA_PREFIX) for k in state):
        return state
    ema = {EMA_PREFIX + k.removeprefix(DIT_PREFIX): v for k, v in state.items() if k.startswith(DIT_PREFIX)}
    return {**state, **ema}


def export_pretrained(ckpt: str | Path, out: str | Path) -> Path:
    """Write the slim, weights-only file of a DiT-stage checkpoint ``ckpt`` to ``out`` (atomically)."""
    from sciDiT.training.checkpoint import atomic_torch_save

    raw = load_checkpoint(ckpt, "DiT checkpoint")
    require_stage(raw, "dit", ckpt)
    slim: dict[str, Any] = {"hyper_parameters": raw["hyper_parameters"], "state_dict": slim_state(raw["state_dict"]),
                            "global_step": int(raw.get("global_step", 0))}
    return atomic_torch_save(slim, out)

