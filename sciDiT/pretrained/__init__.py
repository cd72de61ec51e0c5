"""Models shipped inside the package, trained by sciDiT's own training command (see each model card).

``load_generator("qm9_mp20_cpu")`` and ``python -m sciDiT.sample pretrained=qm9_mp20_cpu ...`` read
them from this folder: no download, no training. A shipped file is a slim DiT-stage checkpoint made
by :func:`export_pretrained`: hyper-parameters, the frozen VAE, latent statistics, set-size
histograms, a conditional model's condition statistics and the EMA DiT weights (stored as
``model.dit.*``; the raw, non-averaged weights and the optimiser state are dropped), loadable with
``torch.load(weights_only=True)``. A file may also carry a ``guide`` section: the EMA weights of a weaker
DiT trained on the same VAE, for autoguidance (:func:`guide_section`), and a ``discriminators`` section: per
domain, a latent discriminator trained on the model's own samples, for discriminator guidance
(:func:`discriminator_entry`), a ``refiner`` section: the geometry refiner of its molecules (:func:`refiner_entry`), and a ``crystal_refiner``
section: the refiner of its crystals (:func:`crystal_refiner_entry`), and a ``composition_model`` section: the model of compositions
that composition-first sampling draws from (:func:`composition_model_entry`). The model card ``<name>.md`` beside it says data, steps, command and measured metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sciDiT.checkpoint import EMA_PREFIX, cast_floats, latent_stat_mismatch, load_checkpoint, require_stage, restore_ema, slim_state
from sciDiT.errors import SciDiTInputError

FOLDER = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the shipped models (a ``<name>.pt`` with its ``<name>.md`` card in this folder)."""
    return sorted(p.stem for p in FOLDER.glob("*.pt") if p.with_suffix(".md").is_file())


def pretrained_path(name: str) -> Path:
    """The weights file of shipped model ``name``; one-line error naming the available ones otherwise."""
    if name not in available():
        raise SciDiTInputError(f"no pretrained model {name!r}; shipped: {', '.join(available()) or 'none'}")
    return FOLDER / f"{name}.pt"


def model_path(ckpt: str | Path) -> Path:
    """A file path as it is, or a bare name (no folder, no suffix, no such file) as that shipped model's weights file
    (one-line error listing the shipped ones otherwise)."""
    path = Path(ckpt)
    if isinstance(ckpt, str) and not path.exists() and path.name == ckpt and not path.suffix:
        return pretrained_path(ckpt)
    return path


def changed_encoder_tensors(vae_hparams: dict[str, Any], state: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> list[str]:
    """Keys ``model.vae.*`` of the VAE encoder's tensors that differ between two DiT-module state dicts: a DiT
    samples its encoder's latents, so only a decoder or a guide on an equal encoder fits it."""
    from sciDiT.models.vae import AllAtomVAE

    vae = AllAtomVAE(**vae_hparams)
    frozen = {id(p) for p in vae.encoder_modules().parameters()}
    keys = [f"model.vae.{k}" for k, p in vae.named_parameters() if id(p) in frozen]
    return [k for k in keys if not torch.equal(state[k], other[k])]


def with_decoder(state: dict[str, torch.Tensor], vae_hparams: dict[str, Any], decoder_ckpt: str | Path) -> dict[str, torch.Tensor]:
    """A DiT module's ``state`` with the VAE decoder of VAE-stage checkpoint ``decoder_ckpt``.

    Only a decoder fine-tuned on the *same* encoder fits (``vae.train_decoder_only=true``): the DiT
    samples that encoder's latents. One line naming the file when the encoder or the sizes differ.
    """
    from sciDiT.checkpoint import load_vae_checkpoint

    vae_state, hparams = load_vae_checkpoint(str(decoder_ckpt), what="decoder")
    if dict(hparams["vae"]) != dict(vae_hparams):
        raise SciDiTInputError(f"its VAE sizes {dict(hparams['vae'])} differ from the DiT checkpoint's {dict(vae_hparams)}", decoder_ckpt)
    changed = changed_encoder_tensors(vae_hparams, state, {f"model.vae.{k}": v for k, v in vae_state.items()})
    if changed:
        raise SciDiTInputError(f"its encoder differs from the DiT's ({len(changed)} tensors, e.g. {changed[0]}): only a decoder "
                               "fine-tuned with vae.train_decoder_only=true from the DiT's own VAE fits", decoder_ckpt)
    return {**state, **{f"model.vae.{k}": v for k, v in vae_state.items()}}


GUIDE_KEY = "guide"


def state_frame(state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each domain's latent standardisation (:func:`sciDiT.models.latent_diffusion.latent_frame`) of a DiT module's ``state``
    (identity per-domain statistics where the state predates them)."""
    from sciDiT.models.latent_diffusion import latent_frame

    return latent_frame(state["model.latent_mean"], state["model.latent_std"], state.get("model.domain_mean"), state.get("model.domain_std"))


def guide_section(state: dict[str, torch.Tensor], hparams: dict[str, Any], guide_ckpt: str | Path) -> dict[str, Any]:
    """The ``guide`` section for a DiT module's ``state``: the EMA DiT of DiT-stage checkpoint ``guide_ckpt``
    (its hyper-parameters, weights in bfloat16, its training steps), for :class:`sciDiT.flow.AutoGuidance`.

    Only a DiT trained on the same latents fits: the same VAE sizes and encoder weights, and latent
    statistics within :data:`sciDiT.checkpoint.LATENT_STAT_TOLERANCE`. One line naming the file otherwise.
    """
    raw = load_checkpoint(guide_ckpt, "guide checkpoint")
    require_stage(raw, "dit", guide_ckpt, "guide= takes a DiT trained on the same VAE")
    guide_state = restore_ema(raw["state_dict"])
    if dict(raw["hyper_parameters"]["vae"]) != dict(hparams["vae"]):
        raise SciDiTInputError("its VAE sizes differ from the model's: a guide must be trained on the same VAE", guide_ckpt)
    changed = changed_encoder_tensors(hparams["vae"], state, guide_state)
    if changed:
        raise SciDiTInputError(f"its VAE encoder differs from the model's ({len(changed)} tensors, e.g. {changed[0]}): a guide must sample "
                               "the same latents (train it with dit.vae_ckpt=<this model>)", guide_ckpt)
    mismatch = latent_stat_mismatch(*state_frame(state), *state_frame(guide_state))
    if mismatch:
        raise SciDiTInputError(f"its latent statistics differ from the model's ({mismatch})", guide_ckpt)
    weights = cast_floats({k.removeprefix(EMA_PREFIX): v for k, v in guide_state.items() if k.startswith(EMA_PREFIX)}, torch.bfloat16)
    return {"dit": dict(raw["hyper_parameters"]["dit"]), "state_dict": weights, "global_step": int(raw.get("global_step", 0))}


DISCRIMINATORS_KEY = "discriminators"


def discriminator_entry(state: dict[str, torch.Tensor], path: str | Path) -> tuple[str, dict[str, Any]]:
    """The domain and packed entry (sizes, weights in bfloat16, the file's training facts) of the latent discriminator
    file ``path`` (``experiments/discriminator_guidance/train_discriminator.py``) for a DiT module's ``state``; one
    line naming the file when it was trained on other latents (:func:`sciDiT.training.latent_guides.load_discriminator`)."""
    from sciDiT.training.latent_guides import load_discriminator

    _, contents = load_discriminator(path, *state_frame(state))
    weights = cast_floats(contents["state_dict"], torch.bfloat16)
    return contents["domain"], {"hparams": dict(contents["hparams"]), "state_dict": weights, "info": dict(contents["info"])}


REFINER_KEY = "refiner"


def refiner_entry(state: dict[str, torch.Tensor], path: str | Path) -> dict[str, Any]:
    """The packed entry (sizes, float32 weights, the file's training facts) of the geometry refiner file ``path``
    (``experiments/geometry_refiner/train_refiner.py``) for a DiT module's ``state``; one line naming the file when it
    learned the decodes of another VAE (:func:`sciDiT.training.refiner.load_refiner`). Float32: the refiner places
    atoms to a few pm, and it is small."""
    from sciDiT.training.refiner import load_refiner

    _, contents = load_refiner(path, state["model.latent_mean"], state["model.latent_std"])
    return {"hparams": dict(contents["hparams"]), "state_dict": contents["state_dict"], "info": dict(contents["info"])}


CRYSTAL_REFINER_KEY = "crystal_refiner"


def crystal_refiner_entry(state: dict[str, torch.Tensor], path: str | Path) -> dict[str, Any]:
    """The packed entry (sizes, float32 weights, training facts) of the crystal refiner file ``path``
    (``experiments/crystal_refiner/train_crystal_refiner.py``) for a DiT module's ``state``; one line naming the file
    when it learned the decodes of another VAE (:func:`sciDiT.training.crystal_refiner.load_crystal_refiner`)."""
    from sciDiT.training.crystal_refiner import load_crystal_refiner

    _, contents = load_crystal_refiner(path, state["model.latent_mean"], state["model.latent_std"])
    return {"hparams": dict(contents["hparams"]), "state_dict": contents["state_dict"], "info": dict(contents["info"])}


COMPOSITION_MODEL_KEY = "composition_model"


def composition_model_entry(path: str | Path) -> dict[str, Any]:
    """The packed entry (sizes, weights in bfloat16 with the buffers - size histogram, feature rows - exact, training
    facts) of the composition model file ``path`` (``experiments/composition_first/train_composition_model.py``); one
    line naming the file for another kind."""
    from sciDiT.training.composition_model import load_composition_model

    model, info = load_composition_model(path)
    state, buffers = model.state_dict(), {name for name, _ in model.named_buffers()}
    weights = cast_floats({k: v for k, v in state.items() if k not in buffers}, torch.bfloat16)
    return {"hparams": dict(model.sizes), "state_dict": {**state, **weights}, "info": info}


def export_pretrained(ckpt: str | Path, out: str | Path, decoder: str | Path | None = None, guide: str | Path | None = None,
                      discriminators: Sequence[str | Path] = (), refiner: str | Path | None = None,
                      crystal_refiner: str | Path | None = None, composition_model: str | Path | None = None) -> Path:
    """Write the slim, weights-only file of a DiT-stage checkpoint ``ckpt`` (or of a shipped file) to ``out``
    (atomically); ``decoder``: a VAE-stage checkpoint whose decoder replaces the DiT's (see :func:`with_decoder`);
    ``guide``: a weaker DiT on the same VAE, packed for autoguidance (:func:`guide_section`; a guide already in
    ``ckpt`` is kept otherwise); ``discriminators``: latent discriminator files, packed per domain for discriminator
    guidance (:func:`discriminator_entry`; each replaces the packed one of its domain, the others are kept); ``refiner``:
a geometry refiner file (:func:`refiner_entry`; replaces a packed one, which is kept otherwise); ``crystal_refiner``:
    a crystal refiner file (:func:`crystal_refiner_entry`; the same); ``composition_model``: a composition model file
    (:func:`composition_model_entry`; the same)."""
    from sciDiT.training.checkpoint import atomic_torch_save
    from sciDiT.training.dit_module import CONDITION_STATS_KEY

    raw = load_checkpoint(ckpt, "DiT checkpoint")
    require_stage(raw, "dit", ckpt)
    state = slim_state(restore_ema(raw["state_dict"]))
    if decoder is not None:
        state = with_decoder(state, raw["hyper_parameters"]["vae"], decoder)
    slim: dict[str, Any] = {"hyper_parameters": raw["hyper_parameters"], "state_dict": state,
                            "global_step": int(raw.get("global_step", 0))}
    if CONDITION_STATS_KEY in raw:  # a conditional model keeps what its requests are validated against
        slim[CONDITION_STATS_KEY] = raw[CONDITION_STATS_KEY]
    if guide is not None:
        slim[GUIDE_KEY] = guide_section(state, raw["hyper_parameters"], guide)
    elif GUIDE_KEY in raw:
        slim[GUIDE_KEY] = raw[GUIDE_KEY]
    packed = dict(raw.get(DISCRIMINATORS_KEY, {}))
    for path in discriminators:
        domain, entry = discriminator_entry(state, path)
        packed[domain] = entry
    if packed:
        slim[DISCRIMINATORS_KEY] = packed
    if refiner is not None:
        slim[REFINER_KEY] = refiner_entry(state, refiner)
    elif REFINER_KEY in raw:
        slim[REFINER_KEY] = raw[REFINER_KEY]
    if crystal_refiner is not None:
        slim[CRYSTAL_REFINER_KEY] = crystal_refiner_entry(state, crystal_refiner)
    elif CRYSTAL_REFINER_KEY in raw:
        slim[CRYSTAL_REFINER_KEY] = raw[CRYSTAL_REFINER_KEY]
    if composition_model is not None:
        slim[COMPOSITION_MODEL_KEY] = composition_model_entry(composition_model)
    elif COMPOSITION_MODEL_KEY in raw:
        slim[COMPOSITION_MODEL_KEY] = raw[COMPOSITION_MODEL_KEY]
    return atomic_torch_save(slim, out)
