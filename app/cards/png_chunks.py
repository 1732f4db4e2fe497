"""PNG text chunks: reading them wherever they sit, writing them without touching the image.

Card tools write their `chara`/`ccv3` chunk just before IEND, after the image data.
Pillow only reads text chunks that follow the image data by decoding every pixel,
which is slow and, for a hostile file with enormous dimensions, dangerous; and it
writes text only by re-encoding the image, which loses APNG frames. The PNG chunk
layout is simple (length, type, data, CRC), so this module walks it directly; the
image itself is left to Pillow.

The walk trusts nothing: every length is checked against the bytes that are there,
every CRC is checked, the number of chunks is bounded, chunk bodies are sliced only
when asked for (a 64 MiB image is not copied), and only the text chunks the caller
wants are inflated, each within `MAX_JSON_TEXT`.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection
from dataclasses import dataclass

from app.cards.errors import MAX_JSON_TEXT, MAX_PNG_CHUNKS, CardError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_TYPES = (b"tEXt", b"zTXt", b"iTXt")


@dataclass(frozen=True)
class Chunk:
    type: bytes
    buffer: bytes
    start: int  # of the body in `buffer`
    end: int

    @property
    def data(self) -> bytes:
        return self.buffer[self.start : self.end]

    @property
    def keyword(self) -> str:
        """A text chunk's keyword, lower-cased (keywords are at most 79 Latin-1 bytes)."""
        head = self.buffer[self.start : min(self.end, self.start + 80)]
        return head.partition(b"\0")[0].decode("latin-1").lower()


def _name(ctype: bytes) -> str:
    return ctype.decode("latin-1").encode("ascii", "backslashreplace").decode("ascii")


def iter_chunks(data: bytes, source: str) -> list[Chunk]:
    if not data.startswith(PNG_SIGNATURE):
        raise CardError(source, "not a PNG file")
    chunks: list[Chunk] = []
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise CardError(source, "truncated PNG (a chunk header is cut off)")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        if length > 0x7FFFFFFF:
            raise CardError(source, f"damaged PNG (a {_name(ctype)!r} chunk claims {length:,} bytes)")
        end = pos + 12 + length
        if end > len(data):
            raise CardError(source, f"truncated PNG (the {_name(ctype)!r} chunk is cut off)")
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(memoryview(data)[pos + 4 : end - 4]) != crc:
            raise CardError(source, f"damaged PNG (bad checksum in a {_name(ctype)!r} chunk)")
        chunks.append(Chunk(ctype, data, pos + 8, end - 4))
        if len(chunks) > MAX_PNG_CHUNKS:
            raise CardError(source, f"a PNG of more than {MAX_PNG_CHUNKS:,} chunks")
        pos = end
        if ctype == b"IEND":
            break
    else:
        raise CardError(source, "truncated PNG (no IEND chunk)")
    return chunks


# Bit depths PNG allows for each colour type.
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def image_size(chunks: list[Chunk], source: str) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which must be first and well formed."""
    if not chunks or chunks[0].type != b"IHDR" or chunks[0].end - chunks[0].start != 13:
        raise CardError(source, "damaged PNG (no image header)")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0].data)
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise CardError(source, f"damaged PNG (an image of {width}×{height} pixels)")
    if depth not in _DEPTHS.get(colour, ()) or compression or filtering or interlace > 1:
        raise CardError(source, "damaged PNG (an image header no PNG has)")
    return width, height


def _inflate(data: bytes, source: str, keyword: str) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, MAX_JSON_TEXT + 1)
    except zlib.error:
        raise CardError(source, f"the compressed {keyword!r} text chunk is damaged") from None
    if len(out) > MAX_JSON_TEXT or d.unconsumed_tail:
        raise CardError(source, f"the {keyword!r} text chunk inflates past {MAX_JSON_TEXT // 2**20} MiB")
    return out


def text_chunks(chunks: list[Chunk], source: str, wanted: Collection[str] | None = None) -> dict[str, bytes]:
    """Keyword (lower-cased) → raw text bytes, from tEXt, zTXt and iTXt chunks. First one wins.

    With `wanted`, only those keywords are read (and inflated): a file may hold thousands
    of other compressed text chunks, and none of them is worth the time.
    """
    found: dict[str, bytes] = {}
    for chunk in chunks:
        if chunk.type not in TEXT_TYPES:
            continue
        key = chunk.keyword
        if key in found or (wanted is not None and key not in wanted):
            continue
        _keyword, sep, rest = chunk.data.partition(b"\0")
        if not sep:
            continue
        if chunk.type == b"tEXt":
            text = rest
        elif chunk.type == b"zTXt":
            text = _inflate(rest[1:], source, key) if rest[:1] == b"\0" else b""
        else:  # iTXt: compression flag, method, language tag \0, translated keyword \0, text
            if len(rest) < 2:
                continue
            flag, _method, tail = rest[0], rest[1], rest[2:]
            parts = tail.split(b"\0", 2)
            if len(parts) < 3:
                continue
            text = _inflate(parts[2], source, key) if flag else parts[2]
        if len(text) > MAX_JSON_TEXT:
            raise CardError(source, f"the {key!r} text chunk is larger than {MAX_JSON_TEXT // 2**20} MiB")
        found[key] = text
    return found


def _text_chunk(keyword: str, value: bytes) -> list[bytes]:
    """A tEXt chunk as pieces to join, so that a 20 MB value is not copied to build it."""
    head = b"tEXt" + keyword.encode("latin-1") + b"\0"
    crc = zlib.crc32(value, zlib.crc32(head))
    return [struct.pack(">I", len(head) - 4 + len(value)), head, value, struct.pack(">I", crc)]


def with_text_chunks(png: bytes, texts: dict[str, bytes], source: str, drop: set[str]) -> bytes:
    """The same PNG with text chunks whose keywords are in `drop` removed and `texts` (ASCII)
    added as tEXt before IEND."""
    chunks = iter_chunks(png, source)
    out = [PNG_SIGNATURE]
    for chunk in chunks:
        if chunk.type in TEXT_TYPES and chunk.keyword in drop:
            continue
        if chunk.type == b"IEND":
            for key, value in texts.items():
                out += _text_chunk(key, value)
        out.append(png[chunk.start - 8 : chunk.end + 4])
    return b"".join(out)
