"""CellTokenizer: round trip, permutation invariance over genes, vocabulary errors, perturbation ids."""

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from sciDiT.batch import Domain, collate
from sciDiT.data.perturbseq import load_papalexi
from sciDiT.errors import SciDiTInputError
from sciDiT.tokenizers.cell import CellTokenizer

DATA_DIR = Path(__file__).parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA_DIR / "perturbseq").is_dir(), reason="shared Perturb-seq data not present")


@pytest.fixture(scope="module")
def papalexi():
    return load_papalexi(DATA_DIR, cells=slice(0, 200))


def test_vector_round_trip_sparse_and_dense():
    x = np.array([0.0, 1.5, 0.0, 2.25], dtype=np.float32)
    for sparse, n_tokens in [(True, 2), (False, 4)]:
        tok = CellTokenizer(["A", "B", "C", "D"], sparse=sparse)
        ts = tok.encode(x)
        assert ts.domain == Domain.CELL and ts.num_tokens == n_tokens
        assert (ts.types >= 1).all() and not ts.pos.any() and not ts.frac.any() and not ts.lattice.any()
        np.testing.assert_array_equal(tok.decode(ts), x)


def test_decode_is_invariant_to_token_order():
    tok = CellTokenizer([f"g{i}" for i in range(6)], sparse=False)
    x = np.arange(6, dtype=np.float32) * 0.5
    ts = tok.encode(x)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(tok.decode(ts.permute(perm)), x)


@needs_data
def test_anndata_round_trip_and_gene_permutation(papalexi):
    tok = CellTokenizer.from_anndata(papalexi)
    sets = tok.encode_anndata(papalexi)
    back = tok.decode_anndata(sets)
    np.testing.assert_allclose(back.X, papalexi.X.toarray(), rtol=0, atol=0)
    assert back.obs["perturbation"].tolist() == papalexi.obs["perturbation"].astype(str).tolist()
    # the same cells with their genes (columns) shuffled give the same token sets, as sets
    perm = np.random.default_rng(0).permutation(papalexi.n_vars)
    shuffled = tok.encode_anndata(papalexi[:, perm])
    for a, b in zip(sets[:20], shuffled[:20]):
        oa, ob = torch.argsort(a.types), torch.argsort(b.types)
        assert torch.equal(a.types[oa], b.types[ob]) and torch.equal(a.values[oa], b.values[ob])
    batch = collate(sets[:8])
    assert batch.types.max() <= tok.num_genes and batch.domain.eq(int(Domain.CELL)).all()


@needs_data
def test_vocabulary_covers_unmeasured_targets(papalexi):
    tok = CellTokenizer.from_anndata(papalexi)
    assert "STAT1" in tok.genes and "IRF1" not in tok.genes and "IRF1" in tok.extra_targets
    ids = tok.perturbation_ids(["STAT1", "control", "IRF1+STAT1"])
    assert ids[1] == [] and len(ids[2]) == 2 and ids[0][0] in ids[2]
    assert max(ids[2]) > tok.num_genes and tok.vocab_size == 1 + tok.num_genes + len(tok.extra_targets)
    padded = CellTokenizer.pad_perturbation_ids(ids)
    assert padded.shape == (3, 2) and padded[1].eq(0).all()


def test_unknown_genes_raise_listing_them():
    tok = CellTokenizer(["A", "B"], extra_targets=["KO1"])
    with pytest.raises(SciDiTInputError, match="ZZZ"):
        tok.perturbation_ids(["A+ZZZ"])
    with pytest.raises(SciDiTInputError, match="NEW1"):
        tok.encode_anndata(ad.AnnData(X=np.ones((1, 3), dtype=np.float32), var=pd.DataFrame(index=["A", "B", "NEW1"])))
    with pytest.raises(SciDiTInputError, match="KO1"):  # a perturbation-only gene cannot be an expression column
        tok.encode_anndata(ad.AnnData(X=np.ones((1, 3), dtype=np.float32), var=pd.DataFrame(index=["A", "B", "KO1"])))
    with pytest.raises(SciDiTInputError, match="missing"):
        tok.encode_anndata(ad.AnnData(X=np.ones((1, 1), dtype=np.float32), var=pd.DataFrame(index=["A"])))
    bad = tok.encode(np.array([1.0, 2.0], dtype=np.float32))
    bad.types[0] = 3  # KO1 is a perturbation-only id, never an expression token
    with pytest.raises(SciDiTInputError, match="measured genes"):
        tok.decode(bad)


def test_state_dict_rebuilds_same_vocabulary():
    tok = CellTokenizer(["A", "B"], extra_targets=["KO1", "A"])
    again = CellTokenizer(**tok.state_dict())
    assert again.perturbation_ids(["KO1+B"]) == tok.perturbation_ids(["KO1+B"]) == [[2, 3]]
