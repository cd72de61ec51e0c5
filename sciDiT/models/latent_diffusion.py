"""Latent diffusion over token sets: a frozen all-atom VAE and a DiT trained on its latents.

Training maps a token batch to normalised per-token latents ``x1`` (the VAE's posterior means,
standardised per dimension; with ``domain_stats`` then once more per domain) and regresses the DiT's velocity with flow matching. Generation draws
set sizes from each domain's training histogram, integrates the flow ODE from noise with
classifier-free guidance (on the domain, or per condition), and decodes with the VAE into a :class:`TokenBatch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from sciDiT.batch import Domain, TokenBatch
from sciDiT.flow import DEFAULT_SDE_NOISE, flow_matching_loss, integrate, model_velocity, sample_noise
from sciDiT.flow.solvers import NoiseFn
from sciDiT.models.composition import MAX_ELEMENTS, MAX_PRIOR_TOKENS, num_elements_log_prior
from sciDiT.models.dit import DiT
from sciDiT.models.vae import AllAtomVAE, CrystalRefine, GraphDecoder, Refiner, SiteWeights

MAX_SET_SIZE = 1024  # longest token set whose size the count histogram can record


def latent_frame(latent_mean: Tensor, latent_std: Tensor, domain_mean: Tensor | None = None,
                 domain_std: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Each domain's standardisation as one mean and std ``[len(Domain), L]`` (standardised = (VAE latent - mean) / std):
    what a latent head (discriminator, property regressor) or a guide DiT must share with the model it serves."""
    domain_mean = torch.zeros(len(Domain), latent_mean.shape[-1]) if domain_mean is None else domain_mean.float().cpu()
    domain_std = torch.ones(len(Domain), latent_mean.shape[-1]) if domain_std is None else domain_std.float().cpu()
    mean, std = latent_mean.float().cpu(), latent_std.float().cpu()
    return mean + domain_mean * std, std * domain_std


class LatentDiffusion(nn.Module):
    """Frozen VAE + trainable DiT; buffers hold latent statistics, per-domain set-size histograms and
    (atoms, distinct elements) counts, the prior of coherent crystal decoding.

    ``domain_stats``: after the standardisation over all tokens, standardise each domain's latents on their own
    (``domain_mean`` / ``domain_std``), so that every domain reaches the DiT at unit scale. Why: one VAE packs
    molecules and crystals into one latent space, and in the joint QM9 + MP-20 model crystal latents spread only
    ~0.27 of the global standard deviation, so a DiT error that molecules tolerate is most of a crystal's spread
    (``experiments/crystal_refiner/README.md``); latent diffusion wants unit-variance latents (Rombach et al. 2022's
    scale factor), per domain here. Off: the buffers stay zeros / ones and change nothing (older checkpoints)."""

    def __init__(self, vae: dict[str, Any], dit: dict[str, Any], domain_stats: bool = False):
        super().__init__()
        self.vae = AllAtomVAE(**vae).requires_grad_(False).eval()
        self.dit = DiT(latent_dim=self.vae.latent_dim, **dit)
        self.domain_stats = domain_stats
        self.register_buffer("latent_mean", torch.zeros(self.vae.latent_dim))
        self.register_buffer("latent_std", torch.ones(self.vae.latent_dim))
        self.register_buffer("domain_mean", torch.zeros(len(Domain), self.vae.latent_dim))
        self.register_buffer("domain_std", torch.ones(len(Domain), self.vae.latent_dim))
        self.register_buffer("size_counts", torch.zeros(len(Domain), MAX_SET_SIZE + 1))
        self.register_buffer("element_counts", torch.zeros(len(Domain), MAX_PRIOR_TOKENS + 1, MAX_ELEMENTS + 1))
        self.register_buffer("prepared", torch.zeros((), dtype=torch.bool))

    def train(self, mode: bool = True) -> "LatentDiffusion":
        super().train(mode)
        self.vae.eval()  # the VAE stays frozen and deterministic
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any) -> None:
        # checkpoints written before the element-count prior existed load with an empty one (argmax decoding)
        state_dict.setdefault(prefix + "element_counts", torch.zeros_like(self.element_counts))
        # ... and those written before per-domain statistics with the identity ones
        state_dict.setdefault(prefix + "domain_mean", torch.zeros_like(self.domain_mean))
        state_dict.setdefault(prefix + "domain_std", torch.ones_like(self.domain_std))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- preparation (once, before training) ------------------------------------------------------
    @torch.no_grad()
    def prepare(self, batches: list[TokenBatch], size_histograms: dict[Domain, Tensor],
                element_counts: dict[Domain, Tensor] | None = None) -> None:
        """Latent mean/std (and per domain with ``domain_stats``) from a few training batches, the set-size histogram
        of each domain and its (atoms, distinct elements) counts ``[MAX_PRIOR_TOKENS + 1, MAX_ELEMENTS + 1]``."""
        mus = [self.vae.encode(b)[0][b.mask] for b in batches]  # each [n_real, L]
        domains = torch.cat([b.domain[:, None].expand_as(b.mask)[b.mask] for b in batches])  # [n_real]
        latents = torch.cat(mus).float()
        self.latent_mean.copy_(latents.mean(0))
        self.latent_std.copy_(latents.std(0).clamp_min(1e-3))
        self.domain_mean.zero_()
        self.domain_std.fill_(1.0)
        standard = (latents - self.latent_mean) / self.latent_std  # [n_real, L]
        for d in domains.unique().tolist() if self.domain_stats else []:
            self.domain_mean[d] = standard[domains == d].mean(0)
            self.domain_std[d] = standard[domains == d].std(0).clamp_min(1e-3)
        self.size_counts.zero_()
        for domain, counts in size_histograms.items():
            n = min(len(counts), MAX_SET_SIZE + 1)
            self.size_counts[int(domain), :n] = counts[:n].to(self.size_counts)
        self.element_counts.zero_()
        for domain, counts in (element_counts or {}).items():
            self.element_counts[int(domain)] = counts.to(self.element_counts)
        self.prepared.fill_(True)

    # -- training ---------------------------------------------------------------------------------
    @torch.no_grad()
    def latents(self, batch: TokenBatch) -> Tensor:
        """Standardised VAE posterior means [B, N, L] (zeros at padding): the data end of the flow."""
        mu, _ = self.vae.encode(batch)  # [B, N, L]
        x = (mu.float() - self.latent_mean) / self.latent_std  # [B, N, L]
        return (x - self.domain_mean[batch.domain][:, None]) / self.domain_std[batch.domain][:, None] * batch.mask[..., None]  # [B, N, L]

    def latent_frame(self) -> tuple[Tensor, Tensor]:
        """Each domain's standardisation, mean and std ``[len(Domain), L]`` on the CPU (:func:`latent_frame`)."""
        return latent_frame(self.latent_mean, self.latent_std, self.domain_mean, self.domain_std)

    def to_vae(self, x1: Tensor, domain: Tensor) -> Tensor:
        """Standardised latents ``x1 [B, N, L]`` of sets of ``domain [B]`` -> the VAE's latents (the inverse of :meth:`latents`)."""
        x = x1.float() * self.domain_std[domain][:, None] + self.domain_mean[domain][:, None]  # [B, N, L]
        return x * self.latent_std + self.latent_mean  # [B, N, L]

    def loss(self, batch: TokenBatch, self_condition_prob: float = 0.5, time_schedule: str = "uniform") -> Tensor:
        x1 = self.latents(batch)  # [B, N, L]
        cond = {"domain": batch.domain, **batch.cond}
        return flow_matching_loss(self.dit, x1, batch.mask, cond, time_schedule=time_schedule, self_condition_prob=self_condition_prob)

    # -- generation -------------------------------------------------------------------------------
    def sample_set_sizes(self, domain: Domain, n: int, generator: torch.Generator | None = None, min_size: int = 1,
                         weights: Tensor | None = None) -> Tensor:
        """``n`` set sizes drawn from the training histogram of ``domain``, or from ``weights [MAX_SET_SIZE + 1]``
        over sizes (e.g. sizes given a requested condition), restricted to sizes >= ``min_size``."""
        counts = self.size_counts[int(domain)].float().cpu()
        if counts.sum() == 0:
            raise ValueError(f"this model saw no {domain.name.lower()} training data, so it cannot size {domain.name.lower()} samples")
        if weights is not None:
            counts = weights.float().cpu().clone()
        counts[:min_size] = 0
        if counts.sum() == 0:
            raise ValueError(f"no {domain.name.lower()} training set has {min_size} or more atoms")
        return torch.multinomial(counts, n, replacement=True, generator=generator)

    def element_log_prior(self, domain: Domain) -> Tensor | None:
        """``log pi(k | n)`` of ``domain``'s training sets, or None when the checkpoint has no counts."""
        counts = self.element_counts[int(domain)]
        return num_elements_log_prior(counts.cpu()).to(counts.device) if counts.sum() > 0 else None

    @torch.no_grad()
    def sample_latents(
        self,
        domain: Tensor,
        num_tokens: Tensor,
        *,
        x0: Tensor | None = None,
        dit: nn.Module | None = None,
        steps: int = 100,
        method: str = "euler",
        sde_noise: float = DEFAULT_SDE_NOISE,
        noise_fn: NoiseFn | None = None,
        cfg_scale: float | Mapping[str, float] = 1.0,
        cond: Mapping[str, Tensor] | None = None,
        self_condition: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Standardised latents ``x1 [B, N, L]`` (the DiT's data end, zeros at padding) and their ``mask [B, N]``,
        before decoding; arguments as :meth:`generate`."""
        dit = self.dit if dit is None else dit
        device = self.latent_mean.device
        n_max = int(num_tokens.max())
        mask = torch.arange(n_max, device=device)[None, :] < num_tokens.to(device)[:, None]  # [B, N]
        domain = domain.to(device)
        x0 = sample_noise(mask, self.vae.latent_dim, generator=generator) if x0 is None else x0.to(device)  # [B, N, L]
        cond = {"domain": domain, **{k: v.to(device) for k, v in (cond or {}).items()}}
        velocity = model_velocity(dit.eval(), mask, cond, cfg_scale=cfg_scale,
                                  self_condition=self_condition and dit.self_condition)
        if noise_fn is None:  # method="sde": each step's noise, zero at padding
            noise_fn = lambda: sample_noise(mask, self.vae.latent_dim, generator=generator)  # noqa: E731
        return integrate(velocity, x0, steps=steps, method=method, noise_fn=noise_fn, sde_noise=sde_noise), mask  # [B, N, L], [B, N]

    @torch.no_grad()
    def generate(
        self,
        domain: Tensor,
        num_tokens: Tensor,
        *,
        x0: Tensor | None = None,
        dit: nn.Module | None = None,
        steps: int = 100,
        method: str = "euler",
        sde_noise: float = DEFAULT_SDE_NOISE,
        noise_fn: NoiseFn | None = None,
        cfg_scale: float | Mapping[str, float] = 1.0,
        cond: Mapping[str, Tensor] | None = None,
        self_condition: bool = True,
        coherent_elements: bool = False,
        allowed_elements: Tensor | None = None,
        charge_balanced: bool = False,
        site_weights: SiteWeights | None = None,
        graph_decoder: GraphDecoder | None = None,
        generator: torch.Generator | None = None,
    ) -> TokenBatch:
        """Decoded token sets for per-set ``domain [B]`` and sizes ``num_tokens [B]``.

        ``x0 [B, N, L]``: the source noise (drawn from ``generator`` when None); ``dit``: the network
        to integrate (e.g. the EMA copy); ``method``, ``sde_noise``: the solver (:func:`sciDiT.flow.integrate`);
        ``noise_fn``: draws the ``sde`` steps' noise (from ``generator`` when None); ``cond``: condition
        tensors beside the domain (absent conditions get their null embedding); ``cfg_scale``: one guidance scale on all conditions, or
        ``{name: scale}`` per condition (:func:`sciDiT.flow.guided_velocity`); ``coherent_elements``: decode each crystal's types as one
        element set under the training prior (:mod:`sciDiT.models.composition`); per-token argmax when
        False (default) or when the checkpoint has no prior; ``allowed_elements [B, T]``: decode each crystal
        with exactly these elements (a composition request enforced at decoding); ``charge_balanced``: each
        crystal's most probable charge-balanced (SMACT-valid) element assignment; ``site_weights``: atoms of the output
        crystal per token, for crystals generated as asymmetric units (:meth:`AllAtomVAE.decode_to_batch`); ``graph_decoder``: how molecules' bonds are
        decoded from the pair probabilities (argmax when None; see :meth:`AllAtomVAE.decode_graph`).
        Decoding always runs in float32, outside any autocast.
        """
        x1, mask = self.sample_latents(domain, num_tokens, x0=x0, dit=dit, steps=steps, method=method, sde_noise=sde_noise, noise_fn=noise_fn,
                                       cfg_scale=cfg_scale, cond=cond, self_condition=self_condition, generator=generator)  # [B, N, L], [B, N]
        return self.decode_latents(x1, mask, domain, coherent_elements=coherent_elements, allowed_elements=allowed_elements,
                                   charge_balanced=charge_balanced, site_weights=site_weights, graph_decoder=graph_decoder)

    @torch.no_grad()
    def decode_latents(
        self,
        x1: Tensor,
        mask: Tensor,
        domain: Tensor,
        *,
        coherent_elements: bool = False,
        allowed_elements: Tensor | None = None,
        charge_balanced: bool = False,
        site_weights: SiteWeights | None = None,
        graph_decoder: GraphDecoder | None = None,
        refiner: Refiner | None = None,
        crystal_refiner: CrystalRefine | None = None,
        element_counts: Tensor | None = None,
    ) -> TokenBatch:
        """Token sets decoded from standardised latents ``x1 [B, N, L]`` (e.g. of :meth:`sample_latents`) with ``mask [B, N]``;
        the decoding arguments as :meth:`generate`, and ``element_counts [B, T]``: a requested composition per crystal
        (:meth:`AllAtomVAE.decode_to_batch`). Always float32, outside any autocast."""
        device, domain = x1.device, domain.to(x1.device)
        with torch.autocast(device.type, enabled=False):
            z = self.to_vae(x1, domain)  # [B, N, L]
            prior = self.element_log_prior(Domain.CRYSTAL) if coherent_elements else None
            return self.vae.decode_to_batch(z, mask, domain, element_log_prior=prior, graph_decoder=graph_decoder,
                                            allowed_elements=None if allowed_elements is None else allowed_elements.to(device),
                                            charge_balanced=charge_balanced, site_weights=site_weights, refiner=refiner,
                                            crystal_refiner=crystal_refiner, element_counts=element_counts)
