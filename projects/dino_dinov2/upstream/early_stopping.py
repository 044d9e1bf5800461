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

import math

from mmengine.hooks import EarlyStoppingHook
from mmengine.registry import HOOKS

STATE_KEY = 'early_stopping'


def is_better(score: float, best: float, min_delta: float = 0.0) -> bool:
    """The one definition of "better" (a higher ``coco/bbox_mAP``): above the best by more
    than ``min_delta``. A tie is not better (mmdet rounds mAP to 3 decimals: ties happen),
    as for mmengine's best checkpoint (``CheckpointHook(rule='greater')``: ``score >
    best``), so the best checkpoint and early stopping agree."""
    return score > best + min_delta


@HOOKS.register_module()
class ResumableEarlyStoppingHook(EarlyStoppingHook):
    """Stop after ``patience`` validations without a new best ``monitor`` (default
    ``coco/bbox_mAP``, higher is better).

    Better is :func:`is_better`: above the best by more than ``min_delta`` (0: any rise, a
    tie is not; mmengine's default 0.1 is a tenth of the whole mAP range). Priority ``LOW``
    (mmengine's is ``LOWEST``): after the EMA's swap back, before the checkpoint hook, so
    the checkpoint written after a validation holds the count that validation left."""
    priority = 'LOW'

    def __init__(self, monitor: str = 'coco/bbox_mAP', patience: int = 5,
                 min_delta: float = 0.0, **kwargs) -> None:
        from ..errors import ConfigError
        if patience < 1:
            raise ConfigError(f'early stopping: patience must be at least 1, got {patience}')
        if min_delta < 0:
            raise ConfigError(f'early stopping: min_delta must be 0 or more, got {min_delta}')
        super().__init__(monitor=monitor, patience=patience, min_delta=min_delta, **kwargs)
        if self.rule != 'greater':
            raise ConfigError(f'early stopping: {monitor!r} is not a score where higher is '
                              'better; this hook monitors one (coco/bbox_mAP)')
        self.best_at = None  # 'epoch 3' / 'iteration 2500': the validation of the best

    def before_train(self, runner) -> None:
        state = runner.message_hub.get_info(STATE_KEY)
        if state:
            self.best_score = state['best_score']
            self.wait_count = state['wait_count']
            self.best_at = state.get('best_at')
            runner.logger.info(f'early stopping: resumed at {self.wait_count} of '
                               f'{self.patience} validations without a better {self.monitor} '
                               f'(best {self.best_score:.4f})')
            if self.wait_count >= self.patience:
                runner.train_loop.stop_training = True
                runner.logger.info(self._stop_line(runner))

    def after_val_epoch(self, runner, metrics) -> None:
        if self.monitor not in (metrics or {}):  # mmengine's warning (or error if strict)
            return super().after_val_epoch(runner, metrics or {})
        score = float(metrics[self.monitor])
        if (self.check_finite and not math.isfinite(score)) or (
                self.stopping_threshold is not None and score > self.stopping_threshold):
            _, reason = self._check_stop_condition(score)  # mmengine's own stops
            runner.train_loop.stop_training = True
            runner.logger.info(f'early stop: {reason}')
            return
        if is_better(score, self.best_score, self.min_delta):
            self.best_score, self.wait_count = score, 0
            # after a validation inside training the loop's counters have moved on: this
            # epoch (1-based) or iteration names the checkpoint written after it
            self.best_at = (f'epoch {runner.epoch}' if _by_epoch(runner)
                            else f'iteration {runner.iter}')
        else:
            self.wait_count += 1
        runner.message_hub.update_info(STATE_KEY, dict(
            best_score=float(self.best_score), wait_count=self.wait_count,
            best_at=self.best_at))
        if self.wait_count >= self.patience:
            runner.train_loop.stop_training = True
            runner.logger.info(self._stop_line(runner))

    def _stop_line(self, runner) -> str:
        best = runner.message_hub.get_info('best_ckpt')
        where = f'; best checkpoint: {best}' if best else ''
        at = f' at {self.best_at}' if self.best_at else ''
        delta = f' by more than {self.min_delta:g}' if self.min_delta else ''
        n = self.wait_count
        return (f'early stop: {self.monitor} did not improve{delta} in {n} '
                f'validation{"s" if n != 1 else ""} (best {self.best_score:.4f}{at}){where}')


def _by_epoch(runner) -> bool:
    from mmengine.runner import EpochBasedTrainLoop
    return isinstance(runner.train_loop, EpochBasedTrainLoop)
