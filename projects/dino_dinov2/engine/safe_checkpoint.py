"""Checkpoint loading that works on torch >= 2.6 without turning off ``weights_only``.

torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine 0.10.7 calls
``torch.load`` without the argument, so resuming fails on the objects MMEngine itself
saves (``HistoryBuffer`` in the message hub, numpy scalars/arrays). Rather than trusting
every pickle, the few classes MMEngine's checkpoints hold are added to torch's allow-list;
any other pickled object is still refused.
"""
from __future__ import annotations

import pickle
from typing import List

import numpy as np
import torch

_REGISTERED = False


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
            + [(_history_buffer_getattr, f'{mod}.getattr') for mod in ('__builtin__',
                                                                         'builtins')])


def register_safe_globals() -> None:
    """Add MMEngine's checkpoint classes to torch's ``weights_only`` allow-list (once)."""
    global _REGISTERED
    if _REGISTERED or not hasattr(torch.serialization, 'add_safe_globals'):
        return
    torch.serialization.add_safe_globals(safe_globals())
    _REGISTERED = True
