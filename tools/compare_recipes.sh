#!/usr/bin/env bash
# Train shapes-world recipe variants side by side on one GPU (or CPU) and print their evaluations.
# Each variant is a name and a quoted list of config overrides for train_net.py, e.g.
#
#   bash tools/compare_recipes.sh A "" B "SOLVER.BASE_LR 0.001" D "MODEL.MASK_FORMER.DEC_LAYERS 4"
#
# Environment: CONFIG (default configs/shapes_world/maskformer2_R18_panoptic.yaml), DEVICE (cuda),
# ITERS (1500), EVAL_PERIOD (500), TLIMIT (seconds per variant, default none), OUT (where metrics_NAME.json
# are copied; default output/compare_recipes). Used for docs/RESULTS.md ("How the recipe was chosen").
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-python3}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
CONFIG="${CONFIG:-configs/shapes_world/maskformer2_R18_panoptic.yaml}"
OUT="${OUT:-output/compare_recipes}"
mkdir -p "$OUT"
if [ $(( $# % 2 )) -ne 0 ] || [ $# -eq 0 ]; then
    echo "usage: $0 NAME \"OVERRIDES\" [NAME \"OVERRIDES\" ...]" >&2; exit 2
fi
"$PY" -W ignore -m mask2former.data.synthetic.shapes_world --output "${DETECTRON2_DATASETS:-datasets}/shapes_world" \
    | tail -1
names=()
while [ $# -gt 0 ]; do
    name=$1; overrides=$2; shift 2; names+=("$name")
    # shellcheck disable=SC2086  # overrides are split into KEY VALUE words on purpose
    ${TLIMIT:+timeout "$TLIMIT"} "$PY" -W ignore train_net.py --config-file "$CONFIG" \
        OUTPUT_DIR "$OUT/$name" MODEL.DEVICE "${DEVICE:-cuda}" SOLVER.MAX_ITER "${ITERS:-1500}" \
        TEST.EVAL_PERIOD "${EVAL_PERIOD:-500}" SOLVER.CHECKPOINT_PERIOD 100000 $overrides \
        > "$OUT/$name.log" 2>&1 &
done
wait
for name in "${names[@]}"; do
    cp "$OUT/$name/metrics.json" "$OUT/metrics_$name.json" 2>/dev/null
    echo "== $name"; grep "copypaste: [0-9]" "$OUT/$name.log"
done
