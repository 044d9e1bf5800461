#!/usr/bin/env bash
# One-step installer for dino-dinov2 (see README "Quick start").
#
#  * keeps a torch/torchvision that already import together (a user's CUDA build);
#    otherwise installs a registry pair, avoiding a local "+cpu" torch wheel that pip
#    would prefer and that breaks torchvision (docs: README "Troubleshooting");
#  * compiles mmcv 2.1.0 with its CPU ops once (pip caches the wheel: later installs take
#    seconds): no CUDA toolkit needed, on a GPU node too. The GPU path needs none: the
#    deformable attention runs as Triton kernels (models/triton_deformable_attention.py).
#    MMCV_CUDA_OPS=1 builds mmcv's CUDA ops as well (nvcc whose CUDA major version is
#    torch's; TORCH_CUDA_ARCH_LIST from the visible GPUs or MMCV_CUDA_ARCHS; CUDA_HOME
#    found from nvcc; pip's nvidia include folders added when the toolkit lacks headers);
#  * ends by importing torchvision.ops, timm, mmcv.ops and mmdet and names the broken piece.
#
# Variables: PYTHON (default python3), TORCH_VERSION / TORCHVISION_VERSION (the pair installed
# when no working torch is found), MAX_JOBS (mmcv build parallelism), WITH_TESTS=1 (pytest too),
# MMCV_CUDA_OPS=1 (mmcv's CUDA ops too; MMCV_CUDA_ARCHS: archs when no GPU is visible).
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
print('MMCV_CUDA=%d' % ok("from mmcv.ops import get_compiling_cuda_version as v; "
                          "assert v() not in ('not available', '')"))
PY
}
TORCH_OK=0 MMCV_OK=0 MMCV_CUDA=0
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
cuda_ops_env() {
    # MMCV_CUDA_OPS=1: everything mmcv's setup.py needs to compile its CUDA ops, checked.
    local nvcc torch_cuda nvcc_cuda archs inc
    nvcc=$(command -v nvcc || true)
    if [ -z "$nvcc" ] && [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
        nvcc=$CUDA_HOME/bin/nvcc
    fi
    [ -n "$nvcc" ] || [ ! -x /usr/local/cuda/bin/nvcc ] || nvcc=/usr/local/cuda/bin/nvcc
    [ -n "$nvcc" ] || die "MMCV_CUDA_OPS=1 needs nvcc (a CUDA toolkit): none on PATH, in CUDA_HOME or /usr/local/cuda"
    if [ -z "${CUDA_HOME:-}" ]; then
        # the toolkit whose headers are there (nvcc on PATH may be a wrapper script)
        for cand in "$(dirname "$nvcc")/.." /usr/local/cuda; do
            if [ -f "$cand/include/cuda_runtime.h" ] && [ -x "$cand/bin/nvcc" ]; then
                CUDA_HOME=$(cd "$cand" && pwd)
                break
            fi
        done
        [ -n "${CUDA_HOME:-}" ] || die "found nvcc at $nvcc but no toolkit with include/cuda_runtime.h beside it or in /usr/local/cuda: set CUDA_HOME"
    fi
    export CUDA_HOME
    nvcc=$CUDA_HOME/bin/nvcc
    torch_cuda=$("$PYTHON" -c 'import torch; print(torch.version.cuda or "")')
    [ -n "$torch_cuda" ] || die "MMCV_CUDA_OPS=1 needs a CUDA build of torch; this torch is CPU-only"
    nvcc_cuda=$("$nvcc" --version | sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p' | head -n 1)
    if [ "${nvcc_cuda%%.*}" != "${torch_cuda%%.*}" ]; then
        die "nvcc at $nvcc is CUDA $nvcc_cuda, torch is built with CUDA $torch_cuda: the major versions must match (install CUDA ${torch_cuda%%.*}.x or point CUDA_HOME at one)"
    fi
    archs=${TORCH_CUDA_ARCH_LIST:-}
    if [ -z "$archs" ] && command -v nvidia-smi >/dev/null 2>&1; then
        archs=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | sort -u | paste -sd ';' || true)
    fi
    export TORCH_CUDA_ARCH_LIST=${archs:-${MMCV_CUDA_ARCHS:-8.0;8.6;8.9;9.0}}
    # a partial toolkit (e.g. without cusparse.h, which torch's headers include): the CUDA
    # torch's own pip packages carry the headers
    if [ ! -f "$CUDA_HOME/include/cusparse.h" ]; then
        inc=$("$PYTHON" - <<'PY'
import glob, os, site
dirs = []
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += [d for d in glob.glob(os.path.join(sp, 'nvidia', '*', 'include'))
             if os.path.isdir(d)]
print(':'.join(sorted(set(dirs))))
PY
)
        [ -n "$inc" ] || die "$CUDA_HOME/include has no cusparse.h and no pip nvidia headers were found"
        export CPATH=$inc${CPATH:+:$CPATH}
        say "the toolkit at $CUDA_HOME lacks cusparse.h: using pip's nvidia headers ($inc)"
    fi
    say "CUDA ops: nvcc $nvcc_cuda ($nvcc), torch CUDA $torch_cuda, archs $TORCH_CUDA_ARCH_LIST"
}
if [ "${MMCV_CUDA_OPS:-0}" = 1 ]; then
    if [ "$MMCV_OK" = 1 ] && [ "$MMCV_CUDA" = 1 ]; then
        say "keeping mmcv 2.1.0 with CUDA ops"
    else
        cuda_ops_env
        say "building mmcv 2.1.0 with CPU and CUDA ops (27 minutes for one architecture on 2 cores)"
        FORCE_CUDA=1 MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
            "${PIP[@]}" --no-build-isolation --no-cache-dir --force-reinstall --no-deps "mmcv==2.1.0"
    fi
elif [ "$MMCV_OK" = 1 ]; then
    say "keeping mmcv 2.1.0 with ops"
else
    # CPU ops only, whatever GPU is visible: no CUDA toolkit needed (the GPU path is Triton)
    say "building mmcv 2.1.0 with CPU ops (first time: 12-25 minutes on 2 cores)"
    CUDA_VISIBLE_DEVICES= FORCE_CUDA=0 MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "${PIP[@]}" --no-build-isolation "mmcv==2.1.0"
fi

# 4. The rest, then the project itself (editable).
reqs=("$ROOT/requirements/runtime.txt")
if [ "${WITH_TESTS:-0}" = 1 ]; then reqs+=("$ROOT/requirements/tests.txt"); fi
satisfied "${reqs[@]}" || "${PIP[@]}" -q "${reqs[@]/#/-r}"
# the project itself, editable (so mmdet's own tools can import projects.dino_dinov2)
where=$(cd / && "$PYTHON" -c 'import importlib.util as u, os; s = u.find_spec("projects.dino_dinov2"); print(os.path.dirname(os.path.dirname(os.path.dirname(s.origin))))' 2>/dev/null || true)
[ "$where" = "$ROOT" ] || "${PIP[@]}" -q --no-build-isolation --no-deps -e "$ROOT"

# 4b. The fused deformable sampling for OpenVINO (a few seconds with g++; without it,
# --deform-attn openvino writes the standard graph and says so).
(cd "$ROOT" && "$PYTHON" -m projects.dino_dinov2.deploy.openvino_ext) || \
    say "the fused OpenVINO operation was not built (the line above says why)"

# 5. Check every piece and name the broken one.
(cd / && "$PYTHON" - <<'PY') || die "the installation is broken (see the line above)"
import importlib, sys
for mod in ('torchvision.ops', 'timm', 'mmcv.ops', 'mmdet', 'mmengine', 'pycocotools.coco',
            'wandb', 'onnx', 'onnxruntime', 'openvino', 'nncf', 'projects.dino_dinov2'):
    try:
        importlib.import_module(mod)
    except Exception as e:
        sys.exit(f'[install] ERROR: import {mod} failed: {type(e).__name__}: {e}')
import torch, torchvision, mmcv, mmdet, mmengine, timm, onnxruntime, openvino, nncf
print('[install] ok: torch', torch.__version__, '| torchvision', torchvision.__version__,
      '| mmcv', mmcv.__version__, '| mmengine', mmengine.__version__, '| mmdet',
      mmdet.__version__, '| timm', timm.__version__, '| onnxruntime', onnxruntime.__version__,
      '| openvino', openvino.__version__.split('-')[0], '| nncf', nncf.__version__)
from projects.dino_dinov2.models import HAS_TRITON, mmcv_has_cuda_ops, resolve_impl
paths = ['pytorch (any device)']
if HAS_TRITON:
    import triton
    paths.append(f'triton {triton.__version__} (CUDA tensors; no toolkit needed)')
if mmcv_has_cuda_ops():
    from mmcv.ops import get_compiling_cuda_version
    paths.append(f"mmcv's CUDA kernel (built with CUDA {get_compiling_cuda_version()})")
print('[install] deformable attention paths:', '; '.join(paths),
      "| 'auto' picks", resolve_impl('auto', torch.device('cuda')), 'on a GPU,',
      resolve_impl('auto', torch.device('cpu')), 'on the CPU')
PY
say "done in $(( $(date +%s) - start )) s"
