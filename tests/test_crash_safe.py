"""Real training subprocesses killed with SIGKILL (once in the middle of a checkpoint write) and rerun with the same
command; and a diverging run (``vae.lr=1e6``) that must stop with one line and exit code 3, saving no bad weights."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import TINY_ATOMS, _train

from sciDiT.training.checkpoint import non_finite_weights

# Runs sciDiT.train with a hook that stops the process at a chosen checkpoint write so the test can SIGKILL it
# there: `during` = inside torch.save's write of the N-th temp file under a path containing FILTER (the temp file
# exists, the target is untouched), `after` = just after the N-th such checkpoint was renamed into place.
HOOK = r"""
import os, sys, time, pathlib, torch
import sciDiT.training.checkpoint as ck
mode, filt, n, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), pathlib.Path(sys.argv[4])
count = [0]
def park(target):
    count[0] += 1
    if count[0] == n:
        marker.write_text(str(target))
        time.sleep(600)
real_save, real_atomic = torch.save, ck.atomic_torch_save
def save(obj, f, *a, **k):
    real_save(obj, f, *a, **k)
    name = os.readlink(f"/proc/self/fd/{f.fileno()}") if hasattr(f, "fileno") else str(f)
    if mode == "during" and filt in name and name.endswith(".tmp"):
        f.flush(); park(name)
def atomic(obj, path):
    out = real_atomic(obj, path)
    if mode == "after" and filt in str(path):
        park(path)
    return out
torch.save, ck.atomic_torch_save = save, atomic
sys.argv = ["sciDiT.train", *sys.argv[5:]]
from sciDiT.train import cli
sys.exit(cli())
"""


def _run_until_parked(args: list[str], mode: str, filt: str, n: int, tmp: Path, data_dir: Path, cache_dir: Path) -> str:
    """Start training with the hook, wait until it parks at the chosen write, SIGKILL it; return the parked path."""
    marker = tmp / f"parked-{mode}-{n}-{filt.strip('/').replace('/', '-')}"
    env = {**os.environ, "SCIDIT_DATA_DIR": str(data_dir), "SCIDIT_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "ignore"}
    log = (tmp / f"{marker.name}.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", HOOK, mode, filt, str(n), str(marker), *args], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 600
    while not marker.exists():
        assert proc.poll() is None, f"training ended (rc={proc.returncode}) before reaching the kill point: {(tmp / f'{marker.name}.log').read_text()[-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return marker.read_text()


def _step(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


def _train_loss_steps(path: Path) -> list[int]:
    """The steps of the rows of metrics.csv holding a training loss (after checking every row has the header's width)."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0]
    assert all(len(r) == len(header) for r in rows), "metrics.csv has rows of different widths"
    step, loss = header.index("step"), header.index("train/loss")
    return [int(r[step]) for r in rows[1:] if r[loss]]


@pytest.mark.slow
def test_kill_9_at_three_points_then_the_same_command_finishes_both_stages(data_dir: Path, cache_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    args = ["experiment=quickstart", *TINY_ATOMS, "trainer.max_steps=6", "trainer.log_every_n_steps=1", "test=false", f"paths.output_dir={out}"]
    vae_last, dit_last = out / "vae" / "checkpoints" / "last.ckpt", out / "dit" / "checkpoints" / "last.ckpt"

    # 1. killed inside the 3rd VAE checkpoint write (step 4): the temp file is there, the step-2 checkpoint intact
    parked = Path(_run_until_parked(args, "during", "/vae/", 3, tmp_path, data_dir, cache_dir))
    assert parked.exists() and parked.name.endswith(".tmp") and parked.stat().st_size > 0
    assert _step(vae_last) == 2
    # 2. rerun: the VAE resumes from step 2 and finishes; killed right after the DiT's 2nd last.ckpt (step 4)
    _run_until_parked(args, "after", "/dit/checkpoints/last", 2, tmp_path, data_dir, cache_dir)
    assert not parked.exists()  # the stale temp file was removed when the stage started again
    assert _step(vae_last) == 6 and _step(dit_last) == 4
    # 3. rerun: killed inside the DiT's next checkpoint write
    _run_until_parked(args, "during", "/dit/", 1, tmp_path, data_dir, cache_dir)
    assert _step(dit_last) == 4
    # 4. the same command once more, unhooked: the DiT resumes from step 4 and both stages end at step 6
    res = _train(args, data_dir, cache_dir)
    assert res.returncode == 0, res.stderr[-3000:]
    log = res.stdout + res.stderr
    assert f"Restoring states from the checkpoint path at {dit_last}" in log
    for stage, last in (("vae", vae_last), ("dit", dit_last)):
        printed = re.search(rf"\[sciDiT\] {stage} stage done: .*\"steps\": ([0-9.]+)", res.stdout)
        assert printed and float(printed.group(1)) == 6 == _step(last), stage  # printed step = saved step = max_steps
        for ckpt in last.parent.glob("*.ckpt"):  # every checkpoint file loads, with finite weights
            assert not non_finite_weights(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]), ckpt
        steps = _train_loss_steps(out / stage / "metrics.csv")  # rows from before the kills and after them, once each
        assert steps == list(range(6)), (stage, steps)
    assert not list(out.rglob("*.tmp")), list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_diverging_run_stops_with_one_line_exit_3_and_no_non_finite_checkpoint(data_dir: Path, cache_dir: Path, tmp_path: Path):
    out = tmp_path / "nan"
    res = _train(["experiment=quickstart", *TINY_ATOMS, "stage=vae", "vae.lr=1e6", "trainer.max_steps=30", f"paths.output_dir={out}"], data_dir, cache_dir)
    assert res.returncode == 3 and "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert re.match(r"error: vae stage stopped at step \d+: loss or gradient norm not finite for 3 consecutive steps", line), line
    ckpts = list((out / "vae" / "checkpoints").glob("*.ckpt"))
    assert f"last good checkpoint: {out / 'vae' / 'checkpoints' / 'last.ckpt'}" in line and ckpts
    stopped = int(re.search(r"step (\d+)", line).group(1))
    for ckpt in ckpts:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert state["global_step"] < stopped and not non_finite_weights(state["state_dict"])
    assert not (out / "vae" / "metrics.json").exists()  # the stage did not report itself done
