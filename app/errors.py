"""Errors a user can cause.

The CLI prints a `CatteryError` as one line on stderr and exits non-zero; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CatteryError(Exception):
    """A mistake the user can fix: the message is the whole story, one line."""

    exit_code = 2


class ModelFileError(CatteryError):
    """The model file is missing, not GGUF, or not loadable by llama.cpp."""


class NotEnoughMemoryError(CatteryError):
    """The model would not fit in RAM at the chosen context."""


class ContextOverflowError(CatteryError):
    """A prompt does not fit in the context window."""


class SettingsError(CatteryError):
    """The settings file cannot be read or holds a bad value."""


class InputError(CatteryError):
    """Data from outside (a file, a hub answer, a settings value) is malformed, hostile or too big.

    The message names where the data came from and what is wrong with it, in one line.
    """


class DiskError(CatteryError):
    """A folder cannot be written: full, read-only, or not ours. Nothing already saved is touched."""


def disk_error(exc: OSError, what: str = "") -> DiskError:
    """One line naming the folder that could not be written, from the OSError that said so."""
    import os

    target = exc.filename or ""
    folder = os.path.dirname(str(target)) if target and not os.path.isdir(str(target)) else str(target)
    reason = exc.strerror or type(exc).__name__
    where = f" in {folder}" if folder else ""
    doing = f"cannot {what}" if what else "cannot write"
    return DiskError(f"{doing}{where}: {reason}")
