# Sourced by tools/slurm_train.sh and tools/slurm_test.sh: mmdet's SLURM variables, the srun
# command and DRY_RUN, written once.
#
#   GPUS (8)  GPUS_PER_NODE (8, or GPUS if fewer)  CPUS_PER_TASK (5)
#   SRUN_ARGS ("")  extra srun options, e.g. "--quotatype=auto --signal=TERM@120"
#   PYTHON (python3)
#   DRY_RUN=1       print the exact command instead of running it.
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
read -r -a srun_args <<< "${SRUN_ARGS:-}"
PYTHON=${PYTHON:-python3}

# srun_exec PARTITION JOB_NAME TOOL ARGS...: runs tools/TOOL with ARGS as one srun task per
# GPU (--launcher=slurm added); with DRY_RUN=1 prints the command instead.
srun_exec() {
    local partition=$1 job_name=$2 tool=$3
    shift 3
    cmd=(srun -p "$partition" --job-name="$job_name" --gres=gpu:"$GPUS_PER_NODE"
         --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK"
         --kill-on-bad-exit=1 ${srun_args[@]+"${srun_args[@]}"}
         "$PYTHON" -u "$(dirname "$0")/$tool" "$@")
    if [ "${DRY_RUN:-0}" = 1 ]; then
        printf '%q ' "${cmd[@]}"; echo
        exit 0
    fi
    exec "${cmd[@]}"
}
