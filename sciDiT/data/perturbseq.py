"""Perturb-seq / CRISPR screen AnnData: key registration, label parsing, normalisation.

scvi-tools style: :func:`setup_anndata` registers the perturbation column, the control label,
covariates and the raw-count layer once, in ``adata.uns['scidit']``; everything downstream
(tokenizer, baselines, evaluation) reads the registry instead of taking column names again.

Perturbation labels are parsed into frozensets of target genes (empty set = control):

- plain gene: ``'STAT1'`` -> ``{'STAT1'}``
- controls, case-insensitive: ``'control'``, ``'non-targeting'``, ``'ctrl'``, ``'NT'`` -> ``{}``
- GEARS/scPerturb combinations: ``'A+B'`` -> ``{'A', 'B'}``; ``'A+ctrl'``/``'ctrl+A'`` -> ``{'A'}``

The canonical label of a target set is its genes sorted and joined by ``'+'``, or ``'control'``;
it is written to ``obs['perturbation']`` when the registered column has another name or format,
so baselines, the evaluation and exported files all share one column.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from sciDiT.errors import DataNotFoundError, SciDiTInputError

REGISTRY_KEY = "scidit"
PERTURBATION_KEY = "perturbation"  # canonical obs column written by setup_anndata
CONTROL = "control"  # canonical control label
CONTROL_LABELS = frozenset({"control", "non-targeting", "nontargeting", "non_targeting", "ctrl", "nt"})
COUNTS_LAYER = "counts"

PAPALEXI_FILE = "perturbseq/papalexi2021_thp1_lowmoi.h5ad"
NORMAN_FIXTURE_FILE = "perturbseq/norman2019_fixture_50x50.h5ad"


# -- labels ---------------------------------------------------------------------------------------
def is_control_label(label: str) -> bool:
    """True for the usual control spellings ('control', 'non-targeting', 'ctrl', 'NT'; any case)."""
    return label.strip().lower() in CONTROL_LABELS


def parse_perturbation(label: object, source: object | None = None) -> frozenset[str]:
    """Target genes of one perturbation label (empty set = control); ``source`` names the file/row in errors."""
    if not isinstance(label, str) or not label.strip():
        raise SciDiTInputError(f"perturbation label must be a non-empty string, got {label!r}", source)
    parts = [p.strip() for p in label.split("+")]
    if any(not p for p in parts):
        raise SciDiTInputError(f"malformed combination label {label!r} (empty part around '+')", source)
    return frozenset(p for p in parts if not is_control_label(p))


def canonical_label(targets: Iterable[str]) -> str:
    """'control' for no targets, else the sorted genes joined by '+' (so 'B+A' and 'A+B' agree)."""
    targets = sorted(targets)
    return "+".join(targets) if targets else CONTROL


def canonicalize_labels(labels: Sequence[object], source: object | None = None) -> list[str]:
    """Canonical labels for a column of raw labels (parsed once per distinct label)."""
    cache: dict[object, str] = {}
    for lab in dict.fromkeys(labels):
        cache[lab] = canonical_label(parse_perturbation(lab, source))
    return [cache[lab] for lab in labels]


# -- registry -------------------------------------------------------------------------------------
def setup_anndata(
    adata: ad.AnnData,
    perturbation_key: str = PERTURBATION_KEY,
    control_label: str | None = None,
    covariate_keys: Sequence[str] = (),
    counts_layer: str | None = None,
    gene_symbol_key: str | None = None,
    source: object | None = None,
) -> ad.AnnData:
    """Register the screen's keys in ``adata.uns['scidit']`` and write canonical ``obs['perturbation']``.

    ``control_label`` is an extra, dataset-specific control spelling (the usual ones are always
    recognised). ``counts_layer`` names the layer holding raw counts (None: ``X`` holds them).
    ``gene_symbol_key`` names a ``var`` column of gene symbols to use as ``var_names`` (e.g. the
    Norman data is indexed by Ensembl id). Modifies ``adata`` in place and returns it.
    """
    source = source if source is not None else "AnnData"
    if perturbation_key not in adata.obs:
        raise SciDiTInputError(f"obs has no perturbation column {perturbation_key!r} (columns: {list(adata.obs.columns)[:12]})", source)
    for key in covariate_keys:
        if key not in adata.obs:
            raise SciDiTInputError(f"obs has no covariate column {key!r}", source)
    if counts_layer is not None and counts_layer not in adata.layers:
        raise SciDiTInputError(f"no layer {counts_layer!r} (layers: {list(adata.layers.keys())})", source)
    if gene_symbol_key is not None:
        if gene_symbol_key not in adata.var:
            raise SciDiTInputError(f"var has no gene symbol column {gene_symbol_key!r}", source)
        adata.var["original_var_name"] = adata.var_names.astype(str)
        adata.var_names = pd.Index(adata.var[gene_symbol_key].astype(str).to_numpy())
        adata.var_names_make_unique()
    raw = adata.obs[perturbation_key].astype(object).to_numpy()
    if control_label is not None:
        raw = np.array([CONTROL if lab == control_label else lab for lab in raw], dtype=object)
    if perturbation_key != PERTURBATION_KEY and PERTURBATION_KEY in adata.obs:
        adata.obs[f"{PERTURBATION_KEY}_original"] = adata.obs[PERTURBATION_KEY]
    adata.obs[PERTURBATION_KEY] = pd.Categorical(canonicalize_labels(list(raw), source))
    adata.uns[REGISTRY_KEY] = {
        "perturbation_key": perturbation_key,
        "control_label": control_label if control_label is not None else "",
        "covariate_keys": list(covariate_keys),
        "counts_layer": counts_layer if counts_layer is not None else "",
        "gene_symbol_key": gene_symbol_key if gene_symbol_key is not None else "",
        "normalized": False,
    }
    return adata


def get_registry(adata: ad.AnnData) -> dict:
    """The registry written by :func:`setup_anndata` (error if the AnnData was never set up)."""
    if REGISTRY_KEY not in adata.uns:
        raise SciDiTInputError("AnnData is not registered: call sciDiT.data.perturbseq.setup_anndata(adata, ...) first")
    return dict(adata.uns[REGISTRY_KEY])


def perturbation_targets(adata: ad.AnnData) -> list[frozenset[str]]:
    """Target-gene set of every cell, from the canonical ``obs['perturbation']``."""
    get_registry(adata)
    cats = {c: parse_perturbation(c) for c in adata.obs[PERTURBATION_KEY].astype(str).unique()}
    return [cats[c] for c in adata.obs[PERTURBATION_KEY].astype(str)]


def target_genes(adata: ad.AnnData) -> list[str]:
    """All genes targeted anywhere in the screen, sorted."""
    genes: set[str] = set()
    for lab in adata.obs[PERTURBATION_KEY].astype(str).unique():
        genes |= parse_perturbation(lab)
    return sorted(genes)


# -- normalisation --------------------------------------------------------------------------------
def normalize(adata: ad.AnnData, target_sum: float | None = None, source: object | None = None) -> ad.AnnData:
    """Library-size normalise + log1p through scanpy; raw counts kept in ``layers['counts']``.

    Counts come from the registered counts layer (or ``X``); they must be non-negative integers,
    otherwise the data look already normalised and we refuse rather than log twice.
    ``target_sum=None`` scales every cell to the median library size (scanpy's default).
    """
    reg = get_registry(adata)
    if reg["normalized"]:
        raise SciDiTInputError("AnnData is already normalised (uns['scidit']['normalized'] is True)", source)
    counts = adata.layers[reg["counts_layer"]] if reg["counts_layer"] else adata.X
    values = counts.data if sp.issparse(counts) else np.asarray(counts)
    if values.size and (values.min() < 0 or not np.allclose(values, np.round(values))):
        where = f"layer {reg['counts_layer']!r}" if reg["counts_layer"] else "X"
        raise SciDiTInputError(f"{where} does not hold raw counts (negative or non-integer values); pass counts_layer=", source)
    counts = sp.csr_matrix(counts, dtype=np.float32) if sp.issparse(counts) else np.asarray(counts, dtype=np.float32)
    adata.layers[COUNTS_LAYER] = counts.copy()
    adata.X = counts.copy()
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    reg.update(normalized=True, counts_layer=COUNTS_LAYER)
    adata.uns[REGISTRY_KEY] = reg
    return adata


def select_hvg(adata: ad.AnnData, n_top_genes: int, keep_targets: bool = True) -> ad.AnnData:
    """Keep the ``n_top_genes`` most variable genes (scanpy 'seurat' flavour on log data).

    ``keep_targets=True`` also keeps every measured perturbation target gene, since the knocked-down
    gene's own expression is the most direct readout of a knock-out. Returns a new AnnData.
    """
    reg = get_registry(adata)
    if not reg["normalized"]:
        raise SciDiTInputError("select_hvg needs log-normalised data: call normalize(adata) first")
    if n_top_genes >= adata.n_vars:
        return adata.copy()
    hvg = sc.pp.highly_variable_genes(adata, n_top_genes=n_top_genes, flavor="seurat", inplace=False)
    keep = np.asarray(hvg["highly_variable"], dtype=bool)
    if keep_targets:
        keep |= adata.var_names.isin(target_genes(adata))
    return adata[:, keep].copy()


# -- loading --------------------------------------------------------------------------------------
def load_perturbseq(
    path: str | Path,
    perturbation_key: str = PERTURBATION_KEY,
    control_label: str | None = None,
    covariate_keys: Sequence[str] = (),
    counts_layer: str | None = None,
    gene_symbol_key: str | None = None,
    normalize_counts: bool = True,
    target_sum: float | None = None,
    n_top_genes: int | None = None,
    cells: slice | Sequence[int] | None = None,
) -> ad.AnnData:
    """Read a CRISPR-screen h5ad, register its keys, normalise (+ optional HVG selection).

    ``cells`` selects a subset of rows (e.g. ``slice(0, 500)`` for quick tests) before normalising.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError("Perturb-seq file not found (set SCIDIT_DATA_DIR or pass the data folder)", path)
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # h5py/anndata raise many types for corrupt files
        raise SciDiTInputError(f"cannot read h5ad: {err}", path) from err
    if cells is not None:
        adata = adata[cells].copy()
    setup_anndata(adata, perturbation_key, control_label, covariate_keys, counts_layer, gene_symbol_key, source=path)
    if normalize_counts:
        normalize(adata, target_sum=target_sum, source=path)
        if n_top_genes is not None:
            adata = select_hvg(adata, n_top_genes)
    return adata


def load_papalexi(data_dir: str | Path, **kwargs) -> ad.AnnData:
    """Papalexi et al. 2021 THP-1 low-MOI screen (raw counts in X; replicate in obs['bio_rep'])."""
    kwargs.setdefault("covariate_keys", ("bio_rep",))
    return load_perturbseq(Path(data_dir) / PAPALEXI_FILE, perturbation_key="perturbation", **kwargs)


def load_norman_fixture(data_dir: str | Path, **kwargs) -> ad.AnnData:
    """The 50x50 Norman et al. 2019 fixture (GEARS labels in obs['condition'], counts layer, Ensembl var ids)."""
    return load_perturbseq(
        Path(data_dir) / NORMAN_FIXTURE_FILE, perturbation_key="condition", counts_layer="counts", gene_symbol_key="feature_name", **kwargs
    )
