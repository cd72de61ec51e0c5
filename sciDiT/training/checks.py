"""Checks of a composed training config before anything runs, so bad input fails with one line and leaves nothing.

``python -m sciDiT.train`` composes the config once up front (:func:`compose_train_config`), checks the
values that would otherwise fail deep inside Lightning or a DataLoader with a traceback
(:func:`check_train_config`), and only then lets Hydra create the run folder. Hydra's own composition
errors (unknown experiment or option, misspelled key, unparsable override) become one line by
:func:`hydra_error_line`, keeping Hydra's list of valid options.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sciDiT.errors import SciDiTInputError
from sciDiT.export.atomic import is_writable_folder, nearest_existing

_ABSENT = object()


def hydra_error_line(err: Exception) -> str:
    """Hydra's composition message on one line: search-path dump and doc links dropped, option lists joined."""
    text = str(err).split("Config search path:")[0]
    parts: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("See https://"):
            continue
        if line.startswith("\t") and parts:
            parts[-1] += (", " if not parts[-1].endswith(":") else " ") + line.strip()
        else:
            parts.append(line.strip())
    return "; ".join(parts) or type(err).__name__


def compose_train_config(overrides: Sequence[str]) -> DictConfig:
    """The config ``python -m sciDiT.train`` would run with (Hydra's own section included), fully resolved once."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    try:
        with initialize_config_module(config_module="sciDiT.configs", version_base="1.3"):
            cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    except HydraException as err:
        raise SciDiTInputError(hydra_error_line(err)) from None
    try:
        OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    except OmegaConfBaseException as err:
        raise SciDiTInputError(f"config key {err.full_key}: {str(err).splitlines()[0]}") from None
    return cfg


# -- value checks ---------------------------------------------------------------------------------
def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: object) -> str:
    return "" if _integer(value) and value >= 1 else "must be a positive integer"


def _optional_positive_int(value: object) -> str:
    return "" if value is None else _positive_int(value)


def _steps(value: object) -> str:  # Lightning: -1 means no step limit
    return "" if _integer(value) and (value >= 1 or value == -1) else "must be a positive integer (or -1: no limit)"


def _optional_steps(value: object) -> str:
    return "" if value is None else _steps(value)


def _non_negative_int(value: object) -> str:
    return "" if _integer(value) and value >= 0 else "must be a non-negative integer"


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_number(value: object) -> str:
    return "" if _number(value) and value > 0 else "must be a finite positive number"


def _non_negative_number(value: object) -> str:
    return "" if _number(value) and value >= 0 else "must be a finite non-negative number"


def _fraction(value: object) -> str:
    return "" if _number(value) and 0 <= value <= 1 else "must be a number in [0, 1]"


def _seed(value: object) -> str:
    return "" if _integer(value) and 0 <= value < 2**32 else "must be an integer in 0..2**32-1"


CHECKS: dict[str, Callable[[object], str]] = {
    "seed": _seed,
    "data.batch_size": _optional_positive_int,
    "data.max_tokens": _optional_positive_int,
    "data.num_workers": _non_negative_int,
    "data.seed": _seed,
    "trainer.max_steps": _optional_steps,
    "trainer.devices": lambda v: "" if v == "auto" or (_integer(v) and (v >= 1 or v == -1)) or (isinstance(v, Sequence) and len(v) > 0)
    else "must be a positive integer, -1 (all), a list of device ids or 'auto'",
    "trainer.num_nodes": _positive_int,
    "trainer.gradient_clip_val": lambda v: "" if v is None else _non_negative_number(v),
    "max_steps.vae": _steps,
    "max_steps.dit": _steps,
    "vae.lr": _positive_number,
    "dit.lr": _positive_number,
    "vae.weight_decay": _non_negative_number,
    "dit.weight_decay": _non_negative_number,
    "vae.warmup_steps": _non_negative_int,
    "dit.warmup_steps": _non_negative_int,
    "dit.ema_decay": _fraction,
    "dit.self_condition_prob": _fraction,
    "dit.stats_batches": _positive_int,
    "dit.val_samples": _non_negative_int,
    "dit.val_sample_steps": _positive_int,
}
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def check_checkpoint_file(key: str, path: object) -> None:
    """A cheap look at a checkpoint path (exists, is a ``torch.save`` zip archive), without unpickling anything."""
    p = Path(str(path))
    if not p.exists():
        raise SciDiTInputError(f"{key}: checkpoint not found", p)
    if not p.is_file():
        raise SciDiTInputError(f"{key}: is a folder, expected a checkpoint file", p)
    if not os.access(p, os.R_OK):
        raise SciDiTInputError(f"{key}: checkpoint is not readable", p)
    if not zipfile.is_zipfile(p):
        raise SciDiTInputError(f"{key}: not a checkpoint (not a torch.save archive; truncated or another kind of file)", p)


def check_output_dir(path: object) -> None:
    """``paths.output_dir`` is a folder that exists and is writable, or could be created; creates nothing."""
    p = Path(str(path))
    if p.exists():
        if not p.is_dir():
            raise SciDiTInputError("paths.output_dir: exists and is not a folder", p)
        if not is_writable_folder(p):
            raise SciDiTInputError("paths.output_dir: folder is not writable", p)
        return
    existing = nearest_existing(p.parent)
    if not existing.is_dir():
        raise SciDiTInputError(f"paths.output_dir: cannot create it, {existing} is a file", p)
    if not is_writable_folder(existing):
        raise SciDiTInputError(f"paths.output_dir: cannot create it, folder {existing} is not writable", p)


def check_train_config(cfg: DictConfig, stages: Sequence[str]) -> None:
    """One-line :class:`SciDiTInputError` naming the first bad key of a composed training config."""
    if cfg.stage not in stages:
        raise SciDiTInputError(f"stage={cfg.stage!r} is not one of {', '.join(stages)}")
    for key, check in CHECKS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        problem = check(value)
        if problem:
            raise SciDiTInputError(f"{key}={value!r} {problem}")
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if accelerator not in ACCELERATORS:
        raise SciDiTInputError(f"trainer.accelerator={accelerator!r} is not one of {', '.join(ACCELERATORS)}")
    if accelerator in ("gpu", "cuda") or accelerator == "mps":
        import torch

        available = torch.backends.mps.is_available() if accelerator == "mps" else torch.cuda.is_available()
        if not available:
            raise SciDiTInputError(f"trainer.accelerator={accelerator!r} is not available on this machine (use cpu or auto)")
    check_output_dir(cfg.paths.output_dir)
    names = OmegaConf.select(cfg, "data.conditions", default=None)
    dit_conditions = OmegaConf.select(cfg, "dit.dit.conditions", default=None)
    if names or dit_conditions:
        from sciDiT.data.conditions import check_condition_domains, check_condition_names

        check_condition_names(list(names or []), OmegaConf.to_container(dit_conditions, resolve=True) if dit_conditions is not None else None)
        check_condition_domains(list(names or []), OmegaConf.select(cfg, "data.datasets", default=None))
    if cfg.ckpt_path is not None:
        if cfg.stage == "all":
            raise SciDiTInputError("ckpt_path resumes a single stage; with stage=all rerun with the same paths.output_dir instead")
        check_checkpoint_file("ckpt_path", cfg.ckpt_path)
    init_ckpt = OmegaConf.select(cfg, "dit.init_ckpt", default=None)
    if init_ckpt:
        if cfg.stage != "dit":
            raise SciDiTInputError(f"dit.init_ckpt fine-tunes a trained model with its own VAE: use stage=dit, not stage={cfg.stage}")
        if OmegaConf.select(cfg, "dit.vae_ckpt", default=None):
            raise SciDiTInputError("dit.init_ckpt brings its own VAE: leave dit.vae_ckpt unset")
        check_checkpoint_file("dit.init_ckpt", init_ckpt)
    elif cfg.stage == "dit":
        vae_ckpt = OmegaConf.select(cfg, "dit.vae_ckpt", default=None)
        if not vae_ckpt:
            raise SciDiTInputError("stage=dit needs a trained VAE: set dit.vae_ckpt=<path to a VAE .ckpt> or run stage=all")
        check_checkpoint_file("dit.vae_ckpt", vae_ckpt)
