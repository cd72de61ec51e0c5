"""Perturb-seq loading: label parsing, key registry, normalisation, real Papalexi/Norman rows."""

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from sciDiT.data.perturbseq import (
    canonical_label,
    get_registry,
    load_norman_fixture,
    load_papalexi,
    load_perturbseq,
    normalize,
    parse_perturbation,
    perturbation_targets,
    select_hvg,
    setup_anndata,
    target_genes,
)
from sciDiT.errors import DataNotFoundError, SciDiTInputError

DATA_DIR = Path(__file__).parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA_DIR / "perturbseq").is_dir(), reason="shared Perturb-seq data not present")


@pytest.mark.parametrize(
    "label, expected",
    [
        ("STAT1", {"STAT1"}),
        ("control", set()),
        ("Non-Targeting", set()),
        ("ctrl", set()),
        ("NT", set()),
        ("FOXL2+HOXB9", {"FOXL2", "HOXB9"}),
        ("CEBPE+ctrl", {"CEBPE"}),
        ("ctrl+CEBPE", {"CEBPE"}),
        (" A + B ", {"A", "B"}),
    ],
)
def test_parse_perturbation(label, expected):
    assert parse_perturbation(label) == frozenset(expected)


@pytest.mark.parametrize("bad", ["", "A+", "+B", "A++B", None, float("nan")])
def test_parse_perturbation_rejects_malformed(bad):
    with pytest.raises(SciDiTInputError):
        parse_perturbation(bad)


def test_canonical_label_is_order_free():
    assert canonical_label(parse_perturbation("B+A")) == canonical_label(parse_perturbation("A+B")) == "A+B"
    assert canonical_label(parse_perturbation("ctrl")) == "control"


def _toy(counts: np.ndarray, labels: list[str]) -> ad.AnnData:
    obs = pd.DataFrame({"guide": labels, "rep": ["r1"] * len(labels)}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=counts.astype(np.float32), obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(counts.shape[1])]))


def test_setup_registry_and_normalize_closed_form():
    counts = np.array([[1, 3, 0], [2, 2, 4]])
    adata = setup_anndata(_toy(counts, ["NTC", "g1+ctrl"]), perturbation_key="guide", control_label="NTC", covariate_keys=["rep"])
    assert adata.obs["perturbation"].tolist() == ["control", "g1"]
    assert get_registry(adata)["covariate_keys"] == ["rep"]
    normalize(adata, target_sum=10.0)
    expected = np.log1p(counts / counts.sum(1, keepdims=True) * 10.0)
    np.testing.assert_allclose(np.asarray(adata.X), expected, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(adata.layers["counts"]), counts)
    with pytest.raises(SciDiTInputError, match="already normalised"):
        normalize(adata)


def test_normalize_refuses_non_counts():
    adata = setup_anndata(_toy(np.array([[0.5, 1.0], [1.0, 2.0]]), ["ctrl", "A"]), perturbation_key="guide")
    with pytest.raises(SciDiTInputError, match="raw counts"):
        normalize(adata)


def test_missing_keys_name_the_key():
    adata = _toy(np.ones((2, 2)), ["ctrl", "A"])
    with pytest.raises(SciDiTInputError, match="'condition'"):
        setup_anndata(adata, perturbation_key="condition")
    with pytest.raises(SciDiTInputError, match="'batch'"):
        setup_anndata(adata, perturbation_key="guide", covariate_keys=["batch"])
    with pytest.raises(SciDiTInputError, match="not registered"):
        get_registry(adata)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="nope.h5ad"):
        load_perturbseq(tmp_path / "nope.h5ad")


@needs_data
def test_papalexi_real_rows_load():
    adata = load_papalexi(DATA_DIR, cells=slice(0, 300))
    assert adata.shape == (300, 299)
    assert set(adata.obs["bio_rep"].unique()) <= {"rep_1", "rep_2"}
    assert "STAT1" in target_genes(load_papalexi(DATA_DIR, cells=slice(0, 2000), normalize_counts=False))
    counts = adata.layers["counts"].toarray()
    assert np.allclose(counts, np.round(counts)) and counts.sum() > 0
    lib = np.expm1(adata.X.toarray()).sum(1)
    np.testing.assert_allclose(lib, np.median(counts.sum(1)), rtol=1e-3)  # median library size target
    hvg = select_hvg(adata, 50)
    measured_targets = [g for g in target_genes(adata) if g in adata.var_names]
    assert set(measured_targets) <= set(hvg.var_names) and hvg.n_vars >= 50


@needs_data
def test_norman_fixture_combinations_load():
    adata = load_norman_fixture(DATA_DIR)
    assert adata.shape == (50, 50)
    targets = perturbation_targets(adata)
    assert max(len(t) for t in targets) == 2 and sum(len(t) == 0 for t in targets) == 6
    row = adata.obs["condition"].tolist().index("FOXL2+HOXB9")
    assert targets[row] == frozenset({"FOXL2", "HOXB9"})
    assert "CFAP57" in adata.var_names  # symbols from var['feature_name'], not Ensembl ids
