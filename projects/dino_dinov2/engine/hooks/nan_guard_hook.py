"""Stop training at the first non-finite (NaN/Inf) loss, before anything is saved.

Why a hook: mmengine's optimizer wrappers step on whatever gradients they get; a NaN
loss makes NaN gradients, gradient clipping spreads them to every weight, and the
run goes on, logging ``nan`` and saving checkpoints full of NaN over the good ones
(``max_keep_ckpts``). :class:`NanGuardHook` checks the loss of every iteration right
after the step and, at the first non-finite one, raises :class:`NonFiniteLossError`
with the iteration and the loss terms. It runs before the logger, the scheduler and the
checkpoint hooks (priority ``ABOVE_NORMAL``), so no checkpoint is written after the
fault: the newest one on disk is the last good one, and ``--resume`` starts from it.

Under float16 mixed precision the ``GradScaler`` already skips a step whose gradients
are not finite and lowers its scale; such a step changed nothing, so the hook only
warns, and stops once ``max_skipped`` steps in a row were skipped (a loss that is NaN
in the forward pass stays NaN whatever the scale). A non-finite loss that the scaler
did not skip (no scaler, bfloat16, float32, or a gradient-accumulation iteration
without a step) stops the run.

All ranks agree (an all-reduce of the flag), so they stop at the same iteration.

With :class:`~.deferred_runtime_info_hook.DeferredRuntimeInfoHook` (the default runtime's)
and no float16 loss scaler, the check moves to where that hook copies the held
iterations' values to the host (each log line, and before any checkpoint or validation):
no per-step host read, the same guarantee (nothing saved after the fault), the error still
names the first non-finite iteration.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ...checkpoint import read_last_checkpoint
from ...errors import UserError
from mmengine.runner import EpochBasedTrainLoop


class NonFiniteLossError(UserError, RuntimeError):
    """The training loss became NaN or Inf; the run was stopped without saving."""


def _loss_scaler(runner):
    scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
    if scaler is not None and hasattr(scaler, 'is_enabled') and scaler.is_enabled():
        return scaler
    return None


@HOOKS.register_module()
class NanGuardHook(Hook):
    """Raise :class:`NonFiniteLossError` at the first NaN/Inf training loss (module doc).

    Args:
        max_skipped: under a float16 ``GradScaler``, how many consecutive skipped steps
            are tolerated before stopping.
    """
    priority = 'ABOVE_NORMAL'  # before LoggerHook, ParamSchedulerHook, CheckpointHook

    def __init__(self, max_skipped: int = 20) -> None:
        self.max_skipped = int(max_skipped)
        self._scale: Optional[float] = None
        self._skipped = 0

    def deferred(self, runner) -> bool:
        """Whether the check is left to a deferring runtime-info hook (no loss scaler)."""
        from .deferred_runtime_info_hook import DeferredRuntimeInfoHook
        return _loss_scaler(runner) is None and any(
            isinstance(h, DeferredRuntimeInfoHook) and h.defer for h in runner.hooks)

    def raise_non_finite(self, runner, iteration: int, values: dict, epoch: int,
                         batch_idx: int) -> None:
        """Stop: the loss of ``iteration`` (0-based; ``epoch``, ``batch_idx`` its
        place) was not finite (``values``: the logged values of that iteration)."""
        raise NonFiniteLossError(self._message(runner, batch_idx, values, iteration + 1,
                                               epoch))

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self.deferred(runner):
            return
        scaler = _loss_scaler(runner)
        self._scale = float(scaler.get_scale()) if scaler is not None else None

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        loss = (outputs or {}).get('loss', None)
        if loss is None or self.deferred(runner):
            return
        bad = torch.tensor([0.0 if torch.isfinite(torch.as_tensor(loss).detach()).all() else 1.0])
        if is_distributed():
            all_reduce(bad, op='max')
        if not bad.item():
            self._skipped = 0
            return
        scaler = _loss_scaler(runner)
        if scaler is not None and self._scale is not None:
            scale = float(scaler.get_scale())
            if scale < self._scale:  # the scaler found inf/nan gradients: step skipped
                self._skipped += 1
                if self._skipped <= self.max_skipped:
                    runner.logger.warning(
                        f'Non-finite loss at iteration {runner.iter + 1}: the float16 loss '
                        f'scaler skipped the step (scale {self._scale:g} -> {scale:g}; '
                        f'{self._skipped} skipped in a row, stop after {self.max_skipped})')
                    return
        raise NonFiniteLossError(self._message(runner, batch_idx, outputs))

    def _message(self, runner, batch_idx: int, outputs: dict,
                 iteration: Optional[int] = None, epoch: Optional[int] = None) -> str:
        terms = []
        for name, value in outputs.items():
            try:
                v = float(torch.as_tensor(value).detach().float().mean())
            except (TypeError, ValueError, RuntimeError):
                continue
            if name == 'loss' or not math.isfinite(v):
                terms.append(f'{name}={v:g}')
        if len(terms) > 6:
            terms = terms[:6] + [f'... ({len(terms) - 6} more)']
        where = ''
        # IterBasedTrainLoop has max_epochs too (always 1): ask for the epoch loop itself
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            where = f' (epoch {(runner.epoch if epoch is None else epoch) + 1}, ' \
                f'batch {batch_idx + 1})'
        last = self._last_checkpoint(runner)
        kept = (f'the last good checkpoint is {last}; continue from it with --resume after '
                'fixing the cause' if last else 'no checkpoint had been saved yet')
        skipped = (f' after {self._skipped - 1} steps skipped by the loss scaler'
                   if self._skipped > 1 else '')
        iteration = runner.iter + 1 if iteration is None else iteration
        return (f'non-finite loss at iteration {iteration}{where}{skipped}: '
                f'{", ".join(terms)}; training stopped before saving anything: {kept} '
                '(lower the lr, check the data, or train in float32/bfloat16)')

    @staticmethod
    def _last_checkpoint(runner) -> Optional[str]:
        return (read_last_checkpoint(runner.work_dir)
                or runner.message_hub.get_info('last_ckpt', None))
