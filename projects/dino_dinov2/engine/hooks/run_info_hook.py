"""Lines the tools work out before the Runner exists, written to the run's log.

The tools decide some things from command-line flags before a Runner (and its log file)
exists: the dataset found under ``--data-root``, the schedule. :func:`log_at_start` adds
them to a :class:`RunInfoHook`, which writes them to the run's log when it starts, so
the log file says what the run trained on and for how long.
"""
from __future__ import annotations

from typing import Sequence

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RunInfoHook(Hook):
    """Logs ``lines`` once, when the run (training or testing) starts."""
    priority = 'VERY_HIGH'

    def __init__(self, lines: Sequence[str] = ()) -> None:
        self.lines = list(lines)

    def before_run(self, runner) -> None:
        for line in self.lines:
            runner.logger.info(line)
