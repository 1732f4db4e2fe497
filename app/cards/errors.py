"""The one error type the card readers raise: its message always names the file."""

from __future__ import annotations

from app.errors import CatteryError


class CardError(CatteryError):
    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


# Limits on untrusted input, and what they are for.
MAX_CARD_FILE = 64 * 1024 * 1024  # a card file (PNG, JSON, YAML, CharX) on disk
MAX_JSON_TEXT = 16 * 1024 * 1024  # one card's JSON, after base64 decoding or decompression
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # an avatar's width × height (8k × 8k)
MAX_CHARX_ENTRIES = 4096
MAX_CHARX_TOTAL = 256 * 1024 * 1024  # everything in a CharX archive, uncompressed
MAX_COMPRESSION_RATIO = 200  # a zip entry that inflates more than this is treated as a zip bomb
