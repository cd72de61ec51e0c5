"""Lightning data module over one or more real datasets, batched as :class:`~sciDiT.batch.TokenBatch`.

Each domain's split is loaded (and cached) by :mod:`sciDiT.data`, the domains are concatenated and
batched by :class:`~sciDiT.data.sampler.BucketBatchSampler` with the trainer's rank and world size,
so the Trainer must run with ``use_distributed_sampler=False``. Constructor arguments are the keys of
the Hydra config group ``sciDiT/configs/data``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from sciDiT.batch import Domain, collate
from sciDiT.data.cache import TokenSetDataset
from sciDiT.data.cdvae import CDVAE_FOLDERS, load_cdvae, split_file
from sciDiT.data.conditions import CONDITION_KEYS, DERIVED, ConditionCollate, ConditionedDataset, condition_stats, condition_values
from sciDiT.data.paths import resolve_cache_dir
from sciDiT.data.qm9 import QM9_SIZE, edm_property_halves, find_qm9, load_qm9_split, qm9_split
from sciDiT.data.sampler import BucketBatchSampler, ResumableDataLoader, rank_and_world_size
from sciDiT.errors import SciDiTInputError
from sciDiT.models.composition import MAX_PRIOR_TOKENS, num_elements_counts

DATASET_NAMES = ("qm9", *CDVAE_FOLDERS)
SPEC_KEYS = {"name", "max_train", "max_val", "max_test", "limit", "edm_half", "asymmetric_unit"}
SPLITS_OF_STAGE = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


def dataset_specs(datasets: Sequence[Any] | Mapping[str, Any]) -> list[dict[str, Any]]:
    """Normalise the ``datasets`` argument to a list of ``{name, max_train, max_val, max_test, limit}``.

    Accepts a list of names or of dicts with a ``name`` key, or a dict ``{name: {max_train: ...}}``.
    ``max_<split>``: a seeded random subset of that split; ``limit``: read only the first source rows;
    ``edm_half`` (QM9 only): ``A`` or ``B``, train on that half of the train split only
    (:func:`sciDiT.data.qm9.edm_property_halves`: EDM's protocol trains the generator on B and the
    property predictor that scores it on A). ``asymmetric_unit`` (crystals): each crystal as its
    space group's asymmetric unit (:mod:`sciDiT.tokenizers.symmetry`; needs the ``spacegroup`` condition).
    """
    if isinstance(datasets, Mapping):
        items = [{"name": name, **dict(opts or {})} for name, opts in datasets.items()]
    else:
        items = [{"name": d} if isinstance(d, str) else dict(d) for d in datasets]
    if not items:
        raise SciDiTInputError("data.datasets is empty: name at least one of " + ", ".join(DATASET_NAMES))
    for spec in items:
        unknown = set(spec) - SPEC_KEYS
        if unknown:
            raise SciDiTInputError(f"unknown keys {sorted(unknown)} in data.datasets entry {spec} (allowed: {sorted(SPEC_KEYS)})")
        if spec.get("name") not in DATASET_NAMES:
            raise SciDiTInputError(f"unknown dataset {spec.get('name')!r} in data.datasets (expected one of {', '.join(DATASET_NAMES)})")
        if spec.get("edm_half") is not None and (spec["name"] != "qm9" or spec["edm_half"] not in ("A", "B")):
            raise SciDiTInputError(f"data.datasets entry {spec}: edm_half must be A or B, and only for qm9")
        if spec.get("asymmetric_unit") and spec["name"] == "qm9":
            raise SciDiTInputError(f"data.datasets entry {spec}: asymmetric_unit applies to crystal datasets only")
    return items


class TokenSetDataModule(L.LightningDataModule):
    """Train/val/test loaders over the named datasets, concatenated across domains.

    Args:
        datasets: which datasets and subset sizes (see :func:`dataset_specs`).
        data_dir, cache_dir: data folder (read-only) and cache folder; None = env var / default.
        batch_size: sets per batch; ``max_tokens`` instead caps padded token slots per batch.
        num_workers: DataLoader worker processes; ``parse_workers``: processes parsing CIFs on first load.
        seed: seeds the subsets and the per-epoch shuffling.
        bucket_batches: batches per size-sorted bucket of the sampler.
        conditions: condition keys each batch carries in ``cond`` (:mod:`sciDiT.data.conditions`:
            ``gap``, ``spacegroup``, ``elements``, ...), standardised by training-split statistics
            (:meth:`condition_stats`); a set without a value gets ``{key}_null`` = True.
    """

    def __init__(
        self,
        datasets: Sequence[Any] | Mapping[str, Any],
        data_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        batch_size: int = 256,
        max_tokens: int | None = None,
        num_workers: int = 0,
        seed: int = 42,
        bucket_batches: int = 32,
        parse_workers: int = 2,
        conditions: Sequence[str] = (),
    ):
        super().__init__()
        self.specs = dataset_specs(datasets)
        self.data_dir, self.cache_dir = data_dir, cache_dir
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.num_workers, self.seed = num_workers, seed
        self.bucket_batches, self.parse_workers = bucket_batches, parse_workers
        unknown = [c for c in conditions if c not in CONDITION_KEYS]
        if unknown:
            raise SciDiTInputError(f"data.conditions: unknown condition(s) {unknown}; known: {', '.join(CONDITION_KEYS)}")
        self.conditions = list(conditions)
        if self.asymmetric_units and self.conditions and "spacegroup" not in self.conditions:
            raise SciDiTInputError("data.datasets: asymmetric_unit crystals need the spacegroup condition (data.conditions) to be expanded at sampling")
        self._stats: dict[str, dict[str, Any]] | None = None
        self.splits: dict[str, list[TokenSetDataset]] = {}
        self.values: dict[str, list[dict[str, np.ndarray]]] = {}  # per split, per dataset: raw condition values per item

    @property
    def asymmetric_units(self) -> bool:
        """Some crystal dataset is read as asymmetric units (a DiT on them must be conditioned on the space group)."""
        return any(spec.get("asymmetric_unit") for spec in self.specs)

    # -- loading ----------------------------------------------------------------------------------
    def load_split(self, spec: dict[str, Any], split: str) -> TokenSetDataset:
        """One dataset's split, cut to ``max_<split>`` sets by a seeded random subset."""
        name, limit = spec["name"], spec.get("limit")
        if name == "qm9":
            data = load_qm9_split(split, self.data_dir, self.cache_dir, limit=limit)
            if split == "train" and spec.get("edm_half") is not None:
                n_store = len(data.store["offsets"]) - 1
                n_total = QM9_SIZE if limit is not None else n_store  # as load_qm9_split splits
                rows = qm9_split(n_total)["train"]
                rows = rows[rows < n_store]  # the train rows load_qm9_split kept, in its order
                data = data.subset(np.flatnonzero(np.isin(rows, edm_property_halves(n_total)[spec["edm_half"]])))
        else:
            data = load_cdvae(name, split, self.data_dir, self.cache_dir, limit=limit, workers=self.parse_workers,
                              asymmetric_unit=bool(spec.get("asymmetric_unit")))
        k = spec.get(f"max_{split}")
        if k is not None and k < len(data):
            keep = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.seed)).numpy()[:k]
            data = data.subset(np.sort(keep))
        return data

    def setup(self, stage: str | None = None) -> None:
        splits = ("train", "val", "test") if stage is None else SPLITS_OF_STAGE[stage]
        for split in splits:  # missing files fail here, before any dataset is parsed (QM9's graphs take minutes)
            for spec in self.specs:
                if spec["name"] == "qm9":
                    find_qm9(self.data_dir)
                else:
                    split_file(spec["name"], split, self.data_dir)
        for split in splits:
            if split not in self.splits:
                self.splits[split] = [self.load_split(spec, split) for spec in self.specs]
                self.values[split] = [self.load_values(spec, split, data) for spec, data in zip(self.specs, self.splits[split])]

    def load_values(self, spec: dict[str, Any], split: str, data: TokenSetDataset) -> dict[str, np.ndarray]:
        """Raw values of ``self.conditions`` for every item of one dataset's split (NaN where unknown)."""
        if not self.conditions:
            return {}
        if spec["name"] == "qm9":
            layout, source = find_qm9(self.data_dir)
        else:
            layout, source = "cdvae", split_file(spec["name"], split, self.data_dir)
        return condition_values(data, self.conditions, source, layout, resolve_cache_dir(self.cache_dir), spec.get("limit"))

    def condition_stats(self) -> dict[str, dict[str, Any]]:
        """Statistics of each condition over the training split only (plain data, stored in the DiT checkpoint)."""
        if self._stats is None:
            self.setup("fit")
            self._stats = condition_stats(self.conditions, list(zip(self.splits["train"], self.values["train"])))
        return self._stats

    def atom_count_histogram(self) -> dict[Domain, torch.Tensor]:
        """Per domain, how many training sets have n tokens (index n), for sampling set sizes at generation."""
        self.setup("fit")
        counts: dict[Domain, list[np.ndarray]] = {}
        for data in self.splits["train"]:
            counts.setdefault(data.domain, []).append(data.num_tokens)
        return {dom: torch.bincount(torch.from_numpy(np.concatenate(parts))) for dom, parts in counts.items()}

    def element_count_histogram(self) -> dict[Domain, torch.Tensor]:
        """Per domain, joint counts of (atoms, distinct elements) over the training sets: the prior of coherent decoding."""
        self.setup("fit")
        counts: dict[Domain, torch.Tensor] = {}
        for data in self.splits["train"]:
            part = num_elements_counts(torch.from_numpy(data.num_tokens), torch.from_numpy(data.num_distinct_types()), MAX_PRIOR_TOKENS)
            counts[data.domain] = counts[data.domain] + part if data.domain in counts else part
        return counts

    # -- loaders ----------------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return rank_and_world_size(None, None)

    def loader(self, split: str) -> DataLoader:
        """A DataLoader of TokenBatch over the split of every dataset (shuffled for train only).

        The train loader is a :class:`ResumableDataLoader`: checkpoints hold its epoch and position.
        """
        self.setup(next(stage for stage, s in SPLITS_OF_STAGE.items() if split in s))
        parts = self.splits[split]
        collate_fn = collate
        datasets: list[Any] = parts
        if self.conditions:
            collate_fn = ConditionCollate(self.condition_stats())
            datasets = [ConditionedDataset(p, v, [k for k in DERIVED if k in self.conditions]) for p, v in zip(parts, self.values[split])]
        rank, world_size = self._rank_world()
        sampler = BucketBatchSampler(
            np.concatenate([p.num_tokens for p in parts]),
            batch_size=self.batch_size,
            max_tokens=self.max_tokens,
            shuffle=split == "train",
            seed=self.seed,
            bucket_batches=self.bucket_batches,
            rank=rank,
            world_size=world_size,
        )
        loader_class = ResumableDataLoader if split == "train" else DataLoader
        return loader_class(
            ConcatDataset(datasets),
            batch_sampler=sampler,
            collate_fn=collate_fn,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train")

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
