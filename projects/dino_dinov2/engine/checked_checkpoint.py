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

from ..errors import UserError
from .safe_checkpoint import register_safe_globals


class CheckpointError(UserError, ValueError):
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
    if osp.isdir(path):
        inside = sorted(glob.glob(osp.join(path, '*.pth')))
        hint = (f' (it holds {", ".join(osp.basename(p) for p in inside[-3:])}: name one)'
                if inside else '')
        raise CheckpointError(f'{path} is a folder, not a checkpoint file{hint}')
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


# -- what a checkpoint file is, and whether a flag can take it ------------------------------

_DETECTOR_PARTS = ('backbone.', 'neck.', 'bbox_head.', 'encoder.', 'decoder.')
_VIT_KEYS = ('cls_token', 'patch_embed.proj.weight')


def checkpoint_kind(obj) -> str:
    """What a loaded checkpoint object is: ``'training'`` (mmengine: weights + meta),
    ``'detectron2'`` (detectron2/detrex: ``model`` + ``__author__``/``iteration``),
    ``'detector'`` (a plain state dict of a detector), ``'backbone'`` (ViT weights: timm's
    or Meta's layout), or ``'other'``."""
    if not isinstance(obj, dict):
        return 'other'
    if isinstance(obj.get('model'), dict) and any(k in obj for k in ('__author__', 'iteration',
                                                                     'trainer')):
        return 'detectron2'
    if isinstance(obj.get('state_dict'), dict) and 'meta' in obj:
        return 'training'
    state = obj.get('state_dict', obj)
    for key in ('teacher', 'student', 'model'):  # DINOv2/v3 releases and trainings nest them
        if isinstance(state.get(key), dict):
            state = state[key]
    keys = [k for k, v in state.items() if torch.is_tensor(v)]
    if not keys:
        return 'other'
    keys = [k[len('module.'):] if k.startswith('module.') else k for k in keys]
    if any(k.startswith('bbox_head.') for k in keys) and \
            any(k.startswith(_DETECTOR_PARTS[:2]) for k in keys):
        return 'detector'
    stripped = [k[len('backbone.'):] if k.startswith('backbone.') else k for k in keys]
    if any(k in _VIT_KEYS for k in stripped) or any(k.startswith('blocks.0.') for k in stripped):
        return 'backbone'
    return 'other'


_KIND_TEXT = {
    'training': 'a training checkpoint (weights, optimizer, iteration)',
    'detector': 'the weights of a detector, without training state',
    'backbone': 'backbone (ViT) weights, not a detector\'s',
    'detectron2': 'a detectron2/detrex checkpoint (its "model" holds detectron2\'s keys, '
                  'not this project\'s)',
    'other': 'not a checkpoint of this project\'s models',
}


def check_checkpoint_for(path: str, flag: str) -> dict:
    """Load ``path`` and check that ``flag`` can take it; returns the loaded object.

    ``flag``: ``'--resume'`` (a training checkpoint), ``'--load-from'`` or ``'test'``
    (a detector's weights, with or without training state). Otherwise
    :class:`CheckpointError` says what the file is and which flag takes it.
    """
    check_checkpoint_file(path)
    obj = load_local_checkpoint(path, map_location='cpu')
    kind = checkpoint_kind(obj)
    wants = ('training', ) if flag == '--resume' else ('training', 'detector')
    if kind in wants:
        return obj
    what = f'{flag} {path}' if flag.startswith('--') else path
    if kind == 'detector':
        hint = f'--load-from {path} starts a new run from these weights'
    elif kind == 'backbone':
        hint = f'give it as --cfg-options model.backbone.pretrained={path}'
    elif kind == 'detectron2':
        hint = ('train from the DINOv2/DINOv3 backbone weights instead '
                '(model.backbone.pretrained)')
    else:
        hint = 'give a checkpoint that tools/train.py wrote (work_dirs/<config>/iter_N.pth)'
    raise CheckpointError(f'{what}: this file holds {_KIND_TEXT[kind]}; {hint}')


def model_state_of(obj) -> dict:
    """The model weights of a training checkpoint or plain detector state dict."""
    state = obj.get('state_dict', obj)
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}


def fit_problems(model: torch.nn.Module, state: dict) -> list:
    """Keys of ``model`` missing from ``state``, extra in it, or of another shape."""
    own = model.state_dict()
    problems = []
    for key, value in own.items():
        if key not in state:
            problems.append((key, f'{key} is not in the checkpoint'))
        elif tuple(state[key].shape) != tuple(value.shape):
            problems.append((key, f'{key} has shape {tuple(state[key].shape)} there, '
                                  f'{tuple(value.shape)} in this model'))
    problems += [(k, f'{k} is in the checkpoint, not in this model') for k in state
                 if k not in own]
    return problems


def check_checkpoint_fits(model: torch.nn.Module, path: str, flag: str) -> None:
    """:class:`CheckpointError` unless ``path``'s weights fit ``model`` exactly (``--resume``,
    ``tools/test.py``): a checkpoint of another config is named as such, before the
    Runner loads it (mmengine would warn about every tensor, then stop on the optimizer's
    parameter groups, or evaluate a partly random model)."""
    obj = check_checkpoint_for(path, flag)
    problems = fit_problems(model, model_state_of(obj))
    if not problems:
        return
    more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
    what = f'{flag} {path}' if flag.startswith('--') else path
    classes = [p for k, p in problems if k.startswith(('bbox_head.cls_branches.',
                                                       'dn_query_generator.label_embedding'))]
    if classes and len(classes) == len(problems):
        hint = ('it was trained for another number of classes: use the config and data it '
                f'was trained with, or fine-tune from it with --load-from {path}')
    elif flag == '--resume':
        hint = ('--resume continues a run of this same config; to start a new run from its '
                f'weights use --load-from {path}, or resume with the config it was trained with')
    else:
        hint = 'test it with the config it was trained with'
    raise CheckpointError(f'{what}: a checkpoint of another model: {problems[0][1]}{more}; '
                          f'{hint}')
