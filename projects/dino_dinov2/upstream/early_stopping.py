"""``ResumableEarlyStoppingHook``: mmengine's ``EarlyStoppingHook`` whose count survives
``--resume`` and preemption, and whose stop is one log line naming the best checkpoint.

Upstream: mmengine 0.10.7's ``EarlyStoppingHook`` (added in open-mmlab/mmengine#739) keeps
its state in attributes that no checkpoint saves, and defaults to ``min_delta=0.1``.
Delete this module when the stock hook saves its count in the checkpoint.

mmengine's hook keeps its best score and the validations without a better one as
attributes: a resumed run starts counting from zero again, so a job preempted every few
validations never stops early. Here both live in the message hub's runtime info
(``early_stopping``), which every checkpoint saves and ``--resume`` restores (the
checkpoint of a validation's iteration is written after that validation:
:class:`AtomicCheckpointHook`). A run resumed after it had stopped early stops again at once.
"""
from __future__ import annotations

from mmengine.hooks import EarlyStoppingHook
from mmengine.registry import HOOKS

STATE_KEY = 'early_stopping'


@HOOKS.register_module()
class ResumableEarlyStoppingHook(EarlyStoppingHook):
    """Stop after ``patience`` validations without a new best ``monitor`` (default
    ``coco/bbox_mAP``, higher is better).

    Any rise counts as better (``min_delta=0``; mmengine's default 0.1 is a tenth of the
    whole mAP range). Priority ``LOW`` (mmengine's is ``LOWEST``): after the EMA's swap
    back, before the checkpoint hook, so the checkpoint written after a validation holds
    the count that validation left."""
    priority = 'LOW'

    def __init__(self, monitor: str = 'coco/bbox_mAP', patience: int = 5,
                 min_delta: float = 0.0, **kwargs) -> None:
        if patience < 1:
            from ..errors import ConfigError
            raise ConfigError(f'early stopping: patience must be at least 1, got {patience}')
        # mmengine's default min_delta=0.1 would count a rise of 0.09 mAP as "no better"
        super().__init__(monitor=monitor, patience=patience, min_delta=min_delta, **kwargs)
        self.best_iter = None

    def before_train(self, runner) -> None:
        state = runner.message_hub.get_info(STATE_KEY)
        if state:
            self.best_score = state['best_score']
            self.wait_count = state['wait_count']
            self.best_iter = state.get('best_iter')
            runner.logger.info(f'early stopping: resumed at {self.wait_count} of '
                               f'{self.patience} validations without a better {self.monitor} '
                               f'(best {self.best_score:.4f})')
            if self.wait_count >= self.patience:
                runner.train_loop.stop_training = True
                runner.logger.info(self._stop_line(runner))

    def after_val_epoch(self, runner, metrics) -> None:
        if self.monitor not in (metrics or {}):  # mmengine's warning (or error if strict)
            return super().after_val_epoch(runner, metrics or {})
        before = self.best_score
        stop, _ = self._check_stop_condition(metrics[self.monitor])
        if self.best_score != before:
            self.best_iter = runner.iter
        runner.message_hub.update_info(STATE_KEY, dict(
            best_score=float(self.best_score), wait_count=self.wait_count,
            best_iter=self.best_iter))
        if stop:
            runner.train_loop.stop_training = True
            runner.logger.info(self._stop_line(runner))

    def _stop_line(self, runner) -> str:
        best = runner.message_hub.get_info('best_ckpt')
        where = f'; best checkpoint: {best}' if best else ''
        at = f' at iteration {self.best_iter}' if self.best_iter is not None else ''
        return (f'early stop: {self.monitor} did not improve in {self.wait_count} validations '
                f'(best {self.best_score:.4f}{at}){where}')
