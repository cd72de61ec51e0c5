#!/usr/bin/env bash
# Train the joint QM9 + MP-20 CPU recipe (VAE-T then DiT-T, experiment=qm9_mp20_joint_cpu) for a budget
# of 10, 30 or 90 minutes on ONE core. The budget is fixed in optimisation steps so that a busy machine
# changes the wall time, not the result: steps = budget x the single-thread throughput measured on this
# 2-core VM (VAE-T 8.8 steps/s, DiT-T 6.6 steps/s, two jobs side by side), less ~10% for validation;
# one third of the budget goes to the VAE, two thirds to the DiT. Each stage is also capped at twice
# its share of wall time. Usage: bash experiments/quality_vs_budget/train.sh 90 [output_dir [hydra overrides...]]
set -euo pipefail
minutes=${1:?budget in minutes: 10, 30 or 90}
out=${2:-outputs/budget_${minutes}min}
case $minutes in
  10) vae=1500; dit=2400 ;;
  30) vae=4500; dit=7200 ;;
  90) vae=13500; dit=21600 ;;
  *) echo "error: budget must be 10, 30 or 90 minutes, got $minutes" >&2; exit 2 ;;
esac
cap() { local m=$(( $1 * 2 )); printf "00:%02d:%02d:00" $(( m / 60 )) $(( m % 60 )); }  # twice the share, DD:HH:MM:SS
export SCIDIT_DATA_DIR=${SCIDIT_DATA_DIR:-../shared/data} OMP_NUM_THREADS=1
python -m sciDiT.train experiment=qm9_mp20_joint_cpu paths.output_dir="$out" trainer.enable_progress_bar=false \
  trainer.max_time=null max_steps.vae=$vae max_steps.dit=$dit \
  max_time.vae="$(cap $(( minutes / 3 )))" max_time.dit="$(cap $(( minutes * 2 / 3 )))" "${@:3}"
