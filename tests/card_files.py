"""Card files made in the test run, for every format and edge case the readers must take."""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
import zlib
from typing import Any

from app.cards.png_chunks import PNG_SIGNATURE


def chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def png_image(width: int = 8, height: int = 8) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 120, 40)).save(buf, "PNG")
    return buf.getvalue()


def png_with_chunks(extra: list[bytes], image: bytes | None = None) -> bytes:
    """`image` with extra chunks inserted before IEND (where card tools put them)."""
    data = image or png_image()
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + b"".join(extra) + data[iend:]


def b64json(obj: Any) -> bytes:
    return base64.b64encode(json.dumps(obj).encode())


def text_chunk(keyword: str, text: bytes) -> bytes:
    return chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + text)


def ztxt_chunk(keyword: str, text: bytes) -> bytes:
    return chunk(b"zTXt", keyword.encode("latin-1") + b"\0\0" + zlib.compress(text))


def itxt_chunk(keyword: str, text: bytes, compressed: bool = False) -> bytes:
    body = zlib.compress(text) if compressed else text
    return chunk(b"iTXt", keyword.encode() + b"\0" + bytes([int(compressed), 0]) + b"en\0\0" + body)


def huge_dimension_png(width: int, height: int) -> bytes:
    """A PNG header claiming enormous dimensions, with a token IDAT: never decoded, only measured."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def v2(name: str = "Mira", **data: Any) -> dict[str, Any]:
    base = {
        "name": name,
        "description": "A fox spirit.",
        "personality": "sly",
        "scenario": "A forest.",
        "first_mes": "Hello, {{user}}.",
        "mes_example": "<START>\n{{user}}: hi\n{{char}}: hi",
        "creator_notes": "",
        "system_prompt": "",
        "post_history_instructions": "",
        "alternate_greetings": [],
        "tags": ["fox"],
        "creator": "tests",
        "character_version": "1",
        "extensions": {"depth_prompt": {"x": 1}},
    }
    base.update(data)
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": base}


def v3(name: str = "Mira", **data: Any) -> dict[str, Any]:
    card = v2(name, **data)
    card["spec"], card["spec_version"] = "chara_card_v3", "3.0"
    card["data"].setdefault("nickname", "Mimi")
    card["data"].setdefault("group_only_greetings", ["Hi all"])
    card["data"].setdefault("creation_date", 1700000000)
    return card


def charx(card: dict[str, Any], files: dict[str, bytes] | None = None, prefix: str = "embeded://") -> bytes:
    card = json.loads(json.dumps(card))
    files = dict(files or {})
    if "assets/icon/images/main.png" in files:
        card["data"]["assets"] = [
            {"type": "icon", "uri": f"{prefix}assets/icon/images/main.png", "name": "main", "ext": "png"}
        ]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("card.json", json.dumps(card))
        for path, data in files.items():
            zf.writestr(path, data)
    return buf.getvalue()
