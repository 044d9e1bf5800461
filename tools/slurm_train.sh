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
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
read -r -a srun_args <<< "${SRUN_ARGS:-}"
PYTHON=${PYTHON:-python3}

cmd=(srun -p "$PARTITION" --job-name="$JOB_NAME" --gres=gpu:"$GPUS_PER_NODE"
     --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK"
     --kill-on-bad-exit=1 ${srun_args[@]+"${srun_args[@]}"}
     "$PYTHON" -u "$(dirname "$0")/train.py" "$CONFIG" --work-dir="$WORK_DIR"
     --launcher=slurm "${@:5}")

if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi
exec "${cmd[@]}"
