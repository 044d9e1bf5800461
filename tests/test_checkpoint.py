"""Checkpoint files: atomic writes; truncated / empty / foreign files given to --resume
-> error naming the file; arbitrary pickled objects refused (weights_only=True with the
explicit allow-list). Kills during real checkpoint writes: test_fault_injection.py."""
import os
import os.path as osp
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

from helpers import names
from projects.dino_dinov2.cli import (CheckpointError, atomic_write, check_checkpoint_file,
                                      install_checkpoint_loader, load_local_checkpoint,
                                      set_resume)
from projects.dino_dinov2.upstream.atomic_checkpoint import remove_stale_temp_files


def _mmengine_like_checkpoint(path):
    """What a Runner saves, in small: tensors, numpy, a HistoryBuffer, a ConfigDict."""
    buf = HistoryBuffer()
    buf.update(1.5)
    torch.save({'meta': {'epoch': 1, 'iter': 4, 'seed': np.int64(3)},
                'state_dict': {'w': torch.ones(3)},
                'message_hub': {'log_scalars': {'train/loss': buf}},
                'cfg': Config(dict(a=1))._cfg_dict}, path)
    return str(path)


class Payload:
    """A pickle that runs code when loaded (here: makes a folder)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker, ))


class GetAttr:
    """A pickle that reaches a method of an allowed class (here: ndarray.tofile)."""

    def __reduce__(self):
        return (getattr, (np.ndarray, 'tofile'))


# -- atomic writes ------------------------------------------------------------------------

def test_atomic_write_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / 'sub' / 'last_checkpoint'
    atomic_write('first', str(path))
    atomic_write(b'second', str(path))
    assert path.read_text() == 'second'
    assert os.listdir(tmp_path / 'sub') == ['last_checkpoint']
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / 'epoch_1.pth'
    atomic_write(b'old', str(path))
    with pytest.raises(TypeError):
        atomic_write(object(), str(path))  # fails while writing
    assert path.read_bytes() == b'old' and os.listdir(tmp_path) == ['epoch_1.pth']


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = tmp_path / f'.epoch_2.pth.tmp-{dead.pid}-3'
    live = tmp_path / f'.epoch_3.pth.tmp-{os.getppid()}-1'  # a running process's write
    for p in (stale, live):
        p.write_bytes(b'partial')
    assert remove_stale_temp_files(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists()


# -- reading checkpoints ------------------------------------------------------------------

def test_mmengine_checkpoints_load_through_mmengine(tmp_path):
    path = _mmengine_like_checkpoint(tmp_path / 'epoch_1.pth')
    check_checkpoint_file(path)
    install_checkpoint_loader()  # what CheckpointLoaderHook and the tools do before loading
    ckpt = _load_checkpoint(path, map_location='cpu')  # mmengine's entry: our loader
    assert ckpt['meta']['iter'] == 4 and ckpt['state_dict']['w'].sum() == 3
    assert CheckpointLoader._get_checkpoint_loader(path) is load_local_checkpoint


def test_arbitrary_pickled_object_is_refused(tmp_path):
    marker = str(tmp_path / 'code_ran')
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {'w': torch.ones(1)}, 'extra': Payload(marker)}, path)
    check_checkpoint_file(path)  # a complete archive: it is the content that is refused
    install_checkpoint_loader()
    with pytest.raises(CheckpointError) as e:
        _load_checkpoint(path, map_location='cpu')
    assert str(e.value).startswith(f'refused to load {path}: it holds a pickled object')
    assert 'posix.mkdir' in str(e.value) and 'weights_only=True' in str(e.value)
    assert not osp.exists(marker)
    # the allow-list's getattr reaches HistoryBuffer's statistics methods, nothing else
    torch.save({'x': GetAttr()}, path)
    with pytest.raises(CheckpointError) as e:
        load_local_checkpoint(path)
    assert str(e.value).startswith(
        f"refused to load {path}: it holds a pickled object outside the allow-list "
        "(checkpoint asks for getattr(<class 'numpy.ndarray'>, 'tofile'): only HistoryBuffer "
        'statistics methods are allowed)')
    with open(path, 'wb') as f:  # a plain pickle (not torch's zip format) is refused too
        pickle.dump(Payload(marker), f)
    with pytest.raises(CheckpointError):
        check_checkpoint_file(path)
    assert not osp.exists(marker)


@pytest.fixture
def truncated(tmp_path):
    good = _mmengine_like_checkpoint(tmp_path / 'epoch_1.pth')
    data = open(good, 'rb').read()
    path = tmp_path / 'epoch_2.pth'
    path.write_bytes(data[:len(data) // 2])
    return str(path)


def test_truncated_checkpoint_is_named(truncated, tmp_path):
    with pytest.raises(CheckpointError) as e:
        check_checkpoint_file(truncated)
    size = osp.getsize(truncated)
    assert names(str(e.value), truncated, 'truncated', f'{size} bytes',
                 'other checkpoints there: epoch_1.pth')
    with pytest.raises(CheckpointError) as e:
        _load_checkpoint(truncated, map_location='cpu')
    assert str(e.value).startswith(f'checkpoint {truncated} is truncated or damaged '
                                   '(PytorchStreamReader failed reading zip archive')


def test_resume_from_truncated_checkpoint_is_an_error(truncated, tmp_path):
    cfg = Config(dict(work_dir=str(tmp_path), resume=False, load_from=None))
    with pytest.raises(CheckpointError) as e:
        set_resume(cfg, truncated)
    assert str(e.value).startswith(f'--resume: checkpoint {truncated} is truncated')
    assert cfg.resume is False  # nothing was set: no silent fresh start
    # --resume alone, with the work dir's pointer naming the truncated file
    (tmp_path / 'last_checkpoint').write_text(truncated)
    with pytest.raises(CheckpointError) as e:
        set_resume(cfg, 'auto')
    assert str(e.value).startswith(f'--resume: {tmp_path}/last_checkpoint names a bad '
                                   f'checkpoint: checkpoint {truncated} is truncated')
    (tmp_path / 'last_checkpoint').write_text('')
    with pytest.raises(CheckpointError, match='last_checkpoint is empty'):
        set_resume(cfg, 'auto')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'epoch_1.pth'))
    set_resume(cfg, 'auto')
    assert cfg.resume is True and cfg.load_from is None


@pytest.mark.parametrize('content, problem', [
    (b'', 'is empty (0 bytes): it was not written completely'),
    (b'this is not a checkpoint', 'is not a readable PyTorch checkpoint'),
])
def test_empty_or_foreign_file(tmp_path, content, problem):
    path = tmp_path / 'x.pth'
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        check_checkpoint_file(str(path))
    assert problem in str(e.value) and str(path) in str(e.value)
    assert '\n' not in str(e.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'^checkpoint not found: .*nope.pth$'):
        check_checkpoint_file(str(tmp_path / 'nope.pth'))
