"""Errors the user must fix (bad data, config, weights, checkpoints) as one line.

The tools run their ``main`` inside :func:`exit_on_user_error`: an error of one of the
:data:`USER_ERRORS` types is printed as ``error: <message>`` on stderr and the process
exits with :data:`USER_ERROR_EXIT_CODE`; the message already names the file, key or
value at fault. Any other exception is a bug and keeps its full traceback.
"""
from __future__ import annotations

import logging
import re
import sys
from contextlib import contextmanager

from ..datasets.errors import DatasetError
from ..models.timm_dinov2 import WeightFileError
from .checked_checkpoint import CheckpointError
from .config_check import ConfigError
from .nan_guard import NonFiniteLossError

USER_ERRORS = (ConfigError, DatasetError, WeightFileError, CheckpointError,
               NonFiniteLossError)
USER_ERROR_EXIT_CODE = 2  # as argparse's usage errors and tools/infer.py


def one_line(error: BaseException) -> str:
    """The error's message on one line.

    An error raised in a DataLoader worker reaches the main process re-raised with the
    worker's traceback appended ('Caught X in DataLoader worker process 0. Original
    Traceback ...'); its last line is the original message.
    """
    text = str(error).strip()
    if 'Original Traceback' in text:
        last = text.splitlines()[-1]  # 'package.module.ErrorType: message'
        text = re.sub(rf'^[\w.]*\b{type(error).__name__}: ', '', last)
    return ' '.join(text.split('\n'))


@contextmanager
def exit_on_user_error(code: int = USER_ERROR_EXIT_CODE):
    """``with exit_on_user_error(): main()`` -- see the module docstring."""
    try:
        yield
    except USER_ERRORS as e:
        message = one_line(e)
        _log_to_files(message)
        print(f'error: {message}', file=sys.stderr, flush=True)
        raise SystemExit(code) from None


def _log_to_files(message: str) -> None:
    """Also into the run's log file (a job's console output may be lost)."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
