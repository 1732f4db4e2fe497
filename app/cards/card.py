"""The normalised character card: V3 `data` fields, with everything else kept as it came.

A card keeps every key it was given, known or not, so writing it back loses nothing
another app put there. Known fields are type-checked, and missing ones get the
spec's defaults.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from app.cards.errors import MAX_LIST_ITEMS, MAX_NAME, MAX_TEXT_FIELD, CardError

STRING_FIELDS = (
    "name",
    "description",
    "personality",
    "scenario",
    "first_mes",
    "mes_example",
    "creator_notes",
    "system_prompt",
    "post_history_instructions",
    "creator",
    "character_version",
)
LIST_FIELDS = ("alternate_greetings", "tags", "group_only_greetings")
V1_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
V3_ONLY = (
    "nickname",
    "creator_notes_multilingual",
    "source",
    "group_only_greetings",
    "creation_date",
    "modification_date",
    "assets",
)
DEFAULT_ASSETS = [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}]


PROMPT_FIELDS = (
    "description",
    "personality",
    "scenario",
    "first_mes",
    "mes_example",
    "system_prompt",
    "post_history_instructions",
)


def _check_text(value: str, source: str, key: str, limit: int) -> None:
    if len(value) > limit:
        raise CardError(source, f"field {key!r} is {len(value):,} characters long, more than the {limit:,} allowed")


def _check_assets(assets: Any, source: str) -> None:
    if not isinstance(assets, list) or not all(isinstance(a, dict) for a in assets):
        raise CardError(source, "field 'assets' must be a list of objects")
    if len(assets) > MAX_LIST_ITEMS:
        raise CardError(source, f"the card lists {len(assets):,} assets, more than the {MAX_LIST_ITEMS:,} allowed")
    for asset in assets:
        for key in ("type", "uri", "name", "ext"):
            if asset.get(key) is not None and not isinstance(asset[key], str):
                raise CardError(source, f"an asset's {key!r} must be text")


def normalise_data(raw: Any, source: str) -> dict[str, Any]:
    """Check the V2/V3 `data` object's known fields and fill the defaults; unknown keys stay.

    Everything the prompt or the library will use is checked here, at import, with the
    card's own lorebook read as a prompt will read it: a card that imports is a card
    every prompt can be built from. `raw` is freshly parsed and becomes the card's: its
    top level is copied, what is nested under it is not (deep-copying millions of
    values from a stranger's 16 MiB of JSON takes longer than parsing them).
    """
    from app.cards.lorebook import book_from_spec

    if not isinstance(raw, dict):
        raise CardError(source, "the card's data must be a JSON object")
    data = dict(raw)
    for key in STRING_FIELDS:
        value = data.get(key)
        if value is None:
            data[key] = ""
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key == "character_version":
            data[key] = str(value)
        elif not isinstance(value, str):
            raise CardError(source, f"field {key!r} must be text, not {type(value).__name__}")
        elif key == "name" or key in PROMPT_FIELDS:
            _check_text(value, source, key, MAX_NAME if key == "name" else MAX_TEXT_FIELD)
    for key in LIST_FIELDS:
        value = data.get(key)
        if value is None:
            data[key] = []
        elif not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CardError(source, f"field {key!r} must be a list of text")
        elif len(value) > MAX_LIST_ITEMS:
            raise CardError(source, f"field {key!r} has {len(value):,} items, more than the {MAX_LIST_ITEMS:,} allowed")
        else:
            for item in value:
                _check_text(item, source, key, MAX_NAME if key == "tags" else MAX_TEXT_FIELD)
    ext = data.get("extensions")
    if ext is None:
        data["extensions"] = {}
    elif not isinstance(ext, dict):
        raise CardError(source, "field 'extensions' must be an object")
    data.setdefault("group_only_greetings", [])
    if data.get("assets") is None:
        data["assets"] = copy.deepcopy(DEFAULT_ASSETS)
    if not data["name"].strip():
        raise CardError(source, "the card has no name")
    if "nickname" in data and data["nickname"] is not None:
        if not isinstance(data["nickname"], str):
            raise CardError(source, "field 'nickname' must be text")
        _check_text(data["nickname"], source, "nickname", MAX_NAME)
    book = data.get("character_book")
    if book is not None:
        if not isinstance(book, dict) or not isinstance(book.get("entries", []), list):
            raise CardError(source, "field 'character_book' must be an object with a list of entries")
        book_from_spec(book, source)
    _check_assets(data["assets"], source)
    return data


@dataclass
class Card:
    data: dict[str, Any]
    spec: str  # what it was read from: chara_card_v3, chara_card_v2, v1, pygmalion, tgwui
    top: dict[str, Any] = field(default_factory=dict)  # unknown top-level keys, kept verbatim
    avatar: bytes | None = None  # the image, as its file's bytes
    files: dict[str, bytes] = field(default_factory=dict)  # other CharX assets, by path in the archive

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def display_name(self) -> str:
        """`{{char}}`: the nickname when the card sets one."""
        return str(self.data.get("nickname") or self.data["name"])

    # The exports copy the top levels they change; nested values are shared with the card
    # (they are only ever dumped), which keeps exporting a large card fast.
    def to_v3(self) -> dict[str, Any]:
        data = dict(self.data)
        data.setdefault("group_only_greetings", [])
        data.setdefault("assets", copy.deepcopy(DEFAULT_ASSETS))
        return {"spec": "chara_card_v3", "spec_version": "3.0", "data": data}

    def to_v2(self) -> dict[str, Any]:
        """V2 JSON as SillyTavern writes it: V1 fields mirrored at the top, other top-level keys kept."""
        data = {k: v for k, v in self.data.items() if k not in V3_ONLY}
        out: dict[str, Any] = dict(self.top)
        out.update({k: data.get(k, "") for k in V1_FIELDS})
        out.update({"spec": "chara_card_v2", "spec_version": "2.0", "data": data})
        return out

    def comparable(self) -> dict[str, Any]:
        """The data with the main icon's location left out: where the avatar lives depends on
        the container (inside a PNG it is the image itself, inside a CharX a file)."""
        data = copy.deepcopy(self.data)
        data["assets"] = [
            {k: v for k, v in a.items() if k != "uri"} if a.get("type") == "icon" and a.get("name") == "main" else a
            for a in data.get("assets", [])
        ]
        return data
