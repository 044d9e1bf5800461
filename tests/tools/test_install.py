"""tools/install.sh needs no CUDA toolkit: with nvcc hidden and no CUDA_HOME it succeeds
and reports that the model takes the Triton path on a GPU and PyTorch on the CPU."""
import os
import os.path as osp
import shutil
import subprocess
import sys

from helpers import REPO


def test_install_without_a_cuda_toolkit(tmp_path):
    path = [d for d in os.environ.get('PATH', '').split(os.pathsep)
            if d and not osp.exists(osp.join(d, 'nvcc'))]
    env = {k: v for k, v in os.environ.items()
           if k not in ('CUDA_HOME', 'CUDA_PATH', 'TRITON_INTERPRET')}
    env.update(PATH=os.pathsep.join(path), PYTHON=sys.executable)
    assert shutil.which('nvcc', path=env['PATH']) is None
    proc = subprocess.run(['bash', 'tools/install.sh'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    line = next(ln for ln in out.splitlines() if 'deformable attention paths' in ln)
    assert 'pytorch (any device)' in line and 'triton ' in line
    assert "'auto' picks triton on a GPU, pytorch on the CPU" in line


def test_cuda_ops_refused_with_a_mismatched_toolkit(tmp_path):
    """MMCV_CUDA_OPS=1 checks the toolkit before a 27-minute build: nvcc's CUDA major
    version must be torch's."""
    import torch
    fake = tmp_path / 'cuda' / 'bin'
    fake.mkdir(parents=True)
    (tmp_path / 'cuda' / 'include').mkdir()
    (tmp_path / 'cuda' / 'include' / 'cuda_runtime.h').write_text('')
    nvcc = fake / 'nvcc'
    nvcc.write_text('#!/bin/sh\necho "Cuda compilation tools, release 11.8, V11.8.89"\n')
    nvcc.chmod(0o755)
    env = dict(os.environ, CUDA_HOME=str(tmp_path / 'cuda'), MMCV_CUDA_OPS='1',
               PYTHON=sys.executable, PATH=f'{fake}{os.pathsep}{os.environ["PATH"]}')
    env.pop('TRITON_INTERPRET', None)
    proc = subprocess.run(['bash', 'tools/install.sh'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode == 0:  # this mmcv has CUDA ops already: nothing to build
        assert 'keeping mmcv 2.1.0 with CUDA ops' in proc.stdout
        return
    assert proc.returncode == 1
    if torch.version.cuda is None:
        assert 'needs a CUDA build of torch' in proc.stderr
        return
    assert (f'is CUDA 11.8, torch is built with CUDA {torch.version.cuda}: the major versions '
            'must match') in proc.stderr
