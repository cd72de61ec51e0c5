"""Perturbation metrics against hand-computed values; baselines on toy data and a real Papalexi subset."""

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from sciDiT.data.perturbseq import load_papalexi, setup_anndata
from sciDiT.evaluation.perturbation import (
    energy_distance,
    fit_pca,
    mean_change_metrics,
    median_bandwidth,
    mmd_rbf,
    pearson,
    score_perturbations,
    summarize,
    top_de_genes,
    write_cell_eval_files,
)
from sciDiT.perturbation import (
    Additive,
    LinearGeneEmbedding,
    NoChange,
    PerturbedMean,
    TrainCells,
    random_cells_split,
    replicate_split,
    unseen_target_split,
)

DATA_DIR = Path(__file__).parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA_DIR / "perturbseq").is_dir(), reason="shared Perturb-seq data not present")


def test_energy_distance_hand_values():
    assert energy_distance(np.array([[0.0]]), np.array([[1.0]])) == pytest.approx(2.0)
    # E|X-Y| = 1, E|X-X'| = (0 + 2 + 2 + 0) / 4 = 1, E|Y-Y'| = 0
    assert energy_distance(np.array([[0.0], [2.0]]), np.array([[1.0]])) == pytest.approx(1.0)
    x = np.random.default_rng(0).normal(size=(30, 3))
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-12)


def test_mmd_rbf_hand_values():
    x, y = np.array([[0.0]]), np.array([[1.0]])
    assert median_bandwidth(x, y) == pytest.approx(1.0)
    assert mmd_rbf(x, y) == pytest.approx(2.0 - 2.0 * np.exp(-0.5))
    assert mmd_rbf(x, np.array([[3.0]]), bandwidth=3.0) == pytest.approx(2.0 - 2.0 * np.exp(-0.5))


def test_mean_change_metrics_hand_values():
    ctrl = np.zeros(4)
    real = np.array([1.0, -1.0, 2.0, 0.0])
    pred = np.array([0.5, -1.0, -1.0, 0.0])
    m = mean_change_metrics(pred, real, ctrl, de=np.array([0, 1, 2]))
    assert m["mse_de"] == pytest.approx((0.25 + 0.0 + 9.0) / 3)
    assert m["nmse_de"] == pytest.approx(((0.25 + 9.0) / 3) / ((1 + 1 + 4) / 3))
    assert m["direction_de"] == pytest.approx(2 / 3)
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0])) == pytest.approx(1.0)
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    nochange = mean_change_metrics(ctrl, real, ctrl, de=np.array([0, 1, 2]))
    assert nochange["nmse_de"] == 1.0 and nochange["direction_de"] == 0.0 and np.isnan(nochange["pearson_delta"])


def test_fit_pca_recovers_a_line():
    t = np.linspace(-1, 1, 11)[:, None]
    mean, comps = fit_pca(np.hstack([t, t]) + 5.0, n_comps=1)
    np.testing.assert_allclose(mean, [5.0, 5.0], atol=1e-12)
    np.testing.assert_allclose(np.abs(comps[0]), [2**-0.5, 2**-0.5], atol=1e-12)


def _toy() -> ad.AnnData:
    """Hand-made screen: 4 genes, controls, A and B (targets g0 and g1) and the double A+B."""
    rows = {
        "control": [[0, 0, 0, 0], [2, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]],
        "A": [[3, 1, 0, 1], [3, 1, 0, 1]],
        "B": [[1, 3, 0, 0], [1, 3, 0, 2]],
        "A+B": [[4, 4, 0, 1], [4, 4, 0, 3], [4, 4, 0, 2]],
    }
    x = np.array([r for rs in rows.values() for r in rs], dtype=np.float32)
    labels = [lab for lab, rs in rows.items() for _ in rs]
    adata = ad.AnnData(X=x, obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]))
    adata.var_names = ["g0", "g1", "g2", "g3"]
    return setup_anndata(adata)


def test_shift_baselines_closed_form():
    adata = _toy()
    train = adata[adata.obs["perturbation"] != "A+B"].copy()
    control = adata[adata.obs["perturbation"] == "control"].copy()  # mean [1, 0, 0, 0]
    shifts = {
        NoChange: [0, 0, 0, 0],
        PerturbedMean: [1, 2, 0, 1],  # mean of A and B cells [2, 2, 0, 1] minus control
        Additive: [2, 4, 0, 2],  # (2, 1, 0, 1) + (0, 3, 0, 1)
    }
    for cls, expected in shifts.items():
        pred = cls().fit(train).predict(control, ["B+A"])
        assert pred.obs["perturbation"].unique().tolist() == ["A+B"] and pred.n_obs == control.n_obs
        np.testing.assert_allclose(pred.varm["predicted_shift"]["A+B"], expected)
        np.testing.assert_allclose(pred.X.mean(0), np.array([1, 0, 0, 0]) + expected, atol=1e-6)
    assert Additive().fit(train).predict(control, ["A+C"]).uns["skipped"] == ["A+C"]
    # a negative shift is clipped at 0 in the cells (valid log-expression) but kept exactly in varm
    reverse = adata[adata.obs["perturbation"].isin(["control", "A+B"])].copy()
    reverse.obs["perturbation"] = reverse.obs["perturbation"].astype(str).replace({"A+B": "control", "control": "A+B"})
    down = PerturbedMean().fit(reverse).predict(reverse[reverse.obs["perturbation"] == "control"].copy(), ["A+B"])
    assert down.X.min() == 0.0 and down.varm["predicted_shift"]["A+B"].min() < 0
    cells = TrainCells().fit(train).predict(control, ["A", "A+B"])
    assert cells.n_obs == 2 and cells.uns["skipped"] == ["A+B"]


def test_linear_model_matches_kronecker_least_squares():
    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(6)]
    perts = ["g0", "g1", "g2", "g3"]
    x = np.concatenate([rng.normal(size=(5, 6)), rng.normal(size=(8, 6)) + rng.normal(size=(4, 1, 6)).repeat(2, 1).reshape(8, 6)])
    labels = ["control"] * 5 + [p for p in perts for _ in range(2)]
    adata = setup_anndata(ad.AnnData(X=x.astype(np.float32), obs=pd.DataFrame({"perturbation": labels}, index=[str(i) for i in range(13)]), var=pd.DataFrame(index=genes)))
    model = LinearGeneEmbedding(n_components=2, ridge=1e-10).fit(adata)
    y = np.stack([model.shifts[frozenset({p})] for p in perts], axis=1)
    p_emb = np.stack([model.emb[i] for i in range(4)])
    design = np.kron(p_emb, model.emb)  # vec(E W P^T) = (P kron E) vec(W), column-major vec
    w_ls = np.linalg.lstsq(design, (y - model.b[:, None]).reshape(-1, order="F"), rcond=None)[0].reshape(2, 2, order="F")
    np.testing.assert_allclose(model.w, w_ls, atol=1e-6)
    np.testing.assert_allclose(model.shift(frozenset({"NOT_MEASURED"})), model.b)  # no embedding -> mean effect


def test_top_de_genes_both_methods():
    adata = _toy()
    real = adata[adata.obs["perturbation"] == "A+B"].copy()
    control = adata[adata.obs["perturbation"] == "control"].copy()
    assert top_de_genes(real, control, ["A+B"], n_genes=2, method="abs_mean")["A+B"].tolist() == [1, 0]  # change [3, 4, 0, 2]
    assert set(top_de_genes(real, control, ["A+B"], n_genes=2, method="t-test")["A+B"].tolist()) <= {0, 1, 3}


def test_scorer_on_toy_and_cell_eval_files(tmp_path):
    adata = _toy()
    train = adata[adata.obs["perturbation"] != "A+B"].copy()
    real = adata[adata.obs["perturbation"] == "A+B"].copy()
    control = adata[adata.obs["perturbation"] == "control"].copy()
    pred = Additive().fit(train).predict(control, ["A+B"])
    scores = score_perturbations(pred, real, control, train, n_de=2, de_method="abs_mean", min_cells=2)
    assert scores.loc["A+B", "mse_de"] == pytest.approx(((4 - 4) ** 2 + (3 - 4) ** 2) / 2)  # DE genes g1, g0; pred [3, 4, 0, 2], real [4, 4, 0, 2]
    assert scores.loc["A+B", "direction_de"] == 1.0 and np.isnan(scores.loc["A+B", "energy_ceiling"])
    assert summarize(scores)["n_perturbations"] == 1
    pred_path, real_path = write_cell_eval_files(pred, real, control, tmp_path)
    p, r = ad.read_h5ad(pred_path), ad.read_h5ad(real_path)
    assert list(p.var_names) == list(r.var_names) == ["g0", "g1", "g2", "g3"]
    assert set(p.obs["perturbation"]) == set(r.obs["perturbation"]) == {"A+B", "control"}


@needs_data
def test_baselines_on_real_papalexi_subset():
    adata = load_papalexi(DATA_DIR, cells=slice(0, None, 5))  # every 5th cell: both replicates
    for split in (replicate_split(adata, "rep_1", "rep_2"), random_cells_split(adata, 0.5, seed=0), unseen_target_split(adata, 3, seed=0)):
        perts = split.test_perturbations
        assert not set(perts) & set(split.train.obs["perturbation"].astype(str)) or split.seen
        for cls in (NoChange, PerturbedMean, LinearGeneEmbedding):
            pred = cls().fit(split.train).predict(split.control, perts)
            s = summarize(score_perturbations(pred, split.test, split.control, split.train, max_cells=100, min_cells=5))
            assert s["n_perturbations"] >= 1 and np.isfinite(s["mse_de"]) and s["energy"] > 0
