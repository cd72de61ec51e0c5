#!/usr/bin/env bash
# Train today's joint QM9 + MP-20 CPU recipe from scratch for a budget of 10, 30 or 90 minutes of ONE core,
# every stage inside the budget (the recipe of the shipped models, experiments/pretrained_cpu, scaled down):
#   1. VAE-T, latent noise 0.2 for molecules and none for crystals                                  (1/3 of the budget)
#   2. the VAE decoder alone fine-tuned at latent noise U[0, 1] / U[0, 0.2] on the frozen encoder
#      (experiments/decoder_finetune)                                                              (1/9)
#   3. DiT-T on the encoder's latents, learning rate 2e-3 (experiments/quickstart)                    (1/3)
#   4. the geometry refiner of the molecules, R-S (experiments/geometry_refiner)                      (1/9)
#   5. the crystal refiner, CR-S, 30% of its crystals with one atom moved onto another's site, two
#      passes unrolled (experiments/crystal_refiner)                                                 (1/9)
# then all of it packed into $out/model.pt (the DiT, the fine-tuned decoder and both refiners).
# Stages 1-3 are budgeted in optimisation steps (one-core throughput on the AVX-512 BF16 EPYC with a second job beside
# it: VAE-T 9.6, DiT-T 10-11, decoder-only ~11 steps/s, less ~10% for validation), so load changes the wall time, not
# the model, and each is capped at twice its share of wall time; the refiners train for their share of wall minutes.
# Stages 4-5 need only the VAE, not the DiT, so they can run beside stage 3 (see README). A stage whose output is
# already in the output folder is kept, not trained again.
# The recipe before (no refiners, DiT 5/9 of the budget) is this file at commit c707b2a.
# Usage: bash experiments/quality_vs_budget/train.sh 90 [output_dir [hydra overrides...]]
set -euo pipefail
minutes=${1:?budget in minutes: 10, 30 or 90}
out=${2:-outputs/budget_${minutes}min}
case $minutes in
  10) vae=1700; dec=650; dit=1800 ;;
  30) vae=5200; dec=2000; dit=5400 ;;
  90) vae=15500; dec=6000; dit=16200 ;;
  *) echo "error: budget must be 10, 30 or 90 minutes, got $minutes" >&2; exit 2 ;;
esac
cap() { local m=$(( $1 * 2 + 2 )); printf "00:%02d:%02d:00" $(( m / 60 )) $(( m % 60 )); }  # twice the share, DD:HH:MM:SS
ninth=$(python -c "print(round($minutes / 9, 1))")
export SCIDIT_DATA_DIR=${SCIDIT_DATA_DIR:-../shared/data} OMP_NUM_THREADS=1
common=(experiment=qm9_mp20_joint_cpu trainer.enable_progress_bar=false trainer.max_time=null trainer.val_check_interval=2500)
vae_ckpt="$out/vae/checkpoints/last.ckpt"
dec_ckpt="$out/decoder_ft/vae/checkpoints/last.ckpt"
dit_ckpt="$out/dit/checkpoints/last.ckpt"
[[ -f $vae_ckpt ]] || python -m sciDiT.train "${common[@]}" stage=vae paths.output_dir="$out" max_steps.vae=$vae \
  max_time.vae="$(cap $(( minutes / 3 )))" 'vae.latent_noise={molecule:0.2,crystal:0.0}' "${@:3}"
[[ -f $dec_ckpt ]] || python -m sciDiT.train "${common[@]}" stage=vae paths.output_dir="$out/decoder_ft" max_steps.vae=$dec \
  max_time.vae="$(cap $(( minutes / 9 + 1 )))" 'vae.latent_noise={molecule:[0.0,1.0],crystal:[0.0,0.2]}' \
  vae.init_ckpt="$vae_ckpt" vae.train_decoder_only=true vae.lr=2e-4 vae.warmup_steps=100 "${@:3}"
[[ -f $dit_ckpt ]] || python -m sciDiT.train "${common[@]}" stage=dit paths.output_dir="$out" dit.vae_ckpt="$vae_ckpt" dit.lr=2e-3 \
  max_steps.dit=$dit max_time.dit="$(cap $(( minutes / 3 )))" "${@:3}"
python -m sciDiT.pretrained "$dit_ckpt" "$out/model_base.pt" decoder="$dec_ckpt"
[[ -f $out/refiner.pt ]] || python experiments/geometry_refiner/train_refiner.py "$out/model_base.pt" --size R-S \
  --minutes "$ninth" --out "$out/refiner.pt"
[[ -f $out/crystal_refiner.pt ]] || python experiments/crystal_refiner/train_crystal_refiner.py "$out/model_base.pt" \
  --minutes "$ninth" --latent-noise 0.5 --overlap-share 0.3 --rounds 2 --out "$out/crystal_refiner.pt"
python -m sciDiT.pretrained "$out/model_base.pt" "$out/model.pt" refiner="$out/refiner.pt" crystal_refiner="$out/crystal_refiner.pt"
