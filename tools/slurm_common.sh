# Sourced by tools/slurm_train.sh and tools/slurm_test.sh: mmdet's SLURM variables, the srun
# command and DRY_RUN, written once.
#
#   GPUS (8)        tasks in all, one per GPU (on a CPU partition: one per process)
#   GPUS_PER_NODE (8, or GPUS if fewer)
#                   GPUs (and tasks) per node; 0: a CPU partition, no GPU is requested
#   TASKS_PER_NODE  tasks per node (default GPUS_PER_NODE; with GPUS_PER_NODE=0 SLURM places them)
#   CPUS_PER_TASK (5)  checked against the partition's nodes (sinfo) before submitting
#   SRUN_ARGS ("")  extra srun options, e.g. "--quotatype=auto --signal=TERM@120"
#   PYTHON (python3)
#   DRY_RUN=1       print the exact command instead of running it.
GPUS=${GPUS:-8}
PYTHON=${PYTHON:-python3}
read -r -a srun_args <<< "${SRUN_ARGS:-}"

slurm_die() { echo "error: $*" >&2; exit 2; }

is_count() { [[ "$1" =~ ^[0-9]+$ ]]; }

is_count "$GPUS" && [ "$GPUS" -ge 1 ] || slurm_die "GPUS=$GPUS: the number of tasks" \
    "(one per GPU) must be 1 or more; on a CPU partition set GPUS_PER_NODE=0 and GPUS to" \
    "the number of processes"
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
is_count "$GPUS_PER_NODE" || slurm_die "GPUS_PER_NODE=$GPUS_PER_NODE is not a number" \
    "(0 on a CPU partition)"
if [ -z "${TASKS_PER_NODE:-}" ] && [ "$GPUS_PER_NODE" -gt 0 ]; then
    TASKS_PER_NODE=$GPUS_PER_NODE
fi
TASKS_PER_NODE=${TASKS_PER_NODE:-}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
is_count "$CPUS_PER_TASK" && [ "$CPUS_PER_TASK" -ge 1 ] || slurm_die \
    "CPUS_PER_TASK=$CPUS_PER_TASK must be 1 or more"
if [ -n "$TASKS_PER_NODE" ]; then
    is_count "$TASKS_PER_NODE" && [ "$TASKS_PER_NODE" -ge 1 ] || slurm_die \
        "TASKS_PER_NODE=$TASKS_PER_NODE must be 1 or more"
fi

# check_partition PARTITION: a job asking for more CPUs per node than the partition's nodes
# have waits in the queue forever, with no hint; say so now (sinfo's CPUs per node)
check_partition() {
    local partition=$1 cpus per_node
    command -v sinfo >/dev/null 2>&1 || return 0
    cpus=$(sinfo -h -p "$partition" -o '%c' 2>/dev/null | tr -d '+' | sort -n | tail -1) \
        || return 0
    [ -n "$cpus" ] && is_count "$cpus" || return 0
    per_node=$(( CPUS_PER_TASK * ${TASKS_PER_NODE:-1} ))
    if [ "$per_node" -gt "$cpus" ]; then
        slurm_die "partition $partition has at most $cpus CPUs per node, this job asks for" \
            "$per_node per node (CPUS_PER_TASK=$CPUS_PER_TASK x ${TASKS_PER_NODE:-1} tasks):" \
            "it would wait forever; lower CPUS_PER_TASK (or TASKS_PER_NODE)"
    fi
}

# srun_exec PARTITION JOB_NAME TOOL ARGS...: runs tools/TOOL with ARGS as one srun task per
# GPU (--launcher=slurm added); with DRY_RUN=1 prints the command instead.
srun_exec() {
    local partition=$1 job_name=$2 tool=$3
    shift 3
    cmd=(srun -p "$partition" --job-name="$job_name")
    if [ "$GPUS_PER_NODE" -gt 0 ]; then cmd+=(--gres=gpu:"$GPUS_PER_NODE"); fi
    cmd+=(--ntasks="$GPUS")
    if [ -n "$TASKS_PER_NODE" ]; then cmd+=(--ntasks-per-node="$TASKS_PER_NODE"); fi
    cmd+=(--cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1
          ${srun_args[@]+"${srun_args[@]}"}
          "$PYTHON" -u "$(dirname "$0")/$tool" "$@")
    if [ "${DRY_RUN:-0}" = 1 ]; then
        printf '%q ' "${cmd[@]}"; echo
        exit 0
    fi
    check_partition "$partition"
    exec "${cmd[@]}"
}
