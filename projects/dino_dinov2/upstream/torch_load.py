"""Checkpoints that ``torch.load(weights_only=True)`` opens, and the loader for older ones.

Upstream: torch >= 2.6 loads with ``weights_only=True`` by default; mmengine 0.10.7 saves
``HistoryBuffer`` objects and numpy scalars in a checkpoint's ``message_hub`` and calls
``torch.load`` without the argument, so ``--resume``, ``init_detector``, ``DetInferencer``
and a plain ``torch.load`` all refused mmengine's own checkpoints (open-mmlab/mmengine#1655;
the fix proposed, #1650, turns ``weights_only`` off for every file). Delete this module
when an mmengine release writes plain types and loads with ``weights_only=True``, and the
checkpoints written before (``HistoryBuffer`` inside) need no resuming.

1. **Writing plain types.** :class:`CheckpointLoaderHook` (``default_runtime.py``) writes
   the message hub's state as plain Python values (each ``HistoryBuffer`` as a dict of
   lists, numpy scalars and arrays as numbers and lists): every checkpoint the project
   writes (training, best, preemption, EMA) opens with ``torch.load(weights_only=True)`` and
   nothing installed. Its ``after_load_checkpoint`` turns the dicts back into
   ``HistoryBuffer`` s before the Runner restores the message hub.
2. **Reading checkpoints written before.** :func:`load_local_checkpoint`:
   ``weights_only=True`` with mmengine's classes allowed (:func:`register_safe_globals`:
   any other pickled object is refused) and one-line errors naming the file; the hook's
   construction (before ``load_or_resume``) and the tools install it as mmengine's loader
   for local paths (:func:`install_checkpoint_loader`); importing the package does not.
"""
from __future__ import annotations

import glob
import os
import os.path as osp
import pickle
import re
import zipfile
from typing import List

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner.checkpoint import CheckpointLoader

from ..errors import CheckpointError, CheckpointNotFoundError, first_line

_REGISTERED = False
_BUFFER_KEYS = ('log_history', 'count_history', 'max_length')


def _numpy_globals() -> List:
    """numpy objects that pickled arrays, dtypes and scalars reference."""
    items: List = [np.ndarray, np.dtype]
    # dtype classes (numpy >= 1.25): np.dtypes.Float64DType etc.
    dtypes_mod = getattr(np, 'dtypes', None)
    if dtypes_mod is not None:
        items += [getattr(dtypes_mod, n) for n in dir(dtypes_mod) if n.endswith('DType')]
    # functions pickled by their module path: numpy 2 writes numpy._core, numpy 1 numpy.core
    try:
        from numpy._core import multiarray as ma
    except ImportError:  # numpy < 2
        from numpy.core import multiarray as ma
    for mod in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        items += [(ma._reconstruct, f'{mod}._reconstruct'), (ma.scalar, f'{mod}.scalar')]
    return items


def _history_buffer_getattr(obj, name: str):
    """``getattr`` as HistoryBuffer's pickles use it, and for nothing else.

    ``HistoryBuffer.__getstate__`` stores its statistics methods, which pickle as
    ``getattr(HistoryBuffer, 'mean')``; allowing the real ``getattr`` would let a file
    reach any attribute of any allowed class.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and name in ('min', 'max', 'current', 'mean',
                                         *HistoryBuffer._statistics_methods):
        return getattr(obj, name)
    raise pickle.UnpicklingError(f'checkpoint asks for getattr({obj!r}, {name!r}): only '
                                 'HistoryBuffer statistics methods are allowed')


def safe_globals() -> List:
    """Everything MMEngine's own checkpoints need beyond tensors and builtins."""
    from mmengine.logging.history_buffer import HistoryBuffer
    from mmengine.config.config import ConfigDict
    return ([HistoryBuffer, ConfigDict] + _numpy_globals()
            + [(_history_buffer_getattr, f'{mod}.getattr')
               for mod in ('__builtin__', 'builtins')])


def register_safe_globals() -> None:
    """Add MMEngine's checkpoint classes to torch's ``weights_only`` allow-list (once)."""
    global _REGISTERED
    if _REGISTERED or not hasattr(torch.serialization, 'add_safe_globals'):
        return
    torch.serialization.add_safe_globals(safe_globals())
    _REGISTERED = True


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
                'allowed (upstream/torch_load.py)') from None
        if 'zip archive' in str(e) or isinstance(e, (EOFError, zipfile.BadZipFile)):
            raise CheckpointError(f'checkpoint {filename} is truncated or damaged '
                                  f'({first_line(e)}){_others(filename)}') from None
        raise CheckpointError(f'{filename} is not a readable PyTorch checkpoint '
                              f'({type(e).__name__}: {first_line(e)})') from None


def install_checkpoint_loader() -> None:
    """Make :func:`load_local_checkpoint` mmengine's loader for local paths.

    Called by what loads a checkpoint (``CheckpointLoaderHook`` when a Runner is built
    from a config of this project, the tools before they load), never at import."""
    if CheckpointLoader._schemes.get('') is not load_local_checkpoint:
        CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint,
                                         force=True)


def plain(value):
    """``value`` with numpy scalars and arrays as Python numbers and lists (recursively in
    dicts, lists and tuples): what ``weights_only=True`` loads without an allow-list."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return type(value)((k, plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def plain_message_hub(state: dict) -> dict:
    """A message hub's ``state_dict`` in plain types (``HistoryBuffer`` -> dict)."""
    from mmengine.logging import HistoryBuffer
    scalars = {}
    for key, buffer in state['log_scalars'].items():
        if isinstance(buffer, HistoryBuffer):
            log, count = buffer.data
            buffer = dict(log_history=log.tolist(), count_history=count.tolist(),
                          max_length=int(buffer.max_length))
        scalars[key] = buffer
    return dict(state, log_scalars=type(state['log_scalars'])(scalars),
                runtime_info=plain(state['runtime_info']))


def restore_message_hub(state: dict) -> dict:
    """Inverse of :func:`plain_message_hub` (older checkpoints pass unchanged)."""
    from mmengine.logging import HistoryBuffer
    scalars = state['log_scalars']
    for key, value in list(scalars.items()):
        if isinstance(value, dict) and set(value) == set(_BUFFER_KEYS):
            scalars[key] = HistoryBuffer(*(value[k] for k in _BUFFER_KEYS))
    return state


@HOOKS.register_module()
class CheckpointLoaderHook(Hook):
    """Writes checkpoints in types ``weights_only=True`` loads and reads them back; installs
    :func:`load_local_checkpoint` when built (the Runner's ``__init__``: before
    ``load_or_resume``) for checkpoints written before (module docstring)."""
    priority = 'LOWEST'  # last before a save: after every hook that adds to the checkpoint

    def __init__(self) -> None:
        install_checkpoint_loader()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'message_hub' in checkpoint:
            checkpoint['message_hub'] = plain_message_hub(checkpoint['message_hub'])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if isinstance(checkpoint.get('message_hub'), dict):
            restore_message_hub(checkpoint['message_hub'])
