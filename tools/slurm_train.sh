#!/usr/bin/env bash
# Training as a SLURM job step: srun starts one task per GPU; tools/train.py derives
# RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT from SLURM's variables.
# mmdet's interface and variables:
#
#   tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py args...]
#
#   GPUS (8)  GPUS_PER_NODE (8, or GPUS if fewer)  CPUS_PER_TASK (5)
#   SRUN_ARGS ("")  extra srun options, e.g. "--quotatype=auto --signal=TERM@120"
#   PYTHON (python3)
#   DRY_RUN=1       print the exact command instead of running it.
#
# On SIGTERM/SIGUSR1 the tasks write a checkpoint and exit 75 (srun returns it): run the
# same command again with --resume (docs/launching.md; tools/sbatch_preemptible.sh does it).
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py args...]" >&2
    exit 2
fi
source "$(dirname "$0")/slurm_common.sh"
srun_exec "$1" "$2" train.py "$3" --work-dir="$4" --launcher=slurm "${@:5}"
