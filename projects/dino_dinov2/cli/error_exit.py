"""The one place where the tools turn a failure into what a user reads, and an exit code.

The tools run their ``main`` inside :func:`exit_on_user_error`:

- an error in the input (:data:`USER_ERRORS`: bad data, config, launcher environment,
  weights, checkpoints, a NaN loss) prints one line, ``error: <message>``, naming the file,
  key or value at fault and what to do, and exits with status **2**;
- a preemption exits with status **75** (``PreemptionHook`` raises ``SystemExit(75)``:
  passed through unchanged);
- anything else is a bug: ``error: internal error (...)`` saying where the traceback is,
  status **1**.

The full traceback is never lost: it goes to the run's log file, or, for a bug before a
run has one, to a file in the temporary folder that the last line names. ``DINO_DEBUG=1``
prints it on the terminal as well.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from typing import Optional

from ..errors import UserError

USER_ERRORS = (UserError, )  # every project error for bad input derives from it
USER_ERROR_EXIT_CODE = 2  # as argparse's usage errors and tools/infer.py
BUG_EXIT_CODE = 1
DEBUG_ENV = 'DINO_DEBUG'


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


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, '0') not in ('', '0')


def _log_files():
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    return logger, [h for h in logger.handlers if isinstance(h, logging.FileHandler)]


def save_traceback(error: BaseException, message: str, temp_file: bool = True
                   ) -> Optional[str]:
    """Write ``message`` and the traceback to the run's log file (or, before the run has
    one and with ``temp_file``, to a file in the temporary folder); return where it
    went."""
    text = ''.join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        logger, handlers = _log_files()
    except Exception:  # noqa: BLE001 - mmengine not importable: the temp file still works
        logger, handlers = None, []
    if handlers:
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0,
                                   f'{message}\n{text}', None, None)
        for handler in handlers:
            handler.handle(record)
        return handlers[0].baseFilename
    if not temp_file:
        return None
    try:
        fd, path = tempfile.mkstemp(prefix=f'dino-dinov2-{time.strftime("%Y%m%d_%H%M%S")}-',
                                    suffix='.log')
        with os.fdopen(fd, 'w') as f:
            f.write(f'{message}\n{text}')
        return path
    except OSError:
        return None


@contextmanager
def exit_on_user_error(code: int = USER_ERROR_EXIT_CODE):
    """``with exit_on_user_error(): main()`` -- see the module docstring."""
    try:
        yield
    except USER_ERRORS as e:
        message = one_line(e)
        # the run's log keeps it; before there is one the line says it all (a temp file
        # per mistyped command would only pile up: DINO_DEBUG=1 prints the traceback)
        save_traceback(e, f'error: {message}', temp_file=False)
        if _debug():
            traceback.print_exc()
        print(f'error: {message}', file=sys.stderr, flush=True)
        raise SystemExit(code) from None
    except (SystemExit, KeyboardInterrupt):
        raise  # preemption (75), argparse (2), Ctrl-C: as they are
    except Exception as e:  # noqa: BLE001 - a bug: say so, keep the traceback
        message = f'{type(e).__name__}: {one_line(e)}'
        where = save_traceback(e, f'internal error: {message}')
        if _debug():
            traceback.print_exc()
        print(f'error: internal error ({message[:300]}): a bug in dino-dinov2 or a library '
              f'it runs, not a problem of your input; the traceback is in '
              f'{where or "(nowhere: no file could be written)"} ({DEBUG_ENV}=1 prints it '
              'here); please report it with that file', file=sys.stderr, flush=True)
        raise SystemExit(BUG_EXIT_CODE) from None
