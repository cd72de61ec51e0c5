"""Train the composition model (:mod:`sciDiT.models.composition_model`), and read / write its file.

    python experiments/composition_first/train_composition_model.py --minutes 10 --out outputs/composition_model.pt

Each step draws a batch of training compositions (each set's type ids, one per atom) and minimises their
negative log-likelihood. The file is weights-only: the model's sizes and weights and the training facts
(steps, held-out log-likelihood per composition, the training compositions' count).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sciDiT.checkpoint import build_module, load_checkpoint
from sciDiT.errors import SciDiTInputError
from sciDiT.models.composition_model import COMPOSITION_SIZES, CompositionModel
from sciDiT.training.optim import fit

COMPOSITION_MODEL_KIND = "scidit_composition_model"


def train_composition_model(train: Sequence[Sequence[int]], val: Sequence[Sequence[int]], *, num_types: int, size: str = "CM-S",
                            batch_size: int = 256, lr: float = 1e-3, steps: int = 20000, minutes: float = 10.0, seed: int = 0,
                            dropout: float = 0.0, type_features: np.ndarray | None = None, init: CompositionModel | None = None,
                            augment: Callable[[list[int], np.random.Generator], list[int]] | None = None, augment_share: float = 0.0,
                            charges: tuple[np.ndarray, np.ndarray] | None = None, max_charge: int = 32,
                            log_every: int = 500) -> tuple[CompositionModel, dict[str, Any]]:
    """A composition model fitted to ``train`` (lists of type ids, one per atom) and its training facts, among them the
    mean negative log-likelihood (nats per composition, its size included) of ``train`` and ``val``. ``type_features``
    (``[num_types, F]``): a feature row per id for the model's embeddings. ``init``: continue this model (its sizes and
    features; ``size``, ``dropout`` and ``type_features`` are then unused) instead of a fresh one. ``augment``: a function
    that turns a training composition into a new one (e.g. :class:`sciDiT.tokenizers.substitution.IonicSubstitution`),
    applied to ``augment_share`` of each batch's compositions; held-out figures are on ``val`` as given. ``charges``: each id's
    charge and the type it refines (``[num_types]`` integers each; e.g. ions,
    :class:`sciDiT.tokenizers.species.SpeciesVocabulary`), for a model that embeds the running charge up to ``max_charge``."""
    if not 0.0 <= augment_share <= 1.0 or (augment_share > 0 and augment is None):
        raise SciDiTInputError(f"augment_share={augment_share} must lie in [0, 1], and above 0 needs an augment function")
    if size not in COMPOSITION_SIZES:
        raise SciDiTInputError(f"size={size!r} is not one of {', '.join(COMPOSITION_SIZES)}")
    if not train or not val:
        raise SciDiTInputError("the composition model needs training and held-out compositions")
    torch.manual_seed(seed)
    max_atoms = max(len(c) for c in [*train, *val])
    if init is not None and (init.num_types, init.max_atoms) != (num_types, max_atoms):
        raise SciDiTInputError(f"the model to continue has {init.num_types} types and {init.max_atoms} atoms at most; this data needs "
                               f"{num_types} and {max_atoms}")
    if init is None:
        width = 0 if type_features is None else int(type_features.shape[1])
        model = CompositionModel(num_types, max_atoms, **COMPOSITION_SIZES[size], dropout=dropout, num_features=width,
                                 max_charge=0 if charges is None else max_charge)
        if width:
            model.set_type_features(torch.as_tensor(type_features, dtype=torch.float32))
        if charges is not None:
            model.set_type_charges(*(torch.as_tensor(a, dtype=torch.long) for a in charges))
    else:
        model = init
    model.fit_support(train)  # p(n): the training histogram
    rng = np.random.default_rng(seed)

    def batch_loss() -> torch.Tensor:
        idx = rng.integers(0, len(train), batch_size)
        batch = [augment(train[i], rng) if augment_share and rng.random() < augment_share else train[i] for i in idx]
        return model.nll(batch, with_size=False).sum() / sum(len(c) for c in batch)  # nats per id given the size

    info = fit(model, batch_loss, lr=lr, steps=steps, minutes=minutes, log_every=log_every, name="nll/atom")
    info.update(size=size if init is None else "continued", batch_size=batch_size, seed=seed, dropout=model.sizes["dropout"],
                num_features=model.sizes["num_features"], max_charge=model.sizes["max_charge"], augment_share=augment_share, train_compositions=len(train), val_compositions=len(val),
                train_nll=mean_nll(model, train[: len(val)]), val_nll=mean_nll(model, val))
    return model, info


@torch.no_grad()
def mean_nll(model: CompositionModel, compositions: Sequence[Sequence[int]], batch_size: int = 1024) -> float:
    """Mean negative log-likelihood (nats per composition) of ``compositions`` under ``model``."""
    total = sum(float(model.nll(compositions[i: i + batch_size]).sum()) for i in range(0, len(compositions), batch_size))
    return total / len(compositions)


# ----------------------------------------------------------------------------------------------
# The file
# ----------------------------------------------------------------------------------------------


def save_composition_model(path: str | Path, model: CompositionModel, info: dict[str, Any]) -> Path:
    """Write the weights-only composition model file (atomically): sizes, weights and training facts."""
    from sciDiT.training.checkpoint import atomic_torch_save

    contents = {"kind": COMPOSITION_MODEL_KIND, "hparams": dict(model.sizes), "state_dict": model.state_dict(), "info": info}
    return atomic_torch_save(contents, path)


def load_composition_model(path: str | Path, packed_key: str | None = None) -> tuple[CompositionModel, dict[str, Any]]:
    """The composition model of ``path`` (eval mode) and the file's training facts; one line naming the file otherwise.
    ``packed_key``: ``path`` may also be a model file that packs a composition model in that section."""
    raw = load_checkpoint(path, "composition model")
    if packed_key is not None and packed_key in raw:
        raw = {**raw[packed_key], "kind": COMPOSITION_MODEL_KIND}
    if raw.get("kind") != COMPOSITION_MODEL_KIND:
        raise SciDiTInputError("not a composition model file (train one with experiments/composition_first/train_composition_model.py)", path)
    return packed_composition_model(raw, path), dict(raw.get("info", {}))


def packed_composition_model(entry: dict[str, Any], source: str | Path) -> CompositionModel:
    """The composition model of a file or of a section packed in a shipped model (sizes and weights), float32, eval mode;
    ``source`` names the file in errors."""
    return build_module(CompositionModel, entry["hparams"], entry["state_dict"], source)  # type: ignore[return-value]
