"""Perturbation-response metrics: AnnData of predicted cells vs AnnData of held-out real cells.

Inputs are log-normalised AnnData (``X``) with the same genes and ``obs['perturbation']``; the
``control`` AnnData holds the control cells that define "no change" (the change from control of a
perturbation is ``mean(cells of p) - mean(control cells)``). Every predictor (sciDiT or a baseline)
is scored by :func:`score_perturbations`, per perturbation, and :func:`summarize` averages.

Per perturbation ``p`` (columns of the returned table):

- ``mse_de``: MSE of the predicted vs observed mean over the top-20 DE genes (GEARS).
- ``nmse_de``: ``mse_de`` divided by the MSE of the no-change prediction (control mean) on the same
  genes; 1 = no better than predicting no change.
- ``pearson_delta`` / ``pearson_delta_de``: Pearson correlation of predicted vs observed change from
  control, over all genes / the top-20 DE genes (NaN when the prediction has no change at all).
- ``direction_de``: fraction of top-20 DE genes whose predicted change has the observed sign
  (a zero predicted change counts as wrong).
- ``energy`` / ``mmd``: energy distance and RBF-MMD^2 between predicted and real cells of ``p`` in
  PCA space (PCA fit on the training cells); ``energy_ceiling`` / ``mmd_ceiling``: the same for the
  real training cells of ``p`` (seen perturbations only), i.e. what resampling real data achieves.

DE genes: scanpy ``rank_genes_groups`` (t-test, ``rankby_abs=True``) of the real cells of ``p``
against the control cells, as GEARS does; ``de_method='abs_mean'`` ranks by |mean change| instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from sciDiT.data.perturbseq import CONTROL, PERTURBATION_KEY
from sciDiT.errors import SciDiTInputError

METRICS = ("mse_de", "nmse_de", "pearson_delta", "pearson_delta_de", "direction_de", "energy", "mmd", "energy_ceiling", "mmd_ceiling")


# -- small metric functions -----------------------------------------------------------------------
def dense(x) -> np.ndarray:
    """Dense float64 copy of a (possibly sparse) matrix."""
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either vector is constant (correlation undefined)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 1e-12 else float("nan")


def _pairwise(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.sqrt(np.clip(d2, 0.0, None))


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic, Euclidean) between samples [n, d], [m, d]."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(2.0 * _pairwise(x, y).mean() - _pairwise(x, x).mean() - _pairwise(y, y).mean())


def median_bandwidth(x: np.ndarray, y: np.ndarray) -> float:
    """Median heuristic: median Euclidean distance between distinct points of the pooled sample."""
    z = np.concatenate([x, y]).astype(np.float64)
    d = _pairwise(z, z)[np.triu_indices(z.shape[0], k=1)]
    med = float(np.median(d)) if d.size else 0.0
    return med if med > 0 else 1.0


def mmd_rbf(x: np.ndarray, y: np.ndarray, bandwidth: float | None = None) -> float:
    """Biased (V-statistic) MMD^2 with kernel ``exp(-|a-b|^2 / (2 s^2))``, ``s`` = median heuristic by default."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    s = median_bandwidth(x, y) if bandwidth is None else bandwidth

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.exp(-(_pairwise(a, b) ** 2) / (2.0 * s * s)).mean())

    return k(x, x) + k(y, y) - 2.0 * k(x, y)


def mean_change_metrics(pred_mean: np.ndarray, real_mean: np.ndarray, ctrl_mean: np.ndarray, de: np.ndarray) -> dict[str, float]:
    """GEARS-style metrics of one perturbation from three mean vectors [G] and DE gene indices."""
    pred_delta, real_delta = pred_mean - ctrl_mean, real_mean - ctrl_mean
    mse = float(((pred_mean[de] - real_mean[de]) ** 2).mean())
    mse_nochange = float(((ctrl_mean[de] - real_mean[de]) ** 2).mean())
    return {
        "mse_de": mse,
        "nmse_de": mse / mse_nochange if mse_nochange > 0 else float("nan"),
        "pearson_delta": pearson(pred_delta, real_delta),
        "pearson_delta_de": pearson(pred_delta[de], real_delta[de]),
        "direction_de": float((np.sign(pred_delta[de]) == np.sign(real_delta[de])).mean()),
    }


# -- DE genes and PCA -----------------------------------------------------------------------------
def top_de_genes(real: ad.AnnData, control: ad.AnnData, perturbations: Sequence[str], n_genes: int = 20, method: str = "t-test") -> dict[str, np.ndarray]:
    """Indices (into ``var``) of the top ``n_genes`` DE genes of each perturbation vs the control cells."""
    n_genes = min(n_genes, real.n_vars)
    if method == "abs_mean":
        ctrl_mean = dense(control.X).mean(0)
        labels = real.obs[PERTURBATION_KEY].astype(str).to_numpy()
        return {p: np.argsort(-np.abs(dense(real.X[labels == p]).mean(0) - ctrl_mean), kind="stable")[:n_genes] for p in perturbations}
    if method not in ("t-test", "wilcoxon"):
        raise SciDiTInputError(f"unknown DE method {method!r} (t-test, wilcoxon, abs_mean)")
    labels = np.concatenate([real.obs[PERTURBATION_KEY].astype(str).to_numpy(), np.full(control.n_obs, "__control__")])
    obs = pd.DataFrame({"group": pd.Categorical(labels)}, index=[str(i) for i in range(labels.size)])
    both = ad.AnnData(X=np.concatenate([dense(real.X), dense(control.X)]), obs=obs, var=pd.DataFrame(index=pd.Index(real.var_names.astype(str))))
    with warnings.catch_warnings():  # scanpy's own frame building warns (pandas PerformanceWarning)
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        sc.tl.rank_genes_groups(both, "group", groups=list(perturbations), reference="__control__", method=method, rankby_abs=True, n_genes=n_genes)
    names = both.uns["rank_genes_groups"]["names"]
    index = {g: i for i, g in enumerate(both.var_names)}
    return {p: np.array([index[g] for g in names[p]], dtype=np.int64) for p in perturbations}


def fit_pca(x: np.ndarray, n_comps: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(mean [G], components [k, G]) of a PCA fit on rows of ``x``; project with ``(x - mean) @ comps.T``."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[: min(n_comps, vt.shape[0])]


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return x if x.shape[0] <= n else x[rng.choice(x.shape[0], n, replace=False)]


# -- scorer ---------------------------------------------------------------------------------------
def score_perturbations(
    pred: ad.AnnData,
    real: ad.AnnData,
    control: ad.AnnData,
    train: ad.AnnData | None = None,
    n_de: int = 20,
    de_method: str = "t-test",
    n_pcs: int = 50,
    max_cells: int = 500,
    min_cells: int = 5,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-perturbation metrics (rows: perturbations present in both ``pred`` and ``real``).

    ``train`` (the training cells) fits the PCA for the distribution metrics and gives the ceiling;
    without it the PCA is fit on the control cells and the ceiling columns are NaN. Perturbations
    with fewer than ``min_cells`` real cells are skipped. Distances use at most ``max_cells`` cells
    per side (seeded subsample).
    """
    for name, a in (("pred", pred), ("real", real), ("control", control)):
        if PERTURBATION_KEY not in a.obs:
            raise SciDiTInputError(f"{name} AnnData has no obs[{PERTURBATION_KEY!r}]")
        if list(a.var_names) != list(real.var_names):
            raise SciDiTInputError(f"{name} AnnData genes differ from the real cells' genes (same genes, same order needed)")
    real_labels = real.obs[PERTURBATION_KEY].astype(str).to_numpy()
    pred_labels = pred.obs[PERTURBATION_KEY].astype(str).to_numpy()
    counts = pd.Series(real_labels).value_counts()
    perts = sorted(p for p in set(pred_labels) & set(real_labels) if p != CONTROL and counts[p] >= min_cells)
    if not perts:
        raise SciDiTInputError("no perturbation is present in both the predicted and the real AnnData")
    de = top_de_genes(real, control, perts, n_de, de_method)
    ctrl_x = dense(control.X)
    ctrl_mean = ctrl_x.mean(0)
    mean, comps = fit_pca(dense(train.X) if train is not None else ctrl_x, n_pcs)
    train_labels = train.obs[PERTURBATION_KEY].astype(str).to_numpy() if train is not None else np.array([])
    rng = np.random.default_rng(seed)
    rows = []
    for p in perts:
        pred_x, real_x = dense(pred.X[pred_labels == p]), dense(real.X[real_labels == p])
        row = {"perturbation": p, "n_real": real_x.shape[0], "n_pred": pred_x.shape[0]}
        row.update(mean_change_metrics(pred_x.mean(0), real_x.mean(0), ctrl_mean, de[p]))
        real_z = _subsample((real_x - mean) @ comps.T, max_cells, rng)
        pred_z = _subsample((pred_x - mean) @ comps.T, max_cells, rng)
        row["energy"], row["mmd"] = energy_distance(pred_z, real_z), mmd_rbf(pred_z, real_z)
        row["energy_ceiling"] = row["mmd_ceiling"] = float("nan")
        if (train_labels == p).sum() >= 2:
            train_z = _subsample((dense(train.X[train_labels == p]) - mean) @ comps.T, max_cells, rng)
            row["energy_ceiling"], row["mmd_ceiling"] = energy_distance(train_z, real_z), mmd_rbf(train_z, real_z)
        rows.append(row)
    return pd.DataFrame(rows).set_index("perturbation")


def summarize(scores: pd.DataFrame) -> dict[str, float]:
    """Mean of every metric over perturbations (NaNs skipped) plus the number of perturbations scored."""
    out = {m: float(scores[m].mean()) for m in METRICS if m in scores}
    out["n_perturbations"] = float(len(scores))
    return out


# -- files for cell-eval --------------------------------------------------------------------------
def write_cell_eval_files(pred: ad.AnnData, real: ad.AnnData, control: ad.AnnData, out_dir: str | Path, name: str = "pred") -> tuple[Path, Path]:
    """Write ``{name}.h5ad`` and ``real.h5ad``: same genes, ``obs['perturbation']``, control cells in both.

    cell-eval (Arc Institute) needs predicted and real AnnData with identical genes, one perturbation
    column and the control cells in both; score them with
    ``cell-eval run -ap {name}.h5ad -ar real.h5ad --pert-col perturbation --control-pert control``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    var = pd.DataFrame(index=pd.Index(real.var_names.astype(str)))

    def with_control(a: ad.AnnData, tag: str) -> ad.AnnData:
        labels = a.obs[PERTURBATION_KEY].astype(str).to_numpy()
        keep = labels != CONTROL
        x = np.concatenate([dense(a.X[keep]), dense(control.X)]).astype(np.float32)
        obs = pd.DataFrame(
            {PERTURBATION_KEY: pd.Categorical(np.concatenate([labels[keep], np.full(control.n_obs, CONTROL)]))},
            index=[f"{tag}_{i}" for i in range(int(keep.sum()))] + [f"ctrl_{i}" for i in range(control.n_obs)],
        )
        return ad.AnnData(X=x, obs=obs, var=var)

    pred_path, real_path = out_dir / f"{name}.h5ad", out_dir / "real.h5ad"
    with_control(pred, "pred").write_h5ad(pred_path)
    with_control(real, "real").write_h5ad(real_path)
    return pred_path, real_path
