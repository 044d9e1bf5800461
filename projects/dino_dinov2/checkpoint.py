"""Checkpoints: reading them safely, checking what a file is, writing them atomically.

1. **Loading with an allow-list.** torch >= 2.6 loads with ``weights_only=True`` by
   default and mmengine 0.10.7 calls ``torch.load`` without the argument, so resuming
   failed on the objects MMEngine itself saves (``HistoryBuffer``, numpy scalars and
   arrays). Rather than trusting every pickle, those few classes are added to torch's
   allow-list (:func:`register_safe_globals`); any other pickled object is refused.
2. **Reading and checking.** mmengine's ``load_from_local`` calls ``torch.load`` without
   ``weights_only`` and its errors do not name the file. :func:`load_local_checkpoint`
   replaces it in mmengine's ``CheckpointLoader`` for local paths, installed by the code
   that loads (:func:`install_checkpoint_loader`: the configs' ``CheckpointLoaderHook``,
   the tools; importing the package changes no loader): ``weights_only=True`` with the
   allow-list, any failure one :class:`CheckpointError` line naming the file and the
   checkpoints next to it.
   :func:`check_checkpoint_file` is the cheap check ``--resume`` runs before anything is
   built (a truncated file has lost its zip central directory, written last);
   :func:`checkpoint_kind` says what a file is (this project's checkpoint, a plain state
   dict, backbone weights, a detectron2/detrex checkpoint) and
   :func:`check_checkpoint_for` / :func:`check_checkpoint_fits` what each flag accepts.
3. **Atomic writes.** mmengine writes a checkpoint with ``open(path, 'wb').write(...)``
   and the pointer likewise; a process killed during either left a truncated
   ``epoch_N.pth`` or an empty pointer, and with ``max_keep_ckpts=1`` the previous
   checkpoint was already deleted. :class:`AtomicLocalBackend` (the ``atomic_local`` file
   backend, chosen through ``backend_args``: no patch of mmengine) writes a temporary
   file in the same folder, ``fsync``s it, ``os.replace``s it over the target and
   ``fsync``s the folder; ``engine/hooks/atomic_checkpoint_hook.py`` uses it for every save.

The ``last_checkpoint`` pointer is written by :func:`write_last_checkpoint` and read by
:func:`read_last_checkpoint`, nowhere else.
"""
from __future__ import annotations

import glob
import itertools
import os
import os.path as osp
import pickle
import re
import zipfile
from typing import List, Optional, Union

import numpy as np
import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.runner.checkpoint import CheckpointLoader

from .errors import UserError, first_line

# -- 1. loading with an allow-list ------------------------------------------------------

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
            + [(_history_buffer_getattr, f'{mod}.getattr')
               for mod in ('__builtin__', 'builtins')])


def register_safe_globals() -> None:
    """Add MMEngine's checkpoint classes to torch's ``weights_only`` allow-list (once)."""
    global _REGISTERED
    if _REGISTERED or not hasattr(torch.serialization, 'add_safe_globals'):
        return
    torch.serialization.add_safe_globals(safe_globals())
    _REGISTERED = True


# -- 2. reading and checking -----------------------------------------------------------

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
                'allowed (checkpoint.py)') from None
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


# -- what a checkpoint file is, and whether a flag can take it ------------------------------

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


# -- 3. atomic writes, the pointer ----------------------------------------------------

TMP_MARK = '.tmp-'  # temporary files: .<name>.tmp-<pid>-<n>
_counter = itertools.count(1)


def _write_data(f, data: bytes) -> None:
    """The write of the data into the temporary file (the fault-injection tests pause in
    it: tests/engine/fault_train.py)."""
    f.write(data)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not sync folders
        pass
    finally:
        os.close(fd)


def atomic_write(data: Union[bytes, str], path: str, encoding: str = 'utf-8') -> None:
    """Replace ``path`` by ``data`` so that it is never seen half-written.

    Temporary file in the same folder (``os.replace`` is atomic only within one file
    system), fsync of the file before the rename and of the folder after it (the rename
    itself survives a power loss). Permissions follow the umask, as ``open`` would.
    """
    if isinstance(data, str):
        data = data.encode(encoding)
    path = str(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    number = next(_counter)
    tmp = osp.join(folder, f'.{osp.basename(path)}{TMP_MARK}{os.getpid()}-{number}')
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, 'wb') as f:
            _write_data(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def remove_stale_temp_files(folder: str) -> list:
    """Delete temporary files that killed writers left in ``folder``; returns their paths.

    Only files of processes that no longer run are removed (the pid is in the name).
    """
    removed = []
    for path in glob.glob(osp.join(glob.escape(folder), f'.*{TMP_MARK}*')):
        try:
            pid = int(osp.basename(path).rsplit(TMP_MARK, 1)[1].split('-')[0])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and _alive(pid):
            continue
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@register_backend('atomic_local')
class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` with atomic ``put`` and ``put_text`` (see module doc)."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(obj, str(filepath))

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(obj, str(filepath), encoding=encoding)


ATOMIC_BACKEND_ARGS = dict(backend='atomic_local')


def write_last_checkpoint(work_dir: str, checkpoint_path: str) -> None:
    """Point ``<work_dir>/last_checkpoint`` (what ``--resume`` reads) at a checkpoint."""
    atomic_write(str(checkpoint_path), osp.join(work_dir, 'last_checkpoint'))


def checkpoint_write_error(path: str, error: OSError, previous: Optional[str]):
    """The :class:`CheckpointError` for a checkpoint that could not be written: nothing
    already written changed (atomic writes), and the run resumes from the last one."""
    import errno
    reason = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = 'free space there'
    else:
        todo = 'fix the folder'
    kept = (f'the previous checkpoint {previous} is intact and last_checkpoint still names '
            f'it; {todo} and continue with --resume' if previous else
            f'no checkpoint had been written yet; {todo} and start again')
    return CheckpointError(f'could not write checkpoint {path}: {reason}: {kept}')


def read_last_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``<work_dir>/last_checkpoint`` names; None without a pointer, '' for
    an empty one."""
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        return None
    with open(pointer) as f:
        return f.read().strip()
