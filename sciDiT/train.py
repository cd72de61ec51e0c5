"""Training entry point: ``python -m sciDiT.train experiment=qm9_mp20_joint``.

Hydra composes the config (``--cfg job`` prints it); Lightning runs each stage: ``stage=vae`` trains
the all-atom VAE, ``stage=dit`` the latent DiT on a frozen VAE checkpoint (``dit.vae_ckpt=...``),
``stage=all`` (default) both in turn. Running the same command with the same ``paths.output_dir``
resumes each stage from its ``last.ckpt``. Every stage writes
``<output_dir>/<stage>/`` with ``checkpoints/{last,best-*}.ckpt``, CSV + TensorBoard logs and,
after testing, ``metrics.json``. Bad input ends with one line on stderr and exit code 2.

Crash safety: checkpoints are written atomically (:mod:`sciDiT.training.checkpoint`) and hold the
optimiser, scheduler, EMA, data-sampler position and RNG state, so after ``kill -9`` the same
command resumes from the last checkpoint; ``last.ckpt`` is rewritten when a stage ends, so it
always holds the final step. A loss or gradient that stays non-finite for
``callbacks.non_finite.patience`` steps stops the stage with one line and exit code 3
(:mod:`sciDiT.training.guards`), keeping the last good checkpoint.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sciDiT.errors import SciDiTInputError
from sciDiT.training.checkpoint import AtomicCheckpointIO, NonFiniteWeightsError, RNGState, remove_stale_temp_files
from sciDiT.training.guards import NonFiniteTrainingError
from sciDiT.training.precision import resolve_precision

STAGES = ("vae", "dit", "all")
EXIT_NON_FINITE = 3  # training stopped on a non-finite loss / gradient (2 is bad input)


def _trainer(cfg: DictConfig, stage: str, stage_dir: Path) -> L.Trainer:
    """A Trainer for one stage: the stage's step and time budgets, its own checkpoint folder and loggers."""
    callbacks = [instantiate(c) for c in cfg.callbacks.values()] + [RNGState()]
    for cb in callbacks:
        if isinstance(cb, L.pytorch.callbacks.ModelCheckpoint):
            cb.dirpath = str(stage_dir / "checkpoints")
    loggers = [instantiate(lg, name=stage) for lg in cfg.logger.values()]
    max_steps = cfg.trainer.max_steps if cfg.trainer.max_steps is not None else cfg.max_steps[stage]
    max_time = cfg.trainer.max_time if cfg.trainer.max_time is not None else cfg.max_time[stage]
    precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    return instantiate(
        cfg.trainer, max_steps=max_steps, max_time=max_time, precision=precision, callbacks=callbacks, logger=loggers, default_root_dir=str(stage_dir),
        plugins=[AtomicCheckpointIO()],
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


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        if cfg.stage not in STAGES:
            raise SciDiTInputError(f"stage={cfg.stage!r} is not one of {', '.join(STAGES)}")
        L.seed_everything(cfg.seed, workers=True)
        torch.set_float32_matmul_precision("high")
        Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.paths.output_dir) / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        if cfg.stage in ("vae", "dit"):
            run_stage(cfg, cfg.stage, cfg.ckpt_path)
        else:
            if cfg.ckpt_path is not None:
                raise SciDiTInputError("ckpt_path resumes a single stage; with stage=all rerun with the same paths.output_dir instead")
            vae_last = run_stage(cfg, "vae")
            cfg.dit.vae_ckpt = str(vae_last)
            run_stage(cfg, "dit")
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteTrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_NON_FINITE)


if __name__ == "__main__":
    main()
