"""Lightning glue for the latent DiT stage: frozen VAE in, EMA of DiT weights, flow-matching loss.

The maths lives in :mod:`sciDiT.models.latent_diffusion`; this module wires it to a Trainer and
keeps the checkpoint self-contained (VAE weights, latent statistics, set-size histograms, EMA and,
for a conditional model, the training statistics of its conditions under ``condition_stats``), so
``sciDiT.sample`` needs nothing but the DiT checkpoint.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import lightning as L
import torch

from sciDiT.batch import Domain, TokenBatch
from sciDiT.checkpoint import load_checkpoint, load_vae_checkpoint, load_vae_state, require_stage, restore_ema, slim_state
from sciDiT.data.conditions import check_condition_names
from sciDiT.errors import SciDiTInputError
from sciDiT.models.dit import DEFAULT_CONDITIONS
from sciDiT.models.latent_diffusion import LatentDiffusion
from sciDiT.training.compile import compile_module
from sciDiT.training.ema import EMA
from sciDiT.training.optim import adamw_for, build_optimizer

CONDITION_STATS_KEY = "condition_stats"  # checkpoint entry: {key: statistics} of sciDiT.data.conditions.condition_stats


class DiTModule(L.LightningModule):
    """Trains the DiT of a :class:`LatentDiffusion` on the latents of a trained VAE checkpoint."""

    checkpoint_stage = "dit"  # what sciDiT.checkpoint.checkpoint_stage reads from its checkpoints

    def __init__(
        self,
        vae: dict[str, Any],
        dit: dict[str, Any],
        vae_ckpt: str | None = None,
        init_ckpt: str | None = None,
        self_condition_prob: float = 0.5,
        time_schedule: str = "uniform",
        ema_decay: float = 0.999,
        stats_batches: int = 20,
        val_samples: int = 64,
        val_sample_steps: int = 50,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 500,
        compile: bool = False,
        domain_stats: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = LatentDiffusion(vae, dit, domain_stats=domain_stats)
        self.ema = EMA(self.model.dit, decay=ema_decay)
        self.condition_stats: dict[str, dict[str, Any]] = {}  # training statistics of the data's conditions (checkpointed)

    def configure_model(self) -> None:
        """``compile=True``: torch.compile the trained DiT in place (dynamic shapes; eager with a warning where unavailable)."""
        if self.hparams.compile:
            compile_module(self.model.dit, self.trainer.strategy.root_device.type, in_place=True)

    # -- set-up: VAE weights, latent statistics, set-size and element-count histograms ----------
    def setup(self, stage: str) -> None:
        if stage == "fit" and not bool(self.model.prepared):
            if self.hparams.init_ckpt:
                self.init_from(self.hparams.init_ckpt)
                return
            if not self.hparams.vae_ckpt:
                raise SciDiTInputError("the DiT stage needs a trained VAE: set dit.vae_ckpt=<path to a VAE .ckpt> or run stage=all")
            load_vae_state(self.model.vae, load_vae_checkpoint(self.hparams.vae_ckpt)[0], self.hparams.vae_ckpt)

    def init_from(self, path: str) -> None:
        """Start from a trained DiT-stage checkpoint or shipped model (``init_ckpt``): its VAE, latent statistics,
        histograms, condition statistics and its EMA DiT weights (as both the trained and the averaged
        copy); the optimiser and schedule start fresh. Keeping the statistics keeps the latents the DiT
        was trained on. Conditions the configured DiT declares beyond the file's start as zero
        contributions (:meth:`DiT.zero_conditions`), so the fine-tune adds them to an unchanged model."""
        ckpt = load_checkpoint(path, "DiT checkpoint (dit.init_ckpt)")
        require_stage(ckpt, "dit", path, "dit.init_ckpt takes <output_dir>/dit/checkpoints/*.ckpt or a shipped sciDiT/pretrained/<name>.pt")
        shipped = slim_state(restore_ema(ckpt["state_dict"]))  # the EMA weights as model.dit.*, whichever kind of file
        state = {k.removeprefix("model."): v for k, v in shipped.items() if k.startswith("model.")}
        old = set(dict(ckpt["hyper_parameters"]["dit"]).get("conditions") or DEFAULT_CONDITIONS)
        new = [name for name in self.model.dit.cond_embedders if name not in old]
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
        except RuntimeError as err:
            raise SciDiTInputError(f"weights do not fit the configured model (model.vae, model.dit): {str(err).splitlines()[0]}", path) from None
        missing = [k for k in missing if not k.startswith(tuple(f"dit.cond_embedders.{name}." for name in new))]
        if missing or unexpected:
            what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]} (a condition the configured DiT lacks?)"
            raise SciDiTInputError(f"weights do not fit the configured model (model.vae, model.dit): {what}", path)
        self.model.dit.zero_conditions(new)
        self.ema.module.load_state_dict(self.model.dit.state_dict())
        self.condition_stats = dict(ckpt.get(CONDITION_STATS_KEY, {}))

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        names = list(getattr(datamodule, "conditions", []))
        check_condition_names(names, self.hparams.dit.get("conditions"))
        if getattr(datamodule, "asymmetric_units", False) and "spacegroup" not in names:
            raise SciDiTInputError("a DiT on asymmetric-unit crystals needs the spacegroup condition (data.conditions) to expand its samples")
        if names:  # the batches are standardised with the data's statistics: a checkpoint's (init_ckpt, resume) must agree
            data_stats = datamodule.condition_stats()
            for name, kept in self.condition_stats.items():
                if name in data_stats and any(not math.isclose(kept[k], data_stats[name][k], rel_tol=1e-6) for k in ("mean", "std") if k in kept):
                    raise SciDiTInputError(f"the checkpoint standardised condition {name!r} with mean {kept['mean']:.6g}, std {kept['std']:.6g}; "
                                           f"this training data gives {data_stats[name]['mean']:.6g}, {data_stats[name]['std']:.6g}: train on the data it was trained on")
            self.condition_stats = {**data_stats, **self.condition_stats}  # new conditions (dit.init_ckpt) from the data
        if bool(self.model.prepared):  # resumed, or already prepared
            return
        batches = [b.to(self.device) for b in itertools.islice(datamodule.train_dataloader(), self.hparams.stats_batches)]
        self.model.prepare(batches, datamodule.atom_count_histogram(), datamodule.element_count_histogram())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.condition_stats:
            checkpoint[CONDITION_STATS_KEY] = self.condition_stats  # plain numbers, strings and lists

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.condition_stats = dict(checkpoint.get(CONDITION_STATS_KEY, {}))

    # -- training -----------------------------------------------------------------------------------
    def training_step(self, batch: TokenBatch, batch_idx: int) -> torch.Tensor:
        loss = self.model.loss(batch, self.hparams.self_condition_prob, self.hparams.time_schedule)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.batch_size)
        self.log("train/atoms", batch.mask.sum().float(), reduce_fx="sum", batch_size=batch.batch_size)
        return loss

    def on_train_batch_end(self, *args: Any) -> None:
        self.ema.update(self.model.dit)

    def validation_step(self, batch: TokenBatch, batch_idx: int) -> None:
        with self.ema.swapped(self.model.dit):
            loss = self.model.loss(batch, self_condition_prob=0.0, time_schedule=self.hparams.time_schedule)
        self.log("val/loss", loss, batch_size=batch.batch_size, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        """Sample ``val_samples`` sets per trained domain with the EMA DiT and log cheap validity."""
        if self.hparams.val_samples <= 0 or self.trainer.sanity_checking:
            return
        from sciDiT.evaluation.quick import quick_validity

        generator = torch.Generator().manual_seed(0)
        sets = []
        for domain in Domain:
            if self.model.size_counts[int(domain)].sum() == 0:
                continue
            sizes = self.model.sample_set_sizes(domain, self.hparams.val_samples, generator)
            domains = torch.full_like(sizes, int(domain))
            batch = self.model.generate(domains, sizes, dit=self.ema.module, steps=self.hparams.val_sample_steps, generator=generator)
            sets += batch.to("cpu").unbatch()
        for key, value in quick_validity(sets).items():
            self.log(f"val/{key}", value, batch_size=len(sets), rank_zero_only=True)

    def test_step(self, batch: TokenBatch, batch_idx: int) -> None:
        with self.ema.swapped(self.model.dit):
            loss = self.model.loss(batch, self_condition_prob=0.0, time_schedule=self.hparams.time_schedule)
        self.log("test/loss", loss, batch_size=batch.batch_size, sync_dist=True)

    def configure_optimizers(self):
        return build_optimizer(self.model.dit.parameters(), self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps, self.trainer.max_steps,
                               implementation=adamw_for(self.trainer))
