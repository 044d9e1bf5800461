#!/usr/bin/env bash
# Evaluation as a SLURM job step (one task per GPU). mmdet's interface and variables:
#
#   tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py args...]
#
#   GPUS (8)  GPUS_PER_NODE (8, or GPUS if fewer)  CPUS_PER_TASK (5)  SRUN_ARGS ("")
#   PYTHON (python3)
#   DRY_RUN=1       print the exact command instead of running it.
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py args...]" >&2
    exit 2
fi
source "$(dirname "$0")/slurm_common.sh"
srun_exec "$1" "$2" test.py "$3" "$4" --launcher=slurm "${@:5}"
