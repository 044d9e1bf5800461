"""Checkpoints and the ``last_checkpoint`` pointer written atomically.

Upstream: mmengine 0.10.7 writes a checkpoint with ``open(path, 'wb').write(...)`` and the
pointer likewise, and ``CheckpointHook`` deletes the oldest checkpoint (``max_keep_ckpts``)
before it writes the new one: a process killed during a save (preemption, a time limit)
left a truncated ``iter_N.pth`` or an empty pointer, and with ``max_keep_ckpts=1`` no
complete checkpoint at all. mmengine has no atomic save (its ``LocalBackend.put`` writes in
place). Delete this module when mmengine's ``LocalBackend.put`` and ``CheckpointHook`` write
through a temporary file and delete old checkpoints after the new one.

:class:`AtomicLocalBackend` (the ``atomic_local`` file backend, chosen through
``backend_args``: no patch of mmengine) writes a temporary file in the same folder,
``fsync`` s it, ``os.replace`` s it over the target and ``fsync`` s the folder;
:class:`AtomicCheckpointHook` saves every checkpoint through it. The pointer is written
by :func:`write_last_checkpoint` and read by :func:`read_last_checkpoint`, nowhere else.
"""
from __future__ import annotations

import glob
import itertools
import os
import os.path as osp
from typing import Optional, Union

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from ..errors import CheckpointError

TMP_MARK = '.tmp-'  # temporary files: .<name>.tmp-<pid>-<n>
_counter = itertools.count(1)


def _write_data(f, data: bytes) -> None:
    """The write of the data into the temporary file (the fault-injection tests pause in
    it: tests/upstream/fault_train.py)."""
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


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook``; checkpoints and ``last_checkpoint`` written atomically.

    Same arguments. ``backend_args=None`` (the default) writes local checkpoints through
    :class:`AtomicLocalBackend`; other ``backend_args`` (object stores, whose uploads
    are atomic already) are kept. Outdated checkpoints (``max_keep_ckpts``) are deleted
    after the new checkpoint and the pointer are written, not before as mmengine does,
    so there is always one complete checkpoint the pointer names.

    A checkpoint written right before a validation (the same iteration) is written again,
    atomically, after it when the validation changed what a resume needs: the best score and
    best checkpoint (``save_best``) and the early-stopping count are kept in the message
    hub, and mmengine's file would hold the values from before that validation -- a run
    resumed from it would point at a deleted best file and keep two (mmdet #12018's kind of
    loss). Writing first and updating after keeps the checkpoint if the validation fails.
    """
    RESUME_STATE = ('best_score', 'best_ckpt', 'early_stopping')

    def __init__(self, *args, backend_args: Optional[dict] = None, **kwargs) -> None:
        out_dir = kwargs.get('out_dir', None)
        if backend_args is None and kwargs.get('file_client_args') is None and (
                out_dir is None or '://' not in str(out_dir)):
            backend_args = dict(ATOMIC_BACKEND_ARGS)
        super().__init__(*args, backend_args=backend_args, **kwargs)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        self._saved = None  # (training position, file name, meta) of the last save
        if is_main_process():
            for folder in {runner.work_dir, self.out_dir}:
                if isinstance(folder, str) and '://' not in folder and osp.isdir(folder):
                    for path in remove_stale_temp_files(folder):
                        runner.logger.warning(f'removed {path}: the partial write of a '
                                              'process that was killed')

    def _save_checkpoint_with_step(self, runner, step, meta):
        """mmengine 0.10.7's ``CheckpointHook._save_checkpoint_with_step``
        (mmengine/hooks/checkpoint_hook.py) with the deletion of old checkpoints moved
        after the save and an atomic pointer; the bookkeeping (``keep_ckpt_ids`` in the
        message hub, saved inside the checkpoint) is unchanged."""
        outdated = None
        if self.max_keep_ckpts > 0:
            if len(self.keep_ckpt_ids) > 0 and self.keep_ckpt_ids[-1] == step:
                pass  # _save_checkpoint and _save_best_checkpoint in the same epoch
            else:
                if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                    outdated = self.keep_ckpt_ids.popleft()
                self.keep_ckpt_ids.append(step)
                runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        # the position a validation right after this save sees as runner.iter
        position = runner.iter + (0 if self.by_epoch else 1)
        self._saved = (position, ckpt_filename, meta)
        previous = self.last_ckpt
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        try:
            self._write(runner, ckpt_filename, meta)
            if is_main_process():
                write_last_checkpoint(runner.work_dir, self.last_ckpt)
        except OSError as e:  # disk full, quota, permissions, a vanished mount
            raise checkpoint_write_error(self.last_ckpt, e, previous) from None
        if not is_main_process():
            return
        if outdated is not None:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # deepspeed saves folders
                self.file_backend.rmtree(path)

    def _write(self, runner, ckpt_filename: str, meta: dict) -> None:
        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args,
            save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)

    def _resume_state(self, runner) -> dict:
        info = runner.message_hub.runtime_info
        return {k: info.get(k) for k in self.RESUME_STATE if k in info}

    def before_val_epoch(self, runner) -> None:
        self._state_before_val = self._resume_state(runner)

    def after_val_epoch(self, runner, metrics) -> None:
        super().after_val_epoch(runner, metrics)  # the best checkpoint
        saved = getattr(self, '_saved', None)
        if saved is None or saved[0] != runner.iter or \
                self._resume_state(runner) == getattr(self, '_state_before_val', None):
            return
        _, ckpt_filename, meta = saved
        path = self.file_backend.join_path(self.out_dir, ckpt_filename)
        try:
            self._write(runner, ckpt_filename, meta)
        except OSError as e:
            raise checkpoint_write_error(path, e, path) from None
        runner.logger.info(f'{ckpt_filename} written again with this validation\'s best score '
                           'and early-stopping count (what --resume reads)')
