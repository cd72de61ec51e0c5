"""Perturbation-response baselines, with the same interface a trained sciDiT model plugs into.

A predictor has ``fit(train) -> self`` and ``predict(control, perturbations) -> AnnData``: given
control cells (log-normalised AnnData) and perturbation labels, it returns predicted cells with
``obs['perturbation']`` and the predicted change from control per perturbation in
``varm['predicted_shift']`` (genes x perturbations DataFrame), so one scorer
(:func:`sciDiT.evaluation.perturbation.score_perturbations`) applies to all of them.

Shift baselines estimate a mean change ``s_p`` from the training cells (perturbed mean minus the
training control mean) and predict the given control cells moved by ``s_p``, clipped at 0 so that
they are valid log-expression values (cell-eval rejects negative values; the clipping raises the
predicted mean of genes pushed below 0, the exact ``s_p`` stays in ``varm['predicted_shift']``):

- :class:`NoChange`: ``s_p = 0`` (the control cells themselves).
- :class:`PerturbedMean`: ``s_p`` = mean of all perturbed training cells minus the control mean.
- :class:`Additive`: ``s_p = sum of the single-gene shifts of p's targets`` (each target must have
  been perturbed alone in training); for a seen single perturbation this is its training mean shift.
- :class:`LinearGeneEmbedding`: the linear model of Ahlmann-Eltze, Huber & Anders (Nat. Methods 2025),
  see its docstring.

:class:`TrainCells` instead returns the training cells of ``p`` unchanged (seen perturbations only).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from sciDiT.data.perturbseq import CONTROL, PERTURBATION_KEY, canonical_label, parse_perturbation
from sciDiT.errors import SciDiTInputError
from sciDiT.evaluation.perturbation import dense


def _pseudobulk(train: ad.AnnData) -> tuple[np.ndarray, dict[frozenset[str], np.ndarray]]:
    """(control mean [G], {target set: mean change from control [G]}) of the training cells."""
    labels = train.obs[PERTURBATION_KEY].astype(str).to_numpy()
    if (labels == CONTROL).sum() == 0:
        raise SciDiTInputError("training AnnData has no control cells")
    x = dense(train.X)
    ctrl = x[labels == CONTROL].mean(0)
    shifts = {parse_perturbation(p): x[labels == p].mean(0) - ctrl for p in np.unique(labels) if p != CONTROL}
    return ctrl, shifts


class ShiftPredictor(ABC):
    """Base class: predicted cells = control cells + a per-perturbation shift (``None`` = cannot predict)."""

    name = "shift"

    def fit(self, train: ad.AnnData) -> "ShiftPredictor":
        self.genes = train.var_names.astype(str).tolist()
        self.ctrl_mean, self.shifts = _pseudobulk(train)
        return self

    @abstractmethod
    def shift(self, targets: frozenset[str]) -> np.ndarray | None:
        """Predicted mean change from control [G] for a target set, or None if this method cannot predict it."""

    def predict(self, control: ad.AnnData, perturbations: Sequence[str]) -> ad.AnnData:
        """Predicted cells for each perturbation; those the method cannot predict are listed in ``uns['skipped']``."""
        if control.var_names.astype(str).tolist() != self.genes:
            raise SciDiTInputError("control cells must have the training genes in the same order")
        ctrl_x = dense(control.X)
        blocks, labels, shifts, skipped = [], [], {}, []
        for p in perturbations:
            label = canonical_label(parse_perturbation(p))
            s = self.shift(parse_perturbation(p))
            if s is None:
                skipped.append(label)
                continue
            blocks.append(np.clip(ctrl_x + s, 0.0, None))
            labels += [label] * control.n_obs
            shifts[label] = s
        x = np.concatenate(blocks).astype(np.float32) if blocks else np.zeros((0, len(self.genes)), dtype=np.float32)
        return _prediction(x, labels, self.genes, shifts, self.name, skipped)


def _prediction(x: np.ndarray, labels: list[str], genes: list[str], shifts: dict[str, np.ndarray], method: str, skipped: list[str]) -> ad.AnnData:
    obs = pd.DataFrame({PERTURBATION_KEY: pd.Categorical(labels)}, index=[f"pred_{i}" for i in range(len(labels))])
    out = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
    out.varm["predicted_shift"] = pd.DataFrame(shifts, index=genes) if shifts else pd.DataFrame(index=genes)
    out.uns["scidit_prediction"] = {"method": method}
    out.uns["skipped"] = list(skipped)
    return out


class NoChange(ShiftPredictor):
    name = "no_change"

    def shift(self, targets: frozenset[str]) -> np.ndarray:
        return np.zeros_like(self.ctrl_mean)


class PerturbedMean(ShiftPredictor):
    name = "perturbed_mean"

    def fit(self, train: ad.AnnData) -> "PerturbedMean":
        super().fit(train)
        labels = train.obs[PERTURBATION_KEY].astype(str).to_numpy()
        self.mean_shift = dense(train.X[labels != CONTROL]).mean(0) - self.ctrl_mean
        return self

    def shift(self, targets: frozenset[str]) -> np.ndarray:
        return self.mean_shift


class Additive(ShiftPredictor):
    name = "additive"

    def shift(self, targets: frozenset[str]) -> np.ndarray | None:
        singles = [self.shifts.get(frozenset({g})) for g in targets]
        if not targets or any(s is None for s in singles):
            return None
        return np.sum(singles, axis=0)


def fit_linear_gene_model(y: np.ndarray, target_rows: Sequence[Sequence[int]], n_components: int = 10, ridge: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The linear model of Ahlmann-Eltze, Huber & Anders 2025 on mean changes ``y [G, P]``: ``(b [G], E [G, K], W [K, K])``.

    ``b``: the row mean of ``y`` (the average training effect). ``E``: the top-K left singular
    vectors of ``y - b`` (PCA of the training effects, genes as observations; K is at most its rank,
    since directions without variance are arbitrary). Perturbation ``j``'s
    embedding ``e_j`` is the sum of the rows of ``E`` of its measured targets ``target_rows[j]``
    (row indices into the G genes; empty when none is measured). ``W`` = argmin
    ``|Y_m - b - E W P^T|^2 + ridge |W|^2`` over the perturbations with an embedding, in closed form
    ``W = (E^T E + ridge I)^-1 E^T (Y_m - b) P (P^T P + ridge I)^-1``. Predicted change of a target
    set with embedding ``e``: ``b + E W e``.
    """
    b = y.mean(1)
    u, sv, _ = np.linalg.svd(y - b[:, None], full_matrices=False)
    rank = int((sv > 1e-6 * sv.max()).sum()) if sv.size and sv.max() > 0 else 0  # directions of ~0 variance are arbitrary: drop them
    emb = u[:, : min(n_components, rank)]  # [G, K]
    k = emb.shape[1]
    with_emb = [j for j, rows in enumerate(target_rows) if len(rows) > 0]
    w = np.zeros((k, k))
    if with_emb:
        p = np.stack([emb[list(target_rows[j])].sum(0) for j in with_emb])  # [P_m, K]
        eye = np.eye(k)
        left = np.linalg.solve(emb.T @ emb + ridge * eye, emb.T @ (y[:, with_emb] - b[:, None]))
        w = left @ p @ np.linalg.inv(p.T @ p + ridge * eye)
    return b, emb, w


class LinearGeneEmbedding(ShiftPredictor):
    """Linear model of Ahlmann-Eltze, Huber & Anders 2025 (:func:`fit_linear_gene_model`), fit to training mean changes.

    A perturbation's embedding is the sum of its measured target genes' rows of ``E`` (a combination
    sums its genes); one with no measured target gets ``s_p = b`` (the average training effect).
    K = 10, ridge = 0.1 as in the paper.
    """

    name = "linear"

    def __init__(self, n_components: int = 10, ridge: float = 0.1):
        self.n_components, self.ridge = n_components, ridge

    def fit(self, train: ad.AnnData) -> "LinearGeneEmbedding":
        super().fit(train)
        keys = sorted(self.shifts, key=canonical_label)
        y = np.stack([self.shifts[k] for k in keys], axis=1)  # [G, P]
        self.index = {g: i for i, g in enumerate(self.genes)}
        rows = [[self.index[g] for g in k if g in self.index] for k in keys]
        self.b, self.emb, self.w = fit_linear_gene_model(y, rows, self.n_components, self.ridge)
        return self

    def _embed(self, targets: frozenset[str]) -> np.ndarray:
        rows = [self.emb[self.index[g]] for g in targets if g in self.index]
        return np.sum(rows, axis=0) if rows else np.zeros(self.emb.shape[1])

    def shift(self, targets: frozenset[str]) -> np.ndarray:
        return self.b + self.emb @ self.w @ self._embed(targets)


class TrainCells:
    """The real training cells of each perturbation (seen perturbations only; others are skipped)."""

    name = "train_cells"

    def fit(self, train: ad.AnnData) -> "TrainCells":
        self.train = train
        self.genes = train.var_names.astype(str).tolist()
        self.ctrl_mean, self.shifts = _pseudobulk(train)
        return self

    def predict(self, control: ad.AnnData, perturbations: Sequence[str]) -> ad.AnnData:
        labels = self.train.obs[PERTURBATION_KEY].astype(str).to_numpy()
        blocks, out_labels, shifts, skipped = [], [], {}, []
        for p in perturbations:
            label = canonical_label(parse_perturbation(p))
            rows = labels == label
            if label == CONTROL or not rows.any():
                skipped.append(label)
                continue
            blocks.append(dense(self.train.X[rows]))
            out_labels += [label] * int(rows.sum())
            shifts[label] = self.shifts[parse_perturbation(label)]
        x = np.concatenate(blocks).astype(np.float32) if blocks else np.zeros((0, len(self.genes)), dtype=np.float32)
        return _prediction(x, out_labels, self.genes, shifts, self.name, skipped)


BASELINES = {cls.name: cls for cls in (NoChange, PerturbedMean, TrainCells, Additive, LinearGeneEmbedding)}
