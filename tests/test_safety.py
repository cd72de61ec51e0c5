"""Untrusted checkpoints and configs run no code: every checkpoint reader refuses a pickle whose
``__reduce__`` would touch a marker file (one line naming the file, exit 2 from the CLIs), bad files
and wrong-stage checkpoints are one line naming the file, trusted old files convert, and a config
instantiates only allow-listed classes."""

from __future__ import annotations

import enum
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from sciDiT.checkpoint import checkpoint_stage, load_checkpoint, main as checkpoint_main
from sciDiT.errors import SciDiTInputError
from sciDiT.generate import load_generator
from sciDiT.perturbation.model import SciDiTPredictor
from sciDiT.sample import main as sample_main
from sciDiT.train import check_command_line
from sciDiT.training.cell_module import CellDiTModule
from sciDiT.training.checkpoint_io import SafeCheckpointIO
from sciDiT.training.dit_module import DiTModule
from sciDiT.training.targets import check_config
from sciDiT.training.vae_module import VAEModule

TINY_VAE = {"hidden_size": 16, "encoder_depth": 1, "decoder_depth": 1, "num_heads": 2, "latent_dim": 4}
TINY_DIT = {"hidden_size": 16, "depth": 1, "num_heads": 2}
TINY_CELL_VAE = {"hidden_size": 16, "encoder_depth": 1, "decoder_depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "num_latent_tokens": 4, "latent_dim": 4}
EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "sciDiT" / "configs" / "experiment").glob("*.yaml"))
TINY_TRAIN = ["experiment=quickstart", "data.datasets=[{name:qm9,limit:200},{name:mp20,limit:60}]", "data.batch_size=16", "model/vae=VAE-T",
              "model/dit=DiT-T", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto", "trainer.max_time=null",
              "trainer.val_check_interval=1", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false", "test=false"]


class Mode(enum.Enum):
    """An enum in a hand-written checkpoint's extras: plain data after conversion."""

    FAST = "fast"


class Touch:
    """Unpickling this calls ``os.system("touch MARKER")``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    """A checkpoint shaped like a real one whose hyper-parameters hold the marker-touching object, and the marker."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.dit.x": torch.zeros(1)}, "hyper_parameters": {"vae": {}, "dit": {}, "x": Touch(marker)}}, path)
    assert not marker.exists()
    return path, marker


@pytest.fixture(scope="module")
def stage_ckpts(tmp_path_factory) -> dict[str, Path]:
    """Untrained VAE-stage and DiT-stage checkpoints (the layout Lightning writes), a text file and a truncated one."""
    folder = tmp_path_factory.mktemp("stages")
    vae, dit = VAEModule(vae=TINY_VAE), DiTModule(vae=TINY_VAE, dit=TINY_DIT)
    paths = {"vae": folder / "vae.ckpt", "dit": folder / "dit.ckpt", "text": folder / "notes.ckpt", "truncated": folder / "truncated.ckpt"}
    for name, module in (("vae", vae), ("dit", dit)):
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 0}, paths[name])
    paths["text"].write_text("these are my notes, not a checkpoint\n")
    data = paths["dit"].read_bytes()
    paths["truncated"].write_bytes(data[: len(data) // 2])
    return paths


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert "Traceback" not in text, text[-2000:]
    return lines[-1]


def _run(module: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=600)


# -- the loader -------------------------------------------------------------------------------------


def test_loader_refuses_code_and_names_bad_files(evil, stage_ckpts, tmp_path):
    path, marker = evil
    with pytest.raises(SciDiTInputError, match=r"evil\.ckpt: refused to load.*posix\.system|evil\.ckpt: refused to load.*nt\.system"):
        load_checkpoint(path)
    for name, match in (("text", "not a readable checkpoint"), ("truncated", "not a readable checkpoint.*truncated")):
        with pytest.raises(SciDiTInputError, match=rf"{stage_ckpts[name].name}: {match}"):
            load_checkpoint(stage_ckpts[name])
    with pytest.raises(SciDiTInputError, match="not found"):
        load_checkpoint(tmp_path / "missing.ckpt")
    torch.save([torch.zeros(2)], tmp_path / "list.ckpt")
    with pytest.raises(SciDiTInputError, match="holds a list"):
        load_checkpoint(tmp_path / "list.ckpt")
    assert checkpoint_stage(load_checkpoint(stage_ckpts["vae"])) == "vae"
    assert checkpoint_stage(load_checkpoint(stage_ckpts["dit"])) == "dit"
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: the unsafe way of loading does run the file's code
    assert marker.exists()


def test_trusted_old_checkpoint_converts_and_then_loads(stage_ckpts, tmp_path, capsys):
    """A checkpoint whose hyper-parameters are OmegaConf containers (extras: an enum and a path) is refused, converts, then loads."""
    raw = torch.load(stage_ckpts["dit"], weights_only=True)
    raw["hyper_parameters"] = OmegaConf.create(raw["hyper_parameters"])
    raw["extra"] = {"where": Path("/data/run"), "mode": Mode.FAST}
    old, new = tmp_path / "old.ckpt", tmp_path / "new.ckpt"
    torch.save(raw, old)
    assert checkpoint_main(["check", str(old)]) == 2
    err = capsys.readouterr().err
    assert "old.ckpt: refused to load" in err and "omegaconf" in err and "python -m sciDiT.checkpoint convert" in err
    with pytest.raises(SciDiTInputError, match="old.ckpt: refused to load.*python -m sciDiT.checkpoint convert"):
        load_generator(old)
    assert checkpoint_main(["convert", str(old), str(new)]) == 0
    converted = load_checkpoint(new)
    assert type(converted["hyper_parameters"]) is dict and converted["extra"] == {"where": "/data/run", "mode": "fast"}
    assert all(torch.equal(converted["state_dict"][k], v) for k, v in raw["state_dict"].items())
    assert torch.serialization.get_unsafe_globals_in_checkpoint(new) == []
    module = DiTModule(**converted["hyper_parameters"])
    module.load_state_dict(converted["state_dict"])
    assert checkpoint_main(["check", str(new)]) == 0 and "DiT-stage" in capsys.readouterr().out
    assert checkpoint_main(["convert", str(new), str(new)]) == 2  # never over the original


# -- every entry point --------------------------------------------------------------------------------


def test_sampling_api_and_cli_refuse_a_crafted_checkpoint(evil, stage_ckpts, tmp_path, capsys):
    path, marker = evil
    with pytest.raises(SciDiTInputError, match="evil.ckpt: refused to load"):
        load_generator(path)
    out = tmp_path / "out.sdf"
    assert sample_main([f"ckpt={path}", "domain=molecule", "n=2", f"out={out}", "progress=false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "evil.ckpt" in err and "refused to load" in err
    for name, match in (("vae", "a VAE-stage checkpoint, but a DiT-stage checkpoint is needed"), ("text", "not a readable"), ("truncated", "not a readable checkpoint .*truncated")):
        with pytest.raises(SciDiTInputError, match=rf"{stage_ckpts[name].name}: {match}"):
            load_generator(stage_ckpts[name])
    assert not marker.exists() and not out.exists()


def test_stored_hyper_parameters_cannot_name_a_target(stage_ckpts, tmp_path):
    raw = load_checkpoint(stage_ckpts["dit"])
    raw["hyper_parameters"]["dit"] = {**raw["hyper_parameters"]["dit"], "_target_": "os.system"}
    torch.save(raw, tmp_path / "target.ckpt")
    with pytest.raises(SciDiTInputError, match=r"hyper_parameters\.dit\._target_='os\.system' is not allowed"):
        load_generator(tmp_path / "target.ckpt")


def test_dit_stage_vae_checkpoint_is_read_safely_and_must_hold_a_vae(evil, stage_ckpts, tmp_path):
    """dit.vae_ckpt takes a VAE-stage checkpoint or the VAE inside a DiT-stage one (a new DiT on a trained model's VAE)."""
    path, marker = evil
    torch.save({"state_dict": {"weights": torch.zeros(2)}, "hyper_parameters": {}}, tmp_path / "other.ckpt")
    for ckpt, match in ((path, "evil.ckpt: refused to load"), (tmp_path / "other.ckpt", "other.ckpt: not a sciDiT checkpoint (no model weights and hyper-parameters), "
                                                                                       "but a VAE-stage checkpoint is needed here; dit.vae_ckpt"),
                        (stage_ckpts["text"], "notes.ckpt: not a readable VAE checkpoint"), (stage_ckpts["truncated"], "truncated.ckpt: not a readable")):
        with pytest.raises(SciDiTInputError, match=re.escape(match)):
            DiTModule(vae=TINY_VAE, dit=TINY_DIT, vae_ckpt=str(ckpt)).setup("fit")
    assert not marker.exists()
    module = DiTModule(vae=TINY_VAE, dit=TINY_DIT, vae_ckpt=str(stage_ckpts["dit"]))
    module.setup("fit")
    saved = torch.load(stage_ckpts["dit"], weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[f"model.vae.{k}"]) for k, v in module.model.vae.state_dict().items())


def test_cell_predictor_and_cell_dit_stage_read_checkpoints_safely(evil, stage_ckpts):
    path, marker = evil
    with pytest.raises(SciDiTInputError, match="evil.ckpt: refused to load"):
        SciDiTPredictor.load(path)
    with pytest.raises(SciDiTInputError, match="evil.ckpt: refused to load"):
        CellDiTModule(vae=TINY_CELL_VAE, dit=TINY_DIT, vae_ckpt=str(path)).setup("fit")
    with pytest.raises(SciDiTInputError, match="dit.ckpt: a DiT-stage checkpoint, but a cell DiT-stage checkpoint is needed"):
        SciDiTPredictor.load(stage_ckpts["dit"])
    with pytest.raises(SciDiTInputError, match="vae.ckpt: a VAE-stage checkpoint, but a cell VAE-stage checkpoint is needed"):
        CellDiTModule(vae=TINY_CELL_VAE, dit=TINY_DIT, vae_ckpt=str(stage_ckpts["vae"])).setup("fit")
    assert not marker.exists()


def test_lightning_resume_reads_through_the_safe_loader(evil, tmp_path):
    """``trainer.fit(ckpt_path=...)`` loads via ``strategy.checkpoint_io``: ours, for any strategy; saving makes hparams plain."""
    import lightning as L

    path, marker = evil
    for strategy in ("auto", "ddp"):
        trainer = L.Trainer(accelerator="cpu", devices=1, strategy=strategy, logger=False, plugins=[SafeCheckpointIO()], enable_progress_bar=False)
        assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
        with pytest.raises(SciDiTInputError, match="evil.ckpt: refused to load"):
            trainer.strategy.load_checkpoint(path)
    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": OmegaConf.create({"vae": {"a": 1}})}, tmp_path / "h.ckpt")
    assert load_checkpoint(tmp_path / "h.ckpt")["hyper_parameters"] == {"vae": {"a": 1}}
    assert not marker.exists()


def test_train_cli_refuses_crafted_checkpoints_at_every_entry(evil, data_dir, cache_dir, tmp_path):
    """dit.vae_ckpt, ckpt_path and a last.ckpt planted in the output folder: one line, exit 2, no marker."""
    path, marker = evil
    planted = tmp_path / "planted"
    (planted / "vae" / "checkpoints").mkdir(parents=True)
    (planted / "vae" / "checkpoints" / "last.ckpt").write_bytes(path.read_bytes())
    cases = [(["stage=dit", f"dit.vae_ckpt={path}", f"paths.output_dir={tmp_path / 'a'}"], "evil.ckpt: refused to load: the VAE checkpoint (dit.vae_ckpt)"),
             (["stage=vae", f"ckpt_path={path}", f"paths.output_dir={tmp_path / 'b'}"], "evil.ckpt: refused to load: the resume checkpoint (ckpt_path)"),
             (["stage=vae", f"paths.output_dir={planted}"], "last.ckpt: refused to load: the resume checkpoint (vae stage's last.ckpt)")]
    for args, match in cases:
        res = subprocess.run([sys.executable, "-m", "sciDiT.train", *TINY_TRAIN, "trainer.max_steps=1", *args], capture_output=True, text=True,
                             env={**os.environ, "SCIDIT_DATA_DIR": str(data_dir), "SCIDIT_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore"}, timeout=600)
        assert res.returncode == 2, res.stderr[-2000:]
        line = _one_line(res.stderr)
        assert line.startswith("error: ") and match in line, line
    assert not marker.exists()


# -- configs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_shipped_config_passes_the_allow_list(experiment):
    with initialize_config_module(config_module="sciDiT.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    check_config(cfg)


@pytest.mark.parametrize(
    "override, key",
    [
        ("+callbacks.evil._target_=os.system", "callbacks.evil._target_"),
        ("+hydra.callbacks.evil._target_=os.system", "hydra.callbacks.evil._target_"),
        ("+trainer.plugins=[{_target_:builtins.exec,source:x}]", "trainer.plugins[0]._target_"),
        ("+vae.vae.nested={_target_:subprocess.Popen}", "vae.vae.nested._target_"),
        ("data._target_=sciDiT.train.instantiate", "data._target_"),  # a function reached through a sciDiT module
        ("data._target_=sciDiT.sample.Path", "data._target_"),  # a class imported into a sciDiT module
        ("+logger.evil._target_=torch.nn.Linear", "logger.evil._target_"),  # torch, but not an optimiser or scheduler
        ("+hydra.job_logging.handlers.x.class=logging.config.listen", "hydra.job_logging.handlers.x.class"),
        ("hydra.job_logging.handlers.console.stream=ext://os.system", "hydra.job_logging.handlers.console.stream"),
    ],
)
def test_targets_outside_the_allow_list_name_their_key(override, key):
    with pytest.raises(SciDiTInputError, match=f"^{re.escape(key)}"):
        check_command_line(["experiment=quickstart", override])


@pytest.mark.parametrize(
    "body, key",
    [
        ("hydra:\n  callbacks:\n    evil: {_target_: os.system, command: touch MARKER}\n", "hydra.callbacks.evil._target_"),
        ("hydra:\n  job_logging:\n    formatters:\n      evil: {'()': os.system}\n", "hydra.job_logging.formatters.evil.()"),
        ("dit:\n  dit: {_target_: builtins.eval}\n", "dit.dit._target_"),
    ],
)
def test_config_files_from_elsewhere_are_checked_too(body, key, tmp_path):
    """An experiment file from a colleague, found through hydra.searchpath, is checked like the command line."""
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "shared.yaml").write_text("# @package _global_\ndefaults:\n  - quickstart\n" + body)
    with pytest.raises(SciDiTInputError, match=f"^{re.escape(key)}"):
        check_command_line(["experiment=shared", f"hydra.searchpath=[file://{tmp_path}]"])


def test_allowed_targets_pass():
    check_config({"opt": {"_target_": "torch.optim.AdamW"}, "sched": {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau"},
                  "cb": [{"_target_": "lightning.pytorch.callbacks.EarlyStopping", "monitor": "val/loss"}],
                  "trainer": {"_target_": "lightning.Trainer"}, "model": {"_target_": "sciDiT.training.dit_module.DiTModule"}})


def test_hydra_options_that_bypass_the_check_are_refused():
    for argv in (["--experimental-rerun", "config.pickle"], ["--multirun", "seed=1,2"], ["--config-dir", "/tmp"]):
        with pytest.raises(SciDiTInputError, match="not supported by sciDiT.train"):
            check_command_line(argv)


def test_train_cli_refuses_a_disallowed_target_before_running_anything(tmp_path):
    """The command line of the issue: exit 2, one line naming the key, no marker, no output folder (Hydra never started)."""
    marker = tmp_path / "MARKER"
    res = _run("sciDiT.train", ["experiment=quickstart", f"paths.output_dir={tmp_path / 'out'}", "+callbacks.evil._target_=os.system",
                                f"+callbacks.evil.command=touch {marker}"], tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    assert _one_line(res.stderr).startswith("error: callbacks.evil._target_='os.system' is not allowed")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_convert_refuses_a_crafted_checkpoint_and_runs_nothing(evil, tmp_path, capsys):
    path, marker = evil
    assert checkpoint_main(["convert", str(path), str(tmp_path / "new.ckpt")]) == 2
    assert "cannot convert: it holds posix.system" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "new.ckpt").exists()
