"""Checkpoint reading that refuses unsafe files and names the file it could not read.

Why not mmengine's loader as is: ``mmengine.runner.checkpoint.load_from_local`` calls
``torch.load(filename)`` without ``weights_only``, so what it accepts depends on the
torch version (every pickle before torch 2.6), and when a file is truncated or refused
the error (``PytorchStreamReader failed reading zip archive``, a ``WeightsUnpickler``
paragraph) does not say which file. :func:`load_local_checkpoint` replaces it in
mmengine's ``CheckpointLoader`` (the scheme for local paths, registered when the plugin
is imported): ``weights_only=True`` always, with the allow-list of
``engine/safe_checkpoint.py``; any failure becomes one :class:`CheckpointError` line
naming the file, the problem and the other checkpoints next to it.

:func:`check_checkpoint_file` is the cheap check ``--resume`` runs before anything is
built: a truncated file has lost its zip central directory (it is written last), so
opening the archive finds truncation without reading the weights.
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import re
import zipfile

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from .safe_checkpoint import register_safe_globals


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, not a checkpoint, or unsafe to load."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist."""


def _others(path: str) -> str:
    """'; other checkpoints here: a.pth, b.pth' (newest first), or ''."""
    folder = osp.dirname(osp.abspath(path))
    found = [p for p in glob.glob(osp.join(folder, '*.pth'))
             if osp.abspath(p) != osp.abspath(path)]
    found.sort(key=lambda p: os.stat(p).st_mtime, reverse=True)
    if not found:
        return ''
    names = ', '.join(osp.basename(p) for p in found[:4])
    return f'; other checkpoints there: {names}'


def check_checkpoint_file(path: str) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a complete torch zip checkpoint.

    Reads only the archive's directory (at the end of the file). Files in torch's
    pre-1.6 format are not zip archives; they are loaded in full to check them.
    """
    if not osp.isfile(path):
        raise CheckpointNotFoundError(f'checkpoint not found: {path}')
    size = osp.getsize(path)
    if size == 0:
        raise CheckpointError(f'checkpoint {path} is empty (0 bytes): it was not written '
                              f'completely{_others(path)}')
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f'checkpoint {path} is damaged ({e}){_others(path)}') \
                from None
        if not any(n.endswith('/data.pkl') or n == 'data.pkl' for n in names):
            raise CheckpointError(f'{path} is a zip file but not a PyTorch checkpoint')
        return
    with open(path, 'rb') as f:
        head = f.read(4)
    if head.startswith(b'PK'):
        raise CheckpointError(f'checkpoint {path} is truncated ({size} bytes, the end of '
                              f'the archive is missing): it was not written completely'
                              f'{_others(path)}')
    load_local_checkpoint(path, map_location='cpu')  # legacy format: load to check


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _refusal(e: BaseException) -> str:
    """What torch's weights-only unpickler refused, from its long message."""
    text = str(e)
    match = re.search(r'(?i)unsupported global:?\s+(?:GLOBAL\s+)?([\w.]+)', text)
    if match:
        return f'Unsupported global: GLOBAL {match.group(1)}'
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(('Weights only load failed', 'Check the',
                                                      '(1)', '(2)', 'Please file an issue'))]
    return lines[0] if lines else 'an object outside the allow-list'


def load_local_checkpoint(filename: str, map_location=None):
    """``torch.load(weights_only=True)`` with mmengine's classes allowed; one-line errors.

    Registered as mmengine's loader for local paths (see module docstring).
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise CheckpointNotFoundError(f'checkpoint not found: {filename}')
    register_safe_globals()
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure here means "cannot use this file"
        import pickle
        if isinstance(e, pickle.UnpicklingError) and 'Weights only load failed' in str(e):
            raise CheckpointError(
                f'refused to load {filename}: it holds a pickled object outside the '
                f'allow-list ({_refusal(e)}); checkpoints are read with '
                'torch.load(weights_only=True) and only the classes MMEngine saves are '
                'allowed (engine/safe_checkpoint.py)') from None
        if 'zip archive' in str(e) or isinstance(e, (EOFError, zipfile.BadZipFile)):
            raise CheckpointError(f'checkpoint {filename} is truncated or damaged '
                                  f'({_first_line(e)}){_others(filename)}') from None
        raise CheckpointError(f'{filename} is not a readable PyTorch checkpoint '
                              f'({type(e).__name__}: {_first_line(e)})') from None


_REGISTERED = False


def register_checked_loader() -> None:
    """Make :func:`load_local_checkpoint` mmengine's loader for local paths (once)."""
    global _REGISTERED
    if not _REGISTERED:
        CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint,
                                         force=True)
        _REGISTERED = True
