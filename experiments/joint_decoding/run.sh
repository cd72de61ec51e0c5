#!/usr/bin/env bash
# Issue 10: bond decodings of one model's samples (the same 1,000 molecules, seed 0, decoded five ways),
# scored offline with PoseBusters, then summarised. Run from the project root, one thread per job:
#   bash experiments/joint_decoding/run.sh CKPT OUT_DIR
set -euo pipefail
ckpt=${1:?DiT checkpoint}
out=${2:?output folder}
mkdir -p "$out"
export SCIDIT_DATA_DIR=${SCIDIT_DATA_DIR:-../shared/data} OMP_NUM_THREADS=1
runs=("argmax bond_decoding=argmax" "constrained bond_decoding=constrained" "joint bond_decoding=joint"
      "joint_relaxed bond_decoding=joint relax=true" "joint_p1e-3 bond_decoding=joint bond_min_prob=1e-3"
      "joint_p1e-4 bond_decoding=joint bond_min_prob=1e-4")
for run in "${runs[@]}"; do
  read -r name args <<< "$run"
  # shellcheck disable=SC2086  # args is a list of key=value words
  python -m sciDiT.sample ckpt="$ckpt" domain=molecule n=1000 seed=0 out="$out/$name.sdf" progress=false $args
  python -m sciDiT.evaluate molecules="$out/$name.sdf" reference=qm9 posebusters=true out="$out/$name.json"
done
python experiments/joint_decoding/summarize.py "$out" --argmax argmax
