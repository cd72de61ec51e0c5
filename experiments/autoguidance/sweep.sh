#!/bin/bash
# Autoguidance sweep on the shipped qm9_mp20_cpu model (issue 10): sample with a weaker DiT on the same VAE as
# the guide, score with the strict evaluator, print the table. Usage:
#   bash experiments/autoguidance/sweep.sh <weak DiT last.ckpt> <out dir> [n=500]
# The weak DiT: python -m sciDiT.train experiment=quickstart_dit dit.lr=3e-4 max_steps.dit=10000 paths.output_dir=outputs/guide
# (10,000 DiT-T steps on the shipped VAE; the one packed in sciDiT/pretrained/qm9_mp20_cpu.pt).
# Each arm is "domain scale t_min t_max"; two arms run side by side, one thread each.
set -euo pipefail
weak=$1; out=$2; n=${3:-500}
mkdir -p "$out"
export OMP_NUM_THREADS=1
arm() {
  local domain=$1 scale=$2 t_min=$3 t_max=$4
  local tag="${domain}_w${scale}_t${t_min}-${t_max}" target
  if [ "$domain" = molecule ]; then target="$out/$tag.sdf"; else target="$out/$tag"; fi
  python -m sciDiT.sample pretrained=qm9_mp20_cpu guide="$weak" autoguidance="$scale" "autoguidance_interval=[$t_min,$t_max]" \
    domain="$domain" n="$n" seed=0 progress=false out="$target"
  if [ "$domain" = molecule ]; then
    python -m sciDiT.evaluate molecules="$target" reference=qm9 out="$out/$tag.json"
  else
    python -m sciDiT.evaluate crystals="$target" reference=mp20 out="$out/$tag.json"
  fi
}
arms=("molecule 1.0 0.0 1.0" "molecule 1.5 0.0 1.0" "molecule 2.0 0.0 1.0" "molecule 3.0 0.0 1.0"
      "molecule 2.0 0.0 0.5" "molecule 2.0 0.4 1.0" "molecule 2.0 0.5 1.0" "molecule 3.0 0.5 1.0"
      "molecule 2.0 0.7 1.0" "molecule 4.0 0.7 1.0" "crystal 1.0 0.0 1.0" "crystal 2.0 0.5 1.0" "crystal 1.5 0.7 1.0")
for i in "${!arms[@]}"; do
  arm ${arms[$i]} > "$out/arm_$i.log" 2>&1 &
  if (( i % 2 == 1 )); then wait; fi
done
wait
python experiments/autoguidance/summarize.py "$out"/*.json
