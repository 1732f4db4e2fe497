"""The converters' own error for checkpoints from outside: one line naming the file and what is wrong."""

from __future__ import annotations

from app.errors import InputError


class CheckpointError(InputError):
    """A checkpoint, adapter or tokenizer file is missing, malformed, inconsistent or hostile."""
