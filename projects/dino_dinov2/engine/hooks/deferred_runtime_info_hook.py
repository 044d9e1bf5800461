"""mmengine's ``RuntimeInfoHook`` with the loss values copied to the host once per log line.

mmengine's hook hands every logged value of every iteration to the message hub, which
reads it with ``.item()``: 40 device-to-host synchronisations per DINO step (39 loss terms
and the total), plus ``float(grad_norm)`` in the optimizer wrapper. The host then waits for
the device every step and cannot queue the next one.

:class:`DeferredRuntimeInfoHook` keeps each iteration's values (and the gradient norm
that :class:`~..lean_optim.LeanOptimWrapperConstructor` leaves on the device) as one
stacked device tensor, and copies all the iterations it holds to the host in one transfer
when something needs them: the logger's next line, a checkpoint or a validation that is
due, the last iteration, any ``save_checkpoint``. The message hub then receives every
iteration's values as before, so the smoothed values in the log are the same.

The NaN guard keeps its promise: the values of every iteration are checked for non-finite
losses at that copy, before any checkpoint is written or validation run, and the error
names the first bad iteration (:class:`~.nan_guard_hook.NanGuardHook`; under a float16
loss scaler it keeps its per-iteration check, whose scale read it needs anyway).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import LoggerHook, RuntimeInfoHook
from mmengine.registry import HOOKS

from ...models.host_data import to_host


@HOOKS.register_module()
class DeferredRuntimeInfoHook(RuntimeInfoHook):
    """``RuntimeInfoHook`` whose training values reach the message hub in batches.

    Args:
        defer: False: mmengine's behaviour (one host read per value per iteration).
    """

    def __init__(self, defer: bool = True) -> None:
        super().__init__()
        self.defer = bool(defer)
        self._keys: Optional[Tuple[str, ...]] = None
        self._pending: List[Tuple[int, int, int, torch.Tensor]] = []

    # -- collecting --------------------------------------------------------------------

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        if not self.defer:
            return super().after_train_iter(runner, batch_idx, data_batch, outputs)
        values = dict(outputs or {})
        norm = getattr(getattr(runner.optim_wrapper, 'clip_func', None), 'last_norm', None)
        if norm is not None:
            values['grad_norm'] = norm
            runner.optim_wrapper.clip_func.last_norm = None
        if values:
            keys = tuple(values)
            packed = getattr(outputs, 'packed', None)  # FastDINO: all values in one tensor
            if any(not torch.is_tensor(v) or v.numel() != 1 for v in values.values()) or \
                    (self._keys is not None and keys != self._keys):
                # not one scalar tensor each, or other keys than before: as mmengine does
                self.flush(runner)
                for key, value in values.items():
                    runner.message_hub.update_scalar(f'train/{key}', value)
            else:
                self._keys = keys
                if packed is not None:
                    row = packed.float() if norm is None else torch.cat(
                        [packed.float(), norm.detach().float().reshape(1)])
                else:
                    row = torch.stack([v.detach().reshape(()).float() for v in values.values()])
                self._pending.append((runner.iter, runner.epoch, batch_idx, row))
        if self._due(runner, batch_idx):
            self.flush(runner)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        self.flush(runner)

    def after_train(self, runner) -> None:
        self.flush(runner)

    def before_val(self, runner) -> None:
        self.flush(runner)
        super().before_val(runner)

    # -- flushing ------------------------------------------------------------------------

    def _due(self, runner, batch_idx: int) -> bool:
        """Whether the logger writes a line after this iteration, or it ends an epoch or
        the training. (A checkpoint and a validation flush first on their own:
        ``before_save_checkpoint``, ``before_val``.)"""
        if runner.iter + 1 >= runner.max_iters:
            return True
        try:
            if batch_idx + 1 == len(runner.train_dataloader):
                return True
        except TypeError:
            pass
        return any(isinstance(hook, LoggerHook) and (batch_idx + 1) % hook.interval == 0
                   for hook in runner.hooks)

    @staticmethod
    def _nan_guard(runner):
        """The run's NaN guard when it leaves its check to this hook."""
        from .nan_guard_hook import NanGuardHook
        for hook in runner.hooks:
            if isinstance(hook, NanGuardHook) and hook.deferred(runner):
                return hook
        return None

    def flush(self, runner) -> None:
        """Copy the held iterations' values to the host (one transfer), check the losses
        for NaN/Inf and give every value to the message hub."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        values = torch.stack([p[-1] for p in pending])
        keys = self._keys
        guard = self._nan_guard(runner)
        loss_col = keys.index('loss') if 'loss' in keys and guard is not None else None
        if loss_col is not None:
            bad = (~torch.isfinite(values[:, loss_col])).float()
            if is_distributed():
                bad = bad.clone()
                all_reduce(bad, op='max')
            values = torch.cat([values, bad[:, None]], 1)
        host = to_host(values).tolist()  # the one device-to-host copy
        for (it, epoch, batch_idx, _), row in zip(pending, host):
            if loss_col is not None and row[-1] > 0:
                guard.raise_non_finite(runner, it, dict(zip(keys, row[:len(keys)])),
                                       epoch, batch_idx)
            for key, value in zip(keys, row):
                runner.message_hub.update_scalar(f'train/{key}', value)
