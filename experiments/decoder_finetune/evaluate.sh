#!/usr/bin/env bash
# Score each fine-tuned decoder's model (and the base model) on n molecules and n crystals with the
# package's own CLIs, then print the table. Usage:
#   bash experiments/decoder_finetune/evaluate.sh <out of run.sh> <n> <base ckpt or shipped name> [arms...]
set -euo pipefail
out=$1
n=${2:-1000}
base=$3
arms=("${@:4}")
[ ${#arms[@]} -gt 0 ] || arms=(m30 m45 m60 m80c2 u80 u100)
export SCIDIT_DATA_DIR=${SCIDIT_DATA_DIR:-../shared/data}
for arm in base "${arms[@]}"; do
  if [ "$arm" = base ]; then model=$base; else model="$out/$arm.pt"; fi
  if [ -f "$model" ]; then src=(ckpt="$model"); else src=(pretrained="$model"); fi
  dir="$out/eval/$arm"
  mkdir -p "$dir"
  python -m sciDiT.sample "${src[@]}" domain=molecule n="$n" seed=0 out="$dir/molecules.sdf" progress=false
  python -m sciDiT.sample "${src[@]}" domain=crystal n="$n" seed=0 out="$dir/crystals/" progress=false
  python -m sciDiT.evaluate molecules="$dir/molecules.sdf" reference=qm9 out="$dir/molecules.json"
  python -m sciDiT.evaluate crystals="$dir/crystals/" reference=mp20 out="$dir/crystals.json"
done
python experiments/decoder_finetune/summarize.py "$out" base "${arms[@]}"
