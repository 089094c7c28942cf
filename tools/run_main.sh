#!/usr/bin/env bash
# The README's main command: train a Mask2Former panoptic model from scratch on the generated shapes-world
# data (CPU, about 10 minutes), evaluate the one model for PQ, mask AP and mIoU, and draw validation
# predictions. Outputs go to the config's OUTPUT_DIR, output/shapes_world/maskformer2_R18_panoptic/, where
# demo/demo.py finds the weights by default.
#
#   bash tools/run_main.sh                   # the 10-minute run (500 iterations)
#   bash tools/run_main.sh --long            # the documented run (5000 iterations, about an hour, docs/RESULTS.md)
#   bash tools/run_main.sh KEY VALUE ...     # extra config overrides for train_net.py and the demo
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup.sh
PY="$ROOT/.venv/bin/python"
CONFIG=configs/shapes_world/maskformer2_R18_panoptic.yaml
OUT=output/shapes_world/maskformer2_R18_panoptic
export DETECTRON2_DATASETS="${DETECTRON2_DATASETS:-$ROOT/datasets}"

SCHEDULE=(SOLVER.MAX_ITER 500 TEST.EVAL_PERIOD 0 SOLVER.CHECKPOINT_PERIOD 500)
if [ "${1:-}" = "--long" ]; then
    shift
    SCHEDULE=()  # the config's own schedule
fi

echo "[main] training $CONFIG from scratch on the CPU -> $OUT"
"$PY" train_net.py --config-file "$CONFIG" OUTPUT_DIR "$OUT" "${SCHEDULE[@]}" "$@"

echo "[main] drawing predictions for 8 validation images -> $OUT/vis"
mapfile -t VAL < <(ls "$DETECTRON2_DATASETS"/shapes_world/images/val/*.jpg | head -n 8)
"$PY" demo/demo.py --config-file "$CONFIG" --input "${VAL[@]}" --output "$OUT/vis" --side-by-side \
    --opts "$@" MODEL.WEIGHTS "$OUT/model_final.pth" OUTPUT_DIR "$OUT"

"$PY" tools/plot_metrics.py "$OUT/metrics.json" -o "$OUT/curves.png" --title "shapes world panoptic, from scratch"
echo "[main] done. Metrics: $OUT/metrics.json and $OUT/log.txt; pictures: $OUT/vis/ and $OUT/curves.png"
if [ ${#SCHEDULE[@]} -gt 0 ] && [[ " $* " != *" SOLVER.MAX_ITER "* ]]; then
    echo "[main] 500 iterations learn the stuff regions, few of the 7 shapes (PQ things about 6); the shapes come" \
         "after 2000-3000 iterations: bash tools/run_main.sh --long (docs/RESULTS.md)"
fi
