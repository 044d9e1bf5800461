# Sourced by tools/dist_train.sh and tools/dist_test.sh: mmdet's launcher variables, the
# torchrun command, the rendezvous-port check and DRY_RUN, written once.
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
PYTHON=${PYTHON:-python3}

# dist_command GPUS TOOL ARGS...: sets `cmd` to torchrun running tools/TOOL with ARGS;
# stops with one line if the port is taken; with DRY_RUN=1 prints the command and exits.
dist_command() {
    local gpus=$1 tool=$2
    shift 2
    cmd=("$PYTHON" -m torch.distributed.run
         --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$gpus"
         --master_addr="$MASTER_ADDR" --master_port="$PORT"
         "$(dirname "$0")/$tool" "$@")
    if [ "${DRY_RUN:-0}" = 1 ]; then
        printf '%q ' "${cmd[@]}"; echo
        exit 0
    fi
    # the rendezvous port must be free on the master (node 0 binds it): say so in one
    # line, before torchrun fails with a traceback per process
    if [ "$NODE_RANK" = 0 ] && ! "$PYTHON" - "$PORT" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(('', int(sys.argv[1])))  # any interface: a listener on any of them conflicts
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
}
