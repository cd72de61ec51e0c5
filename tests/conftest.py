"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

TINY_VAE = {"hidden_size": 32, "encoder_depth": 1, "decoder_depth": 1, "num_heads": 2, "latent_dim": 4}
TINY_DIT = {"hidden_size": 32, "depth": 2, "num_heads": 2}
TINY_CELL_VAE = {"hidden_size": 16, "encoder_depth": 1, "decoder_depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "num_latent_tokens": 4, "latent_dim": 4}
TINY_CELL_DIT = {"hidden_size": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "class_dropout_prob": 0.1, "self_condition": False}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data folder: $SCIDIT_DATA_DIR, else ../shared/data beside the repository.

    Missing data fails the test with a message (never a silent skip).
    """
    path = Path(os.environ.get("SCIDIT_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
    if not path.is_dir():
        pytest.fail(f"real data folder {path} not found: set SCIDIT_DATA_DIR (see data/README.md)")
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh processed-data cache for the test session (never the user's cache)."""
    return tmp_path_factory.mktemp("scidit_cache")


@pytest.fixture(scope="session")
def tiny_dit_ckpt(data_dir, cache_dir, tmp_path_factory) -> str:
    """A DiT-stage checkpoint in Lightning's layout: untrained weights, statistics and histograms from real rows.

    The zero-initialised (adaLN-Zero) output layers get random weights so the velocity depends on
    the input, time and domain, and the EMA copy differs from the raw DiT.
    """
    from sciDiT.batch import Domain, collate
    from sciDiT.data.cdvae import load_cdvae
    from sciDiT.data.qm9 import load_qm9_split
    from sciDiT.models.composition import MAX_PRIOR_TOKENS, num_elements_counts
    from sciDiT.training.dit_module import DiTModule

    torch.manual_seed(0)
    qm9 = load_qm9_split("train", data_dir, cache_dir, limit=200)
    mp20 = load_cdvae("mp20", "val", data_dir, cache_dir, limit=30, workers=1)
    module = DiTModule(vae=TINY_VAE, dit=TINY_DIT)
    batches = [collate([qm9[i] for i in range(32)]), collate([mp20[i] for i in range(len(mp20))])]
    histograms = {Domain.MOLECULE: torch.bincount(torch.from_numpy(qm9.num_tokens)), Domain.CRYSTAL: torch.bincount(torch.from_numpy(mp20.num_tokens))}
    elements = {d.domain: num_elements_counts(torch.from_numpy(d.num_tokens), torch.from_numpy(d.num_distinct_types()), MAX_PRIOR_TOKENS)
                for d in (qm9, mp20)}
    module.model.prepare(batches, histograms, elements)
    with torch.no_grad():
        for p in module.model.dit.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
        module.ema.module.load_state_dict(module.model.dit.state_dict())
        module.model.dit.final_layer.linear.weight.add_(0.5)  # raw weights != EMA weights
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return str(path)


@pytest.fixture(scope="session")
def cells(data_dir) -> ad.AnnData:
    """40 control cells and 12 cells each of STAT1, IFNGR1, IFNGR2, JAK2, both replicates (real Papalexi rows)."""
    from sciDiT.data.perturbseq import PAPALEXI_FILE, load_papalexi

    obs = ad.read_h5ad(data_dir / PAPALEXI_FILE, backed="r").obs
    labels, reps = obs["perturbation"].astype(str).to_numpy(), obs["bio_rep"].astype(str).to_numpy()
    rows = []
    for label, n in (("control", 20), ("STAT1", 6), ("IFNGR1", 6), ("IFNGR2", 6), ("JAK2", 6)):
        for rep in ("rep_1", "rep_2"):
            rows += np.flatnonzero((labels == label) & (reps == rep))[:n].tolist()
    return load_papalexi(data_dir, cells=sorted(rows))


@pytest.fixture(scope="session")
def tiny_predictor(cells, tmp_path_factory):
    """A SciDiTPredictor trained for 2 + 2 steps on ``cells`` (enough to exercise predict, not to be good)."""
    from sciDiT.perturbation.model import SciDiTPredictor

    predictor = SciDiTPredictor(vae=TINY_CELL_VAE, dit=TINY_CELL_DIT, vae_steps=2, dit_steps=2, batch_size=32, steps=2, seed=0)
    return predictor.fit(cells, work_dir=tmp_path_factory.mktemp("cells"))


COND_NAMES = ["gap", "mu", "spacegroup", "band_gap", "elements", "composition"]


@pytest.fixture(scope="session")
def tiny_cond_ckpt(data_dir, cache_dir, tmp_path_factory) -> str:
    """A conditional DiT-stage checkpoint (untrained weights) with condition statistics from real QM9/MP-20 train rows."""
    from sciDiT.data.conditions import dit_condition_spec
    from sciDiT.training.datamodule import TokenSetDataModule
    from sciDiT.training.dit_module import DiTModule

    torch.manual_seed(1)
    dm = TokenSetDataModule([{"name": "qm9", "limit": 300}, {"name": "mp20", "limit": 60}], data_dir=str(data_dir), cache_dir=str(cache_dir),
                            batch_size=16, parse_workers=1, conditions=COND_NAMES)
    conditions = {"domain": {"kind": "class", "num_classes": 3}, **{k: {**dit_condition_spec(k), "dropout": 0.3} for k in COND_NAMES}}
    module = DiTModule(vae=TINY_VAE, dit={**TINY_DIT, "conditions": conditions})
    module.condition_stats = dm.condition_stats()
    module.model.prepare(list(dm.train_dataloader())[:2], dm.atom_count_histogram(), dm.element_count_histogram())
    with torch.no_grad():
        for p in module.model.dit.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
        module.ema.module.load_state_dict(module.model.dit.state_dict())
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    path = tmp_path_factory.mktemp("cond_ckpt") / "last.ckpt"
    torch.save(checkpoint, path)
    return str(path)
