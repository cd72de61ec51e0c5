"""Property predictors that judge conditional QM9 samples (EDM's protocol), independent of the generator.

EDM (Hoogeboom et al. 2022, section 5.3) scores a conditional generator with a property classifier
trained on one half of the QM9 train split (half ``A``, :func:`sciDiT.data.qm9.edm_property_halves`)
while the generator trains on the other half (``B``): the MAE between the requested and the
predicted property of generated molecules, beside the predictor's own test error (a lower bound),
the "#atoms" baseline (the property predicted from the atom count only) and "U-bound" (requests
shuffled among the samples). Predictors trained on half B instead (the generator's half) screen a generator's
candidates (generate-and-screen, :func:`load_screeners`) and are refused as judges (:func:`load_judges`), so
no sample is ever chosen and judged by the same model. Here the predictor is torch-geometric's SchNet, one model per
property as in EDM, on a radius graph inside each molecule; its checkpoint is plain data (weights,
hyper-parameters, normalisation and the "#atoms" table), read through the weights-only loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sciDiT.batch import TokenSet
from sciDiT.checkpoint import load_checkpoint
from sciDiT.errors import SciDiTInputError

PREDICTOR_KIND = "scidit_qm9_property_predictor"
QM9_ELEMENTS = (1, 6, 7, 8, 9)


class WithinMoleculeGraph(nn.Module):
    """Edges between distinct atoms of the same molecule closer than ``cutoff`` (no torch-cluster needed)."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = cutoff

    def forward(self, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        dist = torch.cdist(pos, pos)  # [N, N]
        keep = (batch[:, None] == batch[None, :]) & (dist < self.cutoff)
        keep.fill_diagonal_(False)
        edge_index = keep.nonzero().t()  # [2, E]
        return edge_index, dist[edge_index[0], edge_index[1]]  # [2, E], [E]


class PropertyPredictor(nn.Module):
    """SchNet regressor of one molecular property, in the property's user unit.

    The network predicts the normalised target; ``mean`` and ``std`` (from the training half) map it
    back. With ``dipole`` SchNet predicts atomic charges and returns the norm of their dipole moment
    (``mean`` is then 0: a magnitude is not shifted).
    """

    def __init__(self, hidden: int = 64, filters: int = 64, interactions: int = 3, gaussians: int = 25, cutoff: float = 5.0,
                 readout: str = "add", dipole: bool = False, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        from torch_geometric.nn.models import SchNet

        self.net = SchNet(hidden_channels=hidden, num_filters=filters, num_interactions=interactions, num_gaussians=gaussians,
                          cutoff=cutoff, interaction_graph=WithinMoleculeGraph(cutoff), readout=readout, dipole=dipole)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def normalised(self, z: Tensor, pos: Tensor, batch: Tensor) -> Tensor:
        """The network's output before de-normalisation: [B] for atoms z [N], pos [N, 3], batch [N]."""
        return self.net(z, pos, batch).squeeze(-1)  # [B]

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor) -> Tensor:
        return self.mean + self.std * self.normalised(z, pos, batch)  # [B]


def collate_atoms(sets: Sequence[TokenSet]) -> tuple[Tensor, Tensor, Tensor]:
    """Atomic numbers [N], positions [N, 3] (Angstrom) and molecule index [N] of a list of molecules."""
    z = torch.cat([ts.types.long() for ts in sets])
    pos = torch.cat([ts.pos.float() for ts in sets])
    batch = torch.repeat_interleave(torch.arange(len(sets)), torch.tensor([ts.num_tokens for ts in sets]))
    return z, pos, batch


def scorable(ts: TokenSet) -> bool:
    """A predictor can score the molecule: finite coordinates, QM9 elements only, at least one atom."""
    return ts.num_tokens > 0 and bool(np.isfinite(ts.pos.numpy()).all()) and set(ts.types.tolist()) <= set(QM9_ELEMENTS)


@torch.no_grad()
def predict(model: PropertyPredictor, sets: Sequence[TokenSet], batch_size: int = 128) -> np.ndarray:
    """The model's property prediction for each molecule, in the property's unit."""
    model.eval()
    out = [model(*collate_atoms(sets[i : i + batch_size])) for i in range(0, len(sets), batch_size)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


class AtomCountBaseline:
    """EDM's "#atoms" baseline: the mean property of the training molecules with the same atom count.

    Counts absent from the training half fall back to a least-squares line in the atom count.
    """

    def __init__(self, counts: Sequence[int], means: Sequence[float], slope: float, intercept: float):
        self.table = dict(zip((int(c) for c in counts), (float(m) for m in means)))
        self.slope, self.intercept = float(slope), float(intercept)

    @classmethod
    def fit(cls, num_atoms: np.ndarray, values: np.ndarray) -> "AtomCountBaseline":
        counts = np.unique(num_atoms)
        means = [float(values[num_atoms == c].mean()) for c in counts]
        slope, intercept = np.polyfit(num_atoms.astype(float), values, 1)
        return cls(counts.tolist(), means, slope, intercept)

    def __call__(self, num_atoms: Sequence[int]) -> np.ndarray:
        return np.array([self.table.get(int(n), self.slope * n + self.intercept) for n in num_atoms])

    def to_plain(self) -> dict:
        return {"counts": list(self.table), "means": list(self.table.values()), "slope": self.slope, "intercept": self.intercept}


def save_predictor(path: str | Path, key: str, model: PropertyPredictor, hparams: dict, baseline: AtomCountBaseline, info: dict) -> Path:
    """Write a weights-only predictor checkpoint: plain-type hyper-parameters, weights, baseline table, training facts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": PREDICTOR_KIND, "property": key, "hparams": dict(hparams), "state_dict": model.state_dict(),
                "atom_count_baseline": baseline.to_plain(), "info": dict(info)}, path)
    return path


def load_predictor(path: str | Path) -> tuple[str, PropertyPredictor, AtomCountBaseline, dict]:
    """``(property key, model, "#atoms" baseline, training info)`` of a checkpoint written by :func:`save_predictor`."""
    ckpt = load_checkpoint(path, "property predictor checkpoint")
    if ckpt.get("kind") != PREDICTOR_KIND:
        raise SciDiTInputError("not a sciDiT QM9 property predictor (train one with experiments/inverse_design/train_property_predictor.py)", path)
    try:
        model = PropertyPredictor(**ckpt["hparams"])
        model.load_state_dict(ckpt["state_dict"])
        base = ckpt["atom_count_baseline"]
        baseline = AtomCountBaseline(base["counts"], base["means"], base["slope"], base["intercept"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise SciDiTInputError(f"malformed property predictor checkpoint: {str(err).splitlines()[0]}", path) from None
    model.eval()
    return str(ckpt["property"]), model, baseline, dict(ckpt.get("info", {}))


def predictor_files(path: str | Path) -> list[Path]:
    """The predictor checkpoints named by ``path``: one ``.pt`` file, or every ``.pt`` in a folder."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.pt"))
        if not files:
            raise SciDiTInputError("folder holds no property predictor checkpoints (*.pt)", path)
        return files
    if not path.exists():
        raise SciDiTInputError("property predictor checkpoint not found", path)
    return [path]


def _half(info: dict) -> str:
    """The half of QM9 train a predictor learnt from (files written before halves were recorded are half A)."""
    return str(info.get("half", "A"))


def load_judges(path: str | Path) -> list[tuple[str, PropertyPredictor, AtomCountBaseline, dict]]:
    """The half-A predictors of ``path`` (a file or a folder) that judge samples; one line naming a half-B file."""
    judges = []
    for file in predictor_files(path):
        judge = load_predictor(file)
        if _half(judge[3]) != "A":
            raise SciDiTInputError("trained on half B of QM9 train, the generator's half (a screening predictor): it cannot judge "
                                   "samples; use one trained on half A (train_property_predictor.py without --half B)", file)
        judges.append(judge)
    return judges


def load_screeners(path: str | Path) -> dict[str, tuple[PropertyPredictor, dict]]:
    """``{property: (model, condition statistics of its half)}`` of the half-B predictors of ``path`` (a file or a folder),
    which screen a generator's candidates; one line naming a half-A file (the judges' half) or a file without statistics."""
    screeners = {}
    for file in predictor_files(path):
        key, model, _, info = load_predictor(file)
        if _half(info) != "B" or key not in info.get("condition_stats", {}):
            raise SciDiTInputError("not a screening predictor: screening needs one trained on half B of QM9 train (the generator's "
                                   "half) with its condition statistics (train_property_predictor.py --half B); half A judges the samples",
                                   file)
        screeners[key] = (model, info["condition_stats"][key])
    return screeners
