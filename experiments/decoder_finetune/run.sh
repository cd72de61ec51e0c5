#!/usr/bin/env bash
# Decoder-only fine-tunes of a trained model's VAE at larger decoder-input latent noise (issue 10).
# The encoder is frozen (vae.train_decoder_only=true), so the latents, their statistics and the DiT
# trained on them stay valid: each fine-tuned decoder is swapped into the DiT checkpoint and the
# model's samples are scored. Usage:
#   bash experiments/decoder_finetune/run.sh <vae last.ckpt> <dit ckpt or shipped .pt> [out] [steps] [arms...]
# an arm is name:molecule_sigma:crystal_sigma (default arms below). Two arms train side by side, one thread each.
set -euo pipefail
vae_ckpt=$1
dit_ckpt=$2
out=${3:-outputs/decoder_finetune}
steps=${4:-6000}
arms=("${@:5}")
[ ${#arms[@]} -gt 0 ] || arms=(m30:0.3:0.1 m45:0.45:0.1 m60:0.6:0.1 m80c2:0.8:0.2 "u80:[0.0,0.8]:0.1" "u100:[0.2,1.0]:0.1")
export SCIDIT_DATA_DIR=${SCIDIT_DATA_DIR:-../shared/data}
mkdir -p "$out/base/vae"
base_metrics="$(dirname "$(dirname "$vae_ckpt")")/metrics.json"  # the base VAE's test reconstruction, for the table
[ ! -f "$base_metrics" ] || cp "$base_metrics" "$out/base/vae/metrics.json"
train() {  # name molecule_sigma crystal_sigma
  OMP_NUM_THREADS=1 python -m sciDiT.train experiment=qm9_mp20_joint_cpu trainer.enable_progress_bar=false trainer.max_time=null \
    stage=vae paths.output_dir="$out/$1" max_steps.vae="$steps" max_time.vae=00:01:00:00 \
    "vae.latent_noise={molecule:$2,crystal:$3}" vae.init_ckpt="$vae_ckpt" vae.train_decoder_only=true vae.lr=2e-4 vae.warmup_steps=100 \
    > "$out/$1.log" 2>&1
  python -m sciDiT.pretrained "$dit_ckpt" "$out/$1.pt" decoder="$out/$1/vae/checkpoints/last.ckpt"
}
for ((i = 0; i < ${#arms[@]}; i += 2)); do
  for arm in "${arms[@]:i:2}"; do
    IFS=: read -r name mol xtal <<< "$arm"
    train "$name" "$mol" "$xtal" &
  done
  wait
done
