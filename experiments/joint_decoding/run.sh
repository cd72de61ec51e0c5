#!/usr/bin/env bash
# Issue 10: bond decodings of one model's samples (the same N molecules, seed 0, decoded five ways),
# scored offline, then summarised; PoseBusters (slow: ~5 s per valid molecule here) on the first
# PB_N molecules of the joint decoding, raw and relaxed. Run from the project root, one thread per job:
#   bash experiments/joint_decoding/run.sh CKPT OUT_DIR [N [PB_N]]
set -euo pipefail
ckpt=${1:?DiT checkpoint}
out=${2:?output folder}
n=${3:-1000}
pb_n=${4:-100}
mkdir -p "$out"
export SCIDIT_DATA_DIR=${SCIDIT_DATA_DIR:-../shared/data} OMP_NUM_THREADS=1
runs=("argmax bond_decoding=argmax" "constrained bond_decoding=constrained" "joint bond_decoding=joint"
      "joint_relaxed bond_decoding=joint relax=true" "joint_p1e-3 bond_decoding=joint bond_min_prob=1e-3")
for run in "${runs[@]}"; do
  read -r name args <<< "$run"
  # shellcheck disable=SC2086  # args is a list of key=value words
  python -m sciDiT.sample ckpt="$ckpt" domain=molecule n="$n" seed=0 out="$out/$name.sdf" progress=false $args
  python -m sciDiT.evaluate molecules="$out/$name.sdf" reference=qm9 out="$out/$name.json"
done
mkdir -p "$out/posebusters"
for name in joint joint_relaxed; do
  python -m sciDiT.sample ckpt="$ckpt" domain=molecule n="$pb_n" seed=0 out="$out/posebusters/$name.sdf" progress=false bond_decoding=joint \
    relax=$([[ $name == joint_relaxed ]] && echo true || echo false)
  python -m sciDiT.evaluate molecules="$out/posebusters/$name.sdf" reference=qm9 posebusters=true out="$out/posebusters/$name.json"
done
python experiments/joint_decoding/summarize.py "$out" --argmax argmax
python experiments/joint_decoding/summarize.py "$out/posebusters" --argmax joint
