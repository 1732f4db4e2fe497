"""Turning token bytes into text pieces a UI can show as they come.

Two things go wrong in naive streaming: a multi-byte character split across tokens
(emoji, CJK) shows as mojibake, and a stop string split across tokens leaks its
first half to the screen before the second half arrives. `TextStream` fixes both:
bytes are decoded incrementally, and any tail that could still become a stop string
is held back until it either completes (and is dropped) or cannot (and is released).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in dict.fromkeys(stop) if s]
        self._held = ""
        self.stopped_by: str | None = None

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to show."""
        if self.stopped_by is not None:
            return ""
        text = self._decoder.decode(data)
        return self._release(self._held + text) if text else ""

    def finish(self) -> str:
        """End of generation: flush partial bytes and everything held back."""
        if self.stopped_by is not None:
            return ""
        return self._release(self._held + self._decoder.decode(b"", final=True), final=True)

    def _release(self, text: str, final: bool = False) -> str:
        if not self._stops:
            self._held = ""
            return text
        cut = -1
        for stop in self._stops:
            i = text.find(stop)
            if i != -1 and (cut == -1 or i < cut):
                cut, self.stopped_by = i, stop
        if cut != -1:
            self._held = ""
            return text[:cut]
        if final:
            self._held = ""
            return text
        keep = self._partial_stop_len(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
