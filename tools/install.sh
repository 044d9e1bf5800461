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
# True when every requirement in the given files is installed at a matching version
# (lets a second install skip pip's resolver entirely).
satisfied() {
    "$PYTHON" - "$@" <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
for path in sys.argv[1:]:
    for line in open(path):
        line = line.split('#')[0].strip()
        if line:
            req = Requirement(line)
            assert req.specifier.contains(version(req.name), prereleases=True), line
PY
}

start=$(date +%s)

# What works already (one interpreter start: importing torch takes seconds).
probe() {
    "$PYTHON" - <<'PY' 2>/dev/null || true
def ok(code):
    try:
        exec(code, {})
        return 1
    except Exception:
        return 0
print('TORCH_OK=%d' % ok('import torch, torchvision.ops'))
print('MMCV_OK=%d' % ok("import mmcv, mmcv.ops; assert mmcv.__version__ == '2.1.0'; "
                        "from mmcv.ops import MultiScaleDeformableAttention"))
PY
}
TORCH_OK=0 MMCV_OK=0
eval "$(probe)"

# 1. torch + torchvision that import together.
if [ "$TORCH_OK" = 1 ]; then
    say "keeping torch $("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))') (torchvision imports)"
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
if [ "$TORCH_OK" != 1 ]; then
    py_ok "import torchvision.ops" || die "torch and torchvision do not import together: $("$PYTHON" -c 'import torchvision.ops' 2>&1 | tail -n 1)"
fi

# 2. Build tools (mmcv's setup.py and mmengine import pkg_resources: setuptools < 82).
satisfied "$ROOT/requirements/build.txt" || "${PIP[@]}" -q -r "$ROOT/requirements/build.txt"
py_ok "import mmengine; assert mmengine.__version__ == '0.10.7'" || "${PIP[@]}" -q "mmengine==0.10.7"

# 3. mmcv with compiled ops (12-25 minutes the first time on 2 cores; cached afterwards).
if [ "$MMCV_OK" = 1 ]; then
    say "keeping mmcv 2.1.0 with ops"
else
    say "building mmcv 2.1.0 with ops (first time: 12-25 minutes on 2 cores)"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} "${PIP[@]}" --no-build-isolation "mmcv==2.1.0"
fi

# 4. The rest, then the project itself (editable).
reqs=("$ROOT/requirements/runtime.txt")
if [ "${WITH_TESTS:-0}" = 1 ]; then reqs+=("$ROOT/requirements/tests.txt"); fi
satisfied "${reqs[@]}" || "${PIP[@]}" -q "${reqs[@]/#/-r}"
# the project itself, editable (so mmdet's own tools can import projects.dino_dinov2)
where=$(cd / && "$PYTHON" -c 'import importlib.util as u, os; s = u.find_spec("projects.dino_dinov2"); print(os.path.dirname(os.path.dirname(os.path.dirname(s.origin))))' 2>/dev/null || true)
[ "$where" = "$ROOT" ] || "${PIP[@]}" -q --no-build-isolation --no-deps -e "$ROOT"

# 5. Check every piece and name the broken one.
(cd / && "$PYTHON" - <<'PY') || die "the installation is broken (see the line above)"
import importlib, sys
for mod in ('torchvision.ops', 'timm', 'mmcv.ops', 'mmdet', 'mmengine', 'pycocotools.coco',
            'wandb', 'projects.dino_dinov2'):
    try:
        importlib.import_module(mod)
    except Exception as e:
        sys.exit(f'[install] ERROR: import {mod} failed: {type(e).__name__}: {e}')
import torch, torchvision, mmcv, mmdet, mmengine, timm
print('[install] ok: torch', torch.__version__, '| torchvision', torchvision.__version__,
      '| mmcv', mmcv.__version__, '| mmengine', mmengine.__version__, '| mmdet',
      mmdet.__version__, '| timm', timm.__version__)
PY
say "done in $(( $(date +%s) - start )) s"
