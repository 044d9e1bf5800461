#!/usr/bin/env bash
# One-step installer for dino-dinov2 (see README "Quick start").
#
#  * keeps a torch/torchvision that already import together (a user's CUDA build);
#    otherwise installs a registry pair, avoiding a local "+cpu" torch wheel that pip
#    would prefer and that breaks torchvision (docs: README "Troubleshooting");
#  * compiles mmcv 2.1.0 with its ops once (pip caches the wheel: later installs take seconds);
#  * ends by importing torchvision.ops, timm, mmcv.ops and mmdet and names the broken piece.
#
# Variables: PYTHON (default python3), TORCH_VERSION / TORCHVISION_VERSION (the pair installed
# when no working torch is found), MAX_JOBS (mmcv build parallelism), WITH_TESTS=1 (pytest too).
set -euo pipefail
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCHVISION_VERSION=${TORCHVISION_VERSION:-0.28.0}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PIP=("$PYTHON" -m pip install --disable-pip-version-check)

say() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }
py_ok() { "$PYTHON" - <<<"$1" >/dev/null 2>&1; }

start=$(date +%s)

# 1. torch + torchvision that import together.
if py_ok "import torch, torchvision.ops"; then
    say "keeping torch $("$PYTHON" -c 'import torch; print(torch.__version__)') (torchvision imports)"
elif py_ok "import torch" && [ -n "$("$PYTHON" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null)" ]; then
    # A CUDA torch without a matching torchvision: add torchvision for exactly this torch.
    tv=$("$PYTHON" -c 'import torch; print(torch.__version__.split("+")[0])')
    say "torch $tv works; installing the torchvision built for it"
    "${PIP[@]}" "torch==$tv" torchvision
else
    # No torch, or a CPU-only local build whose torchvision counterpart does not exist on the
    # registry. --isolated ignores pip's find-links configuration that would pick the local
    # "+cpu" wheel for torch==X (PEP 440 local versions satisfy ==X).
    say "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION from the package index"
    "${PIP[@]}" --isolated --cert "${PIP_CERT:-$("$PYTHON" -c 'import certifi; print(certifi.where())' 2>/dev/null || echo /etc/ssl/certs/ca-certificates.crt)}" \
        "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" "setuptools>=77,<82"
fi
py_ok "import torchvision.ops" || die "torch and torchvision do not import together: $("$PYTHON" -c 'import torchvision.ops' 2>&1 | tail -n 1)"

# 2. Build tools (mmcv's setup.py and mmengine import pkg_resources: setuptools < 82).
"${PIP[@]}" -q -r "$ROOT/requirements/build.txt"
"${PIP[@]}" -q "mmengine==0.10.7"

# 3. mmcv with compiled ops (12-25 minutes the first time on 2 cores; cached afterwards).
if py_ok "import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'; from mmcv.ops import MultiScaleDeformableAttention"; then
    say "keeping mmcv 2.1.0 with ops"
else
    say "building mmcv 2.1.0 with ops (first time: 12-25 minutes on 2 cores)"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" --no-build-isolation "mmcv==2.1.0"
fi

# 4. The rest, then the project itself (editable).
"${PIP[@]}" -q -r "$ROOT/requirements/runtime.txt"
if [ "${WITH_TESTS:-0}" = 1 ]; then "${PIP[@]}" -q -r "$ROOT/requirements/tests.txt"; fi
"${PIP[@]}" -q --no-build-isolation --no-deps -e "$ROOT"

# 5. Check every piece and name the broken one.
for mod in torchvision.ops timm mmcv.ops mmdet mmengine pycocotools wandb projects.dino_dinov2; do
    err=$(cd "$ROOT" && "$PYTHON" -c "import $mod" 2>&1 | tail -n 1) || die "import $mod failed: $err"
done
"$PYTHON" -c "import torch, torchvision, mmcv, mmdet, mmengine, timm; print('[install] ok: torch', torch.__version__, '| torchvision', torchvision.__version__, '| mmcv', mmcv.__version__, '| mmengine', mmengine.__version__, '| mmdet', mmdet.__version__, '| timm', timm.__version__)"
say "done in $(( $(date +%s) - start )) s"
