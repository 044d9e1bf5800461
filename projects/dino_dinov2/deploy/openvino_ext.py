"""The fused deformable-attention sampling for OpenVINO: an extension library built from
``openvino_ext/msda.cpp`` against the installed ``openvino`` wheel (its headers and
libraries), with the system's C++ compiler, in a few seconds.

``python -m projects.dino_dinov2.deploy.openvino_ext`` builds it (``tools/install.sh``
does); :func:`library` returns its path, building it on first use. The library is bound
to the OpenVINO release it was built against, so its file name carries the release and a
new OpenVINO builds a new one. Graphs exported with ``--deform-attn openvino`` hold the
``dino_dinov2::MSDeformAttn`` node and need it; every other graph is standard ONNX.
Where it cannot be built (no compiler, no openvino), :class:`ExtensionError` says why in
one line and the export falls back to the standard graph.
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

from .onnx_export import ExportError

SOURCE = osp.join(osp.dirname(osp.abspath(__file__)), 'openvino_ext', 'msda.cpp')
DOMAIN, OP = 'dino_dinov2', 'MSDeformAttn'


class ExtensionError(ExportError):
    """The OpenVINO extension cannot be built or loaded here."""


def _openvino_dir() -> str:
    try:
        import openvino
    except ImportError as e:
        raise ExtensionError('the fused OpenVINO operation needs openvino '
                             '(pip install openvino)') from e
    return osp.dirname(osp.abspath(openvino.__file__))


def _release(ov_dir: str) -> str:
    libs = sorted(glob.glob(osp.join(ov_dir, 'libs', 'libopenvino.so.*')))
    if not libs:
        raise ExtensionError(f'no libopenvino.so.* in {osp.join(ov_dir, "libs")}: this '
                             'openvino has no C++ libraries to build against')
    return libs[0].rsplit('.so.', 1)[1]


def _build_dirs():
    yield osp.join(osp.dirname(SOURCE), 'build')
    yield osp.join(os.environ.get('XDG_CACHE_HOME', osp.expanduser('~/.cache')),
                   'dino_dinov2', 'openvino_ext')


def _target(folder: str, release: str) -> str:
    return osp.join(folder, f'libdino_msda_ov{release}.so')


def built() -> Optional[str]:
    """The library for this OpenVINO where it is already built, else None."""
    try:
        ov_dir = _openvino_dir()
        release = _release(ov_dir)
    except ExtensionError:
        return None
    for folder in _build_dirs():
        path = _target(folder, release)
        if osp.isfile(path) and osp.getmtime(path) >= osp.getmtime(SOURCE):
            return path
    return None


def build(quiet: bool = True) -> str:
    """Compile the extension (a few seconds) and return its path."""
    ov_dir = _openvino_dir()
    release = _release(ov_dir)
    cxx = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
    if not cxx:
        raise ExtensionError('no C++ compiler (g++ or $CXX) to build the fused OpenVINO '
                             'operation')
    libs = osp.join(ov_dir, 'libs')
    needed = [f'libopenvino.so.{release}', f'libopenvino_onnx_frontend.so.{release}',
              'libtbb.so.12']
    missing = [n for n in needed if not osp.isfile(osp.join(libs, n))]
    if missing:
        raise ExtensionError(f'openvino lacks {", ".join(missing)} in {libs}')
    errors = []
    for folder in _build_dirs():
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            errors.append(str(e))
            continue
        if not os.access(folder, os.W_OK):
            continue
        target = _target(folder, release)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix='.so.tmp')
        os.close(fd)
        cmd = [cxx, '-O3', '-std=c++17', '-shared', '-fPIC', SOURCE,
               '-I', osp.join(ov_dir, 'include'), '-L', libs,
               *[f'-l:{n}' for n in needed], f'-Wl,-rpath,{libs}', '-o', tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            os.unlink(tmp)
            raise ExtensionError(f'building the fused OpenVINO operation failed: {cxx}: '
                                 f'{e.strerror}') from e
        if proc.returncode != 0:
            os.unlink(tmp)
            tail = (proc.stderr.strip().splitlines() or ['?'])[-1]
            raise ExtensionError(f'building the fused OpenVINO operation failed: {tail}')
        os.replace(tmp, target)  # whole or not at all
        if not quiet:
            print(f'built {target}')
        return target
    raise ExtensionError('no writable folder for the fused OpenVINO operation: '
                         + '; '.join(errors or ['?']))


def library() -> str:
    """The extension's path, built first where needed."""
    return built() or build()


_PINNED = {}


def _pin(path: str) -> None:
    """Keep the library in this process until it exits. OpenVINO unloads an extension's
    library with the last ``Core`` that loaded it, while nodes of a compiled model (their
    code in that library) may still be alive: freed later, they crash the process."""
    if path not in _PINNED:
        import ctypes
        _PINNED[path] = ctypes.CDLL(path, mode=os.RTLD_NOW | getattr(os, 'RTLD_NODELETE', 0))


def add_to(core) -> str:
    """Load the extension into an ``openvino.Core``; returns the library's path."""
    path = library()
    _pin(path)
    try:
        core.add_extension(path)
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with its text
        raise ExtensionError(f'OpenVINO could not load {path}: {str(e).splitlines()[0]}')
    return path


_ADDED = set()  # the libraries added to the shared Core


def shared_core(extension: bool = False):
    """The process's one ``openvino.Core`` (upstream/openvino_core.py: OpenVINO frees
    signal stacks of Cores that die out of order); ``extension``: with this library added
    (built first where needed; :class:`ExtensionError` where it cannot be)."""
    from ..upstream.openvino_core import core
    shared = core()
    if extension:
        path = library()
        if path not in _ADDED:
            _ADDED.add(add_to(shared))
    return shared


def main(argv=None) -> int:
    path = built()
    if path:
        print(f'[openvino_ext] up to date: {path}')
        return 0
    try:
        path = build(quiet=True)
    except ExtensionError as e:
        print(f'[openvino_ext] not built: {e} (graphs use the standard sampling)',
              file=sys.stderr)
        return 1
    print(f'[openvino_ext] built {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
