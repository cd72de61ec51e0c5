"""Crash-safe training parts: resumable sampler, atomic checkpoints, appending metrics.csv, RNG state, and an
in-process interrupted run that resumes to exactly the weights of an uninterrupted one (real QM9 rows)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from sciDiT.data import load_qm9
from sciDiT.data.sampler import BucketBatchSampler, ResumableDataLoader
from sciDiT.training.checkpoint import AtomicCheckpointIO, LastAndBestCheckpoint, NonFiniteWeightsError, RNGState, atomic_torch_save, remove_stale_temp_files, rng_state, set_rng_state
from sciDiT.training.csv_logger import AppendingCSVLogger
from sciDiT.training.datamodule import TokenSetDataModule
from sciDiT.training.vae_module import VAEModule

TINY_VAE = {"hidden_size": 32, "encoder_depth": 1, "decoder_depth": 1, "num_heads": 2, "latent_dim": 4}


@pytest.fixture(scope="module")
def counts(data_dir, cache_dir) -> np.ndarray:
    """Token counts of 500 real QM9 molecules."""
    return load_qm9(data_dir, cache_dir, limit=500).num_tokens


# -- sampler state -----------------------------------------------------------------------------------
@pytest.mark.parametrize("world_size", [1, 2])
def test_sampler_resumes_with_the_remaining_batches_of_its_epoch(counts, world_size):
    def make(rank):
        return BucketBatchSampler(counts, batch_size=16, seed=5, bucket_batches=4, rank=rank, world_size=world_size)

    for rank in range(world_size):
        full = make(rank)
        full.set_epoch(3)
        epoch3 = list(full)
        resumed = make(rank)
        resumed.load_state_dict(full.state_dict(position=7))
        assert resumed.sampler.epoch == 3 and list(resumed) == epoch3[7:]
        assert len(resumed) == len(epoch3)  # the length stays the epoch's: Lightning counts the skipped batches as done
        resumed.set_epoch(4)  # the skip is one-shot: the next epoch is whole
        full.set_epoch(4)
        assert list(resumed) == list(full)


def test_sampler_skip_is_dropped_when_training_moves_to_another_epoch(counts):
    sampler = BucketBatchSampler(counts, batch_size=16, seed=5)
    sampler.load_state_dict({"epoch": 2, "position": 5})
    sampler.set_epoch(3)  # e.g. the checkpoint was taken at the end of epoch 2
    reference = BucketBatchSampler(counts, batch_size=16, seed=5)
    reference.set_epoch(3)
    assert list(sampler) == list(reference)
    with pytest.raises(ValueError, match="position"):
        sampler.load_state_dict({"epoch": 0, "position": -1})


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_state_counts_consumed_batches_not_prefetched_ones(counts, num_workers):
    sampler = BucketBatchSampler(counts, batch_size=16, seed=1)
    loader = ResumableDataLoader(list(range(len(counts))), batch_sampler=sampler, num_workers=num_workers, collate_fn=list)
    it = iter(loader)
    taken = [next(it) for _ in range(4)]  # workers have prefetched more than 4 batches from the sampler by now
    state = loader.state_dict()
    assert state == {"epoch": 0, "position": 4}
    rest = list(it)
    resumed = ResumableDataLoader(list(range(len(counts))), batch_sampler=BucketBatchSampler(counts, batch_size=16, seed=1), num_workers=num_workers, collate_fn=list)
    resumed.load_state_dict(state)
    assert list(resumed) == rest and taken + rest == list(sampler)
    assert resumed.state_dict()["position"] == len(sampler)


# -- atomic checkpoints --------------------------------------------------------------------------------
def test_atomic_save_keeps_the_old_file_when_interrupted_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)

    def killed(obj, fh):  # dies half-way through the write
        fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_stale_temp_files_of_a_killed_write_are_removed(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"kept")
    stale = tmp_path / ".last.ckpt.k3j2h1.tmp"
    stale.write_bytes(b"half a checkpoint")
    (tmp_path / "notes.tmp").write_text("not ours")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "notes.tmp"]


def test_checkpoint_io_refuses_non_finite_weights(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3), "steps": torch.tensor(4)}}, path)
    with pytest.raises(NonFiniteWeightsError, match="model.b"):
        io.save_checkpoint({"state_dict": {"w": torch.ones(3), "model.b": torch.tensor([1.0, float("nan")])}}, path)
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# -- metrics.csv -----------------------------------------------------------------------------------------
def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_metrics_csv_is_appended_across_runs_and_widened_for_new_columns(tmp_path):
    first = AppendingCSVLogger(tmp_path, name="vae", version="")
    for step, loss in enumerate([2.0, 1.5, 1.2]):  # a run that checkpointed at step 1, then was killed during step 2
        first.log_metrics({"train/loss": loss}, step=step)
        first.save()  # as Lightning does after every log call
    path = tmp_path / "vae" / "metrics.csv"
    assert [r["step"] for r in _rows(path)] == ["0", "1", "2"]
    with path.open("a") as fh:
        fh.write("1.1,")  # a kill in the middle of appending a row
    second = AppendingCSVLogger(tmp_path, name="vae", version="")  # the rerun (Lightning's CSVLogger deletes the file here)
    second.log_metrics({"train/loss": 1.0}, step=2)  # resumed from the checkpoint: step 2 again
    second.save()
    second.log_metrics({"train/loss": 0.5, "val/loss": 0.7}, step=3)
    second.save()
    second.log_metrics({"train/loss": 0.4}, step=4)
    second.finalize("success")
    rows = _rows(path)
    assert list(rows[0]) == ["step", "train/loss", "val/loss"]
    assert [(r["step"], r["train/loss"], r["val/loss"]) for r in rows] == [
        ("0", "2.0", ""), ("1", "1.5", ""), ("2", "1.0", ""), ("3", "0.5", "0.7"), ("4", "0.4", "")]
    third = AppendingCSVLogger(tmp_path, name="vae", version="")  # a rerun of the finished stage: only its test rows
    third.log_metrics({"test/loss": 0.3}, step=5)
    third.finalize("success")
    assert [r["step"] for r in _rows(path)] == ["0", "1", "2", "3", "4", "5"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.csv"]  # no temp file of the rewrites left


# -- RNG state -------------------------------------------------------------------------------------------
def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in NumPy's state
    atomic_torch_save({"rng": rng_state()}, tmp_path / "r.ckpt")
    expected = (torch.rand(3), np.random.normal(size=3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(torch.load(tmp_path / "r.ckpt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.normal(size=3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


# -- an interrupted run resumes to the uninterrupted run's weights -------------------------------------------
class _Killed(Exception):
    pass


class _Interrupt(L.Callback):
    """Stands in for a kill: raises at the start of step ``at`` (after the checkpoint of the previous step)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            raise _Killed


def _fit(out: Path, data_dir: Path, cache_dir: Path, max_steps: int, extra: list | None = None, ckpt_path: str | None = None) -> VAEModule:
    L.seed_everything(0)
    datamodule = TokenSetDataModule([{"name": "qm9", "limit": 300}], data_dir=data_dir, cache_dir=cache_dir, batch_size=32, seed=0, bucket_batches=2)
    module = VAEModule(vae=TINY_VAE, warmup_steps=2)
    checkpoint = LastAndBestCheckpoint(dirpath=out, monitor="val/loss", save_last=True, save_top_k=1)  # as sciDiT.train: after validations
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, precision="32-true", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, val_check_interval=3, check_val_every_n_epoch=None, limit_val_batches=1,
                        num_sanity_val_steps=0, use_distributed_sampler=False, plugins=[AtomicCheckpointIO()],
                        callbacks=[checkpoint, RNGState(), *(extra or [])])
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    assert len(trainer.train_dataloader) < max_steps  # the run crosses an epoch boundary
    return module


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_uninterrupted_weights(data_dir, cache_dir, tmp_path):
    steps = 10
    reference = _fit(tmp_path / "a", data_dir, cache_dir, steps)
    with pytest.raises(_Killed):
        _fit(tmp_path / "b", data_dir, cache_dir, steps, extra=[_Interrupt(at=7)])
    assert torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)["global_step"] == 6
    resumed = _fit(tmp_path / "b", data_dir, cache_dir, steps, ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


# -- the cell stages' loader ------------------------------------------------------------------------------
def test_cell_train_loader_resumes_with_the_remaining_batches_of_its_epoch(cells):
    from sciDiT.training.cell_datamodule import CellDataModule

    def loader():
        data = CellDataModule(split_data=cells, batch_size=16, seed=3)
        data.setup("fit")
        return data.train_dataloader()

    full = loader()
    full.load_state_dict({"epoch": 1, "position": 0})
    epoch1 = [b.cond["row"].tolist() for b in full]
    assert len(epoch1) == len(cells) * 95 // 100 // 16 and all(len(rows) == 16 for rows in epoch1)  # shuffled full batches, short one dropped
    it = iter(full)
    taken = [next(it).cond["row"].tolist() for _ in range(2)]
    state = full.state_dict()
    assert state == {"epoch": 1, "position": 2} and taken == epoch1[:2]
    resumed = loader()
    resumed.load_state_dict(state)
    assert [b.cond["row"].tolist() for b in resumed] == epoch1[2:]
    resumed.batch_sampler.set_epoch(2)
    assert [b.cond["row"].tolist() for b in resumed] != epoch1  # another epoch, another order


def _fit_cells(out: Path, cells, max_steps: int, extra: list | None = None, ckpt_path: str | None = None):
    from conftest import TINY_CELL_VAE
    from sciDiT.training.cell_datamodule import CellDataModule
    from sciDiT.training.cell_module import CellVAEModule

    L.seed_everything(0)
    datamodule = CellDataModule(split_data=cells, batch_size=16, seed=0)
    module = CellVAEModule(TINY_CELL_VAE, warmup_steps=2)
    checkpoint = LastAndBestCheckpoint(dirpath=out, monitor="val/loss", save_last=True, save_top_k=1)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, precision="32-true", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, val_check_interval=3, check_val_every_n_epoch=None, limit_val_batches=1,
                        num_sanity_val_steps=0, use_distributed_sampler=False, plugins=[AtomicCheckpointIO()],
                        callbacks=[checkpoint, RNGState(), *(extra or [])])
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    assert len(trainer.train_dataloader) < max_steps - 3  # the checkpoint of step 6 lies inside the second epoch
    return module


def test_interrupted_cell_stage_resumes_mid_epoch_to_the_uninterrupted_weights(cells, tmp_path):
    """Epochs of 5 batches: the step-6 checkpoint holds (epoch 1, position 1); restarting the epoch would train on other batches."""
    steps = 9
    reference = _fit_cells(tmp_path / "a", cells, steps)
    with pytest.raises(_Killed):
        _fit_cells(tmp_path / "b", cells, steps, extra=[_Interrupt(at=7)])
    saved = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 6
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "position": 1}]
    resumed = _fit_cells(tmp_path / "b", cells, steps, ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
