#!/usr/bin/env bash
# The bond-head measurement as run (experiments/bond_head/README.md): train the joint CPU recipe on ONE
# thread, refit the bond head on the frozen decoder, sample 1,000 molecules with each head and score them.
# Usage: bash experiments/bond_head/run.sh [output_dir]
set -euo pipefail
out=${1:-outputs/bonds_run}
export SCIDIT_DATA_DIR=${SCIDIT_DATA_DIR:-../shared/data} OMP_NUM_THREADS=1
python -m sciDiT.train experiment=qm9_mp20_joint_cpu paths.output_dir="$out" trainer.enable_progress_bar=false \
  max_steps.vae=4500 max_steps.dit=7200 trainer.max_time=null max_time.vae=00:00:20:00 max_time.dit=00:00:27:00 test=false
python experiments/bond_head/refit_head.py vae_ckpt="$out/vae/checkpoints/last.ckpt" head_out="$out/bond_head_refit.pt" steps=1500 \
  dit_ckpt="$out/dit/checkpoints/last.ckpt" out="$out/dit/refit.ckpt"
python -m sciDiT.sample ckpt="$out/dit/checkpoints/last.ckpt" domain=molecule n=1000 out="$out/molecules.sdf" progress=false
python -m sciDiT.sample ckpt="$out/dit/refit.ckpt" domain=molecule n=1000 out="$out/molecules_refit.sdf" progress=false
python -m sciDiT.sample ckpt="$out/dit/refit.ckpt" domain=molecule n=1000 out="$out/molecules_refit_relaxed.sdf" relax=true progress=false
python experiments/bond_head/score.py samples="$out/molecules.sdf" ckpt="$out/dit/checkpoints/last.ckpt" n_test=1000
python experiments/bond_head/score.py samples="$out/molecules_refit.sdf" ckpt="$out/dit/refit.ckpt" n_test=1000
python experiments/bond_head/score.py samples="$out/molecules_refit_relaxed.sdf"
