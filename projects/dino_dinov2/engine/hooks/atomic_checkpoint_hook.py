"""``AtomicCheckpointHook``: mmengine's ``CheckpointHook``, checkpoints and the
``last_checkpoint`` pointer written atomically (why: ``checkpoint.py``)."""
from __future__ import annotations

import os.path as osp
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from ...checkpoint import (ATOMIC_BACKEND_ARGS, checkpoint_write_error, remove_stale_temp_files,
                           write_last_checkpoint)


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
        """mmengine's version with the deletion of old checkpoints moved after the save
        and an atomic pointer; the bookkeeping (``keep_ckpt_ids`` in the message hub,
        saved inside the checkpoint) is unchanged."""
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
