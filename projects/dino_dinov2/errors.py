"""The project's error base: an input the user must fix.

Every error raised for bad input (data, config, launcher environment, weights,
checkpoints, a NaN loss) derives from :class:`UserError`; the tools print it as one line and
exit with status 2 (``cli/error_exit.py``). Each also derives from the builtin type
callers expect (``ValueError``, ``RuntimeError``).
"""


def first_line(error: BaseException, empty: str = None) -> str:
    """The first line of an exception's message; ``empty`` (default: the exception's type
    name) when it has none. The one helper for messages that quote a library's error."""
    text = str(error).strip()
    if text:
        return text.splitlines()[0]
    return type(error).__name__ if empty is None else empty


class UserError(Exception):
    """Bad input: the message names the file, key or value at fault and what to do."""


class ConfigError(UserError, ValueError):
    """A config file or option that names an unknown key, a wrong type or value, or a
    missing path."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, truncated, not a checkpoint, or unsafe to load."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist."""
