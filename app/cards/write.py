"""Writing cards: JSON (V2 or V3), PNG with both `chara` (V2) and `ccv3` (V3) chunks, CharX."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from typing import Any

from app.cards.card import Card
from app.cards.png_chunks import PNG_SIGNATURE, with_text_chunks

AVATAR_PATH = "assets/icon/images/main.png"


def json_bytes(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, indent=2).encode("utf-8")


def _b64(obj: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(obj, ensure_ascii=False).encode("utf-8")).decode("ascii")


def avatar_png(card: Card) -> bytes:
    """The card's own image as PNG: kept byte for byte when it is one, converted when not,
    a plain default when the card has none."""
    from PIL import Image

    if card.avatar and card.avatar.startswith(PNG_SIGNATURE):
        return card.avatar
    buf = io.BytesIO()
    if card.avatar:
        with Image.open(io.BytesIO(card.avatar)) as im:
            im.save(buf, "PNG")
    else:
        Image.new("RGB", (400, 600), (70, 62, 98)).save(buf, "PNG")
    return buf.getvalue()


def to_png(card: Card) -> bytes:
    texts = {"chara": _b64(card.to_v2()), "ccv3": _b64(card.to_v3())}
    return with_text_chunks(avatar_png(card), texts, card.name, drop={"chara", "ccv3"})


def to_charx(card: Card) -> bytes:
    v3 = card.to_v3()
    files = dict(card.files)
    if card.avatar is not None:
        files[AVATAR_PATH] = avatar_png(card)
        assets = [a for a in v3["data"]["assets"] if not (a.get("type") == "icon" and a.get("name") == "main")]
        v3["data"]["assets"] = [
            {"type": "icon", "uri": f"embeded://{AVATAR_PATH}", "name": "main", "ext": "png"},
            *assets,
        ]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("card.json", json_bytes(v3))
        for path, data in sorted(files.items()):
            zf.writestr(path, data)
    return buf.getvalue()
