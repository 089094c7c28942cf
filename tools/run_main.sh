#!/usr/bin/env bash
# The README's main command: train a Mask2Former panoptic model from scratch on the generated shapes-world
# data (CPU), evaluate it (PQ, mask AP, mIoU from the one model) and draw validation predictions.
# Outputs: output/shapes_world_panoptic/ (weights, logs, metrics, inference/, vis/).
# Extra arguments are config overrides for train_net.py (e.g. SOLVER.MAX_ITER 100).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup.sh
PY="$ROOT/.venv/bin/python"
CONFIG=configs/shapes_world/maskformer2_R18_panoptic.yaml
OUT=output/shapes_world_panoptic
export DETECTRON2_DATASETS="${DETECTRON2_DATASETS:-$ROOT/datasets}"

echo "[main] training $CONFIG from scratch on the CPU -> $OUT"
"$PY" train_net.py --config-file "$CONFIG" OUTPUT_DIR "$OUT" "$@"

echo "[main] drawing predictions for 8 validation images -> $OUT/vis"
mapfile -t VAL < <(ls "$DETECTRON2_DATASETS"/shapes_world/images/val/*.jpg | head -n 8)
"$PY" demo/demo.py --config-file "$CONFIG" --input "${VAL[@]}" --output "$OUT/vis" --side-by-side \
    --opts MODEL.WEIGHTS "$OUT/model_final.pth"

echo "[main] done. Metrics: $OUT/inference and $OUT/metrics.json; pictures: $OUT/vis"
