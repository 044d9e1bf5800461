"""``FineTuneLoadHook``: ``--load-from`` loading every tensor of a detector checkpoint
(why: ``engine/fine_tune.py``)."""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ...upstream.runner import resuming
from ..fine_tune import load_for_fine_tuning, run_classes


@HOOKS.register_module()
class FineTuneLoadHook(Hook):
    """Load ``checkpoint`` into the model before the first iteration (not when resuming).

    Runs after the Runner initialised the weights, so the re-initialised tensors hold a
    fresh initialisation.
    """
    priority = 'VERY_HIGH'

    def __init__(self, checkpoint: str) -> None:
        self.checkpoint = checkpoint

    def before_train(self, runner) -> None:
        if resuming(runner) or runner.iter > 0:
            runner.logger.info(f'FineTuneLoadHook: resuming; {self.checkpoint} not loaded')
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        runner.logger.info(load_for_fine_tuning(model, self.checkpoint, run_classes(runner.cfg)))
