#!/usr/bin/env bash
# The main job on the embedded synthetic dataset: generate data, train, evaluate, plot.
#   tools/run_synthetic.sh [extra tools/train.py args, e.g. --amp or --cfg-options ...]
# Variables: PYTHON (python3), CONFIG (configs/dino_dinov2_synthetic.py),
#            WORK_DIR (work_dirs/dino_dinov2_synthetic), DATA_ROOT (data/synthetic).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
CONFIG=${CONFIG:-configs/dino_dinov2_synthetic.py}
WORK_DIR=${WORK_DIR:-work_dirs/dino_dinov2_synthetic}
DATA_ROOT=${DATA_ROOT:-data/synthetic}

"$PYTHON" -m projects.dino_dinov2.datasets --out "$DATA_ROOT"
start=$(date +%s)
"$PYTHON" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" "$@"
train_s=$(( $(date +%s) - start ))
ckpt=$(cat "$WORK_DIR/last_checkpoint")
"$PYTHON" tools/test.py "$CONFIG" "$ckpt" --work-dir "$WORK_DIR" | tee "$WORK_DIR/test_metrics.txt"
"$PYTHON" tools/plot_curves.py "$WORK_DIR" --out-dir "$WORK_DIR/plots"
echo "training took ${train_s} s; checkpoint: $ckpt"
echo "logs: $WORK_DIR   plots: $WORK_DIR/plots"
grep '^bbox mAP:' "$WORK_DIR/test_metrics.txt" | sed 's/^/synthetic val /'
