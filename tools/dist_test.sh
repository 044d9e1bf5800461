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
source "$(dirname "$0")/dist_common.sh"
dist_command "$GPUS" test.py "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
exec "${cmd[@]}"
