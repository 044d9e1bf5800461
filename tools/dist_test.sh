#!/usr/bin/env bash
# Multi-process evaluation through torchrun. mmdet's interface and variables:
#
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py args...]
#
#   NNODES (1)  NODE_RANK (0)  PORT (29500)  MASTER_ADDR (127.0.0.1)  PYTHON (python3)
#   DRY_RUN=1   print the exact command instead of running it.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [tools/test.py args...]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-python3}

cmd=("$PYTHON" -m torch.distributed.run
     --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$GPUS"
     --master_addr="$MASTER_ADDR" --master_port="$PORT"
     "$(dirname "$0")/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}")

# the rendezvous port must be free on the master (node 0 binds it): say so in one line,
# before torchrun fails with a traceback per process
if [ "${DRY_RUN:-0}" != 1 ] && [ "$NODE_RANK" = 0 ]; then
    if ! "$PYTHON" - "$MASTER_ADDR" "$PORT" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(('', int(sys.argv[2])))  # any interface: a listener on any of them conflicts
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
    then
        echo "error: port $PORT is in use on this node (another job?): set PORT to a" \
             "free one, e.g. PORT=$((PORT + 1)) $0 ..." >&2
        exit 2
    fi
fi

if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi
exec "${cmd[@]}"
