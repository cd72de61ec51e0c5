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

from sciDiT.checkpoint import load_checkpoint, require_stage
from sciDiT.errors import SciDiTInputError
from sciDiT.training.checkpoint_io import SafeCheckpointIO
from sciDiT.training.precision import resolve_precision
from sciDiT.training.targets import check_config

STAGES = ("vae", "dit", "all")


def _trainer(cfg: DictConfig, stage: str, stage_dir: Path) -> L.Trainer:
    """A Trainer for one stage: the stage's step and time budgets, its own checkpoint folder and loggers."""
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    for cb in callbacks:
        if isinstance(cb, L.pytorch.callbacks.ModelCheckpoint):
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

    Returns the stage's last checkpoint.
    """
    stage_dir = Path(cfg.paths.output_dir) / stage
    last = stage_dir / "checkpoints" / "last.ckpt"
    if ckpt_path is None and cfg.resume and last.exists():
        ckpt_path = str(last)
    datamodule = instantiate(cfg.data, _convert_="all")
    module = instantiate(cfg[stage], _convert_="all")
    if ckpt_path is not None:  # fail before training starts, with one line naming the file
        what = "resume checkpoint (ckpt_path)" if ckpt_path != str(last) else f"resume checkpoint ({stage} stage's last.ckpt)"
        require_stage(load_checkpoint(ckpt_path, what), module.checkpoint_stage, ckpt_path, f"resume {stage} from <output_dir>/{stage}/checkpoints/*.ckpt")
    trainer = _trainer(cfg, stage, stage_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics: dict[str, float] = {"steps": float(trainer.global_step)}
    if cfg.test:
        results = trainer.test(module, datamodule=datamodule, verbose=False)
        metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})
    if trainer.is_global_zero:
        (stage_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"[sciDiT] {stage} stage done: {stage_dir} ({json.dumps(metrics)})")
    return last


# Hydra options whose effect the pre-check cannot reproduce: extra config folders go through
# hydra.searchpath=[file://DIR] instead; a rerun unpickles a saved config (code could run).
UNCHECKABLE = {"multirun": "--multirun", "config_path": "--config-path", "config_dir": "--config-dir (use hydra.searchpath=[file://DIR])",
               "experimental_rerun": "--experimental-rerun"}


def check_command_line(argv: list[str]) -> None:
    """Compose the config the way ``hydra.main`` will and check everything it could instantiate.

    Runs before Hydra, since Hydra itself instantiates ``hydra.callbacks`` and configures logging
    from ``hydra.job_logging`` before the task starts. A config that does not compose is left to
    Hydra, which reports it without instantiating anything.
    """
    from hydra import compose, initialize_config_module
    from hydra._internal.utils import get_args_parser
    from hydra.core.hydra_config import HydraConfig

    args = get_args_parser().parse_args(argv)
    for name, flag in UNCHECKABLE.items():
        if getattr(args, name):
            raise SciDiTInputError(f"{flag} is not supported by sciDiT.train: it would bypass the check of what the config instantiates")
    try:
        with initialize_config_module(config_module="sciDiT.configs", version_base="1.3"):
            cfg = compose(config_name=args.config_name or "train", overrides=args.overrides, return_hydra_config=True)
    except Exception:
        return
    HydraConfig.instance().set_config(cfg)
    check_config(cfg)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def _run(cfg: DictConfig) -> None:
    try:
        check_config(cfg)
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


def main() -> None:
    """``python -m sciDiT.train`` / ``scidit-train``: check the config, then let Hydra run the stages."""
    try:
        check_command_line(sys.argv[1:])
    except SciDiTInputError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    _run()


if __name__ == "__main__":
    main()
