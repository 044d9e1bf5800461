"""The one place that reads mmengine ``Runner`` state the Runner keeps private.

Upstream: mmengine 0.10.7's ``Runner`` has no public way to ask whether it will resume,
which checkpoint it will load, or which of its loops were built (``train_loop`` builds a
loop on first access; a test-only run has none): ``_resume``, ``_load_from`` and
``_train_loop`` / ``_val_loop`` / ``_test_loop`` hold them. Every read (and the one write)
of them in this project goes through these functions; replace them when mmengine exposes
the state (nothing else changes then).
"""
from __future__ import annotations

from typing import List, Optional


def resuming(runner) -> bool:
    """Whether the Runner resumes a run (``resume=True`` in its config)."""
    return bool(getattr(runner, '_resume', False))


def checkpoint_to_load(runner) -> Optional[str]:
    """The checkpoint the Runner will load or resume from (``load_from``), if one is set."""
    return getattr(runner, '_load_from', None)


def skip_checkpoint_load(runner) -> None:
    """Make the Runner load no checkpoint (its model's weights come from elsewhere)."""
    runner._load_from = None


def built_loop(runner, name: str):
    """The Runner's ``'train'``, ``'val'`` or ``'test'`` loop if it was built, else None
    (the property ``runner.train_loop`` would build it)."""
    loop = getattr(runner, f'_{name}_loop', None)
    return None if loop is None or isinstance(loop, dict) else loop


def built_loops(runner) -> List:
    return [loop for loop in (built_loop(runner, n) for n in ('train', 'val', 'test'))
            if loop is not None]
