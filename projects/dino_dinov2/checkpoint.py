"""Checkpoints: what a file is and whether a flag can take it.

:func:`check_checkpoint_file` is the cheap check ``--resume`` runs before anything is
built (a truncated file has lost its zip central directory, written last);
:func:`checkpoint_kind` says what a file is (this project's checkpoint, a plain state dict,
backbone weights, a detectron2/detrex checkpoint) and :func:`check_checkpoint_for` /
:func:`check_checkpoint_fits` what each flag accepts. Reading (``weights_only=True``) is
``upstream/torch_load.py``'s, writing (atomic) ``upstream/atomic_checkpoint.py``'s.
"""
from __future__ import annotations

import glob
import os.path as osp
import zipfile
from typing import Optional

import torch

from .errors import CheckpointError, CheckpointNotFoundError
from .upstream.atomic_checkpoint import (ATOMIC_BACKEND_ARGS, atomic_write,  # noqa: F401
                                         read_last_checkpoint, write_last_checkpoint)
from .upstream.torch_load import (_others, install_checkpoint_loader,  # noqa: F401
                                  load_local_checkpoint)

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


_DETECTOR_PARTS = ('backbone.', 'neck.', 'bbox_head.', 'encoder.', 'decoder.')
_VIT_KEYS = ('cls_token', 'patch_embed.proj.weight')


# keys that only the original's (detrex DINO) layout has: a state dict is recognised by them
_SIGNATURE = ('transformer.level_embeds', 'transformer.tgt_embed.weight', 'label_enc.weight')


def is_original_state(state) -> bool:
    """True for a state dict in the original's (detrex DINO) layout."""
    return isinstance(state, dict) and all(k in state for k in _SIGNATURE)


def original_state_of(obj) -> Optional[dict]:
    """The model state dict of an original checkpoint (``{'model': ...}`` as detectron2
    writes it, or the bare state dict; numpy arrays as in detectron2's ``.pkl`` files
    become tensors), else None."""
    state = None
    if isinstance(obj, dict) and is_original_state(obj.get('model')):
        state = obj['model']
    elif is_original_state(obj):
        state = obj
    if state is None:
        return None
    import numpy as np
    return {k: torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v
            for k, v in state.items()}


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
    if original_state_of(obj) is not None:  # the original's keys, however wrapped
        return 'detectron2'
    if isinstance(obj.get('state_dict'), dict) and 'meta' in obj:
        if isinstance(obj['meta'], dict) and obj['meta'].get('converted_from'):
            return 'detector'  # tools/convert_original.py: weights, no training state
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


def describe_kind(kind: str) -> str:
    """What a :func:`checkpoint_kind` is, in words."""
    return _KIND_TEXT[kind]


def check_checkpoint_for(path: str, flag: str) -> dict:
    """Load ``path`` and check that ``flag`` can take it; returns the loaded object.

    ``flag``: ``'--resume'`` (a training checkpoint), ``'--load-from'`` (a detector's
    weights, with or without training state, or the original's detectron2/detrex
    checkpoint, converted by the caller) or ``'test'`` (a detector's weights). Otherwise
    :class:`CheckpointError` says what the file is and which flag takes it.
    """
    check_checkpoint_file(path)
    obj = load_local_checkpoint(path, map_location='cpu')
    kind = checkpoint_kind(obj)
    wants = ('training', ) if flag == '--resume' else ('training', 'detector')
    if flag == '--load-from':
        wants += ('detectron2', )
    if kind in wants:
        return obj
    what = f'{flag} {path}' if flag.startswith('--') else path
    if kind == 'detector':
        hint = f'--load-from {path} starts a new run from these weights'
    elif kind == 'backbone':
        hint = f'give it as --cfg-options model.backbone.pretrained={path}'
    elif kind == 'detectron2':
        hint = (f'convert it first: python tools/convert_original.py {path} converted.pth '
                f'(or fine-tune from it directly with --load-from {path})')
    else:
        hint = 'give a checkpoint that tools/train.py wrote (work_dirs/<config>/iter_N.pth)'
    raise CheckpointError(f'{what}: this file holds {_KIND_TEXT[kind]}; {hint}')


def describe_weights(obj) -> str:
    """Which weights a checkpoint's ``state_dict`` holds: the EMA (``--ema``: the raw ones
    are in ``ema_state_dict``) or the trained ones."""
    ema = obj.get('ema_state_dict') if isinstance(obj, dict) else None
    if not ema:
        return 'the trained weights (no EMA in this checkpoint)'
    steps = ema.get('steps')
    updates = f', {int(steps)} updates' if steps is not None else ''
    return (f'the EMA weights (state_dict{updates}; the raw weights are in its '
            'ema_state_dict)')


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
    parameter groups, or evaluate a partly random model). Returns the loaded checkpoint."""
    obj = check_checkpoint_for(path, flag)
    problems = fit_problems(model, model_state_of(obj))
    if not problems:
        return obj
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
        hint = f'{"export" if flag == "export" else "test"} it with the config it was trained with'
    raise CheckpointError(f'{what}: a checkpoint of another model: {problems[0][1]}{more}; '
                          f'{hint}')
