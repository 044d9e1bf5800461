#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one run, on a machine with an NVIDIA GPU and
# this project installed (tools/install.sh; MMCV_CUDA_OPS=1 for mmcv's CUDA kernel, which
# the original-equivalent rows need: they are stock mmdet, whose deformable attention
# runs mmcv's CUDA kernel on a GPU):
#
#   bash tools/gpu_tables.sh [OUT_DIR]        (default work_dirs/gpu_tables)
#
# 1. env:         GPU, driver, versions
# 2. gpu_tests:   the GPU-only tests: compiled Triton kernels and mmcv's CUDA kernel
#                 against the PyTorch path, a detector step, fewer host syncs
# 3. deform_attn: the deformable-attention implementations side by side
# 4. vit_b/vit_s: training steps of the recipe against the original-equivalent (stock
#                 mmdet) config,
#                 bf16 and full precision, batch 2 and 8 (median of ITERS after WARMUP)
# 5. train/test:  configs/dino_dinov2_s_12ep.py trained for TRAIN_ITERS iterations with
#                 --amp on a synthetic dataset of 640 px images, validated, then tested
#
# Each step has its own time limit and log (OUT_DIR/<step>.log); a failing step does not
# stop the next. Variables: ITERS (10), WARMUP (3), TRAIN_ITERS (40), PYTHON (python),
# STEPS (all: "env gpu_tests deform_attn vit_b vit_s train").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-work_dirs/gpu_tables}
ITERS=${ITERS:-10}
WARMUP=${WARMUP:-3}
TRAIN_ITERS=${TRAIN_ITERS:-40}
PYTHON=${PYTHON:-python}
STEPS=${STEPS:-env gpu_tests deform_attn vit_b vit_s train}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1

step() {  # step NAME LIMIT_S COMMAND...: run it with its log, say how it ended
    local name=$1 limit=$2 start rc
    shift 2
    case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
    start=$(date +%s)
    echo "== $name: $*"
    timeout "$limit" bash -c '"$@"' "$name" "$@" >"$OUT_DIR/$name.log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $(($(date +%s) - start)) s (log: $OUT_DIR/$name.log)"
    [ "$rc" = 0 ] || tail -n 25 "$OUT_DIR/$name.log"
}

env_report() {
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    "$PYTHON" - <<'PY'
import torch, triton, mmcv, mmdet, mmengine, timm
from projects.dino_dinov2.models import mmcv_has_cuda_ops
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN',
      torch.backends.cudnn.version(), '| triton', triton.__version__, '| mmcv',
      mmcv.__version__, '(CUDA ops)' if mmcv_has_cuda_ops() else '(no CUDA ops)',
      '| mmengine', mmengine.__version__, '| mmdet', mmdet.__version__, '| timm',
      timm.__version__)
print('GPU', torch.cuda.get_device_name(), torch.cuda.get_device_capability(),
      'matmul precision', torch.get_float32_matmul_precision(),
      'TF32 cuBLAS', torch.backends.cuda.matmul.allow_tf32, 'cuDNN', torch.backends.cudnn.allow_tf32)
PY
}

step_config() {  # step_config NAME SIZE: the recipe vs stock mmdet for one backbone
    "$PYTHON" tools/benchmark.py "configs/dino_dinov2_$2_12ep.py" \
        --baseline "configs/dino_dinov2_$2_12ep_original.py" --baseline-label original \
        --precision mixed full --batch-sizes 2 8 --iters "$ITERS" --warmup "$WARMUP" \
        --out-dir "$OUT_DIR/$1"
}

train_and_test() {
    local data=$OUT_DIR/data work=$OUT_DIR/train
    "$PYTHON" -m projects.dino_dinov2.datasets --out "$data" --num-train 64 --num-val 16 \
        --image-size 640 || return
    "$PYTHON" tools/train.py configs/dino_dinov2_s_12ep.py --data-root "$data" --amp \
        --work-dir "$work" --cfg-options model.backbone.pretrained=False \
        train_cfg.max_iters="$TRAIN_ITERS" train_cfg.val_interval="$TRAIN_ITERS" \
        default_hooks.checkpoint.interval="$TRAIN_ITERS" default_hooks.logger.interval=10 \
        || return
    "$PYTHON" tools/test.py configs/dino_dinov2_s_12ep.py "$work/iter_$TRAIN_ITERS.pth" \
        --data-root "$data" --work-dir "$work/test"
}

export OUT_DIR ITERS WARMUP TRAIN_ITERS PYTHON PYTHONUNBUFFERED
export -f env_report step_config train_and_test
step env 60 env_report
step gpu_tests 150 "$PYTHON" -m pytest -q -p no:cacheprovider \
    tests/models/test_deformable_attention.py \
    tests/models/test_triton_deformable_attention.py \
    tests/models/test_batch_matching_dino_head.py tests/upstream/test_focal_loss.py
step deform_attn 100 "$PYTHON" tools/benchmark.py --deform-attn --precision full mixed \
    --iters 20 --warmup 5 --out-dir "$OUT_DIR/deform_attn"
step vit_b 240 step_config vit_b b
step vit_s 200 step_config vit_s s
step train 200 train_and_test
echo "== done: $OUT_DIR"
