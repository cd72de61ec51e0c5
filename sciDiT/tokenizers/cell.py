"""Cells <-> token sets: one token per gene (gene id + expression value), no gene order.

Vocabulary (owned by the tokenizer and saved with a model, since gene embeddings are learnt per id):

======================  ==============================================================
id                      meaning
======================  ==============================================================
0                       padding (as for atoms)
1 .. G                  the G measured genes, in the order given (an id, not a position)
G+1 .. G+E              extra perturbation-target genes that are not measured
======================  ==============================================================

Why extra target ids: a perturbation is conditioned on as a *set of gene tokens* that share the gene
embedding table with the expression tokens, so a knocked-out gene needs an id even when the assay
does not measure it (16 of Papalexi's 25 targets are not among its 299 genes). Such ids only ever
appear in perturbation sets, never as expression tokens, and ``decode`` rejects them. A model meets
an unseen target gene only if the tokenizer was built with it; genes outside the vocabulary raise
:class:`SciDiTInputError` instead of silently becoming zeros.

A cell's token set: ``types`` = gene ids, ``values`` = expression (the AnnData's ``X`` or a layer,
log-normalised by :mod:`sciDiT.data.perturbseq`), ``pos``/``frac``/``lattice`` zeros. ``sparse=True``
keeps only nonzero genes (decoding fills the rest with 0, exact for count-derived data);
``sparse=False`` keeps every measured gene.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sciDiT.batch import Domain, TokenSet
from sciDiT.data.perturbseq import PERTURBATION_KEY, parse_perturbation, target_genes
from sciDiT.errors import SciDiTInputError

_SHOW = 8  # how many offending gene names an error lists


def _listing(names: Sequence[str]) -> str:
    names = list(names)
    more = f" (+{len(names) - _SHOW} more)" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more


class CellTokenizer:
    """Encode cells (expression vectors, AnnData) as gene-token sets and decode them back."""

    domain = Domain.CELL

    def __init__(self, gene_names: Sequence[str], extra_targets: Sequence[str] = (), sparse: bool = True):
        genes = [str(g) for g in gene_names]
        if not genes:
            raise SciDiTInputError("CellTokenizer needs at least one gene")
        dups = pd.Index(genes)[pd.Index(genes).duplicated()].unique().tolist()
        if dups:
            raise SciDiTInputError(f"duplicate gene names in the vocabulary: {_listing(dups)}")
        extra = sorted({str(g) for g in extra_targets} - set(genes))
        self.genes: list[str] = genes
        self.extra_targets: list[str] = extra
        self.sparse = sparse
        self._id = {g: i + 1 for i, g in enumerate(genes + extra)}

    @classmethod
    def from_anndata(cls, adata: ad.AnnData, sparse: bool = True) -> "CellTokenizer":
        """Vocabulary = the AnnData's genes + every registered perturbation target that is not measured."""
        return cls(adata.var_names.tolist(), extra_targets=target_genes(adata), sparse=sparse)

    # -- vocabulary -----------------------------------------------------------------------------
    @property
    def num_genes(self) -> int:
        """Measured genes G (length of a decoded expression vector)."""
        return len(self.genes)

    @property
    def vocab_size(self) -> int:
        """Size of a gene-embedding table: padding + measured genes + extra target genes."""
        return 1 + len(self.genes) + len(self.extra_targets)

    def gene_ids(self, names: Sequence[str], source: object | None = None) -> np.ndarray:
        """Ids of gene names (measured or extra target); unknown names raise, listing them."""
        unknown = [str(n) for n in names if str(n) not in self._id]
        if unknown:
            raise SciDiTInputError(f"{len(unknown)} gene(s) not in the tokenizer vocabulary: {_listing(unknown)}", source)
        return np.array([self._id[str(n)] for n in names], dtype=np.int64)

    def state_dict(self) -> dict:
        """Plain-data vocabulary to store in a checkpoint (rebuild with ``CellTokenizer(**state)``)."""
        return {"gene_names": list(self.genes), "extra_targets": list(self.extra_targets), "sparse": self.sparse}

    # -- cells ----------------------------------------------------------------------------------
    def encode(self, expression: np.ndarray, meta: dict | None = None) -> TokenSet:
        """Token set of one cell from its expression vector [G] in vocabulary order."""
        x = np.asarray(expression, dtype=np.float32).reshape(-1)
        if x.shape[0] != self.num_genes:
            raise SciDiTInputError(f"expression vector has {x.shape[0]} genes, the vocabulary {self.num_genes}")
        if not np.isfinite(x).all():
            raise SciDiTInputError("expression contains NaN or infinity")
        idx = np.flatnonzero(x) if self.sparse else np.arange(self.num_genes)
        n = idx.shape[0]
        return TokenSet(
            types=torch.from_numpy(idx + 1),
            pos=torch.zeros(n, 3),
            frac=torch.zeros(n, 3),
            values=torch.from_numpy(x[idx]),
            lattice=torch.zeros(6),
            domain=self.domain,
            meta=dict(meta or {}),
        )

    def decode(self, tokens: TokenSet) -> np.ndarray:
        """Dense expression vector [G] in vocabulary order (genes without a token are 0)."""
        ids = tokens.types.detach().cpu().numpy().astype(np.int64)
        if ((ids < 1) | (ids > self.num_genes)).any():
            raise SciDiTInputError(f"cell token ids must be measured genes 1..{self.num_genes}, got {sorted(set(ids.tolist()) - set(range(1, self.num_genes + 1)))[:_SHOW]}")
        if np.unique(ids).shape[0] != ids.shape[0]:
            raise SciDiTInputError("a cell token set names the same gene twice")
        x = np.zeros(self.num_genes, dtype=np.float32)
        x[ids - 1] = tokens.values.detach().cpu().numpy()
        return x

    def _columns(self, adata: ad.AnnData, allow_missing: bool, source: object | None) -> np.ndarray:
        """Vocabulary position (0-based) of each AnnData column; unknown genes raise."""
        names = adata.var_names.astype(str).tolist()
        unknown = [g for g in names if g not in self._id or self._id[g] > self.num_genes]
        if unknown:
            raise SciDiTInputError(f"{len(unknown)} gene(s) of the AnnData are not in the model's gene vocabulary: {_listing(unknown)}", source)
        missing = sorted(set(self.genes) - set(names))
        if missing and not allow_missing:
            raise SciDiTInputError(f"{len(missing)} vocabulary gene(s) missing from the AnnData: {_listing(missing)} (allow_missing=True fills them with 0)", source)
        return np.array([self._id[g] - 1 for g in names], dtype=np.int64)

    def encode_anndata(self, adata: ad.AnnData, layer: str | None = None, allow_missing: bool = False) -> list[TokenSet]:
        """One token set per cell (columns matched by gene name, in any order); meta keeps obs name and perturbation."""
        cols = self._columns(adata, allow_missing, "AnnData")
        mat = adata.layers[layer] if layer is not None else adata.X
        mat = mat.toarray() if sp.issparse(mat) else np.asarray(mat)
        dense = np.zeros((adata.n_obs, self.num_genes), dtype=np.float32)
        dense[:, cols] = mat
        perts = adata.obs[PERTURBATION_KEY].astype(str).tolist() if PERTURBATION_KEY in adata.obs else [None] * adata.n_obs
        return [
            self.encode(dense[i], meta={"obs_name": str(name), **({PERTURBATION_KEY: p} if p is not None else {})})
            for i, (name, p) in enumerate(zip(adata.obs_names, perts))
        ]

    def decode_anndata(self, sets: Sequence[TokenSet], obs: pd.DataFrame | None = None) -> ad.AnnData:
        """AnnData (cells x vocabulary genes) from token sets; ``obs`` defaults to the sets' meta."""
        x = np.stack([self.decode(s) for s in sets]) if sets else np.zeros((0, self.num_genes), dtype=np.float32)
        if obs is None:
            obs = pd.DataFrame([{k: v for k, v in s.meta.items() if k != "obs_name"} for s in sets])
            obs.index = [str(s.meta.get("obs_name", i)) for i, s in enumerate(sets)]
        return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(self.genes)))

    # -- perturbations --------------------------------------------------------------------------
    def perturbation_ids(self, labels: Sequence[str]) -> list[list[int]]:
        """Sorted gene ids of each perturbation label ('A+B' -> two ids, controls -> [])."""
        out = []
        for lab in labels:
            genes = sorted(parse_perturbation(lab))
            out.append(self.gene_ids(genes, source=f"perturbation {lab!r}").tolist())
        return out

    @staticmethod
    def pad_perturbation_ids(ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """[B, P] long tensor of perturbation ids, 0-padded (P >= 1; a control is all padding)."""
        width = max([1] + [len(i) for i in ids])
        out = torch.zeros(len(ids), width, dtype=torch.long)
        for b, row in enumerate(ids):
            out[b, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
        return out
