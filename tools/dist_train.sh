#!/usr/bin/env bash
# Multi-process training through torchrun (one process per GPU; on a CPU-only machine,
# processes on gloo), one node or several. mmdet's interface and variables:
#
#   tools/dist_train.sh CONFIG GPUS [tools/train.py args...]
#
#   NNODES (1)  NODE_RANK (0)  PORT (29500)  MASTER_ADDR (127.0.0.1): multi-node rendezvous;
#               run the same command on every node with its own NODE_RANK.
#   PYTHON (python3)
#   DRY_RUN=1   print the exact command instead of running it.
#
# --batch-size is per process: total batch = batch x GPUS x NNODES (docs/launching.md).
# SIGTERM/SIGUSR1 to this script: checkpoint at the current iteration, exit 75; Ctrl-C: the
# same, exit 130.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG GPUS [tools/train.py args...]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
source "$(dirname "$0")/dist_common.sh"
dist_command "$GPUS" train.py "$CONFIG" --launcher pytorch "${@:3}"

# Preemption: SIGTERM/SIGUSR1/SIGINT go straight to the training processes (torchrun's
# children), which checkpoint and exit 75 (130 after SIGINT). torchrun itself would stop
# them after 30 s, and reports any worker exit as its own status 1: after a signal this
# script exits 75 (130) instead. torchrun runs in its own session, so Ctrl-C in the
# terminal reaches this script alone and the training processes once, through it: a
# second Ctrl-C aborts them without saving.
PREEMPTED=75
INTERRUPTED=130
signalled=
forward() {
    signalled=$1
    echo "[dist_train] got SIG$1: passing it to the training processes" >&2
    pkill -"$1" -P "$child" 2>/dev/null || kill -TERM "$child" 2>/dev/null
}
trap 'forward TERM' TERM
trap 'forward USR1' USR1
trap 'forward INT' INT
if command -v setsid >/dev/null 2>&1; then cmd=(setsid "${cmd[@]}"); fi
"${cmd[@]}" &
child=$!
while true; do
    rc=0
    wait "$child" || rc=$?
    kill -0 "$child" 2>/dev/null || break  # a trapped signal only interrupted the wait
done
if [ -n "$signalled" ] && [ "$rc" -ne 0 ]; then
    code=$PREEMPTED
    if [ "$signalled" = INT ]; then code=$INTERRUPTED; fi
    echo "[dist_train] stopped by SIG$signalled (torchrun status $rc): exit $code," \
         "continue with --resume" >&2
    exit "$code"
fi
exit "$rc"
