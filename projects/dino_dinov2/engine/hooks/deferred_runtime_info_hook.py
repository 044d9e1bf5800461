"""mmengine's ``RuntimeInfoHook`` with the loss values copied to the host once per log line,
and the NaN guard checked there.

mmengine's hook hands every logged value of every iteration to the message hub, which
reads it with ``.item()``: 40 device-to-host synchronisations per DINO step (39 loss terms
and the total), plus ``float(grad_norm)`` in the optimizer wrapper. The host then waits for
the device every step and cannot queue the next one.

:class:`DeferredRuntimeInfoHook` keeps each iteration's values as one device tensor (the
model's :class:`~...models.PackedLogVars`, or the values stacked) with the gradient norm
the wrapper kept on the device (:class:`~..optim_wrapper.LeanOptimWrapper`), and copies all
the iterations it holds to the host in one transfer when something needs them: the
logger's next line (its ``interval``), the end of an epoch or of the training, a
validation, any ``save_checkpoint``. The message hub then receives every iteration's values
as before, so the smoothed values in the log are the same.

At that copy the losses of every held iteration are checked for NaN/Inf
(:class:`~.nan_guard_hook.NonFiniteLossCheck`) before any checkpoint is written or
validation run; the error names the first bad iteration. Under a float16 loss scaler the
check runs every iteration instead (it reads the scale anyway).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import RuntimeInfoHook
from mmengine.registry import HOOKS

from ...models.host_data import to_host
from ...models.lean_losses import PackedLogVars
from ..optim_wrapper import DeviceNormMixin
from .nan_guard_hook import NonFiniteLossCheck


@HOOKS.register_module()
class DeferredRuntimeInfoHook(RuntimeInfoHook):
    """``RuntimeInfoHook`` whose training values reach the message hub in batches, checked
    for NaN/Inf on the way (module doc).

    Args:
        interval: copy every ``interval`` iterations (and at the end of an epoch or of the
            training); None: the run's ``default_hooks.logger.interval`` (1 without one),
            so every log line has its values.
        max_skipped: under a float16 ``GradScaler``, how many consecutive skipped steps
            are tolerated before the NaN guard stops the run.
    """

    def __init__(self, interval: Optional[int] = None, max_skipped: int = 20) -> None:
        super().__init__()
        self.interval = interval
        self.check = NonFiniteLossCheck(max_skipped)
        self._keys: Optional[Tuple[str, ...]] = None
        self._pending: List[Tuple[int, int, int, torch.Tensor]] = []
        self._device = torch.device('cpu')  # where the values are (the flag of a flush)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if self.interval is None:
            logger = (runner.cfg.get('default_hooks', None) or {}).get('logger', None) or {}
            self.interval = int(logger.get('interval', 1))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        super().before_train_iter(runner, batch_idx, data_batch)
        if self.check.loss_scaler(runner) is not None:
            self.check.before_iter(runner)

    # -- collecting --------------------------------------------------------------------

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        if self.check.loss_scaler(runner) is not None:
            self.check.after_iter(runner, batch_idx, outputs)  # it reads the scale anyway
        norm = runner.optim_wrapper.pop_grad_norm() \
            if isinstance(runner.optim_wrapper, DeviceNormMixin) else None
        keys = tuple(outputs or {}) + (('grad_norm', ) if norm is not None else ())
        if isinstance(outputs, PackedLogVars):
            row = outputs.packed.float()
        elif outputs and all(torch.is_tensor(v) and v.numel() == 1 for v in outputs.values()):
            row = torch.stack([v.detach().reshape(()).float() for v in outputs.values()])
        else:
            row = None
        if row is not None and norm is not None:
            row = torch.cat([row, norm.float().reshape(1)])
        if row is None or (self._keys is not None and keys != self._keys):
            # not one scalar tensor each, or other keys than before: as mmengine does
            self.flush(runner, agree=False)
            for key, value in (outputs or {}).items():
                runner.message_hub.update_scalar(f'train/{key}', value)
            if norm is not None:
                runner.message_hub.update_scalar('train/grad_norm', float(norm))
        elif keys:
            self._keys = keys
            self._device = row.device
            self._pending.append((runner.iter, runner.epoch, batch_idx, row))
        if self._due(runner, batch_idx):
            self.flush(runner)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # mmengine saves on rank 0 alone: no collective here (the other ranks are not in
        # save_checkpoint), so this rank's values are checked by themselves. The checkpoint
        # took the message hub's state before this hook: it gets the flushed values too.
        if not self._pending:
            return
        self.flush(runner, agree=False)
        if 'message_hub' in checkpoint:
            checkpoint['message_hub']['log_scalars'] = \
                runner.message_hub.state_dict()['log_scalars']

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
        if runner.iter + 1 >= runner.max_iters or (batch_idx + 1) % (self.interval or 1) == 0:
            return True
        try:
            return batch_idx + 1 == len(runner.train_dataloader)
        except TypeError:  # a loader without a length
            return False

    def flush(self, runner, agree: bool = True) -> None:
        """Copy the held iterations' values to the host (one transfer), check the losses
        (and the gradient norm, the same on every rank) for NaN/Inf and give every value
        to the message hub.

        ``agree``: all ranks call this at the same point (a log line, the end of an epoch
        or of the training, a validation) and agree on the check with one all-reduce of
        one flag, made whether or not this rank holds values (an earlier rank-0-only
        flush, ``before_save_checkpoint``, may have emptied them), so every rank makes
        the same collective calls. ``agree=False``: this rank alone.
        """
        pending, self._pending = self._pending, []
        keys = self._keys
        checked = [keys.index(k) for k in ('loss', 'grad_norm') if k in (keys or ())]
        collective = (agree and is_distributed() and bool(checked)
                      and self.check.loss_scaler(runner) is None)
        if not pending and not collective:
            return
        values = torch.stack([p[-1] for p in pending]) if pending else None
        bad_rows = None
        if checked and self.check.loss_scaler(runner) is None:
            if values is not None:
                bad_rows = (~torch.isfinite(values[:, checked])).any(1).float()
            any_bad = (bad_rows.amax().reshape(1) if bad_rows is not None
                       else torch.zeros(1, device=self._device))
            if collective:
                all_reduce(any_bad, op='max')
            parts = [values.flatten(), bad_rows, any_bad] if values is not None else [any_bad]
            host = to_host(torch.cat(parts)).tolist()  # the one device-to-host copy
        else:
            host = to_host(values.flatten()).tolist()
        n = len(keys or ()) if pending else 0
        rows = [host[i * n:(i + 1) * n] for i in range(len(pending))]
        for i, ((it, epoch, batch_idx, _), row) in enumerate(zip(pending, rows)):
            if bad_rows is not None and host[len(pending) * n + i] > 0:
                self.check.raise_non_finite(runner, it, dict(zip(keys, row)), epoch,
                                            batch_idx)
            for key, value in zip(keys, row):
                runner.message_hub.update_scalar(f'train/{key}', value)
        if collective and host[-1] > 0:  # another rank's loss
            self.check.raise_non_finite_elsewhere(runner)
