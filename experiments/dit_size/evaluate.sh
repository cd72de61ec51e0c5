#!/usr/bin/env bash
# Sample and score each arm of experiments/dit_size/train.sh: 1,000 molecules and 1,000 crystals per arm
# (seed 0, Euler 100 steps, CFG 1, EMA weights, joint bond decoding: the shipped model card's setting),
# then the strict metrics of sciDiT.evaluate (no PoseBusters / coverage / CHGNet: they are the slow ones).
# Usage: bash experiments/dit_size/evaluate.sh [output_dir] [n] [arm ...]   (default arms: DiT-T DiT-XS)
set -euo pipefail
out=${1:-outputs/dit_size}
n=${2:-1000}
arms=("${@:3}")
[ ${#arms[@]} -gt 0 ] || arms=(DiT-T DiT-XS)
export SCIDIT_DATA_DIR=${SCIDIT_DATA_DIR:-../shared/data}
for arm in "${arms[@]}"; do
  ckpt="$out/$arm/dit/checkpoints/last.ckpt"
  mkdir -p "$out/$arm/samples" "$out/$arm/eval"
  python -m sciDiT.sample ckpt="$ckpt" domain=molecule n="$n" seed=0 out="$out/$arm/samples/molecules.sdf"
  python -m sciDiT.sample ckpt="$ckpt" domain=crystal n="$n" seed=0 out="$out/$arm/samples/crystals/"
  python -m sciDiT.evaluate molecules="$out/$arm/samples/molecules.sdf" reference=qm9 out="$out/$arm/eval/molecules.json"
  python -m sciDiT.evaluate crystals="$out/$arm/samples/crystals/" reference=mp20 out="$out/$arm/eval/crystals.json"
done
