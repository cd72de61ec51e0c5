"""Lightning glue for the cell models: the cell VAE stage and the perturbation-flow DiT stage.

The maths lives in :mod:`sciDiT.models.cell_vae` and :mod:`sciDiT.perturbation.model`. The gene
vocabulary and covariate coding come from the datamodule at ``setup`` (``model_info()``) and are
stored in the hyper-parameters, so a checkpoint rebuilds its model without any data.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from sciDiT.batch import TokenBatch
from sciDiT.checkpoint import load_vae_checkpoint, load_vae_state
from sciDiT.errors import SciDiTInputError
from sciDiT.models.cell_vae import CellVAE
from sciDiT.perturbation.model import PerturbationFlow
from sciDiT.tokenizers.cell import CellTokenizer
from sciDiT.training.ema import EMA
from sciDiT.training.optim import adamw_for, build_optimizer

DEFAULT_VAE: dict[str, Any] = {"hidden_size": 64, "encoder_depth": 0, "decoder_depth": 0, "num_heads": 4, "mlp_ratio": 2.0, "num_latent_tokens": 8, "latent_dim": 8}
DEFAULT_DIT: dict[str, Any] = {"hidden_size": 128, "depth": 4, "num_heads": 4, "mlp_ratio": 4.0, "class_dropout_prob": 0.1, "self_condition": False}


def _vae_args(vae: dict[str, Any], model_info: dict[str, Any]) -> dict[str, Any]:
    tok = CellTokenizer(**model_info["tokenizer"])
    return {**vae, "vocab_size": tok.vocab_size, "num_genes": tok.num_genes}


def _model_info(module: L.LightningModule) -> dict[str, Any]:
    datamodule = getattr(module.trainer, "datamodule", None)
    if datamodule is None or not hasattr(datamodule, "model_info"):
        raise SciDiTInputError("a cell model needs a CellDataModule (it supplies the gene vocabulary)")
    datamodule.setup("fit")
    return datamodule.model_info()


class CellVAEModule(L.LightningModule):
    """Trains :class:`CellVAE`; ``vae`` = its size arguments (the ``model/cell_vae`` config)."""

    checkpoint_stage = "cell_vae"  # what sciDiT.checkpoint.checkpoint_stage reads from its checkpoints

    def __init__(self, vae: dict[str, Any], model_info: dict[str, Any] | None = None, kl_weight: float = 1e-3, lr: float = 1e-3, weight_decay: float = 0.0, warmup_steps: int = 100):
        super().__init__()
        self.save_hyperparameters()
        self.model: CellVAE | None = CellVAE(**_vae_args(vae, model_info)) if model_info else None

    def setup(self, stage: str) -> None:
        if self.model is None:
            self.hparams.model_info = _model_info(self)
            self.model = CellVAE(**_vae_args(self.hparams.vae, self.hparams.model_info))

    def _losses(self, batch: TokenBatch) -> dict[str, torch.Tensor]:
        terms = self.model.loss(self.model(batch, sample=self.training), self.model.dense_expression(batch))
        terms["loss"] = terms["detect"] + terms["value"] + self.hparams.kl_weight * terms["kl"]
        return terms

    def training_step(self, batch: TokenBatch, batch_idx: int) -> torch.Tensor:
        terms = self._losses(batch)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, prog_bar=False, batch_size=batch.batch_size)
        return terms["loss"]

    def _evaluate(self, batch: TokenBatch, prefix: str) -> None:
        terms = self._losses(batch)
        target = self.model.dense_expression(batch)  # [B, G]
        recon = self.model.expected_expression(self.model.encode(batch)[0])  # [B, G]
        terms["recon_mse"] = ((recon - target) ** 2).mean()
        self.log_dict({f"{prefix}/{k}": v for k, v in terms.items()}, batch_size=batch.batch_size, sync_dist=True)

    def validation_step(self, batch: TokenBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: TokenBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self):
        return build_optimizer(self.model.parameters(), self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps, self.trainer.max_steps,
                               implementation=adamw_for(self.trainer))


class CellDiTModule(L.LightningModule):
    """Trains the DiT of a :class:`PerturbationFlow` on a frozen cell VAE (``vae_ckpt``), with an EMA of its weights."""

    checkpoint_stage = "cell_dit"  # what sciDiT.checkpoint.checkpoint_stage reads from its checkpoints

    def __init__(
        self,
        vae: dict[str, Any],
        dit: dict[str, Any],
        vae_ckpt: str | None = None,
        model_info: dict[str, Any] | None = None,
        source_noise: float = 0.1,
        profile_dim: int = 10,
        identity_dropout: float = 0.5,
        time_schedule: str = "uniform",
        ema_decay: float = 0.99,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 50,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model: PerturbationFlow | None = None
        if model_info:
            self._build(model_info)

    def _build(self, model_info: dict[str, Any]) -> None:
        self.tokenizer = CellTokenizer(**model_info["tokenizer"])
        vae_args = _vae_args(self.hparams.vae, model_info)
        hp = self.hparams
        self.model = PerturbationFlow(vae_args, hp.dit, len(model_info["covariates"]), hp.source_noise, hp.profile_dim, hp.identity_dropout)
        self.ema = EMA(self.model.dit, decay=self.hparams.ema_decay)

    # -- set-up: VAE weights and vocabulary, latent statistics, control pool -------------------------
    def setup(self, stage: str) -> None:
        if self.model is not None:
            return
        if not self.hparams.vae_ckpt:
            raise SciDiTInputError("the cell DiT stage needs a trained cell VAE: set dit.vae_ckpt=<VAE .ckpt> or run stage=all")
        vae_state, vae_hparams = load_vae_checkpoint(self.hparams.vae_ckpt, stage="cell_vae")  # a bad file fails before any data work
        info = _model_info(self)
        if vae_hparams["model_info"]["tokenizer"] != info["tokenizer"]:
            raise SciDiTInputError("the VAE checkpoint was trained on another gene vocabulary than this data", self.hparams.vae_ckpt)
        self.hparams.model_info = info
        self._build(info)
        load_vae_state(self.model.vae, vae_state, self.hparams.vae_ckpt)
        self.ema = EMA(self.model.dit, decay=self.hparams.ema_decay)  # re-copy: the shared gene table now holds the VAE's rows

    @torch.no_grad()
    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        cells = [b.to(self.device) for b in datamodule.train_cells_dataloader()]  # every training cell, by row
        if not bool(self.model.prepared):
            self.train_latents = self.model.prepare([b.to(self.device) for b in datamodule.control_dataloader()], cells)  # [N, K, d] by row
        else:  # resumed: the statistics are in the checkpoint
            self.train_latents = torch.cat([self.model.latents(b) for b in cells])  # [N, K, d] by row

    # -- training -----------------------------------------------------------------------------------
    def training_step(self, batch: TokenBatch, batch_idx: int) -> torch.Tensor:
        loss = self.model.loss(batch, self.hparams.time_schedule, latents=self.train_latents[batch.cond["row"]])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.batch_size)
        return loss

    def on_train_batch_end(self, *args: Any) -> None:
        self.ema.update(self.model.dit)

    def validation_step(self, batch: TokenBatch, batch_idx: int) -> None:
        with self.ema.swapped(self.model.dit):
            self.log("val/loss", self.model.loss(batch, self.hparams.time_schedule), batch_size=batch.batch_size, sync_dist=True)

    def test_step(self, batch: TokenBatch, batch_idx: int) -> None:
        with self.ema.swapped(self.model.dit):
            self.log("test/loss", self.model.loss(batch, self.hparams.time_schedule), batch_size=batch.batch_size, sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.model.dit.parameters() if p.requires_grad]  # the shared gene table stays frozen
        return build_optimizer(params, self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps, self.trainer.max_steps,
                               implementation=adamw_for(self.trainer))
