"""Writing cards: JSON (V2 or V3), PNG with both `chara` (V2) and `ccv3` (V3) chunks, CharX."""

from __future__ import annotations

import base64
import io
import json
import zipfile
from typing import Any

from app.cards.card import Card
from app.cards.images import as_png, blank_png
from app.cards.png_chunks import PNG_SIGNATURE, with_text_chunks

AVATAR_PATH = "assets/icon/images/main.png"
PRETTY_UP_TO = 1024 * 1024  # bytes of compact JSON; indenting a larger, deeper one can multiply its size


def json_bytes(obj: dict[str, Any]) -> bytes:
    compact = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if len(compact) > PRETTY_UP_TO:
        return compact.encode("utf-8")
    return json.dumps(obj, ensure_ascii=False, indent=2).encode("utf-8")


def _b64(obj: dict[str, Any]) -> bytes:
    return base64.b64encode(json.dumps(obj, ensure_ascii=False).encode("utf-8"))


def avatar_png(card: Card) -> bytes:
    """The card's own image as PNG: kept byte for byte when it is one, converted when not,
    a plain default when the card has none."""
    if card.avatar and card.avatar.startswith(PNG_SIGNATURE):
        return card.avatar
    if card.avatar:
        return as_png(card.avatar, card.name, "the card's image")
    return blank_png()


def to_png(card: Card) -> bytes:
    texts = {"chara": _b64(card.to_v2()), "ccv3": _b64(card.to_v3())}
    return with_text_chunks(avatar_png(card), texts, card.name, drop={"chara", "ccv3"})


def to_charx(card: Card) -> bytes:
    v3 = card.to_v3()
    # card.json and the icon's place are the writer's: a file of the same name (a hand-edited
    # library copy) would be a second entry that readers refuse.
    taken = {"card.json", AVATAR_PATH.casefold()}
    files = {path: data for path, data in card.files.items() if path.casefold() not in taken}
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
