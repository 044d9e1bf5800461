"""Stop training at the first non-finite (NaN/Inf) loss, before anything is saved.

Why: mmengine's optimizer wrappers step on whatever gradients they get; a NaN loss makes
NaN gradients, gradient clipping spreads them to every weight, and the run goes on,
logging ``nan`` and saving checkpoints full of NaN over the good ones (``max_keep_ckpts``).
:class:`NonFiniteLossCheck` raises :class:`NonFiniteLossError` at the first non-finite
loss, naming the iteration and the loss terms, before any checkpoint is written: the
newest one on disk is the last good one, and ``--resume`` starts from it.

Under float16 mixed precision the ``GradScaler`` already skips a step whose gradients
are not finite and lowers its scale; such a step changed nothing, so the check only
warns, and stops once ``max_skipped`` steps in a row were skipped (a loss that is NaN
in the forward pass stays NaN whatever the scale). A non-finite loss that the scaler
did not skip (no scaler, bfloat16, float32, or a gradient-accumulation iteration
without a step) stops the run. All ranks agree (an all-reduce of the flag), so they stop at
the same iteration.

Two hooks use it: :class:`~.deferred_runtime_info_hook.DeferredRuntimeInfoHook` (the
default runtime's) checks the held iterations' losses when it copies them to the host
(each log line, before any checkpoint or validation), and every iteration under a float16
loss scaler; :class:`NanGuardHook` checks every iteration, for configs that log with
mmengine's ``RuntimeInfoHook`` (the original-equivalent ones).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from mmengine.dist import all_reduce, is_distributed
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from mmengine.runner import EpochBasedTrainLoop

from ...errors import UserError
from ...upstream.atomic_checkpoint import read_last_checkpoint


class NonFiniteLossError(UserError, RuntimeError):
    """The training loss became NaN or Inf; the run was stopped without saving."""


def _loss_scaler(runner):
    scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
    if scaler is not None and hasattr(scaler, 'is_enabled') and scaler.is_enabled():
        return scaler
    return None


class NonFiniteLossCheck:
    """The checks and the message of a stop (module doc).

    Args:
        max_skipped: under a float16 ``GradScaler``, how many consecutive skipped steps
            are tolerated before stopping.
    """

    def __init__(self, max_skipped: int = 20) -> None:
        self.max_skipped = int(max_skipped)
        self._scale: Optional[float] = None
        self._skipped = 0

    @staticmethod
    def loss_scaler(runner):
        """The run's enabled float16 loss scaler, or None."""
        return _loss_scaler(runner)

    def before_iter(self, runner) -> None:
        scaler = _loss_scaler(runner)
        self._scale = float(scaler.get_scale()) if scaler is not None else None

    def after_iter(self, runner, batch_idx: int, outputs) -> None:
        """One iteration's check (a host read of the loss)."""
        loss = (outputs or {}).get('loss', None)
        if loss is None:
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

    def raise_non_finite(self, runner, iteration: int, values: dict, epoch: int,
                         batch_idx: int) -> None:
        """Stop: the loss of ``iteration`` (0-based; ``epoch``, ``batch_idx`` its
        place) was not finite (``values``: the logged values of that iteration)."""
        raise NonFiniteLossError(self._message(runner, batch_idx, values, iteration + 1,
                                               epoch))

    def raise_non_finite_elsewhere(self, runner) -> None:
        """Stop: another rank's loss (or the gradient norm) was not finite."""
        raise NonFiniteLossError(
            f'non-finite loss on another process at or before iteration {runner.iter + 1}'
            f'; training stopped before saving anything: {self._kept(runner)} (that '
            "process's log names the iteration and the terms)")

    @staticmethod
    def _kept(runner) -> str:
        last = read_last_checkpoint(runner.work_dir) or \
            runner.message_hub.get_info('last_ckpt', None)
        return (f'the last good checkpoint is {last}; continue from it with --resume after '
                'fixing the cause' if last else 'no checkpoint had been saved yet')

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
        kept = self._kept(runner)
        skipped = (f' after {self._skipped - 1} steps skipped by the loss scaler'
                   if self._skipped > 1 else '')
        iteration = runner.iter + 1 if iteration is None else iteration
        return (f'non-finite loss at iteration {iteration}{where}{skipped}: '
                f'{", ".join(terms)}; training stopped before saving anything: {kept} '
                '(lower the lr, check the data, or train in float32/bfloat16)')


@HOOKS.register_module()
class NanGuardHook(Hook):
    """:class:`NonFiniteLossCheck` after every iteration (module doc).

    Args:
        max_skipped: under a float16 ``GradScaler``, how many consecutive skipped steps
            are tolerated before stopping.
    """
    priority = 'ABOVE_NORMAL'  # before LoggerHook, ParamSchedulerHook, CheckpointHook

    def __init__(self, max_skipped: int = 20) -> None:
        self.check = NonFiniteLossCheck(max_skipped)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self.check.before_iter(runner)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        self.check.after_iter(runner, batch_idx, outputs)
