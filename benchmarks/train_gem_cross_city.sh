#!/bin/bash
# glocal train proof (issue 16 item 4): fine-tune gem on one city's mini revisited set (positives from its
# ground truth, negatives mined from its other images) and evaluate the OTHER city before and after.
# Usage: benchmarks/train_gem_cross_city.sh [roxford5k|rparis6k] [OUT]   (the city trained on; default roxford5k)
# Settings fixed before any evaluation (cirtorch's batch 5 / 5 negatives / margin 0.7 / 362 px; lr 1e-5 instead of
# 1e-6 because a CPU run has only a handful of steps); nothing was selected on the evaluated city.
set -euo pipefail
D=${D:-/work/shared/data/mini-revisitop}
TRAIN=${1:-roxford5k}
OUT=${2:-/tmp/train_gem_$TRAIN}
if [ "$TRAIN" = roxford5k ]; then OTHER=rparis6k; else OTHER=roxford5k; fi
GLOCAL=${GLOCAL:-glocal}
uptime
$GLOCAL eval $OTHER --data $D/$OTHER --gnd $D/gnd_${OTHER}_subset.pkl --method gem --json $OUT-before.json
uptime
$GLOCAL train gem --data $D/gnd_${TRAIN}_subset.pkl --images $D/$TRAIN/jpg --out $OUT \
    --steps ${STEPS:-6} --batch 5 --negatives 5 --lr 1e-5 --margin 0.7 --image-size 362 --frozen-fraction 0.5 \
    --eval-every ${STEPS:-6} --eval-fraction 0.2 --checkpoint-every 3 --seed 0
uptime
$GLOCAL eval $OTHER --data $D/$OTHER --gnd $D/gnd_${OTHER}_subset.pkl --method gem \
    --set checkpoint=$OUT/model.pt --json $OUT-after.json
uptime
