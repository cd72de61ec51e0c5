#!/usr/bin/env bash
# Molecules of a model guided by its latent discriminator, scored offline.
#   bash experiments/discriminator_guidance/run.sh OUT DISCRIMINATOR [N] [MODEL] [SCALES...]
# N molecules per scale (default 1000, seed 0, Euler 100), MODEL the generator (default the shipped qm9_mp20_cpu),
# SCALES discriminator_guidance values (default 0 1 2; 0 = the model alone, same seeds). One SDF + report per scale.
set -euo pipefail
OUT=$1; DISC=$2; N=${3:-1000}; MODEL=${4:-qm9_mp20_cpu}
shift $(( $# < 4 ? $# : 4 ))
SCALES=${*:-0 1 2}
mkdir -p "$OUT"
for S in $SCALES; do
  python -m sciDiT.sample pretrained="$MODEL" discriminator="$DISC" discriminator_guidance="$S" domain=molecule n="$N" seed=0 \
      progress=false out="$OUT/d$S.sdf"
  python -m sciDiT.evaluate molecules="$OUT/d$S.sdf" reference=qm9 out="$OUT/d$S.json"
done
for S in $SCALES; do
  python - "$OUT/d$S.json" "$S" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m = m.get("metrics", m)
keys = ["validity", "validity_connected", "validity_perceived", "validity_openbabel", "atom_stability", "molecule_stability", "uniqueness"]
print(f"discriminator_guidance {sys.argv[2]}: " + ", ".join(f"{k} {m[k]:.3f}" for k in keys if k in m))
PY
done
