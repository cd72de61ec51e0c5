"""sciDiT for perturbation response: a latent flow from control cells to perturbed cells, and its predictor.

:class:`PerturbationFlow` (plain torch) = a frozen :class:`~sciDiT.models.cell_vae.CellVAE` + a
latent :class:`~sciDiT.models.dit.DiT` over the VAE's ``K`` latent tokens, conditioned on the
perturbation as a *token set* of gene ids, read through two tables: the VAE's gene table
(``shared_embeddings``: which gene) and data-derived gene profiles (how the gene relates to the
training effects; see the class), plus a covariate class (replicate), with label dropout for
classifier-free guidance.

Source of the flow: control cells, not noise (as CellFlow, Klein et al. 2025), moved by a prior.
Reasons for control cells: (1) the question asked is "what do *these* control cells look like after
knocking out X", and the prediction API receives control cells, so transporting each of them keeps
its state (replicate, cell cycle, library depth) and gives a natural cell-to-cell correspondence;
(2) most knock-outs move cells little (Papalexi: a no-change prediction is already close, see the
baseline table), so the velocity field only has to learn the perturbation effect, not the whole
cell distribution from noise, which matters for a model trained for minutes on a CPU. The source of
a training cell is a random training control latent of the same covariate, plus small Gaussian
noise (``source_noise``) so that the source distribution has full support.

The prior: each source is moved by the best estimate of the perturbation's *mean* change that needs
no DiT (:meth:`PerturbationFlow.latent_prior`, :meth:`PerturbationFlow.expression_prior`): the measured
training mean change when every target was perturbed alone in training (summed for a combination:
the additive baseline), else the linear gene model of Ahlmann-Eltze et al. 2025 fitted to the
training effects (which is how an unseen target gets a prediction at all). Simple baselines match or
beat deep models on mean changes, so sciDiT starts from them and the DiT learns what a mean shift
cannot express: how the response spreads over cells (e.g. cells that escaped the knock-out), how it
depends on the source cell's state, and the mean correction the prior misses. Measured on Papalexi
(``experiments/perturbseq_sciDiT.md``): without a prior, a DiT conditioned on the target's gene
profile alone did no better than the no-change baseline on unseen targets (Pearson delta on the
top-20 DE genes 0.03-0.27 vs 0.44 for the perturbed mean).

Decoding: a generated cell is its control cell plus the prior mean change plus the *decoded latent
displacement* of the flow, ``x_ctrl + s_prior + E[dec(z_1)] - E[dec(z_0)]`` (clipped at 0), with
``z_0`` the prior-moved source; not a fresh decoder sample of ``z_1``. A small VAE trained for
minutes reconstructs each gene with a systematic error of the same size as most perturbation
effects (Papalexi: a mean |change| of a few hundredths in log1p units), and a fresh sample carries
that error into every predicted shift (the first scored run: normalised MSE 45 on the top-20 DE
genes). The difference of two decodings cancels it, and the cell keeps its own measured noise and
drop-outs.

CFG: the unconditional branch is the DiT with null condition embeddings, i.e. the average flow
over all training perturbations (and controls); ``cfg_scale > 1`` extrapolates away from it
towards the perturbation-specific flow. The DiT's ``drop_cond`` nulls every condition at once, so
the covariate is dropped in the unconditional branch too.

:class:`SciDiTPredictor` wraps it with the baselines' interface (``fit(train)``,
``predict(control, perturbations) -> AnnData``), so the same scorer applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from sciDiT.batch import TokenBatch
from sciDiT.checkpoint import load_checkpoint, require_stage, to_plain
from sciDiT.data.perturbseq import PERTURBATION_KEY, canonical_label, parse_perturbation
from sciDiT.errors import SciDiTInputError
from sciDiT.flow import flow_matching_loss, integrate, model_velocity
from sciDiT.models.cell_vae import CellVAE
from sciDiT.models.dit import DiT
from sciDiT.perturbation.baselines import fit_linear_gene_model


class GeneProfiles(nn.Module):
    """A fixed, data-derived row per gene id (``weight [V, P]``, a buffer): each gene's predicted knock-out effect in ``P`` coordinates.

    Filled by :meth:`PerturbationFlow.prepare`; a buffer rather than a parameter, so no optimiser or
    weight average touches it. Used as a ``token_set`` table by the DiT (``weight``, ``embedding_dim``).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim))

    def forward(self, ids: Tensor) -> Tensor:
        return self.weight[ids]  # [..., P]


class PerturbationFlow(nn.Module):
    """Frozen cell VAE + latent DiT transporting control-cell latents to perturbed-cell latents.

    The perturbation enters through two token-set conditions over the same target gene ids:

    - ``perturbation``: the VAE's gene-identity table (shared, frozen), which tells the DiT which
      of its training perturbations this is;
    - ``perturbation_profile``: :class:`GeneProfiles`, each gene's knock-out effect as predicted
      by the linear gene model of Ahlmann-Eltze et al. 2025 fit to the training perturbations'
      mean effects, in ``profile_dim`` coordinates (:meth:`_fit_gene_profiles`). A target never
      perturbed in training has no learned identity, but if it is measured, how it co-varies with
      the training effects places it in the same coordinates, and that is what transfers.

    During training the identity channel of a *perturbed* cell is nulled with probability
    ``identity_dropout`` (both channels also drop at the CFG rate), so the DiT also learns to predict
    from the profile alone. Control cells keep their identity channel (the empty set), so a null
    identity means "perturbed, target unknown", not "control": with an uninformative profile the DiT
    falls back to the average perturbation, not to no change. At generation the identity channel is
    nulled for any cell whose target set holds a gene that was never a training target.

    The flow starts from the control latent moved by :meth:`latent_prior`, and decoding adds
    :meth:`expression_prior` (module docstring: the prior; both are fitted by :meth:`prepare`).

    Args:
        vae: :class:`CellVAE` constructor arguments (``vocab_size``, ``num_genes`` included).
        dit: :class:`DiT` constructor arguments other than ``latent_dim``, ``conditions``, ``shared_embeddings``.
        num_covariates: classes of the covariate condition (0: no covariate condition).
        source_noise: std of the Gaussian noise added to the control latents at the source.
        profile_dim: principal components in each gene's profile.
        identity_dropout: training-time probability of nulling the gene-identity channel.
    """

    def __init__(self, vae: dict[str, Any], dit: dict[str, Any], num_covariates: int = 0, source_noise: float = 0.1, profile_dim: int = 10, identity_dropout: float = 0.5):
        super().__init__()
        self.vae = CellVAE(**vae).requires_grad_(False)
        vocab = self.vae.gene_embedding.num_embeddings
        self.gene_profiles = GeneProfiles(vocab, profile_dim)
        conditions: dict[str, dict[str, Any]] = {
            "perturbation": {"kind": "token_set", "num_tokens": vocab},
            "perturbation_profile": {"kind": "token_set", "num_tokens": vocab, "normalize": False},
        }
        if num_covariates > 0:
            conditions["covariate"] = {"kind": "class", "num_classes": num_covariates}
        shared = {"perturbation": self.vae.gene_embedding, "perturbation_profile": self.gene_profiles}
        self.dit = DiT(latent_dim=self.vae.latent_dim, conditions=conditions, shared_embeddings=shared, **dit)
        self.num_covariates, self.source_noise, self.identity_dropout = num_covariates, source_noise, identity_dropout
        d, k = self.vae.latent_dim, self.vae.num_latent_tokens
        self.register_buffer("latent_mean", torch.zeros(d))
        self.register_buffer("latent_std", torch.ones(d))
        self.register_buffer("control_latents", torch.zeros(0, k, d))
        self.register_buffer("control_covariates", torch.zeros(0, dtype=torch.long))
        self.register_buffer("expression_bias", torch.zeros(self.vae.num_genes))
        self.register_buffer("expression_basis", torch.zeros(profile_dim, self.vae.num_genes))
        self.register_buffer("prior_bias", torch.zeros(k, d))
        self.register_buffer("prior_map", torch.zeros(profile_dim, k * d))
        self.register_buffer("trained_targets", torch.zeros(vocab, dtype=torch.bool))
        self.register_buffer("measured_single", torch.zeros(vocab, dtype=torch.bool))
        self.register_buffer("single_expression", torch.zeros(vocab, self.vae.num_genes))
        self.register_buffer("single_latent", torch.zeros(vocab, k, d))
        self.register_buffer("prepared", torch.zeros((), dtype=torch.bool))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        """The control pool's size is known only from the checkpoint: resize it before loading."""
        for name in ("control_latents", "control_covariates"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- latents ------------------------------------------------------------------------------------
    def latents(self, batch: TokenBatch) -> Tensor:
        """Standardised posterior means ``[B, K, d]`` of a batch of cells (the DiT's data space)."""
        mean, _ = self.vae.encode(batch)  # [B, K, d]
        return (mean - self.latent_mean) / self.latent_std  # [B, K, d]

    @torch.no_grad()
    def prepare(self, control_batches: Sequence[TokenBatch], batches: Sequence[TokenBatch]) -> Tensor:
        """From the training cells ``batches``: latent statistics, gene profiles, the latent prior, the training targets; and the control pool.

        Returns the standardised latents of ``batches`` (``[N, K, d]``, their :meth:`latents`), so training need not encode them again.
        """
        encoded = [self.vae.encode(b)[0] for b in batches]  # [B, K, d] each
        means = torch.cat(encoded).flatten(0, 1)  # [N*K, d]
        self.latent_mean.copy_(means.mean(0))
        self.latent_std.copy_(means.std(0).clamp_min(1e-3))
        latents = [(m - self.latent_mean) / self.latent_std for m in encoded]  # [B, K, d] each
        groups = self._group_means(batches, latents)
        self.trained_targets.zero_()
        for key in groups:
            self.trained_targets[list(key)] = True
        self._fit_single_shifts(groups)
        self._fit_gene_profiles(groups)
        self._fit_latent_prior(groups)
        self.control_latents = torch.cat([self.latents(b) for b in control_batches])  # [Nc, K, d]
        self.control_covariates = torch.cat([b.cond["covariate"] for b in control_batches])  # [Nc]
        self.prepared.fill_(True)
        return torch.cat(latents)  # [N, K, d]

    def _group_means(self, batches: Sequence[TokenBatch], latents: Sequence[Tensor]) -> dict[tuple[int, ...], tuple[Tensor, Tensor]]:
        """Per target set (sorted gene ids; ``()`` = control): mean expression ``[G]`` and mean standardised latent ``[K, d]``."""
        sums: dict[tuple[int, ...], list] = {}
        for b, z in zip(batches, latents):
            x = self.vae.dense_expression(b)  # [B, G]
            ids = torch.where(b.cond["perturbation_mask"], b.cond["perturbation"], 0).sort(dim=1).values  # [B, M]
            for key, row, lat in zip(map(tuple, ids.tolist()), x, z):
                acc = sums.setdefault(tuple(i for i in key if i > 0), [0.0, 0.0, 0])
                acc[0], acc[1], acc[2] = acc[0] + row, acc[1] + lat, acc[2] + 1
        return {key: (sx / n, sz / n) for key, (sx, sz, n) in sums.items()}

    def _fit_single_shifts(self, groups: dict[tuple[int, ...], tuple[Tensor, Tensor]]) -> None:
        """Measured mean changes from control (expression and standardised latent) of every target perturbed alone in training."""
        self.measured_single.zero_()
        self.single_expression.zero_()
        self.single_latent.zero_()
        if () not in groups:
            return
        for key, (x, z) in groups.items():
            if len(key) == 1:
                self.measured_single[key[0]] = True
                self.single_expression[key[0]] = x - groups[()][0]
                self.single_latent[key[0]] = z - groups[()][1]

    def _fit_gene_profiles(self, groups: dict[tuple[int, ...], tuple[Tensor, Tensor]]) -> None:
        """``gene_profiles`` rows: each gene's knock-out effect coordinates under the linear gene model of the training effects.

        ``Y [G, P]`` = mean expression of each training perturbation minus the control mean;
        :func:`~sciDiT.perturbation.baselines.fit_linear_gene_model` gives ``b, E, W`` with predicted
        change ``b + E W e`` for a target set with embedding ``e`` (the sum of its genes' rows of
        ``E``). Gene ``g``'s profile is ``W E[g]``: the predicted change of knocking it out, in the
        basis ``E`` relative to the average effect ``b``; a set's profile is the sum of its genes'
        (what the DiT's token-set sum computes), so the profile *is* the linear model's prediction.
        Scaled so that the training perturbations' profiles have mean norm 1. Unmeasured genes keep
        a zero profile (the average perturbation).
        """
        self.gene_profiles.weight.zero_()
        self.expression_bias.zero_()
        self.expression_basis.zero_()
        perturbed = [k for k in groups if k]
        if () not in groups or len(perturbed) < 2:
            return
        y = torch.stack([groups[k][0] - groups[()][0] for k in perturbed], dim=1)  # [G, P]
        g = self.vae.num_genes
        rows = [[i - 1 for i in key if i <= g] for key in perturbed]  # measured targets, as gene rows
        b, emb, w = fit_linear_gene_model(y.double().cpu().numpy(), rows, self.gene_profiles.embedding_dim)
        profiles = torch.as_tensor(emb @ w.T, dtype=torch.float32, device=y.device)  # [G, k]: row g = W E[g]
        trained = torch.stack([profiles[r].sum(0) for r in rows if r]) if any(rows) else profiles  # [P_m, k]
        scale = trained.norm(dim=1).mean().clamp_min(1e-12)
        k = profiles.shape[1]
        self.gene_profiles.weight[1 : g + 1, :k] = profiles / scale
        self.expression_bias.copy_(torch.as_tensor(b, dtype=torch.float32))
        self.expression_basis[:k] = scale * torch.as_tensor(emb.T, dtype=torch.float32, device=y.device)  # [k, G]

    def _fit_latent_prior(self, groups: dict[tuple[int, ...], tuple[Tensor, Tensor]], ridge: float = 0.1) -> None:
        """The latent prior ``a + c M``: ridge regression of each training perturbation's mean latent change on its profile ``c``.

        ``m_p`` = mean standardised latent of perturbation ``p`` minus that of the controls ``[K*d]``;
        ``a`` = the mean of ``m_p`` (the average perturbation), ``M = argmin sum_p |m_p - a - c_p M|^2 + ridge |M|^2``.
        """
        self.prior_bias.zero_()
        self.prior_map.zero_()
        perturbed = [k for k in groups if k]
        if () not in groups or not perturbed:
            return
        m = torch.stack([(groups[k][1] - groups[()][1]).flatten() for k in perturbed])  # [P, K*d]
        c = torch.stack([self.gene_profiles.weight[list(k)].sum(0) for k in perturbed])  # [P, k]
        a, c0 = m.mean(0), c - c.mean(0)  # [K*d], [P, k]
        eye = torch.eye(c.shape[1], device=c.device)
        self.prior_map.copy_(torch.linalg.solve(c0.T @ c0 + ridge * eye, c0.T @ (m - a)))  # [k, K*d]
        self.prior_bias.copy_((a - c.mean(0) @ self.prior_map).view_as(self.prior_bias))  # [K, d]

    def _prior_mix(self, perturbation: Tensor, linear: Tensor, singles: Tensor, linear_only: Tensor | None = None) -> Tensor:
        """Per target set: the sum of the targets' measured single-gene changes ``singles[id]`` when every
        target was perturbed alone in training (and ``linear_only [B]`` is not set), else ``linear``; zero for controls."""
        mask = perturbation > 0  # [B, M]
        trailing = (1,) * (linear.dim() - 1)
        additive = (singles[perturbation] * mask.view(*mask.shape, *trailing)).sum(1)  # [B, ...]
        measured = (self.measured_single[perturbation] | ~mask).all(dim=1)  # [B]
        if linear_only is not None:
            measured = measured & ~linear_only  # [B]
        shift = torch.where(measured.view(-1, *trailing), additive, linear)  # [B, ...]
        return shift * mask.any(dim=1).view(-1, *trailing)  # [B, ...]

    def latent_prior(self, perturbation: Tensor, linear_only: Tensor | None = None) -> Tensor:
        """Latent prior displacement ``[B, K, d]`` of target sets ``perturbation [B, M]`` (0-padded ids; zero for controls).

        The sum of the targets' measured single-gene latent changes when all were measured (and
        ``linear_only [B]`` is not set), else the ridge map of the set's profile (:meth:`_fit_latent_prior`).
        """
        c = self.gene_profiles(perturbation).sum(1)  # [B, k] (padding id 0 has a zero profile)
        linear = self.prior_bias + (c @ self.prior_map).view(-1, *self.prior_bias.shape)  # [B, K, d]
        return self._prior_mix(perturbation, linear, self.single_latent, linear_only)  # [B, K, d]

    def expression_prior(self, perturbation: Tensor) -> Tensor:
        """Mean change ``[B, G]`` of target sets ``perturbation [B, M]`` (zero for controls): the best estimate without the DiT.

        The sum of the targets' measured single-gene changes when all were measured (the additive
        baseline; a seen single target's own training mean), else the linear gene model's ``b + E W e``.
        """
        c = self.gene_profiles(perturbation).sum(1)  # [B, k]
        linear = self.expression_bias + c @ self.expression_basis  # [B, G]
        return self._prior_mix(perturbation, linear, self.single_expression)  # [B, G]

    def source(self, covariate: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A random training control latent of the same covariate for each cell, plus ``source_noise``: ``[B, K, d]``."""
        pool = self.control_covariates  # [Nc]
        draw = generator.device if generator is not None else covariate.device
        pick = torch.empty_like(covariate)  # [B]
        for c in covariate.unique():
            rows = torch.nonzero(pool == c).flatten() if self.num_covariates > 0 else torch.arange(pool.numel(), device=pool.device)
            if rows.numel() == 0:
                rows = torch.arange(pool.numel(), device=pool.device)
            sel = covariate == c
            pick[sel] = rows[torch.randint(rows.numel(), (int(sel.sum()),), generator=generator, device=draw).to(rows.device)]
        x0 = self.control_latents[pick]  # [B, K, d]
        return x0 + self.source_noise * torch.randn(x0.shape, generator=generator, device=draw).to(x0.device)

    def condition(self, batch: TokenBatch, perturbation: Tensor | None = None, use_covariate: bool = True, hide_identity: Tensor | None = None) -> dict[str, Tensor]:
        """The DiT's condition dict: both perturbation channels (``perturbation [B, M]`` ids, default the batch's), the covariate when used.

        The identity channel is nulled (``perturbation_null``) for cells with a target that was never
        a training target, and where ``hide_identity [B]`` is set.
        """
        ids = batch.cond["perturbation"] if perturbation is None else perturbation  # [B, M]
        mask = batch.cond["perturbation_mask"] if perturbation is None else perturbation > 0  # [B, M]
        null = (mask & ~self.trained_targets[ids]).any(dim=1)  # [B]
        if hide_identity is not None:
            null = null | hide_identity  # [B]
        cond = {"perturbation": ids, "perturbation_mask": mask, "perturbation_profile": ids, "perturbation_profile_mask": mask, "perturbation_null": null}
        if self.num_covariates > 0 and use_covariate:
            cond["covariate"] = batch.cond["covariate"]
        return cond

    # -- training -----------------------------------------------------------------------------------
    def loss(self, batch: TokenBatch, time_schedule: str = "uniform", latents: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Flow-matching loss from a random control latent (same covariate) moved by the prior to each cell's latent.

        A cell whose identity channel is hidden starts from the linear prior, as a cell of an unseen
        target does at generation (on Papalexi, unseen split seed 1: Pearson delta top-20 DE 0.486
        vs 0.461 when it started from its measured shift).

        ``latents`` are the batch's precomputed :meth:`latents` (the VAE is frozen, so training
        caches them once instead of running the encoder every step).
        """
        if not bool(self.prepared):
            raise RuntimeError("PerturbationFlow.prepare() must run before training (latent statistics, control pool)")
        x1 = self.latents(batch) if latents is None else latents  # [B, K, d]
        perturbed = batch.cond["perturbation_mask"].any(dim=1)  # [B]
        draw = generator.device if generator is not None else x1.device
        hide = perturbed & (torch.rand(perturbed.shape, generator=generator, device=draw).to(x1.device) < self.identity_dropout)  # [B]
        ids = batch.cond["perturbation"] * batch.cond["perturbation_mask"]  # [B, M]
        x0 = self.source(batch.cond["covariate"], generator) + self.latent_prior(ids, linear_only=hide)  # [B, K, d] (hidden: as if unseen)
        mask = torch.ones(x1.shape[:2], dtype=torch.bool, device=x1.device)  # [B, K]
        cond = self.condition(batch, hide_identity=hide)
        return flow_matching_loss(self.dit, x1, mask, cond, time_schedule=time_schedule, x0=x0, generator=generator)

    # -- generation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        control: TokenBatch,
        perturbation: Tensor,
        *,
        source: Tensor | None = None,
        use_covariate: bool = True,
        steps: int = 20,
        method: str = "euler",
        cfg_scale: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """Perturbed versions of control cells: (expression, decoded shift), each ``[B, G]`` (module docstring: decoding).

        ``perturbation [B, M]``: 0-padded gene ids of the target set of each cell (all 0 = control).
        ``source``: the control cells' :meth:`latents` when already computed (reused across perturbations).
        """
        xc = self.latents(control) if source is None else source  # [B, K, d]
        x0 = xc + self.latent_prior(perturbation)  # [B, K, d]
        mask = torch.ones(x0.shape[:2], dtype=torch.bool, device=x0.device)  # [B, K]
        cond = self.condition(control, perturbation, use_covariate)
        x1 = integrate(model_velocity(self.dit, mask, cond, cfg_scale=cfg_scale, self_condition=self.dit.self_condition), x0, steps, method)  # [B, K, d]
        decoded = [self.vae.expected_expression(x * self.latent_std + self.latent_mean) for x in (x0, x1)]  # 2 x [B, G]
        shift = self.expression_prior(perturbation) + decoded[1] - decoded[0]  # [B, G]
        return (self.vae.dense_expression(control) + shift).clamp_min(0.0), shift


class SciDiTPredictor:
    """Perturbation-response predictor with the baselines' interface, backed by a :class:`PerturbationFlow`.

    ``fit(train)`` trains the cell VAE then the DiT with Lightning on the training AnnData
    (log-normalised, registered by ``setup_anndata``); ``predict`` transports the given control
    cells. ``load(path)`` restores a predictor from a DiT-stage checkpoint of
    ``python -m sciDiT.train experiment=perturbseq_papalexi`` or from :meth:`save`.
    """

    name = "scidit"

    def __init__(
        self,
        vae: dict[str, Any] | None = None,
        dit: dict[str, Any] | None = None,
        vae_steps: int = 1500,
        dit_steps: int = 1500,
        batch_size: int = 256,
        covariate_key: str | None = "bio_rep",
        cfg_scale: float = 1.0,
        steps: int = 20,
        seed: int = 0,
        module_kwargs: dict[str, dict[str, Any]] | None = None,
        non_finite_patience: int = 3,
    ):
        from sciDiT.training.cell_module import DEFAULT_DIT, DEFAULT_VAE

        self.vae_cfg = {**DEFAULT_VAE, **(vae or {})}
        self.dit_cfg = {**DEFAULT_DIT, **(dit or {})}
        self.vae_steps, self.dit_steps, self.batch_size, self.covariate_key = vae_steps, dit_steps, batch_size, covariate_key
        self.cfg_scale, self.steps, self.seed = cfg_scale, steps, seed
        self.module_kwargs = module_kwargs or {}
        self.non_finite_patience = non_finite_patience
        self.module = None

    # -- training -----------------------------------------------------------------------------------
    def fit(self, train: ad.AnnData, work_dir: str | Path | None = None, extra_targets: Sequence[str] = ()) -> "SciDiTPredictor":
        """Train VAE then DiT on ``train`` (``vae_steps`` / ``dit_steps`` optimiser steps on CPU or GPU).

        ``extra_targets``: genes to be predictable as (unseen) targets beyond those perturbed in ``train``.
        Never trains on NaN: a step with a non-finite loss or gradient is skipped, and
        ``non_finite_patience`` of them in a row stop ``fit`` with a one-line
        :class:`~sciDiT.training.guards.NonFiniteTrainingError` naming the stage and step. A stopped
        VAE stage leaves the predictor as it was; a stopped DiT stage leaves it with the DiT weights of
        the last good step.
        """
        import tempfile

        import lightning as L

        from sciDiT.training.cell_datamodule import CellDataModule
        from sciDiT.training.cell_module import CellDiTModule, CellVAEModule
        from sciDiT.training.guards import NonFiniteGuard, NonFiniteTrainingError

        guard = NonFiniteGuard(self.non_finite_patience)  # checks the patience before any work
        L.seed_everything(self.seed, workers=True, verbose=False)
        work = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="scidit_cells_"))
        data = CellDataModule(split_data=train, covariate_key=self.covariate_key, batch_size=self.batch_size, seed=self.seed, extra_targets=extra_targets)

        def fit_stage(module: L.LightningModule, steps: int) -> None:
            guard.bad_steps = []
            trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                limit_val_batches=0, gradient_clip_val=1.0, default_root_dir=str(work), accelerator="auto", devices=1,
                                callbacks=[guard], use_distributed_sampler=False)
            try:
                trainer.fit(module, datamodule=data)
            except NonFiniteTrainingError as err:
                raise NonFiniteTrainingError(f"SciDiTPredictor.fit: {module.checkpoint_stage} stage {err}") from None

        vae_module = CellVAEModule(self.vae_cfg, **self.module_kwargs.get("vae", {}))
        fit_stage(vae_module, self.vae_steps)
        vae_ckpt = work / "vae.ckpt"
        torch.save({"state_dict": vae_module.state_dict(), "hyper_parameters": to_plain(dict(vae_module.hparams))}, vae_ckpt)
        self.module = CellDiTModule(self.vae_cfg, self.dit_cfg, vae_ckpt=str(vae_ckpt), **self.module_kwargs.get("dit", {}))
        fit_stage(self.module, self.dit_steps)
        return self

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint :meth:`load` reads (the DiT stage's format: hyper-parameters + state dict)."""
        self._check_fitted()
        path = Path(path)
        torch.save({"state_dict": self.module.state_dict(), "hyper_parameters": to_plain(dict(self.module.hparams))}, path)
        return path

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> "SciDiTPredictor":
        """A predictor from a DiT-stage checkpoint (``<output_dir>/dit/checkpoints/last.ckpt``) or :meth:`save`."""
        from sciDiT.training.cell_module import CellDiTModule
        from sciDiT.training.targets import check_config

        ckpt = load_checkpoint(path, "cell predictor checkpoint")  # weights only: nothing in the file runs
        require_stage(ckpt, "cell_dit", path, "SciDiTPredictor.load takes <output_dir>/dit/checkpoints/*.ckpt of a cell run or a save()d predictor")
        hp = dict(ckpt["hyper_parameters"])
        check_config(hp, "hyper_parameters")
        try:
            module = CellDiTModule(**{**hp, "vae_ckpt": None})
            module.load_state_dict(ckpt["state_dict"])
        except (RuntimeError, TypeError, KeyError) as err:
            raise SciDiTInputError(f"checkpoint weights do not fit its hyper-parameters: {str(err).splitlines()[0]}", path) from None
        predictor = cls(vae=hp["vae"], dit=hp["dit"], covariate_key=hp["model_info"]["covariate_key"], **kwargs)
        predictor.module = module
        return predictor

    def _check_fitted(self) -> None:
        if self.module is None:
            raise SciDiTInputError("the predictor is not trained: call fit(train) or SciDiTPredictor.load(checkpoint)")

    # -- prediction ---------------------------------------------------------------------------------
    def predict(self, control: ad.AnnData, perturbations: Sequence[str], n_cells: int | None = None, batch_size: int = 1024,
                reproducible: bool = False) -> ad.AnnData:
        """Generated cells for each perturbation, one per control cell (or ``n_cells`` drawn from them, seeded by ``seed``).

        Transport is deterministic (no noise), but batched results agree across ``batch_size`` up to
        float rounding only (a matrix product's last bits depend on its number of rows);
        ``reproducible=True`` encodes and transports each control cell in a batch of its own, so the
        output is bit-identical for a given seed whatever ``batch_size`` (on the same machine, software
        and thread count; ``batch_size`` is then unused, one forward pass per cell and step).

        Returns AnnData (cells x the model's genes): ``X`` = log-normalised expression (source cell +
        decoded shift), ``layers['shift']`` = each cell's decoded shift, ``obs['perturbation']`` (canonical
        label), ``obs['control_cell']`` (the source cell), the covariate column; per perturbation
        ``varm['predicted_shift']`` (mean of ``X`` minus mean of the control cells, log1p units, what
        the scorer compares) and ``varm['predicted_lfc']`` (log2 fold change of mean normalised
        expression); ``uns['scidit_prediction']`` (settings), ``uns['log1p']`` for scanpy.
        """
        from sciDiT.training.cell_datamodule import collate_cells, covariate_codes, tokenize_cells

        self._check_fitted()
        for name, value in (("n_cells", n_cells), ("batch_size", batch_size), ("steps", self.steps)):
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1):
                raise SciDiTInputError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise SciDiTInputError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.cfg_scale, (int, float)) or not np.isfinite(self.cfg_scale):
            raise SciDiTInputError(f"cfg_scale must be a finite number, got {self.cfg_scale!r}")
        if control.n_obs == 0:
            raise SciDiTInputError("control has no cells to transport")
        module = self.module
        info = module.hparams.model_info
        tokenizer = module.tokenizer
        flow = module.model.eval()
        labels = [canonical_label(parse_perturbation(p, source="perturbations")) for p in perturbations]
        pert_ids = dict(zip(labels, tokenizer.perturbation_ids(labels)))  # unknown target genes raise here
        key = info["covariate_key"] if info["covariate_key"] in control.obs else None
        codes = covariate_codes(control, key, info["covariates"])
        use_cov = key is not None and bool((codes >= 0).all())
        cells = tokenize_cells(control, tokenizer, codes)
        rng = np.random.default_rng(self.seed)
        rows = np.arange(control.n_obs) if n_cells is None else rng.choice(control.n_obs, n_cells, replace=n_cells > control.n_obs)
        device = next(flow.parameters()).device
        blocks: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {label: [] for label in labels}
        with module.ema.swapped(flow.dit):
            step = 1 if reproducible else batch_size
            for start in range(0, rows.size, step):
                chunk = rows[start : start + step]
                batch = collate_cells([cells[i] for i in chunk]).to(device)
                x0 = flow.latents(batch)  # the control cells are encoded once for all perturbations
                for label in labels:
                    pert = tokenizer.pad_perturbation_ids([pert_ids[label]] * len(chunk)).to(device)
                    x, e = flow.generate(batch, pert, source=x0, use_covariate=use_cov, steps=self.steps, cfg_scale=self.cfg_scale)
                    blocks[label].append((x.cpu().numpy(), e.cpu().numpy()))
        xs = [x for label in labels for x, _ in blocks[label]]
        shifts = [e for label in labels for _, e in blocks[label]]
        obs_label = [label for label in labels for _ in range(rows.size)]
        source = control.obs_names[rows].astype(str).tolist() * len(labels)
        genes = tokenizer.genes
        x = np.concatenate(xs).astype(np.float32) if xs else np.zeros((0, len(genes)), dtype=np.float32)
        obs = pd.DataFrame({PERTURBATION_KEY: pd.Categorical(obs_label), "control_cell": source}, index=[f"scidit_{i}" for i in range(len(obs_label))])
        if key is not None:
            obs[key] = np.tile(control.obs[key].astype(str).to_numpy()[rows], len(labels))
        out = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
        out.layers["shift"] = np.concatenate(shifts).astype(np.float32) if shifts else np.zeros_like(x)
        ctrl = np.stack([tokenizer.decode(cells[i]) for i in rows]) if rows.size else np.zeros((0, len(genes)), np.float32)
        label_of = np.asarray(obs_label, dtype=object)
        shift, lfc = {}, {}
        for label in labels:
            gen = x[label_of == label]
            shift[label] = gen.mean(0) - ctrl.mean(0)
            lfc[label] = np.log2((np.expm1(gen).mean(0) + 1e-3) / (np.expm1(ctrl).mean(0) + 1e-3))
        out.varm["predicted_shift"] = pd.DataFrame(shift, index=genes)
        out.varm["predicted_lfc"] = pd.DataFrame(lfc, index=genes)
        out.uns["scidit_prediction"] = {"method": self.name, "cfg_scale": self.cfg_scale, "steps": self.steps, "seed": self.seed, "covariate_used": use_cov}
        out.uns["skipped"] = []
        out.uns["log1p"] = {"base": None}
        return out

