"""The training entry point: every experiment config composes and trains a step, both stages run
and resume, a 2-process DDP run works on CPU (gloo), and bad input gives one line and exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "sciDiT" / "configs" / "experiment").glob("*.yaml"))
ATOM_EXPERIMENTS = [e for e in EXPERIMENTS if not e.startswith("perturbseq")]
# Tiny real-data subsets and models: every experiment trains a couple of steps in seconds.
TINY_ATOMS = [
    "data.datasets=[{name:qm9,limit:400},{name:mp20,limit:120}]",
    "data.batch_size=16",
    "model/vae=VAE-T",
    "model/dit=DiT-T",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.strategy=auto",
    "trainer.max_time=null",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
    "dit.stats_batches=1",
    "dit.val_samples=4",
    "dit.val_sample_steps=2",
]


def _train(args: list[str], data_dir: Path, cache_dir: Path, timeout: int = 600, process: bool = False) -> subprocess.CompletedProcess:
    """``python -m sciDiT.train ARGS``: its exit code and output. In this process (``cli``, as the console script runs
    it) unless ``process``; a fresh interpreter per run would pay ~9 s of imports each. What a run sets globally
    (environment, sys.argv, the float32 matmul precision, the default dtype) is put back afterwards."""
    env = {"SCIDIT_DATA_DIR": str(data_dir), "SCIDIT_CACHE_DIR": str(cache_dir)}
    if process:
        return subprocess.run([sys.executable, "-m", "sciDiT.train", *args], capture_output=True, text=True,
                              env={**os.environ, **env, "PYTHONWARNINGS": "ignore"}, timeout=timeout)
    import contextlib
    import io
    import warnings

    from sciDiT.train import cli

    saved = (dict(os.environ), list(sys.argv), torch.get_float32_matmul_precision(), torch.get_default_dtype(), torch.get_num_threads())
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # as PYTHONWARNINGS=ignore does for a process
            try:
                code = cli(args)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.environ.clear()
        os.environ.update(saved[0])
        sys.argv[:] = saved[1]
        torch.set_float32_matmul_precision(saved[2])
        torch.set_default_dtype(saved[3])
        torch.set_num_threads(saved[4])
    return subprocess.CompletedProcess(["sciDiT.train", *args], code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_config_composes(experiment: str):
    with initialize_config_module(config_module="sciDiT.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}"])
    assert cfg.task_name == experiment
    assert cfg.data._target_ and cfg.vae._target_ and cfg.dit._target_


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ATOM_EXPERIMENTS)
def test_every_atom_experiment_trains_a_step(experiment: str, data_dir: Path, cache_dir: Path, tmp_path: Path):
    out = tmp_path / experiment
    res = _train([f"experiment={experiment}", *TINY_ATOMS, "stage=vae", "test=false", "trainer.max_steps=1", f"paths.output_dir={out}"], data_dir, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "vae" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_both_stages_train_test_and_resume(data_dir: Path, cache_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    res = _train(["experiment=quickstart", *TINY_ATOMS, "trainer.max_steps=2", "trainer.limit_test_batches=1.0", f"paths.output_dir={out}",
                  "callbacks.snapshots.steps=[1]"], data_dir, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    for stage in ("vae", "dit"):
        assert (out / stage / "checkpoints" / "last.ckpt").exists()
        assert (out / stage / "checkpoints" / "step-1.ckpt").exists()  # the snapshot asked for
        assert (out / stage / "metrics.csv").exists()
        assert json.loads((out / stage / "metrics.json").read_text())["steps"] == 2
    from sciDiT.generate import load_generator  # an early snapshot guides the final DiT (autoguidance)

    gen = load_generator(out / "dit" / "checkpoints" / "last.ckpt", guide=out / "dit" / "checkpoints" / "step-1.ckpt")
    assert len(gen.generate_token_sets("molecule", 2, steps=2, autoguidance=2.0, progress=False)) == 2
    vae_metrics = json.loads((out / "vae" / "metrics.json").read_text())
    assert 0.0 <= vae_metrics["test/molecule/match_rate"] <= 1.0 and 0.0 <= vae_metrics["test/crystal/match_rate"] <= 1.0
    # the same command with a larger budget continues each stage from its last.ckpt
    res = _train(["experiment=quickstart", *TINY_ATOMS, "trainer.max_steps=3", "test=false", f"paths.output_dir={out}"], data_dir, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    for stage in ("vae", "dit"):
        assert json.loads((out / stage / "metrics.json").read_text())["steps"] == 3


@pytest.mark.slow
def test_decoder_only_fine_tune_keeps_the_encoder_and_loads_weights_only(data_dir: Path, cache_dir: Path, tmp_path: Path):
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    res = _train(["experiment=quickstart", *TINY_ATOMS, "stage=vae", "test=false", "trainer.max_steps=2", f"paths.output_dir={base}"], data_dir, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    init = base / "vae" / "checkpoints" / "last.ckpt"
    res = _train(["experiment=quickstart", *TINY_ATOMS, "stage=vae", "test=false", "trainer.max_steps=2", f"paths.output_dir={tuned}",
                  f"vae.init_ckpt={init}", "vae.train_decoder_only=true", "vae.latent_noise={molecule:[0.0,0.8],crystal:0.1}"], data_dir, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    before = torch.load(init, weights_only=True)["state_dict"]
    after = torch.load(tuned / "vae" / "checkpoints" / "last.ckpt", weights_only=True)  # the noise range is plain data in the file
    assert list(after["hyper_parameters"]["latent_noise"]["molecule"]) == [0.0, 0.8]
    encoder = [k for k in before if k.startswith(("model.encoder.", "model.to_latent.", "model.type_embed."))]
    assert encoder and all(torch.equal(before[k], after["state_dict"][k]) for k in encoder)
    assert not torch.equal(before["model.pos_head.weight"], after["state_dict"]["model.pos_head.weight"])
    res = _train(["experiment=quickstart", *TINY_ATOMS, "stage=vae", "trainer.max_steps=2", f"paths.output_dir={tmp_path / 'bad'}",
                  f"vae.init_ckpt={tmp_path / 'missing.ckpt'}"], data_dir, cache_dir)
    assert res.returncode == 2 and "missing.ckpt" in res.stderr and "vae.init_ckpt" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_two_process_ddp_on_cpu(data_dir: Path, cache_dir: Path, tmp_path: Path):
    out = tmp_path / "ddp"
    args = ["experiment=quickstart", *TINY_ATOMS, "stage=vae", "test=false", "trainer=ddp", "trainer.accelerator=cpu",
            "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=2", f"paths.output_dir={out}"]
    args = [a for a in args if a not in ("trainer.devices=1", "trainer.strategy=auto")]
    res = _train(args, data_dir, cache_dir, process=True)  # DDP launches its second rank as a copy of this command
    assert res.returncode == 0, res.stderr[-3000:]
    assert "distributed_backend=gloo" in res.stderr + res.stdout
    assert json.loads((out / "vae" / "metrics.json").read_text())["steps"] == 2
    ckpt = torch.load(out / "vae" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and len(ckpt["callbacks"]["RNGState"]["ranks"]) == 2  # each rank's RNG state, for resuming


def test_missing_data_is_one_line_and_exit_2(tmp_path: Path):
    args = ["experiment=quickstart", "data=mp20", "stage=vae", f"paths.output_dir={tmp_path / 'x'}"]
    res = _train(args, tmp_path / "nowhere", tmp_path / "cache", timeout=300, process=True)  # the console entry point, exit code and all
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and "mp20" in lines[-1] and "Traceback" not in res.stderr


def test_dit_stage_without_vae_checkpoint_is_one_line_and_exit_2(data_dir: Path, cache_dir: Path, tmp_path: Path):
    res = _train(["experiment=quickstart", *TINY_ATOMS, "stage=dit", f"paths.output_dir={tmp_path / 'x'}"], data_dir, cache_dir)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "vae_ckpt" in res.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_dit_fine_tune_starts_from_a_shipped_model(data_dir: Path, cache_dir: Path, tmp_path: Path):
    """``dit.init_ckpt`` takes the shipped file's VAE, latent statistics and EMA DiT weights (not re-estimated), a
    fresh optimiser; a model of another size, or a VAE given twice, is one line and exit 2."""
    shipped = Path(__file__).parents[1] / "sciDiT" / "pretrained" / "qm9_mp20_cpu.pt"
    out = tmp_path / "ft"
    res = _train(["experiment=qm9_mp20_joint_cpu", *TINY_ATOMS, "stage=dit", "test=false", "trainer.max_steps=1", "dit.lr=1e-9",
                  f"dit.init_ckpt={shipped}", f"paths.output_dir={out}"], data_dir, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    before = torch.load(shipped, weights_only=True)["state_dict"]
    after = torch.load(out / "dit" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key in ("model.latent_mean", "model.latent_std", "model.size_counts", "model.vae.pos_head.weight"):
        assert torch.equal(before[key], after[key]), key
    dit = [k for k in before if k.startswith("model.dit.")]
    assert dit and all(torch.allclose(before[k], after[k], atol=1e-6) for k in dit)
    assert all(torch.allclose(before[k], after["ema.module." + k.removeprefix("model.dit.")], atol=1e-6) for k in dit)
    for extra, message in ((["model/dit=DiT-XS"], "model.dit"), ([f"dit.vae_ckpt={shipped}"], "dit.vae_ckpt")):
        res = _train(["experiment=qm9_mp20_joint_cpu", *TINY_ATOMS, "stage=dit", "trainer.max_steps=1", f"dit.init_ckpt={shipped}",
                      *extra, f"paths.output_dir={tmp_path / 'bad'}"], data_dir, cache_dir)
        last = res.stderr.strip().splitlines()[-1]
        assert res.returncode == 2 and "Traceback" not in res.stderr and message in last, res.stderr[-2000:]


@pytest.mark.slow
def test_dit_fine_tune_adds_conditions_to_a_shipped_model(data_dir: Path, cache_dir: Path, tmp_path: Path):
    """``dit.init_ckpt`` with conditions the file lacks: the shipped weights load, the new embedders start at zero,
    and the new conditions' statistics come from the data; a condition the configured DiT lacks is one line, exit 2."""
    shipped = Path(__file__).parents[1] / "sciDiT" / "pretrained" / "mp20_spacegroup_cpu.pt"
    out = tmp_path / "sgc"
    tiny = [a for a in TINY_ATOMS if not a.startswith("data.datasets")] + ["data.datasets=[{name:mp20,asymmetric_unit:true,limit:120}]"]
    res = _train(["experiment=mp20_spacegroup_cond_cpu", *tiny, "stage=dit", "test=false", "trainer.max_steps=1", "dit.lr=1e-9",
                  f"dit.init_ckpt={shipped}", f"paths.output_dir={out}"], data_dir, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    before = torch.load(shipped, weights_only=True)["state_dict"]
    after = torch.load(out / "dit" / "checkpoints" / "last.ckpt", weights_only=True)
    state = after["state_dict"]
    assert all(torch.allclose(v, state[k], atol=1e-6) for k, v in before.items() if k.startswith("model.dit."))
    for name in ("elements", "formation_energy", "band_gap"):
        added = [k for k in state if k.startswith((f"model.dit.cond_embedders.{name}.null", f"model.dit.cond_embedders.{name}.mlp.2"))]
        assert len(added) == 3 and all(state[k].abs().max() < 1e-6 for k in added), name
    assert set(after["condition_stats"]) == {"spacegroup", "elements", "formation_energy", "band_gap"}
    res = _train(["experiment=qm9_mp20_joint_cpu", *TINY_ATOMS, "stage=dit", "trainer.max_steps=1", f"dit.init_ckpt={shipped}",
                  f"paths.output_dir={tmp_path / 'bad'}"], data_dir, cache_dir)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "Traceback" not in res.stderr and "spacegroup" in last, res.stderr[-2000:]
    # a kept scalar condition that this (tiny) data would standardise differently: one line, exit 2
    res = _train(["experiment=mp20_spacegroup_cond_cpu", *tiny, "stage=dit", "trainer.max_steps=1", f"dit.init_ckpt={shipped.with_name('mp20_spacegroup_cond_cpu.pt')}",
                  f"paths.output_dir={tmp_path / 'other_data'}"], data_dir, cache_dir)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and "Traceback" not in res.stderr and "standardised condition 'formation_energy'" in last, res.stderr[-2000:]
