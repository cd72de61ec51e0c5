#!/usr/bin/env bash
# Samples of a model guided by a latent discriminator, scored offline.
#   [DOMAIN=crystal] [SAMPLE_ARGS="autoguidance=2"] bash experiments/discriminator_guidance/run.sh OUT DISCRIMINATOR [N] [MODEL] [SCALES...]
# N samples per scale (default 1000, seed 0, Euler 100), MODEL the generator (default the shipped qm9_mp20_cpu),
# SCALES discriminator_guidance values (default 0 1 2; 0 = the model alone, same seeds). One SDF (molecules) or CIF
# folder (crystals, DOMAIN=crystal) + report per scale, then one line of figures per scale. SAMPLE_ARGS: more
# python -m sciDiT.sample arguments for every scale (e.g. autoguidance=2, composition=balanced).
set -euo pipefail
OUT=$1; DISC=$2; N=${3:-1000}; MODEL=${4:-qm9_mp20_cpu}
shift $(( $# < 4 ? $# : 4 ))
SCALES=${*:-0 1 2}
DOMAIN=${DOMAIN:-molecule}
SAMPLE_ARGS=${SAMPLE_ARGS:-}
mkdir -p "$OUT"
for S in $SCALES; do
  if [ "$DOMAIN" = crystal ]; then SAMPLES="$OUT/d$S"; ARGS="crystals=$SAMPLES reference=mp20"; else SAMPLES="$OUT/d$S.sdf"; ARGS="molecules=$SAMPLES reference=qm9"; fi
  python -m sciDiT.sample pretrained="$MODEL" discriminator="$DISC" discriminator_guidance="$S" domain="$DOMAIN" n="$N" seed=0 \
      progress=false out="$SAMPLES" $SAMPLE_ARGS
  python -m sciDiT.evaluate $ARGS out="$OUT/d$S.json"
done
for S in $SCALES; do
  python - "$OUT/d$S.json" "$S" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m = m.get("metrics", m)
keys = ["validity", "validity_connected", "validity_perceived", "validity_openbabel", "atom_stability", "molecule_stability",
        "structural_validity", "compositional_validity", "uniqueness", "novelty", "w1_density", "w1_num_elements"]
print(f"discriminator_guidance {sys.argv[2]}: " + ", ".join(f"{k} {m[k]:.3f}" for k in keys if k in m))
PY
done
