"""Train/test splits of a Perturb-seq screen for perturbation-response evaluation.

- :func:`replicate_split` (seen perturbations, held-out cells): train on every cell of one
  replicate, predict the perturbed cells of the other from that replicate's control cells. The real
  training cells then differ from the test cells by the replicate (batch) effect as well.
- :func:`random_cells_split` (seen perturbations, held-out cells): a random ``test_frac`` of the
  cells of every perturbation and of the controls, within replicates; the held-out controls are the
  prediction input. Here the real training cells of a perturbation are an honest ceiling.
- :func:`unseen_target_split` (unseen perturbations): hold out a random set of target genes; every
  cell whose perturbation involves one of them is a test cell, the rest (all controls included) is
  training data, and the training control cells are the prediction input and reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np

from sciDiT.data.perturbseq import CONTROL, PERTURBATION_KEY, get_registry, parse_perturbation, target_genes
from sciDiT.errors import SciDiTInputError


@dataclass
class PerturbationSplit:
    """``train``: training cells (controls included); ``test``: held-out perturbed cells;
    ``control``: control cells given to the predictor and used as the no-change reference."""

    name: str
    train: ad.AnnData
    test: ad.AnnData
    control: ad.AnnData
    seen: bool

    @property
    def test_perturbations(self) -> list[str]:
        return sorted(self.test.obs[PERTURBATION_KEY].astype(str).unique())


def _labels(adata: ad.AnnData) -> np.ndarray:
    get_registry(adata)
    return adata.obs[PERTURBATION_KEY].astype(str).to_numpy()


def replicate_split(adata: ad.AnnData, train_rep: str, test_rep: str, rep_key: str = "bio_rep") -> PerturbationSplit:
    """Seen perturbations: train on replicate ``train_rep``, test on the perturbed cells of ``test_rep``."""
    if rep_key not in adata.obs:
        raise SciDiTInputError(f"obs has no replicate column {rep_key!r}")
    labels, reps = _labels(adata), adata.obs[rep_key].astype(str).to_numpy()
    for rep in (train_rep, test_rep):
        if not (reps == rep).any():
            raise SciDiTInputError(f"no cells with {rep_key} == {rep!r} (values: {sorted(set(reps))})")
    test_rep_cells = reps == test_rep
    return PerturbationSplit(
        name=f"seen: {train_rep} -> {test_rep}",
        train=adata[reps == train_rep].copy(),
        test=adata[test_rep_cells & (labels != CONTROL)].copy(),
        control=adata[test_rep_cells & (labels == CONTROL)].copy(),
        seen=True,
    )


def random_cells_split(adata: ad.AnnData, test_frac: float = 0.5, seed: int = 0, strata_key: str | None = "bio_rep") -> PerturbationSplit:
    """Seen perturbations: hold out ``test_frac`` of the cells of each (perturbation, replicate) group."""
    if not 0.0 < test_frac < 1.0:
        raise SciDiTInputError(f"test_frac must lie in (0, 1), got {test_frac}")
    labels = _labels(adata)
    strata = adata.obs[strata_key].astype(str).to_numpy() if strata_key is not None and strata_key in adata.obs else np.full(adata.n_obs, "")
    rng = np.random.default_rng(seed)
    is_test = np.zeros(adata.n_obs, dtype=bool)
    for group in sorted(set(zip(labels, strata))):
        rows = np.flatnonzero((labels == group[0]) & (strata == group[1]))
        is_test[rng.choice(rows, int(round(test_frac * rows.size)), replace=False)] = True
    return PerturbationSplit(
        name=f"seen: random cells, seed {seed}",
        train=adata[~is_test].copy(),
        test=adata[is_test & (labels != CONTROL)].copy(),
        control=adata[is_test & (labels == CONTROL)].copy(),
        seen=True,
    )


def unseen_target_split(adata: ad.AnnData, n_holdout: int = 5, seed: int = 0) -> PerturbationSplit:
    """Unseen perturbations: hold out ``n_holdout`` target genes drawn with ``seed``."""
    labels = _labels(adata)
    genes = target_genes(adata)
    if not 0 < n_holdout < len(genes):
        raise SciDiTInputError(f"n_holdout must lie in 1..{len(genes) - 1}, got {n_holdout}")
    held = set(np.random.default_rng(seed).choice(genes, n_holdout, replace=False).tolist())
    touched = {lab: bool(parse_perturbation(lab) & held) for lab in np.unique(labels)}
    is_test = np.array([touched[lab] for lab in labels])
    train = adata[~is_test].copy()
    return PerturbationSplit(
        name=f"unseen: seed {seed}",
        train=train,
        test=adata[is_test].copy(),
        control=train[train.obs[PERTURBATION_KEY].astype(str) == CONTROL].copy(),
        seen=False,
    )
