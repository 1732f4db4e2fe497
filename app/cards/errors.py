"""The one error type the card readers raise, and the bounds on what a stranger's card may hold.

A card, a lorebook or a preset comes from anyone: every bound below keeps one such
file within a few seconds and a few hundred megabytes, while staying far above what
honest files from SillyTavern, RisuAI, chub or text-generation-webui carry.
"""

from __future__ import annotations

from app.errors import InputError


class CardError(InputError):
    """A card, lorebook or library copy that cannot be used; the message names the file, in one line."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


# Files and containers.
MAX_CARD_FILE = 64 * 1024 * 1024  # a card file (PNG, JSON, YAML, CharX) on disk
MAX_JSON_TEXT = 16 * 1024 * 1024  # one card's JSON, after base64 decoding or decompression
# Values (numbers, strings, lists, objects) in one card's or lorebook's JSON, counted from
# its commas and brackets before it is parsed: 16 MiB of `0,` is eight million objects,
# seconds to walk and gigabytes once copied and dumped. A big honest lorebook (5,000
# entries of twenty fields) has about 100,000.
MAX_JSON_VALUES = 500_000
# PyYAML is pure Python (10-25 µs a byte at worst on a busy 2-core machine): 64 KiB
# parses within 2 s, and a text-generation-webui character is a few KiB.
MAX_YAML_TEXT = 64 * 1024
MAX_PNG_CHUNKS = 100_000  # a 64 MiB PNG in 8 KiB IDAT chunks has 8,192
MAX_CHARX_ENTRIES = 4096
# Assets are images and sounds, which do not compress: an honest CharX unpacks to about
# its own size (at most MAX_CARD_FILE), and all of it is held in memory while imported.
MAX_CHARX_TOTAL = 96 * 1024 * 1024
MAX_COMPRESSION_RATIO = 200  # a zip entry that inflates more than this is treated as a zip bomb
# The central directory is read whole by zipfile, one object per entry, before any
# entry count can be checked: bounded first (4,096 entries with long names fit in 4 MiB).
MAX_CENTRAL_DIRECTORY = 4 * 1024 * 1024
MAX_MEMBER_PATH = 1024  # characters in a CharX entry's path
MAX_PATH_PART = 255  # bytes in one folder or file name: the limit of every common file system

# Images. A PNG card's image is kept byte for byte and only its header is read; an image
# that must be decoded (a JPEG or WebP icon exported as PNG) is held whole as pixels.
MAX_IMAGE_PIXELS = 32 * 1024 * 1024  # width × height of any avatar (e.g. 4096 × 8192)
MAX_DECODE_PIXELS = 16 * 1024 * 1024  # of one we decode: 4096 × 4096, 64 MiB as RGBA

# Text. A context window of 128k tokens is about 512 KiB of text: a field four times
# that is never meant for the prompt.
MAX_TEXT_FIELD = 2 * 1024 * 1024  # characters in one text field (description, greeting, entry content…)
MAX_NAME = 512  # characters in a name, nickname, tag or key
MAX_LIST_ITEMS = 10_000  # greetings, tags, assets, lorebook entries, keys of one entry
