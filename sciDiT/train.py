"""Training entry point: ``python -m sciDiT.train experiment=qm9_mp20_joint``.

Hydra composes the config (``--cfg job`` prints it); Lightning runs each stage: ``stage=vae`` trains
the all-atom VAE, ``stage=dit`` the latent DiT on a frozen VAE checkpoint (``dit.vae_ckpt=...``),
``stage=all`` (default) both in turn. Running the same command with the same ``paths.output_dir``
resumes each stage from its ``last.ckpt``. Every stage writes
``<output_dir>/<stage>/`` with ``checkpoints/{last,best-*}.ckpt``, CSV + TensorBoard logs and,
after testing, ``metrics.json``. Bad input ends with one line on stderr and exit code 2.

Safety: before Hydra runs anything, the composed config (command line, config files, Hydra's own
``hydra.*`` section) is checked against the allow-list of :mod:`sciDiT.training.targets`, and every
checkpoint (``ckpt_path``, the automatic ``last.ckpt``, ``dit.vae_ckpt``) is read by the
code-free loader of :mod:`sciDiT.checkpoint`.

Crash safety: checkpoints are written atomically (:mod:`sciDiT.training.checkpoint`) and hold the
optimiser, scheduler, EMA, data-sampler position and RNG state, so after ``kill -9`` the same
command resumes from the last checkpoint; ``last.ckpt`` is rewritten when a stage ends, so it
always holds the final step. A loss or gradient that stays non-finite for
``callbacks.non_finite.patience`` steps stops the stage with one line and exit code 3
(:mod:`sciDiT.training.guards`), keeping the last good checkpoint.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from sciDiT.checkpoint import load_checkpoint, require_stage
from sciDiT.errors import SciDiTInputError
from sciDiT.export.atomic import nearest_existing
from sciDiT.training.checkpoint import NonFiniteWeightsError, RNGState, StepSnapshots, remove_stale_temp_files
from sciDiT.training.checkpoint_io import SafeCheckpointIO
from sciDiT.training.checks import check_train_config, compose_train_config
from sciDiT.training.guards import NonFiniteTrainingError
from sciDiT.training.precision import resolve_precision
from sciDiT.training.targets import check_config

STAGES = ("vae", "dit", "all")
EXIT_NON_FINITE = 3  # training stopped on a non-finite loss / gradient (2 is bad input)


def _trainer(cfg: DictConfig, stage: str, stage_dir: Path) -> L.Trainer:
    """A Trainer for one stage: the stage's step and time budgets, its own checkpoint folder and loggers."""
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] + [RNGState()]
    for cb in callbacks:
        if isinstance(cb, (L.pytorch.callbacks.ModelCheckpoint, StepSnapshots)):
            cb.dirpath = str(stage_dir / "checkpoints")
    loggers = [instantiate(lg, name=stage) for lg in cfg.logger.values()]
    max_steps = cfg.trainer.max_steps if cfg.trainer.max_steps is not None else cfg.max_steps[stage]
    max_time = cfg.trainer.max_time if cfg.trainer.max_time is not None else cfg.max_time[stage]
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    return instantiate(
        cfg.trainer, max_steps=max_steps, max_time=max_time, precision=precision, callbacks=callbacks, logger=loggers, default_root_dir=str(stage_dir),
        plugins=[SafeCheckpointIO()],
    )


def run_stage(cfg: DictConfig, stage: str, ckpt_path: str | None = None) -> Path:
    """Fit one stage (resuming from ``ckpt_path`` or the stage's own last.ckpt), test it, write metrics.json.

    Returns the stage's last checkpoint, which holds the final step (rewritten after fitting).
    Raises :class:`NonFiniteTrainingError` (naming the stage and step) when the guard stopped training.
    """
    stage_dir = Path(cfg.paths.output_dir) / stage
    last = stage_dir / "checkpoints" / "last.ckpt"
    remove_stale_temp_files(last.parent, ".*.ckpt.*.tmp")  # left by a kill during a checkpoint write
    remove_stale_temp_files(stage_dir, ".metrics.csv.*.tmp")
    if ckpt_path is None and cfg.resume and last.exists():
        ckpt_path = str(last)
    datamodule = instantiate(cfg.data, _convert_="all")
    module = instantiate(cfg[stage], _convert_="all")
    if ckpt_path is not None:  # fail before training starts, with one line naming the file
        what = "resume checkpoint (ckpt_path)" if ckpt_path != str(last) else f"resume checkpoint ({stage} stage's last.ckpt)"
        require_stage(load_checkpoint(ckpt_path, what), module.checkpoint_stage, ckpt_path, f"resume {stage} from <output_dir>/{stage}/checkpoints/*.ckpt")
    trainer = _trainer(cfg, stage, stage_dir)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        trainer.save_checkpoint(last)  # the periodic checkpoints need not fall on the final step
    except (NonFiniteTrainingError, NonFiniteWeightsError) as err:
        kept = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was saved"
        raise NonFiniteTrainingError(f"{stage} stage {err}; {kept}") from None
    metrics: dict[str, float] = {"steps": float(trainer.global_step)}  # the step just saved
    if cfg.test:
        results = trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})
    if trainer.is_global_zero:
        (stage_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"[sciDiT] {stage} stage done: {stage_dir} ({json.dumps(metrics)})")
    return last


# the nearest folder at or above paths.output_dir that existed before this run (set by cli(), used to clean up)
_EXISTING: dict[str, Path] = {}


def _remove_new_output(out: Path, fresh: bool) -> None:
    """After a failed run, remove the output folder Hydra created for it (and new empty parents), if it was new.

    A folder that holds a checkpoint by now (e.g. stage=all failing in the DiT stage) is kept: it has trained weights.
    """
    out = out.absolute()
    if not fresh or not out.is_dir() or any(out.rglob("*.ckpt")):
        return
    shutil.rmtree(out, ignore_errors=True)
    stop = _EXISTING.get("output_dir")
    parent = out.parent
    while stop is not None and parent != stop and stop in parent.parents and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def _one_line(err: Exception) -> str:
    """An error as one line; Hydra's instantiation errors keep the target, the cause and the config key."""
    if isinstance(err.__cause__, SciDiTInputError):
        return str(err.__cause__)
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    if isinstance(err, InstantiationException):
        key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), "")
        text = " ".join(ln for ln in lines if not ln.startswith("full_key:"))
        return f"{text} (config key {key})" if key else text
    return lines[0] if lines else type(err).__name__


# Hydra options whose effect the pre-check cannot reproduce: extra config folders go through
# hydra.searchpath=[file://DIR] instead; a rerun unpickles a saved config (code could run).
UNCHECKABLE = {"multirun": "--multirun", "config_name": "--config-name", "config_path": "--config-path", "config_dir": "--config-dir (use hydra.searchpath=[file://DIR])",
               "experimental_rerun": "--experimental-rerun"}


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def _run(cfg: DictConfig) -> None:
    out = Path(cfg.paths.output_dir)
    # only Hydra's own files in the run folder: it was made for this run, and a failed run removes it
    fresh = out.is_dir() and {p.name for p in out.iterdir()} <= {".hydra", f"{HydraConfig.get().job.name}.log"}
    try:
        check_config(cfg)  # again inside the task: what instantiate will see
        check_train_config(cfg, STAGES)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        torch.set_float32_matmul_precision("high")
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if cfg.stage in ("vae", "dit"):
            run_stage(cfg, cfg.stage, cfg.ckpt_path)
        else:
            vae_last = run_stage(cfg, "vae")
            cfg.dit.vae_ckpt = str(vae_last)
            run_stage(cfg, "dit")
    except (SciDiTInputError, InstantiationException, MisconfigurationException) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        _remove_new_output(out, fresh)
        sys.exit(2)
    except NonFiniteTrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_NON_FINITE)


def check_command_line(argv: list[str]) -> DictConfig:
    """Compose the config the way ``hydra.main`` will and check it; returns it, or raises SciDiTInputError.

    Runs before Hydra, since Hydra itself instantiates ``hydra.callbacks`` and configures logging
    from ``hydra.job_logging`` before the task starts: the composed config, Hydra's own section
    included, is checked against the allow-list of :mod:`sciDiT.training.targets`; then (unless a
    flag such as ``--cfg`` or ``--help`` only asks Hydra for information) the values are checked.
    """
    from hydra._internal.utils import get_args_parser

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:  # argparse printed its usage; say why in one line
        raise SciDiTInputError(f"cannot parse the command line {' '.join(argv)!r}; see python -m sciDiT.train --help") from None
    for name, flag in UNCHECKABLE.items():
        if getattr(args, name):
            raise SciDiTInputError(f"{flag} is not supported by sciDiT.train: it would bypass the check of what the config instantiates")
    cfg = compose_train_config(args.overrides)
    HydraConfig.instance().set_config(cfg)
    check_config(cfg)
    if not (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion):
        check_train_config(cfg, STAGES)
    return cfg


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m sciDiT.train [overrides]`` / ``scidit-train``: check the command line, then let Hydra run it.

    Bad input prints one line and returns 2 before Hydra creates the run folder.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = check_command_line(argv)
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _EXISTING["output_dir"] = nearest_existing(Path(cfg.paths.output_dir).absolute())
    sys.argv = [sys.argv[0], *argv]
    _run()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
