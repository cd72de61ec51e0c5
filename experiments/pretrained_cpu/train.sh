#!/usr/bin/env bash
# The recipe of the shipped `qm9_mp20_cpu` model and of the conditional inverse-design model, on one VAE.
# VAE-T (crystals noise-free, molecules 0.2: experiments/dit_size) on two threads, then two DiT-T on it
# side by side, one core each: the unconditional one (shipped: sciDiT/pretrained/qm9_mp20_cpu.md) and
# the conditional one of experiment=qm9_mp20_cond_cpu (experiments/inverse_design/README.md). Last, the
# VAE decoder alone is fine-tuned at latent noise U[0, 1] (molecules) / U[0, 0.2] (crystals) on the frozen
# encoder (experiments/decoder_finetune) and swapped into the unconditional DiT: $out/qm9_mp20_cpu.pt.
# Budgets are optimisation steps (DiT-T ~16 steps/s on one AMX core), so load changes wall time only.
# Usage: bash experiments/pretrained_cpu/train.sh [output_dir] [dit_steps]
set -euo pipefail
out=${1:-outputs/pretrained_cpu}
dit_steps=${2:-45000}
export SCIDIT_DATA_DIR=${SCIDIT_DATA_DIR:-../shared/data}
common=(trainer.enable_progress_bar=false trainer.max_time=null)
OMP_NUM_THREADS=2 python -m sciDiT.train experiment=qm9_mp20_joint_cpu "${common[@]}" stage=vae \
  paths.output_dir="$out" max_steps.vae=18300 max_time.vae=00:01:00:00 'vae.latent_noise={molecule:0.2,crystal:0.0}'
vae_ckpt="$out/vae/checkpoints/last.ckpt"
for arm in "uncond qm9_mp20_joint_cpu" "cond qm9_mp20_cond_cpu"; do
  set -- $arm
  OMP_NUM_THREADS=1 python -m sciDiT.train experiment="$2" "${common[@]}" stage=dit dit.vae_ckpt="$vae_ckpt" \
    paths.output_dir="$out/$1" max_steps.dit="$dit_steps" max_time.dit=00:01:20:00 trainer.val_check_interval=1000 \
    > "$out/$1.log" 2>&1 &
done
wait
bash experiments/decoder_finetune/run.sh "$vae_ckpt" "$out/uncond/dit/checkpoints/last.ckpt" "$out/decoder_ft" 12000 \
  "u100x2:[0.0,1.0]:[0.0,0.2]"
cp "$out/decoder_ft/u100x2.pt" "$out/qm9_mp20_cpu.pt"
