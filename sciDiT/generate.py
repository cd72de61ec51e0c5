"""Python API for generation from a trained DiT checkpoint (for notebooks and ``python -m sciDiT.sample``)::

    from sciDiT.generate import load_generator
    gen = load_generator("outputs/run/dit/checkpoints/last.ckpt")
    mols = gen.generate("molecule", n=100, seed=0)          # RDKit molecules with their decoded bonds
    mols = gen.generate("molecule", n=100, refine=False)    # ... positions as decoded (default: refined where the model has a refiner)
    mols = gen.generate("molecule", n=100, relax=True)      # ... geometries minimised (MMFF94/UFF)
    mols = gen.generate("molecule", n=100, autoguidance=2)  # ... guided by a weaker DiT (sharper coordinates)
    gen = load_generator("qm9_mp20_cpu", property_guide="qm9_props.pt")   # a noisy-latent property regressor
    mols = gen.generate("molecule", n=100, condition={"gap": 7.5}, property_guidance=2)  # classifier guidance
    mols = gen.generate("molecule", n=100, discriminator_guidance=20, autoguidance=2)  # tilted towards its valid molecules
    gen = load_generator("qm9_mp20_cpu", discriminator="disc.pt")  # your own discriminator replaces the packed one
    xtals = gen.generate("crystal", n=100, num_atoms=8)     # pymatgen Structures (None if degenerate)
    gen = load_generator("qm9_mp20_cpu", crystal_refiner="cr.pt")  # crystals then refined (refine="auto")
    gen.export(gen.generate_token_sets("molecule", n=1000), "molecules.sdf")

The checkpoint is self-contained (VAE weights, latent statistics, set-size histograms, EMA DiT).
Determinism: sample ``i`` draws its set size and its initial noise from its own CPU generator, seeded
by ``(seed, i)`` (:func:`sample_seed`), so its inputs depend on nothing else: not on ``n``, not on
``batch_size``, not on its batch companions. Batches are formed from samples sorted by size, which
keeps padding small; the sampling loop itself is batched tensor work only (no per-sample Python).
Batched results then agree across batch sizes up to float rounding only: a matrix product's last bits
depend on how many rows it has and where a row sits among them, and padding changes the attention's
reduction lengths; a trained model's ODE can grow those bits into visibly different samples (most of
all under bf16). ``reproducible=True`` integrates and decodes each sample in a batch of
its own (shape ``[1, n_i]``, no padding), so the computation of sample ``i`` is the same call whatever
the batch size or the other samples, and the output is bit-identical for a given seed on the same
machine, software and thread count (one forward pass per sample and step instead of per batch; chunks
of a fixed shape are not enough: measured in experiments/reproducible_sampling/README.md).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import operator
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pymatgen.core import Structure
from rdkit import Chem
from torch import Tensor, nn
from tqdm.auto import tqdm

from sciDiT.batch import Domain, TokenBatch, TokenSet
from sciDiT.data.conditions import (SIZE_KEY, composition_numbers, encode_conditions, finite_number, request_json,
                                    size_distribution, validate_request)
from sciDiT.checkpoint import cast_floats, load_checkpoint, require_stage, restore_ema
from sciDiT.errors import SciDiTInputError
from sciDiT.evaluation.property_predictor import load_screeners, predict, scorable
from sciDiT.export import to_molecules, write_cif_file, write_cif_folder, write_sdf
from sciDiT.export.cif import lattice_problem, to_structure
from sciDiT.flow import DEFAULT_SDE_NOISE, PROPERTY_KNOWN_KEY, PROPERTY_TARGET_KEY, SOLVERS, AutoGuidance, DiscriminatorGuidance, PropertyGuidance
from sciDiT.flow.solvers import NoiseFn
from sciDiT.models.dit import DiT
from sciDiT.models.latent_diffusion import MAX_SET_SIZE, LatentDiffusion
from sciDiT.models.latent_guides import gaussian_log_likelihood
from sciDiT.pretrained import (COMPOSITION_MODEL_KEY, CRYSTAL_REFINER_KEY, DISCRIMINATORS_KEY, GUIDE_KEY, REFINER_KEY, guide_section,
                              model_path)
from sciDiT.tokenizers.elements import NUM_ATOM_TYPES, atomic_number, formula
from sciDiT.tokenizers.symmetry import expand_token_set, multiplicities, spacegroup_number, standard_hall_number, symmetric_lattice
from sciDiT.tokenizers.valence import ValenceGraphDecoder
from sciDiT.training.compile import compile_module
from sciDiT.training.dit_module import CONDITION_STATS_KEY, DiTModule
from sciDiT.training.precision import resolve_bf16
from sciDiT.training.latent_guides import load_discriminator, load_property_regressor, packed_discriminator
from sciDiT.training.composition_model import load_composition_model, packed_composition_model
from sciDiT.training.crystal_refiner import load_crystal_refiner, packed_crystal_refiner
from sciDiT.training.refiner import load_refiner, packed_refiner
from sciDiT.training.targets import check_config

DOMAINS: dict[str, Domain] = {"molecule": Domain.MOLECULE, "crystal": Domain.CRYSTAL}
COMPOSITIONS = ("auto", "argmax", "coherent", "requested", "balanced")  # how crystal atom types are decoded (generate_token_sets)
BOND_DECODINGS = ("argmax", "constrained", "joint")  # how molecules' bond orders are decoded (generate_token_sets)
BOND_MIN_PROB = 1e-2  # the valence rules' least probability of a chosen element, charge or bond
REFINED_BOND_MIN_PROB = 1e-4  # ... when the geometry refiner rebuilds the geometry of the chosen graph (experiments/geometry_refiner)


def parse_domain(domain: str | Domain) -> Domain:
    """``"molecule"`` / ``"crystal"`` (or a :class:`Domain`) -> Domain; one-line error otherwise."""
    if isinstance(domain, Domain) and domain in DOMAINS.values():
        return domain
    if isinstance(domain, str) and domain.lower() in DOMAINS:
        return DOMAINS[domain.lower()]
    raise SciDiTInputError(f"domain={domain!r} is not one of {', '.join(DOMAINS)}")


def usable_device(device: torch.device | str) -> torch.device:
    """``device`` as a torch device, if sampling can run on it here (CPU, or an available CUDA / MPS device)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise SciDiTInputError(f"device={device!r} is not a torch device: {str(err).splitlines()[0]}") from None
    if dev.type == "cuda" and not (torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()):
        raise SciDiTInputError(f"device={str(device)!r} is not usable here: no such CUDA device ({torch.cuda.device_count()} available)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise SciDiTInputError(f"device={str(device)!r} is not usable here: MPS is not available")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise SciDiTInputError(f"device={str(device)!r} is not usable for sampling: use cpu, cuda or mps")
    return dev


class Generator:
    """Samples molecules and crystals from a trained :class:`LatentDiffusion` (see module docstring)."""

    def __init__(self, model: LatentDiffusion, ema_dit: nn.Module, device: torch.device | str = "cpu",
                 condition_stats: Mapping[str, Mapping[str, Any]] | None = None, weak_dit: nn.Module | None = None,
                 regressor: nn.Module | None = None, regressor_stats: Mapping[str, Mapping[str, Any]] | None = None,
                 discriminators: Mapping[str, nn.Module] | None = None, refiner: nn.Module | None = None,
                 crystal_refiner: nn.Module | None = None, screeners: Mapping[str, nn.Module] | None = None, screener_stats: Mapping[str, Mapping[str, Any]] | None = None,
                 composition_model: nn.Module | None = None):
        self.device = usable_device(device)
        self.condition_stats = dict(condition_stats or {})  # the DiT's own conditions (sciDiT.data.conditions)
        self.regressor = None if regressor is None else regressor.to(self.device).eval()  # classifier guidance's p(y | x_t), if any
        self.regressor_stats = dict(regressor_stats or {})  # its properties, in its output order
        # generate-and-screen by molecular structure: predictors of decoded molecules' properties, by property (CPU)
        self.screeners = {k: m.cpu().eval() for k, m in (screeners or {}).items()}
        self.screener_stats = dict(screener_stats or {})  # their training halves' statistics
        # what requests are checked against and sized by: the screeners', the regressor's and the DiT's conditions (the last win)
        self.request_stats = {**self.screener_stats, **self.regressor_stats, **self.condition_stats}
        # discriminator guidance's latent discriminators, by domain name ("molecule", "crystal")
        self.discriminators = {d: m.to(self.device).eval() for d, m in (discriminators or {}).items()}
        self.refiner = None if refiner is None else refiner.to(self.device).eval()  # places decoded molecules' atoms, if any
        # restores decoded crystals' elements, sites and cells, if any
        self.crystal_refiner = None if crystal_refiner is None else crystal_refiner.to(self.device).eval()
        # composition-first crystals: draws each crystal's composition before the DiT places its atoms, if any
        self.composition_model = None if composition_model is None else composition_model.to(self.device).eval()
        self.model = model.to(self.device).eval()
        self.ema_dit = ema_dit.to(self.device).eval()
        self.weak_dit = None if weak_dit is None else weak_dit.to(self.device).eval()  # autoguidance's weaker model, if any
        self._compiled: dict[bool, nn.Module] = {}

    # -- inputs ---------------------------------------------------------------------------------
    def set_sizes(self, domain: Domain, n: int, num_atoms: int | Sequence[int] | None, generators: Sequence[torch.Generator],
                  min_size: int = 1, request: Mapping[str, Any] | None = None) -> Tensor:
        """``[n]`` atom counts: the user's, or drawn (sample ``i`` from ``generators[i]``) from the training sizes of
        ``domain`` given the ``request`` where the checkpoint has size tables for its conditions
        (:func:`sciDiT.data.conditions.size_distribution`), else from the domain's histogram;
        at least ``min_size`` atoms each (e.g. the number of requested elements)."""
        if num_atoms is None:
            weights = None
            if request:
                marginal = self.model.size_counts[int(domain)].cpu().numpy()
                if marginal.sum() > 0:
                    p = size_distribution(request, self.request_stats, marginal)
                    weights = None if p is None else torch.from_numpy(p)
                if weights is None:
                    warnings.warn("this checkpoint has no table of sizes given its conditions: set sizes are drawn from the "
                                  "unconditional histogram (add the tables: experiments/inverse_design/add_size_tables.py)", stacklevel=3)
            try:
                return torch.cat([self.model.sample_set_sizes(domain, 1, g, min_size=min_size, weights=weights) for g in generators])
            except ValueError as err:
                raise SciDiTInputError(str(err)) from err
        sizes = torch.full((n,), int(num_atoms)) if isinstance(num_atoms, int) else torch.as_tensor(list(num_atoms), dtype=torch.long)
        if sizes.shape != (n,):
            raise SciDiTInputError(f"num_atoms has {sizes.numel()} entries for n={n} samples")
        if sizes.min() < 1 or sizes.max() > MAX_SET_SIZE:
            raise SciDiTInputError(f"num_atoms must lie in 1..{MAX_SET_SIZE}, got {sizes.min().item()}..{sizes.max().item()}")
        if sizes.min() < min_size:
            raise SciDiTInputError(f"num_atoms={sizes.min().item()} is fewer than the {min_size} requested elements")
        return sizes

    def _dit(self, use_ema: bool, compile: bool) -> nn.Module:
        dit = self.ema_dit if use_ema else self.model.dit.eval()
        if not compile:
            return dit
        if use_ema not in self._compiled:
            self._compiled[use_ema] = compile_module(dit, self.device.type)
        return self._compiled[use_ema]

    # -- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate_token_sets(
        self,
        domain: str | Domain = "molecule",
        n: int = 100,
        num_atoms: int | Sequence[int] | None = None,
        steps: int = 100,
        method: str = "euler",
        sde_noise: float = DEFAULT_SDE_NOISE,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        seed: int = 0,
        batch_size: int = 256,
        use_ema: bool = True,
        self_condition: bool = True,
        progress: bool = True,
        compile: bool = False,
        bf16: bool | str = "auto",
        composition: str = "auto",
        composition_first: bool | str = "auto",
        composition_temperature: float = 1.0,
        compositions: Sequence[str] | None = None,
        bond_decoding: str = "joint",
        bond_min_prob: float | None = None,
        condition: Mapping[str, Any] | None = None,
        guidance: Mapping[str, float] | None = None,
        allow_extrapolation: bool = False,
        condition_sizes: bool = True,
        reproducible: bool = False,
        autoguidance: float = 1.0,
        autoguidance_interval: Sequence[float] = (0.5, 1.0),
        property_guidance: float = 1.0,
        property_guidance_interval: Sequence[float] = (0.1, 1.0),
        discriminator_guidance: float = 0.0,
        discriminator_guidance_interval: Sequence[float] = (0.1, 1.0),
        property_screen: int = 1,
        refine: bool | str = "auto",
    ) -> list[TokenSet]:
        """``n`` decoded token sets of ``domain`` (sample ``i`` has ``meta['sample_index'] = i``).

        ``num_atoms``: None draws sizes from the training histogram, an int fixes all, a list gives
        each. ``steps``/``method``: solver (ODE: ``euler``, ``heun``, ``midpoint``; ``sde``: Euler-Maruyama
        on the SDE with the flow's marginals, ``sde_noise`` its strength, :func:`sciDiT.flow.stochastic_euler`;
        sample ``i``'s step noise comes from its own generator, so determinism holds as for ODEs); ``cfg_scale``:
        classifier-free guidance on the domain (1 = plain conditional). ``temperature``: the ODE starts from
        noise of this standard deviation instead of 1 (the source noise ``x0`` is scaled; ``sde`` step noise is not):
        below 1 trades diversity for fidelity, as a sampling temperature does; 1 samples the trained model. On MP-20
        it lifts SMACT validity by turning crystals into alloys (``experiments/sampling_temperature``): report it with
        coverage and the element distribution (``tv_elements``, ``all_metal``). ``compile``: torch.compile
        the DiT (dynamic shapes; eager with a one-line warning where inductor is unavailable).
        ``bf16``: bfloat16 autocast for the DiT (decoding stays float32); ``"auto"`` turns it on
        where bf16 is native (GPUs, CPUs with AVX-512 BF16 / AMX). bf16 rounds more coarsely, so
        outputs then agree across batch sizes to bf16 precision rather than float32 precision.
        ``composition`` (crystals): ``auto`` (default) is ``requested`` for a crystal whose composition is fixed
        (``condition.composition``, ``compositions``, ``composition_first``) and ``argmax`` otherwise; ``argmax`` decodes each atom alone; ``coherent`` chooses each
        crystal's element set jointly under the training prior on the number of elements
        (:mod:`sciDiT.models.composition`; fixes the element count, not SMACT validity:
        experiments/crystal_composition/README.md); ``requested`` enforces a ``condition.elements`` request at
        decoding: every atom takes an element of the request and each requested element appears, in the most
        probable such assignment that is charge balanced by SMACT's rules, else the most probable one
        (:func:`sciDiT.tokenizers.oxidation.balanced_types`, :func:`sciDiT.models.composition.requested_types`;
        sizes are drawn with at least that many atoms); a ``condition.composition`` request (which fixes the number
        of atoms) it enforces exactly, each requested atom on its most probable token
        (:func:`sciDiT.models.composition.counted_types`; no charge rule); the DiT's conditioning alone is ``argmax``/``coherent``.
        ``composition_first`` (crystals of a DiT conditioned on ``composition``): each crystal's composition is first drawn
        from the composition model (packed in the model, or ``load_generator(..., composition_model=FILE)``;
        :mod:`sciDiT.models.composition_model`, from sample ``i``'s own random stream) and then requested of the DiT, as
        ``condition.composition`` would be, and enforced at decoding unless ``composition=argmax``
        (experiments/composition_first/README.md). ``auto`` (default): on where the model has a composition model and
        the call fixes no composition, elements or sizes of its own. ``composition_temperature``: the composition model's
        sampling temperature (1, the default, samples the trained model; below 1 draws its likelier compositions more
        often: more of them charge balanced, fewer of them new; a separately named setting, never a headline's).
        ``compositions``: the same with the compositions given, one formula per sample (e.g. those of a test set).
        ``balanced``: each crystal's most probable element assignment (each atom among its three most
        probable elements) whose composition is charge balanced by SMACT's rules
        (:func:`sciDiT.tokenizers.oxidation.balanced_types`; the argmax where none is found). Both need ``smact`` (the ``eval`` extra). ``reproducible``: each sample in a batch of its own,
        bit-identical for a given seed whatever ``batch_size`` or ``n`` (module docstring; ``batch_size`` is then unused).
        ``bond_decoding`` (molecules with a bond head): ``argmax`` takes each pair's most probable
        order (SD ``bond_source=decoded``); ``constrained`` the most probable graph in which every
        atom has its exact valence (:mod:`sciDiT.tokenizers.valence`; ``decoded_constrained``, or the
        argmax graph where none exists); ``joint`` chooses elements, formal charges and bonds together:
        the most probable neutral, closed-shell (and, where one exists, connected) molecule under the
        decoder's distributions (``decoded_joint``; the default, and the argmax graph where none
        exists). Scores of each are separate figures, never mixed.
        ``bond_min_prob``: both valence rules choose only elements, charges and bonds to which the
        decoder gives at least this probability (lower admits more graphs that the decoded geometry does not support);
        None: :data:`BOND_MIN_PROB`, or :data:`REFINED_BOND_MIN_PROB` with ``refine``, where the refiner then builds
        the geometry of the chosen graph and the graph is decoded again on it (experiments/geometry_refiner/README.md).

        ``condition``: a request such as ``{"gap": 6.5}`` (eV) or ``{"spacegroup": 225, "elements":
        ["Li", "Fe", "P", "O"]}`` (keys and units: :mod:`sciDiT.data.conditions`; ``num_atoms`` there
        sizes the sets); conditions not named get their null embedding. Values outside the training
        range (or unseen space groups / elements) are refused unless ``allow_extrapolation``.
        ``guidance``: classifier-free guidance per requested condition, e.g. ``{"gap": 2.0}`` (1 =
        plain conditional; ``domain`` may be named too); give it or ``cfg_scale``, not both.
        A model trained on asymmetric units (``experiment=mp20_spacegroup_cpu``) needs ``condition.spacegroup``:
        each decoded asymmetric unit is expanded with that group's operations in its standard setting (its
        lattice given the group's metric, each atom moved onto its special position), so every crystal holds
        the group exactly (:mod:`sciDiT.tokenizers.symmetry`); ``num_atoms`` then counts the asymmetric unit, and
        ``composition=balanced/requested`` count each unit atom as the atoms of its orbit (the whole cell's composition).
        ``condition_sizes``: draw the set sizes of a request from the training sizes given the requested
        values (EDM's protocol: ``p(num_atoms | condition)``, stored in the checkpoint), not from the
        unconditional histogram; ``num_atoms`` overrides both.
        Every sample's ``meta['request']`` holds the request as JSON (written into SD / manifest files).
        ``autoguidance``: guide the DiT with the weaker DiT packed in the checkpoint (or given to :func:`load_generator`
        as ``guide``) at this scale, for ``t`` in ``autoguidance_interval`` (:class:`sciDiT.flow.AutoGuidance`; 1 = off).
        Late in the path it sharpens coordinates: experiments/autoguidance/README.md.
        ``property_guidance``: with a property regressor (``load_generator(..., property_guide=FILE)``), the requested values
        of its properties steer the sampling by classifier guidance at this scale (1 = Bayes' rule, larger follows the
        request harder, 0 = sizes given the request only), for ``t`` in ``property_guidance_interval``
        (:class:`sciDiT.flow.PropertyGuidance`); it works on unconditional DiTs and adds to a conditional DiT's own
        conditioning. experiments/property_guidance/README.md.
        ``discriminator_guidance``: with a latent discriminator of the domain between the data (or this model's valid samples)
        and this model's own (other) samples (packed in the model, or ``load_generator(..., discriminator=FILE)``), add its
        log density ratio to the score at
        this scale (0 = off, 1 = the correction of Kim et al. 2023) for ``t`` in ``discriminator_guidance_interval``
        (:class:`sciDiT.flow.DiscriminatorGuidance`; experiments/discriminator_guidance/README.md).
        ``property_screen``: generate-and-screen. With screening predictors (``load_generator(..., screen_predictor=...)``,
        SchNets trained on half B) of a requested property: this many candidates per sample are generated and decoded, each
        with its own size, and the one whose decoded molecule the predictors read nearest the request is kept (SD property
        ``screen``; :meth:`_structure_screened`). Else by the property regressor: each sample is the most probable under the
        request, by the regressor's reading of the finished latents, of this many candidates of the same size (one
        decoding). Candidate 0 is the unscreened sample. Separate figures from guidance: nothing is optimised against a
        predictor but the choice among the model's own samples.
        ``refine`` (molecules; ``"auto"``: where the model has a geometry refiner): the geometry refiner packed in the model (or
        ``load_generator(..., refiner=FILE)``) moves each decoded molecule's atoms to the geometry of its decoded graph,
        and the graph is decoded again from the refined geometry, in turns (:mod:`sciDiT.models.refiner`,
        :data:`sciDiT.models.vae.REFINE_ROUNDS`), then the refiner runs again on the last graph up to
        :data:`sciDiT.models.vae.REFINE_PASSES` passes (a learned stage of decoding, not a force field: ``relax`` in
        :meth:`generate` is that). Every molecule's ``meta['geometry_source']`` says
        ``decoded`` or ``refined`` (SD property ``geometry_source``); a refinement that puts two atoms within
        :data:`sciDiT.models.vae.REFINED_MIN_DISTANCE` of each other is undone for that molecule (``decoded``).
        For crystals (``"auto"``: where the model has a crystal refiner, and not for asymmetric-unit models) the crystal
        refiner (:mod:`sciDiT.models.crystal_refiner`; ``load_generator(..., crystal_refiner=FILE)``) restores each decoded
        crystal's element distributions, sites and cell before any ``composition`` rule; ``meta['structure_source']``
        (manifest column ``structure_source``) says ``decoded`` or ``refined``.
        """
        call = {k: v for k, v in locals().items() if k != "self"}  # the arguments, for the candidate runs of a structure screen
        dom = parse_domain(domain)
        _check_positive(n=n, steps=steps, batch_size=batch_size, property_screen=property_screen)
        if method not in SOLVERS:
            raise SciDiTInputError(f"method={method!r} is not one of {', '.join(SOLVERS)}")
        if not (math.isfinite(sde_noise) and sde_noise >= 0):
            raise SciDiTInputError(f"sde_noise must be a finite number >= 0, got {sde_noise}")
        if not math.isfinite(cfg_scale):
            raise SciDiTInputError(f"cfg_scale must be a finite number, got {cfg_scale}")
        for name, value in (("temperature", temperature), ("composition_temperature", composition_temperature)):
            if not (math.isfinite(value) and value > 0):
                raise SciDiTInputError(f"{name} must be a finite number > 0, got {value}")
        interval = _check_autoguidance(autoguidance, autoguidance_interval, self.weak_dit is not None)
        property_interval = _check_interval("property_guidance", property_guidance, property_guidance_interval, open_start=True)
        discriminator_interval = _check_interval("discriminator_guidance", discriminator_guidance, discriminator_guidance_interval, open_start=True)
        if discriminator_guidance != 0.0 and dom.name.lower() not in self.discriminators:
            have = f" (this model has one for {' and '.join(f'{d}s' for d in self.discriminators)} only)" if self.discriminators else ""
            raise SciDiTInputError(f"discriminator_guidance needs a latent discriminator of {dom.name.lower()}s{have}: load_generator(..., "
                                   "discriminator=FILE) (experiments/discriminator_guidance/train_discriminator.py)")
        asymmetric = dom == Domain.CRYSTAL and bool(self.condition_stats.get("spacegroup", {}).get("asymmetric_unit"))
        if refine == "auto":
            refine = (self.refiner is not None and self.model.vae.bond_head is not None if dom == Domain.MOLECULE
                      else self.crystal_refiner is not None and not asymmetric)
        elif not isinstance(refine, bool):
            raise SciDiTInputError(f"refine must be true, false or auto, got {refine!r}")
        if refine and dom == Domain.MOLECULE and (self.refiner is None or self.model.vae.bond_head is None):
            raise SciDiTInputError("refine=true needs a geometry refiner of this model's molecules: load_generator(..., refiner=FILE) "
                                   "(experiments/geometry_refiner/train_refiner.py)")
        if refine and dom == Domain.CRYSTAL and self.crystal_refiner is None:
            raise SciDiTInputError("refine=true needs a crystal refiner of this model: load_generator(..., crystal_refiner=FILE) "
                                   "(experiments/crystal_refiner/train_crystal_refiner.py)")
        if refine and asymmetric:
            raise SciDiTInputError("refine=true refines whole cells; this model generates asymmetric units (use refine=false)")
        if bond_min_prob is None:
            bond_min_prob = REFINED_BOND_MIN_PROB if refine and dom == Domain.MOLECULE else BOND_MIN_PROB
        if not 0.0 < bond_min_prob < 1.0:
            raise SciDiTInputError(f"bond_min_prob must lie in (0, 1), got {bond_min_prob}")
        graph_decoder = (ValenceGraphDecoder(joint=bond_decoding == "joint", min_prob=bond_min_prob)
                         if bond_decoding != "argmax" and dom == Domain.MOLECULE else None)
        try:
            bf16 = resolve_bf16(bf16, self.device)
        except ValueError as err:
            raise SciDiTInputError(str(err)) from None
        if composition not in COMPOSITIONS:
            raise SciDiTInputError(f"composition={composition!r} is not one of {', '.join(COMPOSITIONS)}")
        if bond_decoding not in BOND_DECODINGS:
            raise SciDiTInputError(f"bond_decoding={bond_decoding!r} is not one of {', '.join(BOND_DECODINGS)}")
        coherent = composition == "coherent" and dom == Domain.CRYSTAL
        if coherent and self.model.element_log_prior(dom) is None:
            raise SciDiTInputError("this checkpoint has no element-count prior (trained before it existed): use composition=argmax, or add it "
                                   "with experiments/crystal_composition/add_element_prior.py")
        request = validate_request(condition, dom, self.request_stats, allow_extrapolation)
        dit_request = {k: v for k, v in request.items() if k in self.condition_stats}  # what the DiT's own embedders take
        regressed = [k for k in self.regressor_stats if k in request]  # what classifier guidance steers
        seed = _check_seed(seed)
        gens = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in range(n)]  # one per sample: composition or size, then noise
        allowed, counts = None, None
        atoms, drawn = self._fixed_compositions(dom, request, compositions, composition_first, num_atoms, property_screen, gens,
                                                allow_extrapolation, composition_temperature)
        if composition == "auto":
            composition = "requested" if atoms is not None else "argmax"
        if atoms is not None:
            num_atoms = [len(c) for c in atoms]
            if composition == "requested":
                counts = torch.stack([torch.bincount(torch.tensor(c), minlength=NUM_ATOM_TYPES) for c in atoms])  # [n, T]
        if dom == Domain.CRYSTAL and (composition == "balanced" or (composition == "requested" and counts is None)):
            try:
                import smact  # noqa: F401
            except ImportError:
                raise SciDiTInputError(f"composition={composition} needs smact's oxidation states: pip install 'sciDiT[eval]'") from None
        if composition == "requested" and counts is None:
            if "elements" not in request:
                raise SciDiTInputError("composition=requested enforces condition.elements or condition.composition, and the request names neither")
            allowed = torch.zeros(NUM_ATOM_TYPES, dtype=torch.bool)
            allowed[[atomic_number(el) for el in request["elements"]]] = True
        hall = None
        if dom == Domain.CRYSTAL and self.condition_stats.get("spacegroup", {}).get("asymmetric_unit"):
            if "spacegroup" not in request:
                raise SciDiTInputError("this model generates asymmetric units: request a space group, e.g. condition.spacegroup=225")
            if composition == "coherent":
                raise SciDiTInputError("composition=coherent uses a prior over whole cells; this model generates asymmetric units "
                                       "(use composition=argmax, balanced or requested)")
            hall = standard_hall_number(request["spacegroup"])
        if SIZE_KEY in request:
            if num_atoms is not None:
                raise SciDiTInputError("give num_atoms or condition.num_atoms, not both")
            num_atoms = request[SIZE_KEY]
        screened = [k for k in self.screeners if k in request]  # what a structure screen chooses by
        if property_screen > 1 and not (regressed or screened):
            known = [*self.screeners, *self.regressor_stats]
            raise SciDiTInputError("property_screen chooses by the screening predictors or the property regressor: request one of their "
                                   f"properties ({', '.join(known) or 'none loaded: load_generator(..., screen_predictor=... or property_guide=...)'})")
        if property_screen > 1 and screened:
            return self._structure_screened(call, request, screened)
        scale = _guidance(guidance, {**dit_request, **({"composition": drawn} if drawn else {})}, cfg_scale)
        request_cond = encode_conditions([request], self.condition_stats, [k for k in dit_request if k != "composition"])  # one set's tensors
        # each set's composition, from its atomic numbers: [n, ...]
        set_cond = {} if atoms is None else encode_conditions([{"composition": a} for a in atoms], self.condition_stats, ["composition"])
        if regressed:
            stats = self.regressor_stats
            request_cond[PROPERTY_TARGET_KEY] = torch.tensor([[(request[k] - stats[k]["mean"]) / stats[k]["std"] if k in request else 0.0
                                                              for k in stats]], dtype=torch.float32)  # [1, P]
            request_cond[PROPERTY_KNOWN_KEY] = torch.tensor([[float(k in request) for k in stats]])  # [1, P]
        sizes = self.set_sizes(dom, n, num_atoms, gens, min_size=1 if allowed is None else int(allowed.sum()),
                               request=request if condition_sizes else None)  # [n]
        latent_dim = self.model.vae.latent_dim
        noise = temperature * torch.cat([torch.randn(int(k), latent_dim, generator=g) for k, g in zip(sizes, gens)])  # [sum sizes, L], in sample order
        offsets = torch.cumsum(sizes, 0) - sizes  # [n] first noise row of each sample
        k = property_screen
        screen_gens = [[torch.Generator().manual_seed(candidate_seed(seed, i, c)) for c in range(1, k)] for i in range(n)]  # candidates 1..k-1
        screen_noise = [[temperature * torch.randn(int(sizes[i]), latent_dim, generator=g) for g in row] for i, row in enumerate(screen_gens)]
        order = torch.argsort(sizes, stable=True)  # batches of similar sizes: little padding
        batches = torch.arange(n).split(1) if reproducible else order.split(batch_size)
        dit = self._dit(use_ema, compile)
        if autoguidance != 1.0:
            dit = AutoGuidance(dit, self.weak_dit, autoguidance, *interval)
        if discriminator_guidance != 0.0:
            dit = DiscriminatorGuidance(dit, self.discriminators[dom.name.lower()], discriminator_guidance, *discriminator_interval)
        if regressed and property_guidance != 0.0:
            dit = PropertyGuidance(dit, self.regressor, property_guidance, *property_interval)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        out: list[TokenSet | None] = [None] * n
        with tqdm(total=n, desc=f"sampling {dom.name.lower()}s", unit="set", disable=not progress) as bar:
            for idx in batches:
                n_max = int(sizes[idx].max())
                arange = torch.arange(n_max)
                mask = arange[None, :] < sizes[idx, None]  # [b, N]
                x0 = torch.zeros(len(idx), k, n_max, latent_dim)  # [b, k, N, L]: candidate 0 is the sample's own noise
                x0[:, 0][mask] = noise[(offsets[idx, None] + arange[None, :])[mask]]
                for j, i in enumerate(idx.tolist()):
                    for c, extra in enumerate(screen_noise[i], start=1):
                        x0[j, c, : len(extra)] = extra
                rows = idx.repeat_interleave(k)  # [b k] the sample of each candidate row
                row_gens = [g for i in idx.tolist() for g in [gens[i], *screen_gens[i]]]
                dom_t = torch.full((len(rows),), int(dom), dtype=torch.long)  # [b k]
                cond = {key: v.expand(len(rows), *v.shape[1:]) for key, v in request_cond.items()}  # the same request for every set
                cond.update({key: v[rows] for key, v in set_cond.items()})  # and each set's composition
                with autocast:
                    x1, row_mask = self.model.sample_latents(dom_t, sizes[rows], x0=x0.flatten(0, 1), dit=dit, steps=steps, method=method,
                                                             cfg_scale=scale, cond=cond, sde_noise=sde_noise,
                                                             noise_fn=_step_noise(sizes[rows], row_gens, latent_dim),
                                                             self_condition=self_condition and self.ema_dit.self_condition)  # [b k, N, L], [b k, N]
                if k > 1:
                    x1 = self._screened(x1.float(), row_mask, request_cond[PROPERTY_TARGET_KEY], request_cond[PROPERTY_KNOWN_KEY], k)  # [b, N, L]
                decoded = self.model.decode_latents(x1, row_mask[::k], dom_t[::k], coherent_elements=coherent,
                                                    allowed_elements=None if allowed is None else allowed.expand(len(idx), -1),
                                                    charge_balanced=composition == "balanced",
                                                    site_weights=None if hall is None else functools.partial(_unit_weights, hall),
                                                    graph_decoder=graph_decoder, refiner=self.refiner if refine and dom == Domain.MOLECULE else None,
                                                    crystal_refiner=self.crystal_refiner if refine and dom == Domain.CRYSTAL else None,
                                                    element_counts=None if counts is None else counts[idx])
                decoded = decoded.to("cpu")
                _check_finite(decoded)
                for i, ts in zip(idx.tolist(), decoded.unbatch()):
                    ts = ts if hall is None else _expand(ts, hall)
                    asked = request if drawn is None else {**request, "composition": drawn[i]}
                    ts.meta = {**ts.meta, "sample_index": i, **({"request": request_json(asked)} if asked else {})}
                    if dom == Domain.MOLECULE:
                        ts.meta.setdefault("geometry_source", "decoded")  # "refined" where the refiner placed the atoms
                    else:
                        ts.meta["structure_source"] = "refined" if refine else "decoded"
                    out[i] = ts
                bar.update(len(idx))
        return out  # type: ignore[return-value]  # every slot is filled

    def _fixed_compositions(self, dom: Domain, request: Mapping[str, Any], compositions: Sequence[str] | None,
                            composition_first: bool | str, num_atoms: Any, property_screen: int, gens: Sequence[torch.Generator],
                            allow_extrapolation: bool, temperature: float = 1.0) -> tuple[list[list[int]] | None, list[str] | None]:
        """Each sample's fixed composition (atomic numbers, one per atom) where ``condition.composition`` requests one, ``compositions``
        gives them or ``composition_first`` draws them (from sample ``i``'s stream ``gens[i]``, at ``temperature``), else None; and the formulas of the
        given or drawn ones (each sample's own request), else None. One-line errors for combinations that cannot hold."""
        n = len(gens)
        if composition_first == "auto":
            composition_first = (dom == Domain.CRYSTAL and self.composition_model is not None and "composition" in self.condition_stats
                                 and compositions is None and num_atoms is None and property_screen == 1
                                 and not {"composition", "elements", SIZE_KEY} & set(request))
        elif not isinstance(composition_first, bool):
            raise SciDiTInputError(f"composition_first must be true, false or auto, got {composition_first!r}")
        per_sample = compositions is not None or composition_first
        if not per_sample and "composition" not in request:
            return None, None
        if "elements" in request or SIZE_KEY in request or num_atoms is not None or property_screen > 1:
            raise SciDiTInputError("a composition (condition.composition, compositions or composition_first) fixes the elements and the "
                                   "number of atoms: give no condition.elements, num_atoms or property_screen with it")
        if not per_sample:
            return [composition_numbers(request["composition"])] * n, None
        if "composition" in request:
            raise SciDiTInputError("compositions / composition_first give each crystal its own composition: request none (condition.composition)")
        if compositions is not None and composition_first:
            raise SciDiTInputError("give compositions or composition_first, not both")
        if dom != Domain.CRYSTAL or "composition" not in self.condition_stats:
            raise SciDiTInputError("compositions / composition_first need crystals and a DiT conditioned on composition "
                                   "(experiment=mp20_composition_cpu; experiments/composition_first)")
        if composition_first:
            if self.composition_model is None:
                raise SciDiTInputError("composition_first=true draws compositions from a composition model: load_generator(..., "
                                       "composition_model=FILE) (experiments/composition_first/train_composition_model.py)")
            atoms = self.composition_model.draw(gens, temperature)
            return atoms, [formula(a) for a in atoms]
        if isinstance(compositions, str) or len(compositions) != n:
            raise SciDiTInputError(f"compositions must be a list of n={n} formulas, one per sample")
        drawn = [validate_request({"composition": c}, dom, self.request_stats, allow_extrapolation)["composition"] for c in compositions]
        return [composition_numbers(f) for f in drawn], drawn

    @torch.no_grad()
    def _screened(self, x1: Tensor, mask: Tensor, target: Tensor, known: Tensor, k: int) -> Tensor:
        """Of each ``k`` consecutive candidate latents ``x1 [b k, N, L]``, the one whose regressor reading at ``t = 1`` is most
        probable under the standardised request ``target [1, P]`` (where ``known``): ``[b, N, L]``."""
        mean, log_var = self.regressor(x1, torch.ones(len(x1), device=x1.device), mask)  # [b k, P], [b k, P]
        log_p = gaussian_log_likelihood(mean, log_var, target, known)  # [b k]
        best = log_p.view(-1, k).argmax(-1)  # [b]
        return x1.view(-1, k, *x1.shape[1:])[torch.arange(len(best)), best]  # [b, N, L]

    def _structure_screened(self, call: dict[str, Any], request: Mapping[str, Any], keys: Sequence[str]) -> list[TokenSet]:
        """Generate-and-screen by the decoded molecules: ``call["property_screen"]`` runs of ``call``'s samples (run 0 with the
        given seed, so candidate 0 is the unscreened sample; each candidate its own size, drawn given the request), each
        decoded and read by the screening predictors of ``keys``; sample ``i`` is, of its candidates (sample ``i`` of each run),
        the one whose predictions lie nearest the request (sum over ``keys`` of |prediction - request| / the property's
        training std); a candidate the predictors cannot read (:func:`scorable`) is never chosen unless none can be read.
        ``meta['screen']`` records the candidates and the chosen one's predictions (JSON)."""
        k, seed = call["property_screen"], _check_seed(call["seed"])
        runs = [self.generate_token_sets(**{**call, "property_screen": 1, "seed": seed if c == 0 else screen_seed(seed, c)})
                for c in range(k)]  # k x [n]
        ok = np.array([[scorable(ts) for ts in sets] for sets in runs])  # [k, n] molecules the predictors can read
        preds = {key: np.full(ok.shape, np.nan) for key in keys}  # key -> [k, n]
        for c, sets in enumerate(runs):
            for key, p in preds.items():
                p[c, ok[c]] = predict(self.screeners[key], [ts for ts, good in zip(sets, ok[c]) if good])
        error = sum(np.abs(p - request[key]) / self.screener_stats[key]["std"] for key, p in preds.items())  # [k, n]
        error = np.where(ok, error, np.inf)  # an unreadable candidate is chosen only when all are (then candidate 0)
        out = []
        for i, c in enumerate(error.argmin(0).tolist()):
            ts = runs[c][i]
            screen = {"candidates": k, "chosen": c, **{f"predicted_{key}": round(float(p[c, i]), 4) for key, p in preds.items() if ok[c, i]}}
            ts.meta = {**ts.meta, "screen": json.dumps(screen, sort_keys=True)}
            out.append(ts)
        return out

    def generate(
        self, domain: str | Domain = "molecule", n: int = 100, relax: bool = False, **kwargs
    ) -> list[Chem.Mol] | list[Structure | None]:
        """RDKit molecules (SD properties as in :mod:`sciDiT.export.sdf`) or pymatgen Structures.

        Molecules carry the decoded graph (``bond_source=decoded``), or bonds perceived from the
        coordinates when the VAE has no bond head (``perceived``); ``relax``: force-field minimised
        geometries (molecules only). Takes the arguments of :meth:`generate_token_sets`. Crystals whose
        decoded lattice is degenerate come back as None, so list positions still match sample indices.
        """
        sets = self.generate_token_sets(domain, n, **kwargs)
        if parse_domain(domain) == Domain.MOLECULE:
            return to_molecules(sets, relax=relax)
        return [to_structure(ts, i)[0] for i, ts in enumerate(sets)]

    # -- files ----------------------------------------------------------------------------------
    @staticmethod
    def export(samples: Sequence[TokenSet | Chem.Mol | Structure], out: str | Path, relax: bool = False) -> Path:
        """Write samples to files: molecules to an SDF file, crystals to a folder of CIFs (or one ``.cif`` file).

        ``relax``: force-field minimised molecule geometries (see :func:`sciDiT.export.relax_molecule`).
        """
        if not samples:
            raise SciDiTInputError("nothing to export: no samples")
        first = samples[0]
        is_molecule = isinstance(first, Chem.Mol) or (isinstance(first, TokenSet) and first.domain == Domain.MOLECULE)
        out = Path(out)
        if is_molecule:
            return write_sdf(samples, out, relax=relax)
        if out.suffix.lower() == ".cif":
            write_cif_file(samples, out)
        else:
            write_cif_folder(samples, out)
        return out


def _degenerate(lattice: Tensor, hall: int) -> bool:
    """Whether even the metric of group ``hall`` leaves decoded ``lattice [6]`` degenerate: the unit then stays unexpanded."""
    return bool(lattice_problem(symmetric_lattice(lattice.double().numpy(), spacegroup_number(hall)).tolist()))


def _expand(ts: TokenSet, hall: int) -> TokenSet:
    """A decoded asymmetric unit expanded in setting ``hall`` (:func:`sciDiT.tokenizers.symmetry.expand`); left as
    decoded where its lattice is degenerate (the export lists the lattice problem)."""
    return ts if _degenerate(ts.lattice, hall) else expand_token_set(ts, hall)


def _unit_weights(hall: int, frac: Tensor, lattice: Tensor) -> Tensor:
    """``[n]`` atoms of the expanded crystal per atom of a decoded asymmetric unit (:func:`sciDiT.tokenizers.symmetry.multiplicities`):
    how ``composition=balanced/requested`` count it; ones where the unit stays unexpanded (as :func:`_expand`)."""
    if _degenerate(lattice, hall):
        return torch.ones(len(frac), dtype=torch.long)
    return torch.from_numpy(multiplicities(hall, lattice.double().numpy(), frac.double().numpy()))


def _step_noise(sizes: Tensor, generators: Sequence[torch.Generator], latent_dim: int) -> NoiseFn:
    """``sde`` step noise ``[b, N, L]`` for a batch: set ``j`` draws its ``sizes[j]`` rows from its own
    generator (after its initial noise), so its draws do not depend on its batch companions."""
    def draw() -> Tensor:
        out = torch.zeros(len(sizes), int(sizes.max()), latent_dim)  # [b, N, L], zeros at padding
        for j, (k, g) in enumerate(zip(sizes.tolist(), generators)):
            out[j, :k] = torch.randn(k, latent_dim, generator=g)
        return out
    return draw


def _check_finite(batch: TokenBatch) -> None:
    """One-line error, before anything is written, when decoded coordinates or lattices are NaN/inf."""
    finite = torch.isfinite(batch.pos).all(-1) & torch.isfinite(batch.frac).all(-1)  # [b, N]
    bad = int((~(finite | ~batch.mask).all(1) | ~torch.isfinite(batch.lattice).all(1)).sum())
    if bad:
        raise SciDiTInputError(f"generation produced non-finite coordinates (NaN or inf) in {bad} sample(s): "
                               "the checkpoint's weights are likely diverged; nothing was written")


def _guidance(guidance: Mapping[str, float] | None, request: Mapping[str, Any], cfg_scale: float) -> float | dict[str, float]:
    """The solver's guidance: ``cfg_scale`` (all conditions at once) or ``{condition: scale}``; one-line errors."""
    if not guidance:
        return cfg_scale
    if cfg_scale != 1.0:
        raise SciDiTInputError("give cfg_scale or per-condition guidance (guidance.KEY=...), not both")
    out = {}
    for key, value in guidance.items():
        if key != "domain" and (key not in request or key == SIZE_KEY):
            raise SciDiTInputError(f"guidance.{key}: only requested conditions of the DiT (or domain) take classifier-free guidance; requested: "
                                   f"{', '.join(request) or 'none'} (a property steered by a regressor takes property_guidance=)")
        out[key] = finite_number(f"guidance.{key}", value)
    return out


def _check_interval(name: str, scale: float, interval: Sequence[float], open_start: bool) -> tuple[float, float]:
    """A guidance's time interval as two floats; one-line errors naming ``name`` for a bad scale or interval
    (``open_start``: ``t_min`` must be above 0, as score guidance's ``1 / t`` needs)."""
    if not math.isfinite(scale):
        raise SciDiTInputError(f"{name} must be a finite number, got {scale}")
    try:
        t_min, t_max = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise SciDiTInputError(f"{name}_interval must be two times [t_min, t_max], got {interval!r}") from None
    if not (0.0 < t_min if open_start else 0.0 <= t_min) or not t_min < t_max <= 1.0:
        raise SciDiTInputError(f"{name}_interval must satisfy 0 {'<' if open_start else '<='} t_min < t_max <= 1, got [{t_min}, {t_max}]")
    return t_min, t_max


def _check_autoguidance(scale: float, interval: Sequence[float], has_weak: bool) -> tuple[float, float]:
    """The autoguidance interval (:func:`_check_interval`); one-line error when there is no weak model to guide with."""
    t_min, t_max = _check_interval("autoguidance", scale, interval, open_start=False)
    if scale != 1.0 and not has_weak:
        raise SciDiTInputError("autoguidance needs a weaker DiT on the same VAE: this checkpoint carries none; give one with "
                               "guide=<dit checkpoint> (or pack it: python -m sciDiT.pretrained ... guide=...)")
    return t_min, t_max


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SciDiTInputError(f"{name} must be a positive integer, got {value!r}")


def _mixed_seed(*entropy: int) -> int:
    """A 64-bit seed from NumPy's SeedSequence of ``entropy`` (well mixed, stable across versions)."""
    low, high = np.random.SeedSequence(list(entropy)).generate_state(2, np.uint32)
    return int(low) | int(high) << 32


def sample_seed(seed: int, index: int) -> int:
    """The 64-bit seed of sample ``index``'s generator under ``seed``."""
    return _mixed_seed(seed % 2**64, index)


def candidate_seed(seed: int, index: int, candidate: int) -> int:
    """The 64-bit seed of candidate ``candidate`` >= 1 of sample ``index`` (``property_screen``); candidate 0 is :func:`sample_seed`."""
    return _mixed_seed(seed % 2**64, index, candidate)


def screen_seed(seed: int, run: int) -> int:
    """The seed of candidate run ``run`` >= 1 of a structure screen (``property_screen`` with screening predictors)."""
    return _mixed_seed(seed % 2**64, 2**32, run)  # a third entropy word apart from candidate_seed's sample indices


def _check_seed(seed: int) -> int:
    """``seed`` as an int that ``torch.Generator.manual_seed`` takes (numpy integers too); one-line error otherwise."""
    try:
        value = operator.index(seed)
    except TypeError:
        value = None
    if value is None or isinstance(seed, bool) or not -(2**63) <= value < 2**64:
        raise SciDiTInputError(f"seed must be an integer that fits in 64 bits (torch.Generator), got {seed!r}")
    return value


def load_generator(ckpt: str | Path, device: str | torch.device = "cpu", guide: str | Path | None = None,
                   property_guide: str | Path | None = None, discriminator: str | Path | None = None,
                   refiner: str | Path | None = None, screen_predictor: str | Path | None = None,
                   crystal_refiner: str | Path | None = None, composition_model: str | Path | None = None) -> Generator:
    """A :class:`Generator` from a DiT-stage checkpoint (``<output_dir>/dit/checkpoints/last.ckpt``)
    or from the name of a model shipped in the package (``load_generator("qm9_mp20_cpu")``, see
    :mod:`sciDiT.pretrained`). ``guide``: a weaker DiT-stage checkpoint on the same VAE for autoguidance
    (default: the one packed in ``ckpt``, if any). ``property_guide``: a noisy-latent property regressor trained on the
    same VAE (:mod:`sciDiT.training.latent_guides`), for classifier guidance towards requested property values.
    ``discriminator``: a latent discriminator between the data (or the model's valid samples) and this model's samples, for
    discriminator guidance (default: those packed in ``ckpt``, one per domain; a file replaces the packed one of its domain).
    ``refiner``: a geometry refiner of the model's molecules, for ``refine=True`` (default: the one packed in ``ckpt``, if any):
    a refiner file, or a model file or shipped name that packs one (``refiner="qm9_mp20_cpu"`` for a DiT trained on its VAE).
    ``crystal_refiner``: a crystal refiner of the model, for ``refine`` of crystals (default: the one packed in ``ckpt``, if
    any): a file, or a model file or shipped name that packs one.
    ``composition_model``: a composition model for ``composition_first`` crystals (default: the one packed in ``ckpt``, if
    any): a file (``experiments/composition_first/train_composition_model.py``), or a model file or shipped name that packs one.
    ``screen_predictor``: QM9 property predictors trained on half B (a file or a folder, one per property:
    ``experiments/inverse_design/train_property_predictor.py --half B``), for ``property_screen`` by the decoded molecules.

    The file is read without executing code (:mod:`sciDiT.checkpoint`); a missing, unreadable,
    unsafe or wrong-stage file is a SciDiTInputError naming it.
    """
    usable_device(device)  # before reading anything, so a bad device fails fast
    path = model_path(ckpt)
    raw = load_checkpoint(path, "checkpoint")  # weights only: nothing in the file runs
    require_stage(raw, "dit", path, "sampling needs <output_dir>/dit/checkpoints/*.ckpt")
    hparams = raw["hyper_parameters"]
    check_config(hparams, "hyper_parameters")
    state = restore_ema(raw["state_dict"])  # shipped models carry the EMA weights once
    if not any(k.startswith("model.vae.bond_head.") for k in state):  # a VAE trained before the bond head: perceive bonds
        hparams = {**hparams, "vae": {**hparams["vae"], "bond_head": False}}
    try:
        module = DiTModule(**hparams)
        module.load_state_dict(state)
    except (RuntimeError, TypeError) as err:
        raise SciDiTInputError(f"checkpoint weights do not fit its hyperparameters: {str(err).splitlines()[0]}", path) from err
    if not bool(module.model.prepared):
        raise SciDiTInputError("checkpoint has no latent statistics or set-size histograms (saved before DiT training started)", path)
    section = guide_section(state, hparams, model_path(guide)) if guide is not None else raw.get(GUIDE_KEY)
    weak = None
    if section is not None:
        weak = DiT(latent_dim=module.model.vae.latent_dim, **section["dit"])
        try:
            weak.load_state_dict(cast_floats(section["state_dict"], torch.float32))
        except RuntimeError as err:
            raise SciDiTInputError(f"the guide's weights do not fit its hyperparameters: {str(err).splitlines()[0]}", guide or path) from err
    regressor, regressor_stats = None, None
    if property_guide is not None:
        regressor, contents = load_property_regressor(property_guide, *module.model.latent_frame())
        regressor_stats = {k: contents["condition_stats"][k] for k in contents["properties"]}
    discriminators = {domain: packed_discriminator(entry, path) for domain, entry in raw.get(DISCRIMINATORS_KEY, {}).items()}
    if discriminator is not None:  # replaces the packed one of its domain
        disc, contents = load_discriminator(discriminator, *module.model.latent_frame())
        discriminators[contents["domain"]] = disc
    if refiner is not None:
        geometry_refiner = load_refiner(model_path(refiner), module.model.latent_mean, module.model.latent_std, packed_key=REFINER_KEY)[0]
    else:
        geometry_refiner = packed_refiner(raw[REFINER_KEY], path) if REFINER_KEY in raw else None
    if crystal_refiner is not None:
        xtal_refiner = load_crystal_refiner(model_path(crystal_refiner), module.model.latent_mean, module.model.latent_std,
                                            packed_key=CRYSTAL_REFINER_KEY)[0]
    else:
        xtal_refiner = packed_crystal_refiner(raw[CRYSTAL_REFINER_KEY], path) if CRYSTAL_REFINER_KEY in raw else None
    screeners = load_screeners(screen_predictor) if screen_predictor is not None else {}
    if composition_model is not None:
        compositions = load_composition_model(model_path(composition_model), packed_key=COMPOSITION_MODEL_KEY)[0]
    else:
        compositions = packed_composition_model(raw[COMPOSITION_MODEL_KEY], path) if COMPOSITION_MODEL_KEY in raw else None
    try:
        return Generator(module.model, module.ema.module, device, condition_stats=raw.get(CONDITION_STATS_KEY), weak_dit=weak,
                         regressor=regressor, regressor_stats=regressor_stats, discriminators=discriminators, refiner=geometry_refiner,
                         crystal_refiner=xtal_refiner, composition_model=compositions,
                         screeners={k: m for k, (m, _) in screeners.items()}, screener_stats={k: st for k, (_, st) in screeners.items()})
    except (RuntimeError, AssertionError) as err:
        raise SciDiTInputError(f"device={device!r} is not usable here: {str(err).splitlines()[0]}") from err
