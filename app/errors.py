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
