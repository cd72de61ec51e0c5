"""Lightning glue for the all-atom VAE: optimisation, augmentation, logging, reconstruction metrics.

The maths lives in :mod:`sciDiT.models.vae`; this module only wires it to a Trainer. It knows
domains (molecule / crystal) through the batch, never datasets.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import lightning as L
import torch

from sciDiT.batch import Domain, TokenBatch, TokenSet
from sciDiT.checkpoint import load_checkpoint, load_vae_checkpoint, load_vae_state, require_stage
from sciDiT.errors import SciDiTInputError
from sciDiT.models.vae import AllAtomVAE
from sciDiT.training.augment import augment, corrupt
from sciDiT.training.optim import adamw_for, build_optimizer


class VAEModule(L.LightningModule):
    """Trains :class:`AllAtomVAE`; ``vae`` holds its constructor arguments (the ``model/vae`` config)."""

    checkpoint_stage = "vae"  # what sciDiT.checkpoint.checkpoint_stage reads from its checkpoints

    def __init__(
        self,
        vae: dict[str, Any],
        loss_weights: dict[str, float] | None = None,
        type_mask_prob: float = 0.1,
        pos_noise: float = 0.05,
        latent_noise: NoiseSpec | dict[str, NoiseSpec] = 0.0,
        augment_rotation: bool = True,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        max_eval_sets: int = 2000,
        init_ckpt: str | None = None,
        train_decoder_only: bool = False,
    ):
        """``init_ckpt``: start from the weights of a VAE-stage checkpoint (a fine-tune, not a resume:
        fresh optimiser and schedule). ``train_decoder_only``: freeze the encoder, so the latents, their
        statistics and any DiT trained on them stay valid while the decoder learns, e.g., a larger
        ``latent_noise`` (experiments/decoder_finetune)."""
        super().__init__()
        self.save_hyperparameters()
        self.model = AllAtomVAE(**vae)
        if init_ckpt is not None:
            state, _ = load_vae_checkpoint(init_ckpt, what="vae.init_ckpt")
            load_vae_state(self.model, state, init_ckpt)
        if train_decoder_only:
            self.model.encoder_modules().requires_grad_(False)
        self.register_buffer("domain_latent_noise", domain_noise_table(latent_noise), persistent=False)
        self.loss_weights = {"types": 1.0, "pos": 1.0, "frac": 10.0, "lattice": 1.0, "kl": 1e-5, "bonds": 1.0, "charges": 1.0, "dist": 0.0,
                             **(loss_weights or {})}
        self._test_pairs: list[tuple[TokenSet, TokenSet]] = []

    @classmethod
    def from_checkpoint(cls, path: str) -> "VAEModule":
        """A VAE-stage checkpoint loaded weights-only (nothing in the file runs), in eval mode."""
        ckpt = load_checkpoint(path, "VAE checkpoint")
        require_stage(ckpt, "vae", path)
        module = cls(**{**ckpt["hyper_parameters"], "init_ckpt": None})  # the weights come from this file
        module.load_state_dict(ckpt["state_dict"])
        return module.eval()

    # -- training -----------------------------------------------------------------------------------
    def _losses(self, batch: TokenBatch) -> dict[str, torch.Tensor]:
        target = augment(batch, rotate=self.hparams.augment_rotation) if self.training else batch
        noisy = corrupt(target, self.hparams.type_mask_prob, self.hparams.pos_noise) if self.training else target
        sigma = 0.0
        if self.training:
            low, high = self.domain_latent_noise[target.domain].unbind(-1)  # [B] each
            sigma = low + (high - low) * torch.rand_like(low)  # [B]
        out = self.model(noisy, sample=self.training, latent_noise=sigma)
        terms = self.model.loss(out, target)
        terms["loss"] = sum(self.loss_weights[k] * v for k, v in terms.items())
        return terms

    def training_step(self, batch: TokenBatch, batch_idx: int) -> torch.Tensor:
        terms = self._losses(batch)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"}, batch_size=batch.batch_size)
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=batch.batch_size)
        self.log("train/atoms", batch.mask.sum().float(), reduce_fx="sum", batch_size=batch.batch_size)
        return terms["loss"]

    # -- validation: cheap per-token figures --------------------------------------------------------
    def validation_step(self, batch: TokenBatch, batch_idx: int) -> None:
        terms = self._losses(batch)
        recon = self.model.reconstruct(batch)
        correct = ((recon.types == batch.types) & batch.mask).sum()
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=batch.batch_size, sync_dist=True)
        self.log("val/type_accuracy", correct / batch.mask.sum(), batch_size=int(batch.mask.sum()), sync_dist=True)
        graph = batch.has_graph  # [B]
        if recon.bonds is not None and graph.any():  # molecules whose whole decoded graph (bonds and charges) is right
            same = ((recon.bonds == batch.bonds) | (batch.bonds < 0)).flatten(1).all(1) & ((recon.charges == batch.charges) | ~batch.mask).all(1)
            # logged only where a batch has molecules, so never synced: a collective that one rank skips would hang DDP
            self.log("val/graph_match", same[graph].float().mean(), batch_size=int(graph.sum()))

    # -- test: full reconstruction metrics on decoded structures --------------------------------------
    def test_step(self, batch: TokenBatch, batch_idx: int) -> None:
        """Collect (reconstruction, input) pairs, at most ``max_eval_sets`` per domain."""
        per_domain = Counter(int(t.domain) for _, t in self._test_pairs)
        if per_domain and all(per_domain[int(d)] >= self.hparams.max_eval_sets for d in batch.domain.unique()):
            return
        recon = self.model.reconstruct(batch)
        for pair in zip(recon.to("cpu").unbatch(), batch.to("cpu").unbatch()):
            if per_domain[int(pair[1].domain)] < self.hparams.max_eval_sets:
                per_domain[int(pair[1].domain)] += 1
                self._test_pairs.append(pair)

    def on_test_epoch_end(self) -> None:
        from sciDiT.evaluation.reconstruction import reconstruction_report

        pairs, self._test_pairs = self._test_pairs, []
        report = reconstruction_report([p for p, _ in pairs], [t for _, t in pairs])
        for key, value in report.items():
            self.log(f"test/{key}", float(value), batch_size=1)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimiser updates (all but a frozen encoder's)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def configure_optimizers(self):
        return build_optimizer(self.trainable_parameters(), self.hparams.lr, self.hparams.weight_decay, self.hparams.warmup_steps, self.trainer.max_steps,
                               implementation=adamw_for(self.trainer))


NoiseSpec = float | list[float] | tuple[float, float]


def domain_noise_table(latent_noise: NoiseSpec | dict[str, NoiseSpec]) -> torch.Tensor:
    """Decoder-input noise range per domain ``[len(Domain), 2]`` (low, high sigma; others 0) from one
    spec or ``{domain name: spec}``; a spec is a sigma, or ``[low, high]`` to draw each set's sigma
    uniformly in that range (a decoder that reconstructs clean latents and tolerates noisy ones).

    One error line for an unknown domain name, a negative sigma or a malformed range (configs are user input).
    """
    names = {d.name.lower(): d for d in Domain}
    if not hasattr(latent_noise, "items"):  # one spec for every domain
        table = {d: latent_noise for d in Domain}
    else:
        unknown = sorted(set(latent_noise) - set(names))
        if unknown:
            raise SciDiTInputError(f"vae.latent_noise: unknown domain(s) {unknown}; expected some of {sorted(names)}")
        table = {names[k]: v for k, v in latent_noise.items()}
    rows = []
    for d in Domain:
        spec = table.get(d, 0.0)
        try:
            low, high = (spec, spec) if isinstance(spec, (int, float)) else spec  # a sigma, or exactly two bounds
            low, high = float(low), float(high)
        except (TypeError, ValueError):
            raise SciDiTInputError(f"vae.latent_noise: {d.name.lower()} takes a sigma or [low, high], got {spec!r}") from None
        if low < 0 or high < low:
            raise SciDiTInputError(f"vae.latent_noise must be >= 0 (and low <= high), got {latent_noise}")
        rows.append([low, high])
    return torch.tensor(rows)
