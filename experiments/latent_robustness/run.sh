#!/usr/bin/env bash
# Issue 10: a decoder robust to latent noise + valence-constrained bond decoding. Every command of
# experiments/latent_robustness/README.md, in order (one thread per job; run from the project root).
#   bash experiments/latent_robustness/run.sh [output_root]
set -euo pipefail
root=${1:-outputs/ab}
export SCIDIT_DATA_DIR=${SCIDIT_DATA_DIR:-../shared/data} OMP_NUM_THREADS=1
common=(experiment=qm9_mp20_joint_cpu trainer.max_time=null trainer.enable_progress_bar=false)
# 1. VAE-T, 2,000 steps each: latent noise 0.1, and latent noise 0.2 + the local distance loss
python -m sciDiT.train "${common[@]}" stage=vae test=false max_steps.vae=2000 paths.output_dir="$root/B" vae.latent_noise=0.1
python -m sciDiT.train "${common[@]}" stage=vae test=false max_steps.vae=2000 paths.output_dir="$root/D" vae.latent_noise=0.2 vae.loss_weights.dist=1.0
# 2. decoder robustness of real QM9 test latents (argmax, constrained and perceived bonds)
for run in "$root/B" "$root/D"; do
  python experiments/vae_robustness.py "$run/vae/checkpoints/last.ckpt" --n 300 > "$run/robustness.json"
done
# 3. DiT-T on VAE D, 6,000 steps
python -m sciDiT.train "${common[@]}" stage=dit dit.vae_ckpt="$root/D/vae/checkpoints/last.ckpt" max_steps.dit=6000 paths.output_dir="$root/D"
# 4. 1,000 molecules each way (argmax and valence-constrained bonds) and 1,000 crystals, scored offline
ckpt="$root/D/dit/checkpoints/last.ckpt"
for dec in argmax constrained; do
  python -m sciDiT.sample ckpt="$ckpt" domain=molecule n=1000 seed=0 bond_decoding=$dec out="$root/D/molecules_$dec.sdf" progress=false
  python -m sciDiT.evaluate molecules="$root/D/molecules_$dec.sdf" reference=qm9 out="$root/D/molecules_$dec.json"
done
python -m sciDiT.sample ckpt="$ckpt" domain=crystal n=1000 seed=0 out="$root/D/crystals" progress=false
python -m sciDiT.evaluate crystals="$root/D/crystals" reference=mp20 out="$root/D/crystals.json"
