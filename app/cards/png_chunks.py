"""PNG text chunks: reading them wherever they sit, writing them without touching the image.

Card tools write their `chara`/`ccv3` chunk just before IEND, after the image data.
Pillow only reads text chunks that follow the image data by decoding every pixel,
which is slow and, for a hostile file with enormous dimensions, dangerous; and it
writes text only by re-encoding the image, which loses APNG frames. The PNG chunk
layout is simple (length, type, data, CRC), so this module walks it directly; the
image itself is left to Pillow.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from app.cards.errors import MAX_JSON_TEXT, CardError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Chunk:
    type: bytes
    data: bytes


def iter_chunks(data: bytes, source: str) -> list[Chunk]:
    if not data.startswith(PNG_SIGNATURE):
        raise CardError(source, "not a PNG file")
    chunks: list[Chunk] = []
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise CardError(source, "truncated PNG (a chunk header is cut off)")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise CardError(source, f"truncated PNG (the {ctype.decode('latin-1')!r} chunk is cut off)")
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(ctype + body) != crc:
            raise CardError(source, f"damaged PNG (bad checksum in a {ctype.decode('latin-1')!r} chunk)")
        chunks.append(Chunk(ctype, body))
        pos = end
        if ctype == b"IEND":
            break
    else:
        raise CardError(source, "truncated PNG (no IEND chunk)")
    return chunks


def _inflate(data: bytes, source: str, keyword: str) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, MAX_JSON_TEXT + 1)
    except zlib.error:
        raise CardError(source, f"the compressed {keyword!r} text chunk is damaged") from None
    if len(out) > MAX_JSON_TEXT or d.unconsumed_tail:
        raise CardError(source, f"the {keyword!r} text chunk inflates past {MAX_JSON_TEXT // 2**20} MiB")
    return out


def text_chunks(chunks: list[Chunk], source: str) -> dict[str, bytes]:
    """Keyword (lower-cased) → raw text bytes, from tEXt, zTXt and iTXt chunks. First one wins."""
    found: dict[str, bytes] = {}
    for chunk in chunks:
        if chunk.type not in (b"tEXt", b"zTXt", b"iTXt"):
            continue
        keyword, sep, rest = chunk.data.partition(b"\0")
        if not sep:
            continue
        key = keyword.decode("latin-1").lower()
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
        found.setdefault(key, text)
    return found


def _chunk_bytes(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def with_text_chunks(png: bytes, texts: dict[str, str], source: str, drop: set[str]) -> bytes:
    """The same PNG with text chunks whose keywords are in `drop` removed and `texts` added as tEXt before IEND."""
    chunks = iter_chunks(png, source)
    out = [PNG_SIGNATURE]
    for chunk in chunks:
        if chunk.type in (b"tEXt", b"zTXt", b"iTXt"):
            keyword = chunk.data.partition(b"\0")[0].decode("latin-1").lower()
            if keyword in drop:
                continue
        if chunk.type == b"IEND":
            for key, value in texts.items():
                out.append(_chunk_bytes(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("ascii")))
        out.append(_chunk_bytes(chunk.type, chunk.data))
    return b"".join(out)
