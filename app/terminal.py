"""Text from outside, made safe to print on a terminal.

A card name, a GGUF `general.name`, an imported chat or a model's reply may carry
escape sequences: printed raw they can retitle the window, hide text, move the
cursor over earlier lines or, on some terminals, answer back into the input. The
command line shows such characters as visible escapes (`\\u001b`, which is also valid
inside JSON strings); the full-screen app strips them.
"""

from __future__ import annotations

import re
from typing import IO, Any

# C0 controls but tab and newline, DEL, C1 controls, and the Unicode formatting
# characters that reorder or hide text (bidi overrides and isolates, line/paragraph
# separators, BOM/zero-width no-break inside text).
_RANGES = ((0x00, 0x08), (0x0B, 0x1F), (0x7F, 0x9F), (0x2028, 0x202E), (0x2066, 0x2069), (0xFEFF, 0xFEFF))
CONTROL_CODEPOINTS: frozenset[int] = frozenset(c for low, high in _RANGES for c in range(low, high + 1))
_CONTROLS = re.compile("[" + "".join(f"\\u{low:04x}-\\u{high:04x}" for low, high in _RANGES) + "]")


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def visible(text: str) -> str:
    """`text` with every control character shown as `\\uXXXX`; newlines and tabs kept."""
    return _CONTROLS.sub(_escape, text)


def strip_controls(text: str) -> str:
    """`text` without control characters (newlines and tabs kept), for the full-screen app."""
    return _CONTROLS.sub("", text)


class VisibleStream:
    """A text stream that shows control characters in whatever passes through it.

    The command line wraps stdout and stderr in one for the whole command, so no
    print of outside text can forget it. Cattery's own terminal control (a progress
    line rewritten with a carriage return) goes through `rewrite_line`, straight to
    the stream underneath.
    """

    def __init__(self, raw: IO[str]) -> None:
        self.raw = raw

    def write(self, text: str) -> int:
        self.raw.write(visible(text))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding, buffer…
        return getattr(self.raw, name)


def raw_stream(stream: Any) -> Any:
    """The stream under a `VisibleStream` (or the stream itself)."""
    return getattr(stream, "raw", stream) if isinstance(stream, VisibleStream) else stream


def rewrite_line(stream: Any, text: str) -> None:
    """Rewrite the current terminal line with `text` (its own controls made visible)."""
    out = raw_stream(stream)
    out.write("\r" + visible(text))
    out.flush()
