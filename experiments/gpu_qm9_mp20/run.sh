#!/usr/bin/env bash
# One command for the GPU check of issue 10, section 5: train experiment=qm9_mp20_joint_gpu (both
# stages, a one-minute decoder fine-tune and a one-minute geometry refiner, <= 10 minutes on one H100/H200 in bf16),
# sample 10,000 molecules (refine=true) and 10,000 crystals, score them offline with python -m sciDiT.evaluate and print the table.
#   bash experiments/gpu_qm9_mp20/run.sh [output_dir]            # on the GPU machine
#   TINY=1 bash experiments/gpu_qm9_mp20/run.sh outputs/gpu_tiny   # the same path on CPU, seconds per stage
set -euo pipefail
out=${1:-outputs/gpu_qm9_mp20}
export SCIDIT_DATA_DIR=${SCIDIT_DATA_DIR:-../shared/data} PYTHONUNBUFFERED=1
if [[ "${TINY:-0}" == 1 ]]; then
  n=${N:-20}; device=cpu; bf16=false; refiner_args=(--size R-T --train 200 --test 20 --minutes 0.05)
  extra=(trainer.accelerator=cpu trainer.devices=1 trainer.strategy=auto trainer.precision=32-true model/vae=VAE-T model/dit=DiT-T
         "data.datasets=[{name:qm9,limit:400},{name:mp20,limit:120}]" data.batch_size=16 data.num_workers=0
         max_steps.vae=4 max_steps.dit=4 trainer.val_check_interval=2 trainer.limit_val_batches=1 trainer.limit_test_batches=1
         dit.stats_batches=1 dit.val_samples=0 vae.max_eval_sets=16)
else
  n=${N:-10000}; device=cuda; bf16=true; extra=(); refiner_args=(--size R-B --batch-size 256 --minutes 1)
fi
mkdir -p "$out"
start=$(date +%s)
python -m sciDiT.train experiment=qm9_mp20_joint_gpu paths.output_dir="$out" trainer.enable_progress_bar=false "${extra[@]}"
# the decoder alone, fine-tuned on the frozen encoder at larger latent noise (experiments/decoder_finetune), one minute
python -m sciDiT.train experiment=qm9_mp20_joint_gpu stage=vae paths.output_dir="$out/decoder_ft" trainer.enable_progress_bar=false \
  vae.init_ckpt="$out/vae/checkpoints/last.ckpt" vae.train_decoder_only=true 'vae.latent_noise={molecule:[0.0,1.0],crystal:[0.0,0.2]}' \
  vae.lr=2e-4 vae.warmup_steps=100 max_time.vae=00:00:01:00 "${extra[@]}"
ckpt="$out/model.pt"
python -m sciDiT.pretrained "$out/dit/checkpoints/last.ckpt" "$out/unrefined.pt" decoder="$out/decoder_ft/vae/checkpoints/last.ckpt"
# the geometry refiner of the model's molecules (experiments/geometry_refiner), packed beside it
python experiments/geometry_refiner/train_refiner.py "$out/unrefined.pt" --out "$out/refiner.pt" --device $device "${refiner_args[@]}"
python -m sciDiT.pretrained "$out/unrefined.pt" "$ckpt" refiner="$out/refiner.pt"
echo "train_seconds $(( $(date +%s) - start ))" | tee "$out/timings.txt"
mkdir -p "$out/samples" "$out/eval"
for domain in molecule crystal; do
  target=$([[ $domain == molecule ]] && echo "$out/samples/molecules.sdf" || echo "$out/samples/crystals/")
  t0=$(date +%s)
  python -m sciDiT.sample ckpt="$ckpt" domain=$domain n="$n" out="$target" steps=100 seed=0 device=$device bf16=$bf16 \
    batch_size=1024 progress=false $([[ $domain == molecule ]] && echo refine=true)
  echo "sample_${domain}_seconds $(( $(date +%s) - t0 ))" | tee -a "$out/timings.txt"
done
python -m sciDiT.evaluate molecules="$out/samples/molecules.sdf" reference=qm9 out="$out/eval/molecules.json"
python -m sciDiT.evaluate crystals="$out/samples/crystals/" reference=mp20 out="$out/eval/crystals.json"
python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"\n| metric | value |\n|---|---|")
for line in (out / "timings.txt").read_text().split("\n"):
    if line:
        key, value = line.split()
        print(f"| {key} | {value} |")
for name in ("molecules", "crystals"):
    for key, value in json.loads((out / "eval" / f"{name}.json").read_text()).items():
        if isinstance(value, (int, float)):
            print(f"| {name}: {key} | {value:.4g} |")
PY
