#!/usr/bin/env bash
# Preemptible SLURM training that resubmits itself until the schedule is done.
#
#   sbatch tools/sbatch_preemptible.sh CONFIG WORK_DIR [tools/train.py args...]
#
# Submit from the repository root. The training tasks write WORK_DIR/iter_N.pth (and point
# WORK_DIR/last_checkpoint at it) and exit 75 when they get SIGTERM or SIGUSR1: from a
# preemption (SLURM signals the tasks), or from this batch shell, which SLURM signals before
# the time limit (--signal=B:USR1@120 below; B:TERM works too). The shell passes what it gets
# on to the tasks as SIGUSR1 (srun would kill them on SIGTERM), then decides:
#
#   training done (exit 0)                      -> ends the chain
#   a new checkpoint, after a signal or exit 75 -> submits this script again (same
#                                                  arguments, --resume auto): the chain goes on
#   the job was cancelled (`scancel JOB`)       -> ends the chain; the tasks saved a checkpoint
#   no new checkpoint since the job started     -> ends the chain (no progress: never a loop)
#   any other failure                           -> ends the chain with its exit status
#
# Stop a chain for good with `scancel JOB` (checkpoint kept: submit again to continue);
# `scancel --signal=USR1 JOB` checkpoints and resubmits, as a preemption does.
#
# Edit the #SBATCH lines for your cluster (partition, GPUs, time), or override them on the
# sbatch command line (a CPU partition: -p cpu --gres=none -n 2 --cpus-per-task=1). The log
# is work_dirs/slurm-NAME-JOB.out, then WORK_DIR/slurm-NAME-JOB.out for the resubmitted
# jobs. Variables:
#   SBATCH_ARGS ("")     extra sbatch options for the resubmission (e.g. "--partition=p")
#   SRUN_ARGS ("")       extra srun options
#   MAX_RESUBMITS (50)   stop resubmitting after this many
#   NO_PROGRESS_RESUBMITS (0)  resubmit this many jobs in a row that wrote no checkpoint
#                        (e.g. preempted while loading the model on a busy cluster)
#   PYTHON (python3)
#   DRY_RUN=1            print the training and resubmission commands, run nothing.
#
#SBATCH --job-name=dino-dinov2
#SBATCH --partition=preemptible
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=5
#SBATCH --time=04:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --no-requeue
#SBATCH --open-mode=append
#SBATCH --output=work_dirs/slurm-%x-%j.out
set -uo pipefail
PREEMPTED=75  # tools/train.py's exit code after a preemption checkpoint
if [ $# -lt 2 ]; then
    echo "usage: sbatch $0 CONFIG WORK_DIR [tools/train.py args...]" >&2
    exit 2
fi
CONFIG=$1
WORK_DIR=$2
shift 2
PYTHON=${PYTHON:-python3}
MAX_RESUBMITS=${MAX_RESUBMITS:-50}
RESUBMIT_COUNT=${RESUBMIT_COUNT:-0}
NO_PROGRESS_RESUBMITS=${NO_PROGRESS_RESUBMITS:-0}
NO_PROGRESS_COUNT=${NO_PROGRESS_COUNT:-0}
read -r -a srun_args <<< "${SRUN_ARGS:-}"
read -r -a sbatch_args <<< "${SBATCH_ARGS:-}"
# SLURM runs a copy of this script from its spool directory: paths are taken relative to
# the submission directory (the repository root).
cd "${SLURM_SUBMIT_DIR:-.}" || exit 1
SELF=tools/sbatch_preemptible.sh

train=(srun --kill-on-bad-exit=1 ${srun_args[@]+"${srun_args[@]}"}
       "$PYTHON" -u tools/train.py "$CONFIG" --work-dir="$WORK_DIR" --launcher=slurm
       --resume auto "$@")
# resubmit N_NO_PROGRESS: the command submitting the next job of the chain
resubmit() {
    local no_progress=$1
    shift
    resubmit=(sbatch
              "--export=ALL,RESUBMIT_COUNT=$(( RESUBMIT_COUNT + 1 )),NO_PROGRESS_COUNT=$no_progress"
              "--output=$WORK_DIR/slurm-%x-%j.out" ${sbatch_args[@]+"${sbatch_args[@]}"}
              "$SELF" "$CONFIG" "$WORK_DIR" "$@")
}

log() { echo "[sbatch_preemptible] $*"; }

if [ "${DRY_RUN:-0}" = 1 ]; then
    resubmit 0 "$@"
    printf '%q ' "${train[@]}"; echo
    printf '%q ' "${resubmit[@]}"; echo
    exit 0
fi

# The checkpoint a resume starts from: WORK_DIR/last_checkpoint's file and its time.
checkpoint() {
    local path
    path=$(cat "$WORK_DIR/last_checkpoint" 2>/dev/null) || return 0
    [ -n "$path" ] && [ -e "$path" ] && echo "$path $(stat -c %Y "$path")"
    return 0
}
# This job's state and reason as slurmctld has them (empty without scontrol).
job_field() {
    scontrol show job -o "${SLURM_JOB_ID:-}" 2>/dev/null | tr ' ' '\n' \
        | sed -n "s/^$1=//p" | head -1
}

# bash runs a trap only between commands: start srun in the background and wait for it,
# so a signal is passed on at once. srun takes SIGTERM as "kill the tasks now" and forwards
# SIGUSR1: the tasks get SIGUSR1 whatever the shell got.
child=
signalled=
forward() {
    signalled=$1
    log "got SIG$1: asking the training tasks for a checkpoint (SIGUSR1)"
    if [ -n "$child" ]; then kill -s USR1 "$child" 2>/dev/null; fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

before=$(checkpoint)
start="no checkpoint yet: starting"
if [ -n "$before" ]; then start="resuming from ${before% *}"; fi
log "job ${SLURM_JOB_ID:-?} (resubmission $RESUBMIT_COUNT of at most $MAX_RESUBMITS): $start"
"${train[@]}" &
child=$!
while true; do
    wait "$child"
    rc=$?
    # wait returns early (status > 128) when a trapped signal arrives; the step runs on
    kill -0 "$child" 2>/dev/null || break
done
after=$(checkpoint)
state=$(job_field JobState)
reason=$(job_field Reason)

if [ "$rc" -eq 0 ]; then
    log "training finished"
    exit 0
fi
if [ -z "$after" ]; then
    log "training stopped (exit $rc) with no checkpoint in $WORK_DIR: not resubmitting"
    exit "$rc"
fi
if [ "$state" = CANCELLED ] || { [ "$state" = COMPLETING ] && [ "$reason" != TimeLimit ]; }; then
    log "job cancelled (exit $rc): not resubmitting; checkpoint ${after% *}. Continue with:" \
        "sbatch $SELF $(printf '%q ' "$CONFIG" "$WORK_DIR" "$@")"
    exit "$rc"
fi
if [ "$rc" -ne "$PREEMPTED" ] && [ -z "$signalled" ]; then
    log "training failed (exit $rc): not resubmitting; last checkpoint ${after% *}"
    exit "$rc"
fi
no_progress=0
if [ "$after" = "$before" ]; then
    no_progress=$(( NO_PROGRESS_COUNT + 1 ))
    if [ "$no_progress" -gt "$NO_PROGRESS_RESUBMITS" ]; then
        log "stopped (exit $rc) without a new checkpoint since this job started (still" \
            "${after% *}): not resubmitting a job that made no progress" \
            "(NO_PROGRESS_RESUBMITS=$NO_PROGRESS_RESUBMITS)"
        exit "$rc"
    fi
fi
if [ "$RESUBMIT_COUNT" -ge "$MAX_RESUBMITS" ]; then
    log "preempted (exit $rc) but MAX_RESUBMITS=$MAX_RESUBMITS reached: not resubmitting;" \
        "checkpoint ${after% *}"
    exit "$rc"
fi
resubmit "$no_progress" "$@"
log "preempted (exit $rc): checkpoint ${after% *}; resubmitting"
"${resubmit[@]}" || { log "resubmission failed"; exit "$rc"; }
exit 0
