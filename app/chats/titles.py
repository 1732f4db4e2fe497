"""Chat titles: a short summary of the first exchange, or a title the person gave.

A list of chats all named by their date says nothing about what each was; what the
person first said does (as LM Studio and most chat apps name theirs). Cattery titles
a new chat by its date until the first user message exists, then by that message's
first line, trimmed on a word boundary, without the markup role-play uses (`*waves*`,
`**bold**`, links, HTML). The title follows that message while it is Cattery's own (an
edited first message retitles the chat); once the person renames a chat, its title is
theirs and never replaced (`chats.title_auto`, app/chats/schema.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from app.errors import CatteryError
from app.terminal import strip_controls

TITLE_CHARS = 40  # an automatic title: about what fits beside the character's name in a list
MAX_TITLE = 200  # a title the person types
_SCAN_CHARS = 4000  # the first line is found within the start of a message of any size

_ESCAPE_SEQUENCE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|.)")
_CODE_FENCE = re.compile(r"^\s*(```|~~~)")
_IMAGE = re.compile(r"!\[([^\]\n]*)\]\([^)\n]*\)")
_LINK = re.compile(r"\[([^\]\n]*)\]\([^)\n]*\)")
_TAG = re.compile(r"</?[A-Za-z][^<>\n]{0,200}>")
_MACRO = re.compile(r"\{\{[^{}\n]{0,200}\}\}")
_LINE_START = re.compile(r"^\s*(?:#{1,6}\s+|>\s*|[-+*]\s+|\d{1,3}[.)]\s+)+")
_EMPHASIS = re.compile(r"(\*{1,3}|~~|`+|(?<!\w)_{1,3}|_{1,3}(?!\w))")


def _plain_line(line: str) -> str:
    """One line without Markdown, HTML or macros: the words a person reads."""
    line = _IMAGE.sub(r"\1", line)
    line = _LINK.sub(r"\1", line)
    line = _TAG.sub(" ", line)
    line = _MACRO.sub(" ", line)
    line = _LINE_START.sub("", line)
    line = _EMPHASIS.sub("", line)
    return " ".join(line.split())


def summarize(text: str, limit: int = TITLE_CHARS) -> str | None:
    """The title a chat gets from this message: its first line with words in it, at most `limit`
    characters, cut between words (with "…") when longer. None when nothing readable is left."""
    lines = strip_controls(_ESCAPE_SEQUENCE.sub("", text[:_SCAN_CHARS])).splitlines()
    in_code = False
    for raw in lines:
        if _CODE_FENCE.match(raw):
            in_code = not in_code
            continue
        if in_code:
            continue
        line = _plain_line(raw)
        if any(ch.isalnum() for ch in line):
            return _shorten(line, limit)
    return None


def _shorten(line: str, limit: int) -> str:
    if len(line) <= limit:
        return line
    cut = line[: limit - 1]
    if cut[-1].isalnum() and line[limit - 1].isalnum():  # the cut is inside a word: back to the last space
        space = cut.rfind(" ")
        if space >= limit // 2:  # not too far back; else one long word is cut
            cut = cut[:space]
    return cut.rstrip(" ,;:-–—") + "…"


def clean_title(text: str) -> str:
    """A title the person typed, as stored: one line, no control characters; empty or too long is an error."""
    title = " ".join(strip_controls(text).split())
    if not title:
        raise CatteryError("a chat's title cannot be empty")
    if len(title) > MAX_TITLE:
        raise CatteryError(f"a chat's title is at most {MAX_TITLE} characters (this one has {len(title)})")
    return title


def title_from(messages: Iterable[tuple[str, str, bool]]) -> str | None:
    """The automatic title for a chat's messages, given as (role, text, written by the model).

    The first user message; a chat without one (the character spoke again, or only the
    greeting is there) by the first reply the model wrote, never by a card's greeting,
    which every chat with that character shares. None: not yet, the date stays.
    """
    first_reply: str | None = None
    for role, text, generated in messages:
        if role == "user":
            title = summarize(text)
            if title:
                return title
        elif role == "assistant" and generated and first_reply is None:
            first_reply = summarize(text)
    return first_reply
