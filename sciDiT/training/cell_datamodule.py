"""Perturb-seq cells as gene-token-set batches for the cell VAE and the perturbation-conditioned DiT.

Each cell is a :class:`~sciDiT.batch.TokenSet` from :class:`~sciDiT.tokenizers.cell.CellTokenizer`;
:func:`collate_cells` pads them into one :class:`~sciDiT.batch.TokenBatch` whose ``cond`` holds the
perturbation token set (``perturbation [B, M]`` gene ids, ``perturbation_mask [B, M]``) and the
covariate class (``covariate [B]``). :class:`CellDataModule` builds the train / val / test sets
from a split of :mod:`sciDiT.perturbation.splits` (or from AnnData given directly, for the
prediction API); ``control_dataloader`` yields the training control cells, which the DiT stage
uses as the source of its flow. The train loader is resumable (:class:`~sciDiT.data.sampler.ResumableDataLoader`):
checkpoints hold its epoch and position, so a resumed cell stage continues its epoch where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from sciDiT.batch import TokenBatch, TokenSet, collate
from sciDiT.data.paths import resolve_data_dir
from sciDiT.data.sampler import BucketBatchSampler, ResumableDataLoader, rank_and_world_size
from sciDiT.data.perturbseq import CONTROL, PERTURBATION_KEY, load_papalexi, target_genes
from sciDiT.errors import SciDiTInputError
from sciDiT.perturbation.splits import PerturbationSplit, random_cells_split, replicate_split, unseen_target_split
from sciDiT.tokenizers.cell import CellTokenizer

SPLITS = ("random_cells", "replicate", "unseen")


def covariate_codes(adata: ad.AnnData, key: str | None, categories: Sequence[str]) -> np.ndarray:
    """Index of each cell's covariate value in ``categories`` (-1 = unknown value or no covariate)."""
    if key is None:
        return np.full(adata.n_obs, -1, dtype=np.int64)
    if key not in adata.obs:
        raise SciDiTInputError(f"obs has no covariate column {key!r}")
    index = {c: i for i, c in enumerate(categories)}
    return np.array([index.get(v, -1) for v in adata.obs[key].astype(str)], dtype=np.int64)


def tokenize_cells(adata: ad.AnnData, tokenizer: CellTokenizer, covariates: np.ndarray) -> list[TokenSet]:
    """Token sets of every cell; ``meta`` gains the perturbation's gene ids, the covariate code and the row index."""
    labels = adata.obs[PERTURBATION_KEY].astype(str).tolist() if PERTURBATION_KEY in adata.obs else [CONTROL] * adata.n_obs
    ids = dict(zip(dict.fromkeys(labels), tokenizer.perturbation_ids(list(dict.fromkeys(labels)))))
    sets = tokenizer.encode_anndata(adata)
    empty = [s.meta["obs_name"] for s in sets if s.num_tokens == 0]
    if empty:  # the encoder pools over expressed genes; a cell without any has nothing to attend to
        raise SciDiTInputError(f"{len(empty)} cell(s) express none of the model's genes, e.g. {empty[:3]}; filter them out first")
    for row, (s, label, cov) in enumerate(zip(sets, labels, covariates)):
        s.meta.update(perturbation=label, perturbation_ids=ids[label], covariate=int(cov), row=row)
    return sets


def collate_cells(sets: list[TokenSet]) -> TokenBatch:
    """Pad cells into a batch with the perturbation token set, covariate and row index in ``cond``.

    A cell with an unknown covariate value (code -1) gets class 0 there; callers that predict for
    unseen covariate values drop the covariate condition instead (see ``PerturbationFlow``).
    """
    pert = CellTokenizer.pad_perturbation_ids([s.meta["perturbation_ids"] for s in sets])  # [B, M]
    cov = torch.tensor([max(0, s.meta["covariate"]) for s in sets], dtype=torch.long)  # [B]
    row = torch.tensor([s.meta["row"] for s in sets], dtype=torch.long)  # [B]
    return collate(sets, cond={"perturbation": pert, "perturbation_mask": pert > 0, "covariate": cov, "row": row})


class CellDataModule(L.LightningDataModule):
    """Train / val / test gene-token sets of one split of a Perturb-seq screen.

    ``split``: ``random_cells`` (``test_frac`` of every perturbation's cells held out), ``replicate``
    (train ``train_rep``, test ``test_rep``) or ``unseen`` (``n_holdout`` target genes held out), all
    seeded by ``seed``. ``val_frac`` of the training cells are kept aside for validation losses.
    Pass ``split_data`` (a :class:`PerturbationSplit` or just training AnnData) to skip loading;
    with training AnnData alone, ``extra_targets`` names the target genes to predict beyond those
    perturbed in it (they get vocabulary ids, as the held-out targets of a split do).
    """

    def __init__(
        self,
        data_dir: str | None = None,
        dataset: str = "papalexi",
        split: str = "random_cells",
        seed: int = 0,
        test_frac: float = 0.5,
        n_holdout: int = 5,
        train_rep: str = "rep_1",
        test_rep: str = "rep_2",
        covariate_key: str | None = "bio_rep",
        batch_size: int = 256,
        val_frac: float = 0.05,
        num_workers: int = 0,
        split_data: PerturbationSplit | ad.AnnData | None = None,
        extra_targets: Sequence[str] = (),
    ):
        super().__init__()
        if split not in SPLITS:
            raise SciDiTInputError(f"split={split!r} is not one of {', '.join(SPLITS)}")
        if dataset != "papalexi" and split_data is None:
            raise SciDiTInputError(f"dataset={dataset!r}: only 'papalexi' is loaded by name; pass split_data for other screens")
        self.data_dir, self.split_name, self.seed = data_dir, split, seed
        self.test_frac, self.n_holdout, self.train_rep, self.test_rep = test_frac, n_holdout, train_rep, test_rep
        self.covariate_key, self.batch_size, self.val_frac, self.num_workers = covariate_key, batch_size, val_frac, num_workers
        self.split_data, self.extra_targets = split_data, list(extra_targets)
        self.tokenizer: CellTokenizer | None = None

    # -- building the sets ------------------------------------------------------------------------
    def _split(self) -> tuple[PerturbationSplit, list[str]]:
        """The split and every target gene of the screen (held-out targets need vocabulary ids too)."""
        if isinstance(self.split_data, PerturbationSplit):
            split = self.split_data
            return split, sorted(set(target_genes(split.train)) | set(target_genes(split.test)))
        if isinstance(self.split_data, ad.AnnData):
            empty = self.split_data[:0].copy()
            return PerturbationSplit("given", self.split_data, empty, empty, seen=True), sorted(set(target_genes(self.split_data)) | set(self.extra_targets))
        adata = load_papalexi(Path(resolve_data_dir(self.data_dir)))
        if self.split_name == "random_cells":
            split = random_cells_split(adata, self.test_frac, seed=self.seed)
        elif self.split_name == "replicate":
            split = replicate_split(adata, self.train_rep, self.test_rep)
        else:
            split = unseen_target_split(adata, self.n_holdout, seed=self.seed)
        return split, target_genes(adata)

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        split, targets = self._split()
        self.tokenizer = CellTokenizer(split.train.var_names.tolist(), extra_targets=targets)
        key = self.covariate_key if self.covariate_key is not None and self.covariate_key in split.train.obs else None
        self.covariates = sorted(split.train.obs[key].astype(str).unique()) if key is not None else []
        self.covariate_key = key
        self.split = split
        train = tokenize_cells(split.train, self.tokenizer, covariate_codes(split.train, key, self.covariates))
        order = np.random.default_rng(self.seed).permutation(len(train))
        n_val = int(round(self.val_frac * len(train)))
        self.val_sets = [train[i] for i in order[:n_val]]
        self.train_sets = [train[i] for i in order[n_val:]]
        self.control_sets = [s for s in train if s.meta["perturbation"] == CONTROL]
        self.test_sets = tokenize_cells(split.test, self.tokenizer, covariate_codes(split.test, key, self.covariates)) if split.test.n_obs else self.val_sets
        if not self.control_sets:
            raise SciDiTInputError("the training cells contain no control cells (the flow's source)")

    # -- loaders ------------------------------------------------------------------------------------
    def _loader(self, sets: list[TokenSet]) -> DataLoader:
        """Every cell of ``sets`` once, in order (evaluation, caching)."""
        return DataLoader(sets, batch_size=self.batch_size, shuffle=False, collate_fn=collate_cells, num_workers=self.num_workers)

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled batches of ``batch_size`` training cells (seeded by ``seed`` and the epoch; a final short batch dropped),
        from a :class:`ResumableDataLoader`, so a resumed stage sees the rest of its epoch. One batch per bucket:
        cells are not grouped by size (each batch is sorted by expressed genes, nothing else changes); sharded over DDP ranks."""
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else rank_and_world_size(None, None)
        sampler = BucketBatchSampler([s.num_tokens for s in self.train_sets], batch_size=self.batch_size, shuffle=True, seed=self.seed, bucket_batches=1,
                                     drop_last=len(self.train_sets) > self.batch_size, rank=rank, world_size=world_size)
        return ResumableDataLoader(self.train_sets, batch_sampler=sampler, collate_fn=collate_cells, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_sets)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_sets)

    def train_cells_dataloader(self) -> DataLoader:
        """Every training cell (val cells included) once, in row order (for caching frozen-encoder latents)."""
        return self._loader(sorted(self.train_sets + self.val_sets, key=lambda s: s.meta["row"]))

    def control_dataloader(self) -> DataLoader:
        """Every training control cell once (the DiT stage encodes them as its flow's source)."""
        return self._loader(self.control_sets)

    def model_info(self) -> dict:
        """What a model checkpoint must carry to rebuild the tokenizer and covariate coding."""
        return {"tokenizer": self.tokenizer.state_dict(), "covariate_key": self.covariate_key, "covariates": list(self.covariates)}
