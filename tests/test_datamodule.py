"""Bucketed batch sampler and TokenSetDataModule on real QM9 + MP-20 rows."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from omegaconf import OmegaConf

import sciDiT
from sciDiT.batch import Domain, TokenBatch
from sciDiT.data import BucketBatchSampler, load_cdvae, load_qm9
from sciDiT.errors import SciDiTInputError
from sciDiT.training.datamodule import TokenSetDataModule


@pytest.fixture(scope="module")
def real_counts(data_dir, cache_dir) -> np.ndarray:
    """Token counts of 3,000 real QM9 molecules and 300 real MP-20 crystals."""
    qm9 = load_qm9(data_dir, cache_dir, limit=3000)
    mp20 = load_cdvae("mp20", "val", data_dir, cache_dir, limit=300, workers=1)
    return np.concatenate([qm9.num_tokens, mp20.num_tokens])


def _padding(batches: list[list[int]], counts: np.ndarray) -> float:
    slots = sum(len(b) * counts[b].max() for b in batches)
    return 1.0 - sum(counts[b].sum() for b in batches) / slots


@pytest.mark.parametrize("kw", [{"batch_size": 64}, {"batch_size": None, "max_tokens": 1024}])
def test_every_index_once_per_epoch_and_epochs_differ(real_counts, kw):
    sampler = BucketBatchSampler(real_counts, seed=3, bucket_batches=8, **kw)
    epoch0 = list(sampler)
    assert len(epoch0) == len(sampler)
    assert sorted(i for b in epoch0 for i in b) == list(range(len(real_counts)))
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(i for b in epoch1 for i in b) == list(range(len(real_counts)))
    assert epoch1 != epoch0
    sampler.set_epoch(0)
    assert list(sampler) == epoch0  # an epoch replays exactly (resumable)
    if "max_tokens" in kw and kw["max_tokens"]:
        assert all(len(b) * real_counts[b].max() <= kw["max_tokens"] for b in epoch0)


def test_bucketing_cuts_padding_below_random_batching(real_counts):
    order = torch.randperm(len(real_counts), generator=torch.Generator().manual_seed(0)).numpy()
    random_batches = [order[i : i + 64] for i in range(0, len(order), 64)]
    bucketed = [np.array(b) for b in BucketBatchSampler(real_counts, batch_size=64, seed=0, bucket_batches=16)]
    assert _padding(bucketed, real_counts) < 0.5 * _padding(random_batches, real_counts)


def test_ranks_get_equal_batch_counts_and_cover_the_data(real_counts):
    ranks = [BucketBatchSampler(real_counts, batch_size=None, max_tokens=700, seed=1, rank=r, world_size=3) for r in range(3)]
    batches = [list(s) for s in ranks]
    assert len({len(b) for b in batches}) == 1 and len(batches[0]) == len(ranks[0])
    covered = {i for rank in batches for b in rank for i in b}
    assert covered == set(range(len(real_counts)))


def test_bad_sampler_arguments(real_counts):
    with pytest.raises(ValueError, match="max_tokens"):
        BucketBatchSampler(real_counts, max_tokens=int(real_counts.max()) - 1)
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler(real_counts, rank=2, world_size=2)


# -- data module ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def datamodule(data_dir, cache_dir) -> TokenSetDataModule:
    dm = TokenSetDataModule(
        datasets=[{"name": "qm9", "limit": 800, "max_train": 300}, {"name": "mp20", "limit": 60}],
        data_dir=data_dir,
        cache_dir=cache_dir,
        batch_size=32,
        seed=0,
        parse_workers=1,
    )
    dm.setup("fit")
    return dm


def test_datamodule_yields_token_batches_of_both_domains(datamodule):
    train = datamodule.train_dataloader()
    seen_domains, seen = set(), 0
    for batch in train:
        assert isinstance(batch, TokenBatch)
        assert batch.mask.any(dim=1).all()
        seen_domains |= set(batch.domain.tolist())
        seen += batch.batch_size
    assert seen == 300 + 60
    assert seen_domains == {int(Domain.MOLECULE), int(Domain.CRYSTAL)}
    crystal = batch.domain == int(Domain.CRYSTAL)
    assert (batch.lattice[crystal, :3] > 0).all() and (batch.lattice[~crystal] == 0).all()


def test_train_loader_epoch_reaches_the_sampler_through_lightning(datamodule):
    loader = datamodule.train_dataloader()
    _set_sampler_epoch(loader, 5)
    assert loader.batch_sampler.sampler.epoch == 5


def test_val_loader_is_deterministic(datamodule):
    first = [b.meta for b in datamodule.val_dataloader()]
    second = [b.meta for b in datamodule.val_dataloader()]
    assert first == second


def test_atom_count_histogram_per_domain(datamodule):
    hist = datamodule.atom_count_histogram()
    assert set(hist) == {Domain.MOLECULE, Domain.CRYSTAL}
    assert int(hist[Domain.MOLECULE].sum()) == 300 and int(hist[Domain.CRYSTAL].sum()) == 60
    counts = datamodule.splits["train"][1].num_tokens
    assert torch.equal(hist[Domain.CRYSTAL], torch.bincount(torch.from_numpy(counts)))


def test_element_count_histogram_counts_atoms_and_distinct_elements(datamodule):
    hist = datamodule.element_count_histogram()
    assert set(hist) == {Domain.MOLECULE, Domain.CRYSTAL}
    crystals = datamodule.splits["train"][1]
    expected = torch.zeros_like(hist[Domain.CRYSTAL])
    for i in range(len(crystals)):
        types = crystals[i].types
        expected[len(types), len(set(types.tolist()))] += 1
    assert torch.equal(hist[Domain.CRYSTAL], expected) and int(hist[Domain.MOLECULE].sum()) == 300


def test_bad_dataset_specs():
    with pytest.raises(SciDiTInputError, match="unknown dataset 'qm7'"):
        TokenSetDataModule(datasets=["qm7"])
    with pytest.raises(SciDiTInputError, match="unknown keys"):
        TokenSetDataModule(datasets={"qm9": {"max_trian": 5}})
    with pytest.raises(SciDiTInputError, match="empty"):
        TokenSetDataModule(datasets=[])


@pytest.mark.parametrize("name", ["qm9_mp20", "qm9_mp20_small", "qm9", "mp20"])
def test_data_configs_name_constructor_arguments(name):
    cfg = OmegaConf.to_container(OmegaConf.load(Path(sciDiT.__file__).parent / "configs" / "data" / f"{name}.yaml"))
    assert cfg["_target_"] == "sciDiT.training.datamodule.TokenSetDataModule"
    params = set(inspect.signature(TokenSetDataModule.__init__).parameters) - {"self"}
    keys = set(cfg) - {"_target_"}
    assert keys <= params and {"datasets", "data_dir", "cache_dir"} <= keys
    dm = TokenSetDataModule(**{k: v for k, v in cfg.items() if k not in ("_target_", "data_dir", "cache_dir")})
    assert {s["name"] for s in dm.specs} <= {"qm9", "mp20"}
