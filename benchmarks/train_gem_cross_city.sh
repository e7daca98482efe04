#!/bin/bash
# glocal train proof (issue 16 item 4): fine-tune gem on one city's mini revisited set (positives from its
# ground truth, negatives mined from its other images) and evaluate the OTHER city before and after.
# Usage: benchmarks/train_gem_cross_city.sh [both|roxford5k|rparis6k] [OUT_PREFIX]
#   both (default): ROxf -> RPar, then RPar -> ROxf.  The city named is the one trained on.
#   STEPS (default 30) optimizer steps per direction; SIZE (default 362) longest image side in training;
#   GLOCAL (default glocal) the command, e.g. "nice -n 10 glocal".
# Settings fixed before any evaluation (cirtorch's batch 5 / 5 negatives / margin 0.7 / 362 px; lr 1e-5 instead of
# 1e-6 because a CPU run has few steps; first half of the parameter tensors frozen); nothing was selected on the
# evaluated city. On a loaded shared CPU: STEPS=12 SIZE=256 (benchmarks/RESULTS.md). Results: OUT_PREFIX_<city>-before.json (ImageNet weights), OUT_PREFIX_<trained>/ (the run) and
# OUT_PREFIX_<trained>-after.json (the other city evaluated with the fine-tuned weights).
set -euo pipefail
D=${D:-/work/shared/data/mini-revisitop}
WHICH=${1:-both}
OUT=${2:-/tmp/train_gem}
STEPS=${STEPS:-30}
SIZE=${SIZE:-362}
GLOCAL=${GLOCAL:-glocal}
case "$WHICH" in
  both) TRAINS="roxford5k rparis6k" ;;
  roxford5k|rparis6k) TRAINS=$WHICH ;;
  *) echo "usage: $0 [both|roxford5k|rparis6k] [OUT_PREFIX]" >&2; exit 2 ;;
esac
other() { if [ "$1" = roxford5k ]; then echo rparis6k; else echo roxford5k; fi; }
stamp() { echo "== $(date -u +%H:%M:%S) $* | $(uptime)"; }

for TRAIN in $TRAINS; do
  OTHER=$(other "$TRAIN")
  if [ ! -f "${OUT}_${OTHER}-before.json" ]; then
    stamp "eval $OTHER before (ImageNet weights)"
    $GLOCAL eval "$OTHER" --data "$D/$OTHER" --gnd "$D/gnd_${OTHER}_subset.pkl" --method gem \
        --json "${OUT}_${OTHER}-before.json"
  fi
  stamp "train gem on $TRAIN, $STEPS steps, $SIZE px"
  $GLOCAL train gem --data "$D/gnd_${TRAIN}_subset.pkl" --images "$D/$TRAIN/jpg" --out "${OUT}_${TRAIN}" \
      --steps "$STEPS" --batch 5 --negatives 5 --lr 1e-5 --margin 0.7 --image-size "$SIZE" \
      --frozen-fraction 0.5 --eval-every "${EVAL_EVERY:-$STEPS}" --eval-fraction 0.2 --checkpoint-every 4 --seed 0
  stamp "eval $OTHER after training on $TRAIN"
  $GLOCAL eval "$OTHER" --data "$D/$OTHER" --gnd "$D/gnd_${OTHER}_subset.pkl" --method gem \
      --set "checkpoint=${OUT}_${TRAIN}/model.pt" --json "${OUT}_${TRAIN}-after.json"
done
stamp done
