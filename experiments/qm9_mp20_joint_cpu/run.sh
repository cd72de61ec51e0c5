#!/usr/bin/env bash
# Reproduce experiments/qm9_mp20_joint_cpu/README.md: train both stages on CPU, sample 1,000 molecules
# and 1,000 crystals, score them offline. Usage: bash experiments/qm9_mp20_joint_cpu/run.sh [output_dir]
set -euo pipefail
out=${1:-outputs/cpu_run1}
export SCIDIT_DATA_DIR=${SCIDIT_DATA_DIR:-../shared/data}

python -m sciDiT.train experiment=qm9_mp20_joint_cpu paths.output_dir="$out" trainer.enable_progress_bar=false
ckpt="$out/dit/checkpoints/last.ckpt"
mkdir -p "$out/samples" "$out/eval"
python -m sciDiT.sample ckpt="$ckpt" domain=molecule n=1000 out="$out/samples/molecules.sdf" steps=100 seed=0
python -m sciDiT.sample ckpt="$ckpt" domain=crystal n=1000 out="$out/samples/crystals/" steps=100 seed=0
python -m sciDiT.evaluate molecules="$out/samples/molecules.sdf" reference=qm9 out="$out/eval/molecules.json"
python -m sciDiT.evaluate crystals="$out/samples/crystals/" reference=mp20 out="$out/eval/crystals.json"
