#!/usr/bin/env bash
# Install the original system (dgcnz/edge + dgcnz/detrex + dgcnz/detectron2) on the CPU in
# its own virtual environment, against the torch this machine already has, so that
# tools/parity/original_outputs.py can run the original's own code (docs/parity.md).
#
#   tools/parity/install_original.sh SRC_DIR VENV
#
# SRC_DIR holds the three source trees at the commits the original pinned:
#   SRC_DIR/edge        dgcnz/edge        d319bb0  (only projects/ src/ scripts/ are needed)
#   SRC_DIR/detrex      dgcnz/detrex      0627b75
#   SRC_DIR/detectron2  dgcnz/detectron2  dca70bb
# A tree that is missing is cloned from GitHub at its commit (needs network); trees you
# copied yourself (e.g. `git archive <commit>`) are used as they are.
#
# What it does, and why (each step failed when done the plain way):
#  * VENV is created with --system-site-packages: it reuses this machine's torch, timm,
#    numpy (the original is compared on the same versions) and installs nothing into them;
#  * detectron2: `pip install --no-build-isolation -e` (its C++ ops; ~10 min on 2 cores);
#  * detrex: its `pip install` fails building fairscale in an isolated build, so
#    `setup.py build_ext --inplace` (no extension without CUDA: its deformable attention
#    takes the PyTorch path) plus a .pth entry; fairscale built without isolation;
#  * edge: patches/edge-cpu-device.patch removes the `.cuda()` / `.to("cuda")` calls of its
#    denoising code (on one device they only move tensors: no number changes).
# The original's package is `projects.dino_dinov2`, the same import name as this project's:
# original_outputs.py binds that name to SRC_DIR/edge explicitly (bind_original).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 SRC_DIR VENV" >&2; exit 2; }
SRC=$(mkdir -p "$1" && cd "$1" && pwd)
VENV=$2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
say() { printf '[install_original] %s\n' "$*"; }
die() { printf '[install_original] ERROR: %s\n' "$*" >&2; exit 1; }

"$PYTHON" -c 'import torch, timm' 2>/dev/null \
    || die "$PYTHON cannot import torch and timm: install this project first (make install)"

fetch() {  # name commit
    local name=$1 commit=$2
    if [ -d "$SRC/$name" ] && [ -n "$(ls -A "$SRC/$name")" ]; then
        say "using $SRC/$name"
        return
    fi
    say "cloning dgcnz/$name at $commit"
    git clone -q "https://github.com/dgcnz/$name" "$SRC/$name" \
        || die "cannot clone dgcnz/$name: put the tree at $SRC/$name yourself"
    git -C "$SRC/$name" checkout -q "$commit"
}
fetch edge d319bb0
fetch detrex 0627b75
fetch detectron2 dca70bb
[ -f "$SRC/edge/projects/dino_dinov2/modeling/exportable/dino.py" ] \
    || die "$SRC/edge is not dgcnz/edge (no projects/dino_dinov2/modeling/exportable/dino.py)"
[ -f "$SRC/detrex/detrex/__init__.py" ] || die "$SRC/detrex is not dgcnz/detrex"
[ -f "$SRC/detectron2/setup.py" ] || die "$SRC/detectron2 is not dgcnz/detectron2"

# edge: the CPU patch, once
patch_file=$HERE/patches/edge-cpu-device.patch
if patch -d "$SRC/edge" -p1 -R --dry-run -s -f < "$patch_file" >/dev/null 2>&1; then
    say "edge: CPU patch already applied"
else
    patch -d "$SRC/edge" -p1 -s -f < "$patch_file" || die "edge: $patch_file does not apply (is it commit d319bb0?)"
    say "edge: applied $(basename "$patch_file")"
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
VPY=$VENV/bin/python
PIP=("$VPY" -m pip install --disable-pip-version-check -q)

if "$VPY" -c 'import detectron2._C' 2>/dev/null; then
    say "detectron2: installed"
else
    say "detectron2: building (3-10 minutes on 2 cores)"
    MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" --no-build-isolation -e "$SRC/detectron2"
fi

"$VPY" -c 'import fairscale' 2>/dev/null || "${PIP[@]}" --no-build-isolation fairscale
"${PIP[@]}" einops submitit  # detrex imports them; the rest of its list is already here
(cd "$SRC/detrex" && "$VPY" setup.py -q build_ext --inplace >/dev/null)
site=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$SRC/detrex" > "$site/detrex_original.pth"
echo "$SRC/edge" > "$site/edge_original.pth"

# check: the original's model builds from its own config
"$VPY" "$HERE/original_outputs.py" --src "$SRC" --check \
    || die "the original's model does not build (see above)"
say "done: $VENV (run tools/parity/original_outputs.py with $VPY)"
