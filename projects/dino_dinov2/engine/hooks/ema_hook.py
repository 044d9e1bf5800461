"""``DetEMAHook``: mmengine's ``EMAHook`` that says which weights were validated, and
saves the right ones whenever a checkpoint is written.

mmengine's hook keeps an EMA copy (:class:`LeanExpMomentumEMA` here, RF-DETR's decay 0.993
with a 100-iteration warm-up by default), swaps it into the model for validation and test,
and writes checkpoints with the EMA weights as ``state_dict`` (what ``tools/test.py``,
``--load-from``, export and inference load) and the raw weights as ``ema_state_dict``
(``module.``-prefixed, with the EMA's step count); ``--resume`` swaps them back and goes on
with both. What this class adds:

* log lines: the EMA's setting once, then ``validating the EMA weights (N updates)`` before
  each validation;
* a checkpoint written *while* the EMA weights are swapped in (the preemption checkpoint of
  a signal that arrives during validation) keeps the same layout: mmengine's hook would
  swap twice and save the raw weights as ``state_dict``;
* frozen tensors the EMA shares with the model are not swapped (nothing to swap) and not
  written twice (``ema_state_dict`` leaves them out; loading it is not strict).
"""
from __future__ import annotations

from mmengine.hooks import EMAHook
from mmengine.registry import HOOKS

from ...upstream.runner import resuming


@HOOKS.register_module()
class DetEMAHook(EMAHook):
    """``EMAHook(ema_type='LeanExpMomentumEMA', momentum=0.007, gamma=100)`` by default."""

    def __init__(self, ema_type: str = 'LeanExpMomentumEMA', momentum: float = 0.007,
                 gamma: float = 100, **kwargs) -> None:
        if ema_type in ('LeanExpMomentumEMA', 'ExpMomentumEMA'):
            kwargs['gamma'] = gamma
        super().__init__(ema_type=ema_type, momentum=momentum, **kwargs)
        if ema_type in ('LeanExpMomentumEMA', 'ExpMomentumEMA'):
            self.ema_cfg['_scope_'] = 'mmdet'  # registered there, whatever the default scope
        self.swapped = False

    def before_run(self, runner) -> None:
        super().before_run(runner)
        describe = getattr(self.ema_model, 'describe', None)
        line = describe() if describe else f'EMA of the weights: {type(self.ema_model).__name__}'
        runner.logger.info(line + '; validation, test and the checkpoints\' state_dict use the '
                           'EMA weights (the raw ones: ema_state_dict)')

    def _updates(self) -> int:
        return int(getattr(self.ema_model, '_step', 0) or self.ema_model.steps)

    def before_val_epoch(self, runner) -> None:
        runner.logger.info(f'validating the EMA weights ({self._updates()} updates)')
        super().before_val_epoch(runner)

    def before_test_epoch(self, runner) -> None:
        runner.logger.info(f'testing the EMA weights ({self._updates()} updates)')
        super().before_test_epoch(runner)

    def _swap_ema_parameters(self) -> None:
        pairs = [(a, s) for a, s in zip(self._ema_tensors(), self._src_tensors()) if a is not s]
        for p_avg, p_src in pairs:
            tmp = p_avg.data.clone()
            p_avg.data.copy_(p_src.data)
            p_src.data.copy_(tmp)
        self.swapped = not self.swapped

    def _ema_tensors(self):
        module = self.ema_model.module
        return list(module.parameters()) + (list(module.buffers())
                                            if self.ema_model.update_buffers else [])

    def _src_tensors(self):
        return list(self.src_model.parameters()) + (list(self.src_model.buffers())
                                                    if self.ema_model.update_buffers else [])

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        ema_state = self.ema_model.state_dict()
        for name in getattr(self.ema_model, 'shared_names', ()):  # frozen: in state_dict
            ema_state.pop(f'module.{name}', None)
        checkpoint['ema_state_dict'] = ema_state
        if not self.swapped:  # the model holds the raw weights: put the EMA ones first
            self._swap_ema_state_dict(checkpoint)
        # swapped (saved during validation): the model holds the EMA weights already

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        super().after_load_checkpoint(runner, checkpoint)
        if 'ema_state_dict' in checkpoint and resuming(runner):
            runner.logger.info(f'resumed the EMA weights ({self._updates()} updates) and the '
                               'raw weights from the checkpoint')
