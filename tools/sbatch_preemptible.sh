#!/usr/bin/env bash
# Preemptible SLURM training that resubmits itself until the schedule is done.
#
#   sbatch tools/sbatch_preemptible.sh CONFIG WORK_DIR [tools/train.py args...]
#
# Submit from the repository root. 120 s before the time limit SLURM sends SIGUSR1 to
# this batch shell (--signal=B:USR1@120; a preemption sends SIGTERM). The shell forwards
# the signal to the training tasks, which finish the current iteration, write
# WORK_DIR/iter_N.pth (last_checkpoint points to it) and exit with 75. The shell then
# submits this script again with the same arguments; the new job resumes (--resume).
# Any other exit status ends the chain (0: training done).
#
# Edit the #SBATCH lines for your cluster (partition, GPUs, time). Variables:
#   SBATCH_ARGS ("")     extra sbatch options for the resubmission (e.g. "--partition=p")
#   SRUN_ARGS ("")       extra srun options
#   MAX_RESUBMITS (50)   stop resubmitting after this many
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
#SBATCH --output=slurm-%x-%j.out
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
read -r -a srun_args <<< "${SRUN_ARGS:-}"
read -r -a sbatch_args <<< "${SBATCH_ARGS:-}"
# SLURM runs a copy of this script from its spool directory: paths are taken relative to
# the submission directory (the repository root).
cd "${SLURM_SUBMIT_DIR:-.}" || exit 1
SELF=tools/sbatch_preemptible.sh

train=(srun --kill-on-bad-exit=1 ${srun_args[@]+"${srun_args[@]}"}
       "$PYTHON" -u tools/train.py "$CONFIG" --work-dir="$WORK_DIR" --launcher=slurm
       --resume "$@")
resubmit=(sbatch --export=ALL,RESUBMIT_COUNT=$(( RESUBMIT_COUNT + 1 ))
          ${sbatch_args[@]+"${sbatch_args[@]}"} "$SELF" "$CONFIG" "$WORK_DIR" "$@")

log() { echo "[sbatch_preemptible] $*"; }

if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${train[@]}"; echo
    printf '%q ' "${resubmit[@]}"; echo
    exit 0
fi

# bash runs a trap only between commands: start srun in the background and wait for it,
# so a signal is forwarded at once.
child=
signalled=
forward() {
    signalled=$1
    log "got SIG$1: forwarding it to the training tasks"
    if [ -n "$child" ]; then kill -s "$1" "$child" 2>/dev/null; fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

"${train[@]}" &
child=$!
while true; do
    wait "$child"
    rc=$?
    # wait returns early (status > 128) when a trapped signal arrives; the step runs on
    kill -0 "$child" 2>/dev/null || break
done

# 75 from the tasks; after a signal srun may also report a task it killed on the way out
# (--kill-on-bad-exit) instead: a signalled job that did not finish counts as preempted.
if [ "$rc" -eq "$PREEMPTED" ] || { [ -n "$signalled" ] && [ "$rc" -ne 0 ]; }; then
    if [ "$RESUBMIT_COUNT" -ge "$MAX_RESUBMITS" ]; then
        log "preempted (exit $rc) but MAX_RESUBMITS=$MAX_RESUBMITS reached: not resubmitting"
        exit "$rc"
    fi
    log "preempted (exit $rc): checkpoint in $WORK_DIR; resubmitting"
    "${resubmit[@]}" || { log "resubmission failed"; exit "$rc"; }
    exit 0
fi
log "training ended with exit status $rc"
exit "$rc"
