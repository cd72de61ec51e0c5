#!/usr/bin/env bash
# DiT size at a fixed CPU budget (issue 10, section 1): one VAE-T, then DiT-T and DiT-XS trained side by
# side on it, one core each, for the same wall time. Budgets are fixed in optimisation steps from the
# single-thread bf16 throughput measured in one process on this machine (Intel Xeon with AMX-BF16:
# VAE-T 11.3, DiT-T 16.0, DiT-XS 4.97 steps/s at batch 64, attention in fp32; experiments/dit_size/README.md),
# less 10% for validation, so a busy machine changes the wall time, not the result:
#   VAE-T 30 min -> 18,300 steps; DiT 60 min -> DiT-T 51,800 / DiT-XS 16,100 steps (90 CPU-minutes per arm).
# Crystals get no decoder-input latent noise (molecules 0.2): noise cost MP-20 reconstruction (see README).
# Usage: bash experiments/dit_size/train.sh [output_dir]
set -euo pipefail
out=${1:-outputs/dit_size}
export SCIDIT_DATA_DIR=${SCIDIT_DATA_DIR:-../shared/data}
common=(experiment=qm9_mp20_joint_cpu trainer.enable_progress_bar=false trainer.max_time=null)
OMP_NUM_THREADS=2 python -m sciDiT.train "${common[@]}" stage=vae paths.output_dir="$out" max_steps.vae=18300 \
  max_time.vae=00:01:00:00 'vae.latent_noise={molecule:0.2,crystal:0.0}'
vae_ckpt="$out/vae/checkpoints/last.ckpt"
for arm in "DiT-T 51800" "DiT-XS 16100"; do
  set -- $arm
  OMP_NUM_THREADS=1 python -m sciDiT.train "${common[@]}" stage=dit model/dit="$1" dit.vae_ckpt="$vae_ckpt" \
    paths.output_dir="$out/$1" max_steps.dit="$2" max_time.dit=00:01:20:00 trainer.val_check_interval=1000 \
    > "$out/$1.log" 2>&1 &
done
wait
