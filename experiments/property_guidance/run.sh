#!/usr/bin/env bash
# Gap requests steered by a noisy-latent property regressor (classifier guidance), scored by the half-A SchNet and GFN2-xTB.
#   bash experiments/property_guidance/run.sh OUT REGRESSOR PREDICTORS [PER_VALUE] [MODEL] [SCALES...]
# OUT: output folder; REGRESSOR: a file of experiments/property_guidance/train_regressor.py; PREDICTORS: the folder of
# experiments/inverse_design/train_property_predictor.py (half A); PER_VALUE molecules at each of the five requested gaps
# (default 40); MODEL: the generator (default the shipped qm9_mp20_cpu); SCALES: property_guidance values (default 0 1 2 4;
# 0 = sizes given the request only; with MODE=screen: candidates per sample, default 1 4 16; SCREEN=FOLDER of half-B
# predictors (train_property_predictor.py --half B) screens by them instead of the regressor). One folder per setting, then
# summarize.py prints the table.
set -euo pipefail
OUT=$1; REG=$2; PRED=$3; PER=${4:-40}; MODEL=${5:-qm9_mp20_cpu}
shift $(( $# < 5 ? $# : 5 ))
SCALES=${*:-}
PROPS=${PROPS:-gap}  # the QM9 properties swept (PROPS="gap mu" ...), each needs its half-A predictor
MODE=${MODE:-guidance}  # guidance: SCALES are property_guidance scales (folders g<scale>); screen: SCALES are candidates per sample (s<k>)
[ -n "$SCALES" ] || { [ "$MODE" = screen ] && SCALES="1 4 16" || SCALES="0 1 2 4"; }
for S in $SCALES; do
  if [ "$MODE" = screen ]; then DIR="$OUT/s$S"; FLAGS="--property-guidance 0 --property-screen $S"; else DIR="$OUT/g$S"; FLAGS="--property-guidance $S"; fi
  if [ -n "${SCREEN:-}" ]; then DIR="$OUT/b$S"; FLAGS="$FLAGS --screen-predictor $SCREEN"; fi
  python experiments/inverse_design/sample_requests.py "$MODEL" --out "$DIR" --per-value "$PER" --parts molecules --properties $PROPS \
      --property-guide "$REG" $FLAGS
  python -m sciDiT.evaluate molecules="$DIR/molecules.sdf" condition=true predictor="$PRED" xtb=true \
      xtb_calibration=experiments/inverse_design/xtb_calibration.json reference=qm9 out="$DIR/molecules.json"
done
python experiments/property_guidance/summarize.py "$OUT"
