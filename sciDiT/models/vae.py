"""Shared all-atom VAE (ADiT-style): one encoder/decoder for molecules and crystals.

Every atom becomes a token; a set transformer encodes the token set into a small per-token latent
(ADiT: 8 dims) and decodes it back into atom types, Cartesian positions (molecules), fractional
coordinates and lattice parameters (crystals), and, with ``bond_head``, the molecular graph: the
bond order of every atom pair and per-atom formal charges (:mod:`sciDiT.models.bonds`). Attention
is set-based (no positional or index embedding), so permuting the input atoms permutes every
per-token output and every pair output.

Sections, in data-flow order: feature maps -> input embedding -> encoder -> latent -> decoder ->
output heads -> losses -> weight initialisation -> size registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciDiT.batch import NO_GRAPH, Domain, TokenBatch
from sciDiT.models.attention import TransformerBlock, masked_mean, xavier_linear_init
from sciDiT.models.bonds import CHARGE_OFFSET, NUM_CHARGE_CLASSES, BondHead
from sciDiT.models.composition import coherent_types, counted_types, requested_types
from sciDiT.tokenizers.crystal import lattice_matrix
from sciDiT.tokenizers.elements import MASK_TYPE, NUM_ATOM_TYPES
from sciDiT.tokenizers.oxidation import balanced_types

# a crystal's decoded frac [n, 3] and lattice [6] -> [n] atoms of the output crystal per token (asymmetric units)
SiteWeights = Callable[[Tensor, Tensor], Tensor]
# molecules' types [B, N], charges [B, N], bond orders [B, N, N], positions [B, N, 3] (Angstrom), mask [B, N] -> positions
# [B, N, 3] placed on that graph (e.g. sciDiT.models.refiner.GeometryRefiner)
Refiner = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
# crystals' element log-probabilities [B, N, T], fractional sites [B, N, 3], normalised cell features [B, 6], mask [B, N]
# -> refined element logits, sites and cell features (e.g. sciDiT.models.crystal_refiner.CrystalRefiner)
CrystalRefine = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]
REFINE_ROUNDS = 3  # refine, re-decode the graph on the refined geometry, ...: 3 refinements (experiments/geometry_refiner)
REFINE_PASSES = 40  # refinements in all: those after the REFINE_ROUNDS keep the last graph (a pass is cheap, a graph decoding not)
REFINED_MIN_DISTANCE = 0.5  # Angstrom: a refinement that brings two atoms closer is undone (the shortest bond, H2, is 0.74)


class GraphDecoder(Protocol):
    """How molecules' graphs are decoded (e.g. :class:`sciDiT.tokenizers.valence.ValenceGraphDecoder`).

    Called per molecule with element log-probabilities [n, K], charge log-probabilities [n, C] (class =
    charge + ``charge_offset``), bond-order log-probabilities [n, n, 4] and the decoded positions [n, 3]
    (Angstrom); returns (types [n], charges [n], orders [n, n]) or None. ``source`` names its graphs in
    ``meta["graph_source"]``.
    """

    @property
    def source(self) -> str: ...

    def __call__(self, type_log_probs: Tensor, charge_log_probs: Tensor, log_probs: Tensor, pos: Tensor,
                 charge_offset: int) -> tuple[Tensor, Tensor, Tensor] | None: ...


#################################################################################
#                     Feature maps (normalisation of inputs/targets)            #
#################################################################################

POS_SCALE = 2.0  # Angstrom per unit of normalised position
LOCAL_CUTOFF = 2.0  # Angstrom: pairs of a molecule closer than this get the distance loss (bonds, H-X-H pairs)
LENGTH_SCALE = 5.0  # Angstrom: lattice lengths are normalised as log(a / LENGTH_SCALE)
ANGLE_SCALE = 30.0  # degrees per unit of normalised lattice angle


def lattice_to_features(lattice: Tensor, has_lattice: Tensor) -> Tensor:
    """[B, 6] lattice parameters -> [B, 6] normalised (log(length/5), (angle - 90)/30); zeros where no lattice."""
    lengths = torch.log(lattice[:, :3].clamp_min(1e-3) / LENGTH_SCALE)  # [B, 3]
    angles = (lattice[:, 3:] - 90.0) / ANGLE_SCALE  # [B, 3]
    return torch.cat([lengths, angles], dim=-1) * has_lattice[:, None]  # [B, 6]


def features_to_lattice(feat: Tensor) -> Tensor:
    """Inverse of :func:`lattice_to_features` for sets that have a lattice."""
    return torch.cat([torch.exp(feat[:, :3]) * LENGTH_SCALE, feat[:, 3:] * ANGLE_SCALE + 90.0], dim=-1)  # [B, 6]


def element_log_probs(type_logits: Tensor) -> Tensor:
    """Type logits [..., T] -> log-probabilities over the real elements only (padding and mask types get -inf), float32."""
    logits = type_logits.float().clone()
    logits[..., 0] = logits[..., MASK_TYPE] = -torch.inf
    return logits.log_softmax(-1)


def fourier_frac(frac: Tensor, num_freqs: int) -> Tensor:
    """Periodic features of fractional coordinates: sin/cos(2 pi k f), k = 1..K -> [..., 6K]."""
    k = torch.arange(1, num_freqs + 1, device=frac.device, dtype=frac.dtype)  # [K]
    angles = 2 * math.pi * frac[..., None] * k  # [..., 3, K]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # [..., 6K]


def frac_to_circle(frac: Tensor) -> Tensor:
    """Fractional coordinates [..., 3] -> points on the unit circle [..., 3, 2] (cos, sin of 2 pi f).

    The decoder regresses these instead of ``f`` itself: the map is smooth across the periodic
    wrap 1 -> 0, where a raw coordinate target jumps.
    """
    angle = 2 * math.pi * frac
    return torch.stack([angle.cos(), angle.sin()], dim=-1)


def circle_to_frac(circle: Tensor) -> Tensor:
    """Inverse of :func:`frac_to_circle` (any non-zero 2-vector): [..., 3, 2] -> [..., 3] in [0, 1)."""
    return torch.remainder(torch.atan2(circle[..., 1], circle[..., 0]) / (2 * math.pi), 1.0)


#################################################################################
#                                   The VAE                                     #
#################################################################################


@dataclass
class VAEOutput:
    """Decoder outputs in normalised units, plus the latent distribution."""

    type_logits: Tensor  # [B, N, NUM_ATOM_TYPES]
    pos: Tensor  # [B, N, 3] normalised Cartesian positions
    frac: Tensor  # [B, N, 3, 2] fractional coordinates as unit-circle points
    lattice: Tensor  # [B, 6] normalised lattice features
    mu: Tensor  # [B, N, latent_dim]
    logvar: Tensor  # [B, N, latent_dim]
    bond_logits: Tensor | None = None  # [B, N, N, 4] bond orders 0..3 (None without a bond head)
    charge_logits: Tensor | None = None  # [B, N, 3] formal charges -1, 0, +1


class AllAtomVAE(nn.Module):
    """Set-transformer VAE over atom tokens with a ``latent_dim``-wide latent per atom."""

    def __init__(
        self,
        hidden_size: int = 256,
        encoder_depth: int = 4,
        decoder_depth: int = 4,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        latent_dim: int = 8,
        num_frac_freqs: int = 4,
        num_domains: int = len(Domain),
        bond_head: bool = True,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.num_frac_freqs = num_frac_freqs
        # input embedding: atom type + position + periodic frac features + lattice + domain
        self.type_embed = nn.Embedding(NUM_ATOM_TYPES, hidden_size)
        self.pos_embed = nn.Linear(3, hidden_size)
        self.frac_embed = nn.Linear(6 * num_frac_freqs, hidden_size)
        self.lattice_embed = nn.Linear(6, hidden_size)
        self.domain_embed = nn.Embedding(num_domains, hidden_size)
        # encoder -> latent
        self.encoder = nn.ModuleList(TransformerBlock(hidden_size, num_heads, mlp_ratio) for _ in range(encoder_depth))
        self.encoder_norm = nn.LayerNorm(hidden_size)
        self.to_latent = nn.Linear(hidden_size, 2 * latent_dim)
        # latent -> decoder
        self.from_latent = nn.Linear(latent_dim, hidden_size)
        self.decoder_domain_embed = nn.Embedding(num_domains, hidden_size)
        self.decoder = nn.ModuleList(TransformerBlock(hidden_size, num_heads, mlp_ratio) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(hidden_size)
        # output heads
        self.type_head = nn.Linear(hidden_size, NUM_ATOM_TYPES)
        self.pos_head = nn.Linear(hidden_size, 3)
        self.frac_head = nn.Linear(hidden_size, 6)
        self.lattice_head = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, 6))
        # molecular graph from the decoder states and the decoded positions (None: perceive bonds instead)
        self.bond_head = BondHead(hidden_size) if bond_head else None
        self.initialize_weights()

    # -- encoder ------------------------------------------------------------------------------------
    def embed(self, batch: TokenBatch) -> Tensor:
        has_lattice = (batch.domain == Domain.CRYSTAL).to(batch.pos.dtype)  # [B]
        x = self.type_embed(batch.types)  # [B, N, D]
        x = x + self.pos_embed(batch.pos / POS_SCALE)  # [B, N, D]
        x = x + self.frac_embed(fourier_frac(batch.frac, self.num_frac_freqs)) * has_lattice[:, None, None]  # [B, N, D]
        x = x + self.lattice_embed(lattice_to_features(batch.lattice, has_lattice))[:, None]  # [B, N, D]
        return x + self.domain_embed(batch.domain)[:, None]  # [B, N, D]

    def encoder_modules(self) -> nn.ModuleList:
        """Every module the latents depend on (embeddings, encoder blocks, latent projection): what a
        decoder-only fine-tune freezes."""
        return nn.ModuleList([self.type_embed, self.pos_embed, self.frac_embed, self.lattice_embed, self.domain_embed,
                              self.encoder, self.encoder_norm, self.to_latent])

    def encode(self, batch: TokenBatch) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance of the per-atom latents, each [B, N, latent_dim]."""
        x = self.embed(batch)  # [B, N, D]
        for block in self.encoder:
            x = block(x, batch.mask)  # [B, N, D]
        mu, logvar = self.to_latent(self.encoder_norm(x)).chunk(2, dim=-1)  # 2 x [B, N, L]
        return mu, logvar.clamp(-12.0, 6.0)

    # -- decoder ------------------------------------------------------------------------------------
    def decode_states(self, z: Tensor, mask: Tensor, domain: Tensor) -> Tensor:
        """Latents [B, N, L] -> decoder states [B, N, D], which every output head reads."""
        h = self.from_latent(z) + self.decoder_domain_embed(domain)[:, None]  # [B, N, D]
        for block in self.decoder:
            h = block(h, mask)  # [B, N, D]
        return self.decoder_norm(h)  # [B, N, D]

    def decode(self, z: Tensor, mask: Tensor, domain: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Latents [B, N, L] -> type logits, normalised positions, frac circle points, lattice features."""
        return self.output_heads(self.decode_states(z, mask, domain), mask)

    def output_heads(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Decoder states [B, N, D] -> type logits, normalised positions, frac circle points, lattice features."""
        type_logits = self.type_head(h)  # [B, N, T]
        pos = self.pos_head(h)  # [B, N, 3]
        frac = self.frac_head(h).unflatten(-1, (3, 2))  # [B, N, 3, 2]
        lattice = self.lattice_head(masked_mean(h, mask))  # [B, 6]
        return type_logits, pos, frac, lattice

    def graph_logits(self, h: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Bond-order logits [B, N, N, 4] and charge logits [B, N, 3] from decoder states [B, N, D] and
        decoded positions [B, N, 3] in Angstrom (needs ``bond_head``)."""
        if self.bond_head is None:
            raise RuntimeError("this VAE was built with bond_head=False: it decodes no molecular graph")
        return self.bond_head(h, pos)

    def forward(self, batch: TokenBatch, sample: bool = True, latent_noise: float | Tensor = 0.0) -> VAEOutput:
        """Encode, sample the posterior (``sample``), decode.

        ``latent_noise`` adds Gaussian noise of that many per-dimension latent standard deviations
        (over the batch's real tokens, the units the DiT works in) to the decoder input: a decoder
        trained so is robust to the small latent errors a DiT makes (quality diagnosis: sigma 0.1 of
        noise halved the strict validity of an untrained-for-noise decoder). A tensor ``[B]`` gives
        each set its own sigma (e.g. per domain: crystals pack element and fractional coordinates
        into the same latent width, and lose reconstruction accuracy under noise molecules tolerate).
        """
        mu, logvar = self.encode(batch)  # [B, N, L] x 2
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu  # [B, N, L]
        if isinstance(latent_noise, Tensor) or latent_noise > 0:  # no device sync on a per-set tensor (zeros add nothing)
            sigma = torch.as_tensor(latent_noise, dtype=torch.float32, device=mu.device).expand(mu.shape[0])  # [B]
            scale = mu.detach()[batch.mask].float().std(0).clamp_min(1e-6)  # [L]
            z = z + torch.randn_like(z) * (sigma[:, None, None] * scale).to(z.dtype)  # [B, N, L]
        h = self.decode_states(z, batch.mask, batch.domain)  # [B, N, D]
        type_logits, pos, frac, lattice = self.output_heads(h, batch.mask)
        out = VAEOutput(type_logits, pos, frac, lattice, mu, logvar)
        if self.bond_head is not None:
            # the graph is read off the decoded geometry, as at generation; no bond gradient moves the positions
            out.bond_logits, out.charge_logits = self.graph_logits(h, pos.detach() * POS_SCALE)
        return out

    # -- back to token sets -----------------------------------------------------------------------
    @torch.no_grad()
    def decode_to_batch(self, z: Tensor, mask: Tensor, domain: Tensor, element_log_prior: Tensor | None = None,
                        graph_decoder: GraphDecoder | None = None, allowed_elements: Tensor | None = None,
                        charge_balanced: bool = False, site_weights: SiteWeights | None = None,
                        refiner: Refiner | None = None, crystal_refiner: CrystalRefine | None = None,
                        element_counts: Tensor | None = None) -> TokenBatch:
        """Decode latents into a :class:`TokenBatch` in physical units.

        Types: argmax over elements per token; with ``element_log_prior`` (``log pi(k | n)``, see
        :mod:`sciDiT.models.composition`) a crystal's types are chosen jointly, as a coherent element set;
        with ``allowed_elements`` ([B, T] bool, a requested element set per crystal) they use exactly those elements,
        charge balanced where such an assignment exists; ``charge_balanced``: each crystal's most probable
        SMACT-valid assignment (:func:`sciDiT.tokenizers.oxidation.balanced_types`); ``element_counts`` ([B, T] long, a
        requested composition per crystal): exactly these atoms, in their most probable places
        (:func:`sciDiT.models.composition.counted_types`; no other type rule applies then). ``site_weights``: for
        crystals decoded as asymmetric units, how many atoms of the full crystal each token becomes; those two
        rules then count compositions and log-probabilities with these weights (a dropped token keeps its argmax).
        Bonds: argmax per pair, or ``graph_decoder`` per molecule (see :meth:`decode_graph`). ``refiner``: molecules'
        positions are placed on their decoded graph by it, and the graph is decoded again from the refined geometry
        (the bond head reads positions), :data:`REFINE_ROUNDS` refinements in turn with graph decodings, then
        refinements on the last graph up to :data:`REFINE_PASSES` in all.
        ``crystal_refiner``: crystals' element distributions, sites and cells are refined by it, before any type rule.
        """
        h = self.decode_states(z, mask, domain)  # [B, N, D], read by every head below
        type_logits, pos, frac, lattice_feat = self.output_heads(h, mask)
        type_log_probs = element_log_probs(type_logits)  # [B, N, T], read by every type rule and the graph decoder
        xtal = domain == Domain.CRYSTAL  # [B]
        is_crystal = xtal[:, None]  # [B, 1]
        frac = circle_to_frac(frac.float()) * is_crystal[..., None]  # [B, N, 3]
        lattice_feat = lattice_feat.float()  # [B, 6]
        if crystal_refiner is not None and xtal.any():
            logits, frac[xtal], lattice_feat[xtal] = crystal_refiner(type_log_probs[xtal], frac[xtal], lattice_feat[xtal], mask[xtal])
            type_log_probs[xtal] = element_log_probs(logits)  # [B_xtal, N, T]
        lattice = features_to_lattice(lattice_feat) * is_crystal  # [B, 6]
        argmax = type_log_probs.argmax(-1) * mask  # [B, N]
        types = argmax.clone()  # [B, N]
        if xtal.any():
            weights = mask.long()  # [B, N] atoms of the output crystal per token
            if site_weights is not None and (charge_balanced or allowed_elements is not None):
                for b in xtal.nonzero().squeeze(1).tolist():
                    weights[b, mask[b]] = site_weights(frac[b, mask[b]], lattice[b]).to(weights)
            kept = weights > 0  # [B, N] tokens that stay in the crystal
            if element_log_prior is not None:
                types[xtal] = coherent_types(type_log_probs[xtal], mask[xtal], element_log_prior)  # [B_xtal, N]
            if allowed_elements is not None:
                kept = torch.where((kept.sum(1) >= allowed_elements.sum(1))[:, None], kept, mask)  # [B, N] room for every element
                types[xtal] = requested_types(type_log_probs[xtal], kept[xtal], allowed_elements[xtal])  # [B_xtal, N]
                types = torch.where(mask & ~kept, argmax, types)  # [B, N] dropped tokens keep their argmax
            if charge_balanced or allowed_elements is not None:
                self._balance_charges(types, type_log_probs, mask, xtal, allowed_elements, weights)
            if element_counts is not None:
                types[xtal] = counted_types(type_log_probs[xtal], mask[xtal], element_counts[xtal].to(mask.device))  # [B_xtal, N]
        crystal_pos = frac @ lattice_matrix(lattice.double()).float()  # [B, N, 3]
        pos = torch.where(is_crystal[..., None], crystal_pos, pos.float() * POS_SCALE) * mask[..., None]  # [B, N, 3]
        bonds, charges, meta = None, None, []
        if self.bond_head is not None:
            atom_types = types
            types, bonds, charges, meta = self.decode_graph(h, mask, domain, pos, atom_types, type_log_probs, graph_decoder)
            is_mol = ((domain == Domain.MOLECULE)[:, None] & mask)[..., None]  # [B, N, 1]
            decoded = (types, bonds, charges, meta, pos)  # the graph on the decoded geometry, kept for a collapsed refinement
            for pass_ in range(max(REFINE_ROUNDS, REFINE_PASSES) if refiner is not None else 0):
                pos = torch.where(is_mol, refiner(types, charges, bonds, pos, mask).float(), pos)  # [B, N, 3]
                if pass_ < REFINE_ROUNDS - 1:
                    types, bonds, charges, meta = self.decode_graph(h, mask, domain, pos, atom_types, type_log_probs, graph_decoder)
            if refiner is not None:
                types, bonds, charges, meta, pos = _undo_collapsed(decoded, (types, bonds, charges, meta, pos), mask, domain)
        return TokenBatch(types=types, pos=pos, frac=frac, values=torch.zeros_like(mask, dtype=pos.dtype),
                          mask=mask, lattice=lattice, domain=domain, bonds=bonds, charges=charges, meta=meta)

    @staticmethod
    def _balance_charges(types: Tensor, type_log_probs: Tensor, mask: Tensor, xtal: Tensor, allowed_elements: Tensor | None,
                         weights: Tensor) -> None:
        """In place: each crystal's types become its most probable charge-balanced assignment, where one is found
        (within its requested elements when ``allowed_elements`` is given; tokens counted ``weights [B, N]``
        times); the others keep theirs."""
        log_probs = type_log_probs.cpu().numpy()  # [B, N, T]
        for b in xtal.nonzero().squeeze(1).tolist():
            real = mask[b].nonzero().squeeze(1)  # [n]
            required = None if allowed_elements is None else allowed_elements[b].nonzero().squeeze(1).tolist()
            balanced, found = balanced_types(log_probs[b, real.cpu().numpy()], required=required,
                                             multiplicity=weights[b, real].cpu().numpy())  # [n]
            if found:
                types[b, real] = torch.as_tensor(balanced, device=types.device)

    @torch.no_grad()
    def decode_graph(self, h: Tensor, mask: Tensor, domain: Tensor, pos: Tensor, types: Tensor, type_log_probs: Tensor,
                     graph_decoder: GraphDecoder | None = None) -> tuple[Tensor, Tensor, Tensor, list[dict[str, str]]]:
        """Graph of molecules: types [B, N], bond orders [B, N, N] (NO_GRAPH off molecules, padding, diagonal),
        charges [B, N], and per-set meta ``{"graph_source": ...}``.

        ``h`` [B, N, D] are the decoder states, ``pos`` [B, N, 3] the decoded positions in Angstrom,
        ``types`` [B, N] the decoded elements, ``type_log_probs`` [B, N, K] their distributions. Each
        pair's order is its argmax (``graph_source`` ``decoded``); with ``graph_decoder`` (see
        :class:`GraphDecoder`) a molecule gets that decoder's elements, charges and orders
        (``graph_decoder.source``) and keeps the argmax graph where it returns None. The logits are
        symmetric, so is the matrix.
        """
        bond_logits, charge_logits = self.graph_logits(h, pos)  # [B, N, N, 4], [B, N, 3]
        is_mol = ((domain == Domain.MOLECULE)[:, None] & mask).float()  # [B, N]
        pair = is_mol[:, :, None] * is_mol[:, None, :] * (1 - torch.eye(mask.shape[1], device=mask.device))  # [B, N, N]
        bonds = torch.where(pair.bool(), bond_logits.float().argmax(-1), torch.full_like(pair, NO_GRAPH, dtype=torch.long))
        charges = (charge_logits.float().argmax(-1) - CHARGE_OFFSET) * is_mol.long()  # [B, N]
        meta = [{"graph_source": "decoded"} if d == Domain.MOLECULE else {} for d in domain.tolist()]
        if graph_decoder is not None:
            types = types.clone()
            log_probs = bond_logits.float().log_softmax(-1)  # [B, N, N, 4]
            charge_log_probs = charge_logits.float().log_softmax(-1)  # [B, N, 3]
            for b in torch.nonzero(domain == Domain.MOLECULE).flatten().tolist():
                m = mask[b]
                graph = graph_decoder(type_log_probs[b][m].cpu(), charge_log_probs[b][m].cpu(), log_probs[b][m][:, m].cpu(), pos[b][m].cpu(),
                                      CHARGE_OFFSET)
                if graph is not None:
                    idx = torch.nonzero(m).flatten()
                    types[b, idx], charges[b, idx] = graph[0].to(types), graph[1].to(charges)
                    bonds[b, idx[:, None], idx[None, :]] = graph[2].to(bonds) + NO_GRAPH * torch.eye(len(idx), dtype=bonds.dtype, device=bonds.device)
                    meta[b] = {"graph_source": graph_decoder.source}
        return types, bonds, charges, meta

    @torch.no_grad()
    def reconstruct(self, batch: TokenBatch) -> TokenBatch:
        """Encode with the posterior mean and decode: the deterministic reconstruction."""
        mu, _ = self.encode(batch)
        out = self.decode_to_batch(mu, batch.mask, batch.domain)
        out.meta = batch.meta
        return out

    # -- losses -------------------------------------------------------------------------------------
    def loss(self, out: VAEOutput, target: TokenBatch) -> dict[str, Tensor]:
        """Per-term losses against the clean target batch (means over real tokens of each domain)."""
        mask = target.mask  # [B, N]
        is_mol = (target.domain == Domain.MOLECULE)[:, None] & mask  # [B, N]
        is_xtal = (target.domain == Domain.CRYSTAL)[:, None] & mask  # [B, N]
        ce = F.cross_entropy(out.type_logits.float().transpose(1, 2), target.types, reduction="none")  # [B, N]
        pos_err = (out.pos.float() - target.pos / POS_SCALE).square().sum(-1)  # [B, N]
        frac_err = (out.frac.float() - frac_to_circle(target.frac)).square().sum((-2, -1))  # [B, N]
        has_lattice = (target.domain == Domain.CRYSTAL).float()  # [B]
        lat_err = (out.lattice.float() - lattice_to_features(target.lattice, has_lattice)).square().sum(-1)  # [B]
        kl = 0.5 * (out.mu.float().square() + out.logvar.float().exp() - 1.0 - out.logvar.float()).sum(-1)  # [B, N]
        pair_err, local = _local_distance_error(out.pos.float(), target.pos / POS_SCALE, is_mol, LOCAL_CUTOFF / POS_SCALE)  # [B, N, N]
        terms = {
            "types": _masked_mean(ce, mask),
            "pos": _masked_mean(pos_err, is_mol),
            "dist": _masked_mean(pair_err, local),
            "frac": _masked_mean(frac_err, is_xtal),
            "lattice": _masked_mean(lat_err, has_lattice.bool()),
            "kl": _masked_mean(kl, mask),
        }
        if out.bond_logits is not None:
            terms.update(self.graph_loss(out, target))
        return terms

    def graph_loss(self, out: VAEOutput, target: TokenBatch) -> dict[str, Tensor]:
        """Cross-entropy of bond orders over pairs i < j and of formal charges over atoms, for sets with a known graph.

        Sets without a graph (crystals, molecules whose graph could not be derived) add nothing. Plain
        (unweighted) cross-entropy: "no bond" dominates the pairs (~88% in QM9) but is also the easiest
        class once the decoded positions are right, and unweighted logits keep argmax calibrated.
        """
        n = target.mask.shape[1]
        if target.bonds is None:  # no set of the batch has a graph: zero terms that still touch the head
            zero = out.bond_logits.float().sum() * 0.0 + out.charge_logits.float().sum() * 0.0
            return {"bonds": zero, "charges": zero}
        upper = torch.ones(n, n, dtype=torch.bool, device=target.mask.device).triu(1)  # [N, N] pairs i < j
        known = (target.bonds != NO_GRAPH) & upper  # [B, N, N]
        bond_target = target.bonds.clamp_min(0)  # [B, N, N]
        bond_ce = F.cross_entropy(out.bond_logits.float().permute(0, 3, 1, 2), bond_target, reduction="none")  # [B, N, N]
        atom_known = target.has_graph[:, None] & target.mask  # [B, N]
        charge_class = target.charges + CHARGE_OFFSET  # [B, N]
        atom_known = atom_known & (charge_class >= 0) & (charge_class < NUM_CHARGE_CLASSES)
        charge_ce = F.cross_entropy(out.charge_logits.float().transpose(1, 2), charge_class.clamp(0, NUM_CHARGE_CLASSES - 1),
                                    reduction="none")  # [B, N]
        return {"bonds": _masked_mean(bond_ce, known), "charges": _masked_mean(charge_ce, atom_known)}

    # -- initialisation -----------------------------------------------------------------------------
    def initialize_weights(self) -> None:
        self.apply(xavier_linear_init)
        # atom identity must reach the latent: unit-scale type embeddings, as large as the geometry inputs
        nn.init.normal_(self.type_embed.weight, std=1.0)
        for emb in (self.domain_embed, self.decoder_domain_embed):
            nn.init.normal_(emb.weight, std=0.02)
        # start with an informative latent: posterior std exp(-2) ~ 0.14 instead of the prior's 1, which
        # would drown the per-atom codes and leave the decoder predicting marginal atom types (measured)
        nn.init.constant_(self.to_latent.bias[self.latent_dim :], -4.0)
        if self.bond_head is not None:
            self.bond_head.initialize_weights()


def _undo_collapsed(decoded: tuple, refined: tuple, mask: Tensor, domain: Tensor) -> tuple:
    """``(types, bonds, charges, meta, pos)`` of the refinement, except for molecules in which it put two atoms within
    :data:`REFINED_MIN_DISTANCE` of each other (it can collapse rare small rings, e.g. the two N of a diazirine, onto one
    point): those keep the graph and positions decoded before refinement. ``meta[b]['geometry_source']`` says which."""
    pos = refined[4]
    pair = mask[:, :, None] & mask[:, None, :] & ~torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)  # [B, N, N]
    undo = ((torch.cdist(pos.double(), pos.double()) < REFINED_MIN_DISTANCE) & pair).flatten(1).any(1)  # [B]
    undo &= domain == Domain.MOLECULE
    tensors = [torch.where(undo.view(-1, *[1] * (after.dim() - 1)), before, after)
               for before, after in zip(decoded[:3] + decoded[4:], refined[:3] + refined[4:])]  # types, bonds, charges, pos
    meta = [{**(before if u else after), "geometry_source": "decoded" if u else "refined"} if d == Domain.MOLECULE else after
            for before, after, u, d in zip(decoded[3], refined[3], undo.tolist(), domain.tolist())]
    return (*tensors[:3], meta, tensors[3])


def _local_distance_error(pos: Tensor, target: Tensor, atoms: Tensor, cutoff: float) -> tuple[Tensor, Tensor]:
    """Squared error of the pair distances ``[B, N, N]`` and the pairs it counts: atoms of a molecule
    closer than ``cutoff`` in the target (bonds and geminal pairs), i < j.

    Positions are right only up to ~0.2 A when trained by per-atom MSE alone, while bond perception
    and bond orders need each bond length within ~0.1 A; this term weights exactly those lengths.
    """
    d_pred = (pos[:, :, None] - pos[:, None]).square().sum(-1).clamp_min(1e-12).sqrt()  # [B, N, N]
    d_true = (target[:, :, None] - target[:, None]).square().sum(-1).sqrt()  # [B, N, N]
    n = pos.shape[1]
    upper = torch.ones(n, n, dtype=torch.bool, device=pos.device).triu(1)  # [N, N]
    local = atoms[:, :, None] & atoms[:, None] & upper & (d_true < cutoff)  # [B, N, N]
    return (d_pred - d_true).square(), local


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    w = mask.to(x.dtype)
    return (x * w).sum() / w.sum().clamp_min(1.0)


#################################################################################
#                                 Size registry                                 #
#################################################################################

VAE_SIZES: dict[str, dict[str, int]] = {
    "VAE-T": dict(hidden_size=128, encoder_depth=2, decoder_depth=2, num_heads=4),  # tests, CPU smoke
    "VAE-S": dict(hidden_size=256, encoder_depth=4, decoder_depth=4, num_heads=8),  # CPU training
    "VAE-ADiT": dict(hidden_size=512, encoder_depth=8, decoder_depth=8, num_heads=8),  # ADiT scale, GPU
}


def build_vae(size: str, **overrides: int | float) -> AllAtomVAE:
    """A VAE from the size registry, e.g. ``build_vae("VAE-S", latent_dim=8)``."""
    if size not in VAE_SIZES:
        raise KeyError(f"unknown VAE size {size!r}; choose from {sorted(VAE_SIZES)}")
    return AllAtomVAE(**{**VAE_SIZES[size], **overrides})
