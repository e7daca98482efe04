#!/bin/bash
# glocal train how proof (issue 16): fine-tune HOW (tuples regime, HOW's global descriptor) on one city's mini
# revisited set and evaluate the OTHER city with ASMK before and after.
# Usage: benchmarks/train_how_cross_city.sh [roxford5k|rparis6k] [OUT_PREFIX]   (the city named is trained on)
#   STEPS (default 12) optimizer steps; SIZE (default 256) longest training image side; GLOCAL (default glocal).
# Settings fixed before any evaluation, nothing selected on the evaluated city: trunk EfficientNet-Lite0 (ImageNet;
# no ResNet-50 ImageNet weights ship here), o(.) to 64-D fitted on the TRAINING city's images (top 1,000 features per
# image at scale 1, as HOW does before training) -> the "before" weights; then HOW's training defaults (margin 0.8,
# batch 5, 5 hard negatives, weight decay 1e-4) but lr 1e-5 instead of 1e-6 (a CPU run has few steps), from those
# weights. Evaluation: max side 512, scales 1 / 0.707 / 0.5, ASMK with the codebook learned on the evaluated images.
set -euo pipefail
D=${D:-/work/shared/data/mini-revisitop}
TRAIN=${1:-roxford5k}
OUT=${2:-/tmp/train_how}
STEPS=${STEPS:-12}
SIZE=${SIZE:-256}
GLOCAL=${GLOCAL:-glocal}
PY=${PY:-python}
case "$TRAIN" in roxford5k) OTHER=rparis6k ;; rparis6k) OTHER=roxford5k ;; *) echo "usage: $0 [roxford5k|rparis6k] [OUT]" >&2; exit 2 ;; esac
ARCH=(--set backbone=efficientnet-lite0 --set output_dim=64)
EVAL=(--set max_side=512 --set "scales=[1.0,0.707,0.5]")
stamp() { echo "== $(date -u +%H:%M:%S) $* | $(uptime)"; }

stamp "fit o(.) on $TRAIN ($SIZE px) -> ${OUT}_${TRAIN}-before.pt"
$PY - "$D/$TRAIN/jpg" "${OUT}_${TRAIN}-before.pt" "$SIZE" <<'PYEOF'
import sys
from pathlib import Path
from glocal.io.images import load_image
from glocal.methods import create_extractor
folder, out, size = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
ex = create_extractor("how", backbone="efficientnet-lite0", output_dim=64)
used = ex.prepare_training(load_image(p, max_side=size) for p in sorted(folder.glob("*.jpg")))
print(f"whitening fitted on {used} images; wrote {ex.save_checkpoint(out)}")
PYEOF
stamp "eval $OTHER before"
$GLOCAL eval "$OTHER" --data "$D/$OTHER" --gnd "$D/gnd_${OTHER}_subset.pkl" --method how "${ARCH[@]}" "${EVAL[@]}" \
    --checkpoint "${OUT}_${TRAIN}-before.pt" --json "${OUT}_${OTHER}-before.json"
stamp "train how on $TRAIN, $STEPS steps, $SIZE px"
$GLOCAL train how --data "$D/gnd_${TRAIN}_subset.pkl" --images "$D/$TRAIN/jpg" --out "${OUT}_${TRAIN}" \
    --init "${OUT}_${TRAIN}-before.pt" --steps "$STEPS" --lr 1e-5 --image-size "$SIZE" "${ARCH[@]}" \
    --eval-every "$STEPS" --eval-fraction 0.2 --checkpoint-every 4 --seed 0
stamp "eval $OTHER after"
$GLOCAL eval "$OTHER" --data "$D/$OTHER" --gnd "$D/gnd_${OTHER}_subset.pkl" --method how "${ARCH[@]}" "${EVAL[@]}" \
    --checkpoint "${OUT}_${TRAIN}/model.pt" --json "${OUT}_${TRAIN}-after.json"
stamp done
