"""The Author's Note: a chat's own instruction, inserted near the end of the prompt.

The classic way to steer a long role-play (SillyTavern's "in-chat @ depth"): a text
put into the chat as a message of its own, `depth` messages from the end (0: right
before the reply), in the format's system or user role, on every `every`-th user turn
(1: always, 0: never), with `{{char}}`, `{{user}}` and the other macros expanded. It
is saved with the chat (its `extra`), never stored as a message, never pinned.

When it is due follows SillyTavern: the user's messages in the chat are counted, and
the note goes in when that count is a multiple of `every`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from app.errors import CatteryError
from app.prompt.inject import Injection
from app.prompt.segments import Message

DEFAULT_DEPTH = 4  # SillyTavern's defaults
DEFAULT_EVERY = 1
MAX_DEPTH = 10_000
MAX_EVERY = 10_000
MAX_NOTE = 100_000  # characters: a note is a paragraph; this is a book
NOTE_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class AuthorsNote:
    text: str = ""
    depth: int = DEFAULT_DEPTH
    every: int = DEFAULT_EVERY
    role: str = "system"

    def __post_init__(self) -> None:
        if len(self.text) > MAX_NOTE:
            raise CatteryError(f"the Author's Note is {len(self.text):,} characters long (at most {MAX_NOTE:,})")
        if not 0 <= self.depth <= MAX_DEPTH:
            raise CatteryError(f"the Author's Note depth must be 0 to {MAX_DEPTH:,} messages, not {self.depth}")
        if not 0 <= self.every <= MAX_EVERY:
            raise CatteryError(f"the Author's Note frequency must be 0 (never) to {MAX_EVERY:,}, not {self.every}")
        if self.role not in NOTE_ROLES:
            raise CatteryError(f"the Author's Note role must be one of {', '.join(NOTE_ROLES)}, not {self.role!r}")

    @property
    def active(self) -> bool:
        """Whether it ever goes into a prompt."""
        return bool(self.text.strip()) and self.every > 0

    def due(self, history: Sequence[Message]) -> bool:
        """Whether a prompt over this history gets the note (SillyTavern's rule)."""
        if self.every <= 0:
            return False
        if self.every == 1:
            return True
        users = sum(1 for m in history if m.role == "user")
        return users > 0 and users % self.every == 0

    def turns_until(self, history: Sequence[Message]) -> int | None:
        """How many user messages from now until the note goes in (0: the next reply has it; None: never).

        The next reply's prompt counts the message the user is about to send, unless
        the chat already ends with one.
        """
        if not self.active:
            return None
        if self.every == 1:
            return 0
        users = sum(1 for m in history if m.role == "user")
        if not history or history[-1].role != "user":
            users += 1
        return (-users) % self.every

    def injection(self, text: str) -> Injection:
        return Injection(self.depth, self.role, text, "author_note")

    def describe(self) -> str:
        """One line for a status or a report: where and how often."""
        if not self.text.strip():
            return "no Author's Note"
        if self.every <= 0:
            return "Author's Note off (frequency 0)"
        where = "right before the reply" if self.depth == 0 else f"{self.depth} messages from the end"
        often = "every user turn" if self.every == 1 else f"every {self.every} user turns"
        return f"Author's Note as {self.role}, {where}, {often}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, **changes: Any) -> AuthorsNote:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_dict(cls, value: Any) -> AuthorsNote | None:
        """A note saved with a chat; anything another tool or a damaged row left there is
        read as far as it makes sense (numbers clamped, a bad role as system), never an error."""
        if not isinstance(value, dict):
            return None
        text = value.get("text")
        if not isinstance(text, str) or not text:
            return None
        return cls(
            text=text[:MAX_NOTE],
            depth=_clamped(value.get("depth"), DEFAULT_DEPTH, MAX_DEPTH),
            every=_clamped(value.get("every"), DEFAULT_EVERY, MAX_EVERY),
            role=value.get("role") if value.get("role") in NOTE_ROLES else "system",
        )


def _clamped(value: Any, default: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    if value != value:  # NaN
        return default
    return int(max(0, min(high, value)))


def note_from_options(
    base: AuthorsNote | None,
    text: str | None = None,
    depth: int | None = None,
    every: int | None = None,
    role: str | None = None,
) -> AuthorsNote | None:
    """The note a command line asks for, over the chat's own (`base`): only what is given changes.

    `--author-note ""` removes the note; depth, frequency or role alone change the
    chat's note (and say so when there is none to change).
    """
    if text is None and depth is None and every is None and role is None:
        return base
    if text is not None and not text.strip():
        return None
    if text is None and base is None:
        raise CatteryError(
            "--note-depth, --note-every and --note-role change an Author's Note: give it with --author-note"
        )
    note = base or AuthorsNote()
    return note.updated(text=text, depth=depth, every=every, role=role)
