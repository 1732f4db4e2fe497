"""Lorebooks: a card's own `character_book`, SillyTavern World Info files and V3 lorebooks,
and which of their entries a conversation activates.

Activation follows the V2/V3 spec and SillyTavern: an entry is on when one of its
keys occurs in the last `scan_depth` messages (and, for a selective entry, when its
secondary keys pass its logic); constant entries are always on; disabled ones never.
With recursive scanning, activated entries' text is scanned too. The book's token
budget keeps the highest-priority entries; the survivors are ordered by insertion
order (lower first). V3's `use_regex` keys are regular expressions, and the
decorators `@@activate`, `@@dont_activate` and `@@depth N` at the start of an
entry's content override the rest.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.cards.errors import MAX_JSON_TEXT, CardError

DEFAULT_SCAN_DEPTH = 4
MAX_RECURSION = 5
LOGIC = {0: "and_any", 1: "not_all", 2: "not_any", 3: "and_all"}  # SillyTavern's selectiveLogic numbers
_REGEX_KEY = re.compile(r"^/(.+)/([a-z]*)$", re.DOTALL)


@dataclass
class LoreEntry:
    uid: str
    keys: list[str]
    content: str
    secondary_keys: list[str] = field(default_factory=list)
    enabled: bool = True
    constant: bool = False
    selective: bool = False
    logic: str = "and_any"
    case_sensitive: bool = False
    insertion_order: int = 100
    priority: int = 10
    position: str = "before_char"
    use_regex: bool = False
    force_on: bool = False  # @@activate
    force_off: bool = False  # @@dont_activate
    depth: int | None = None  # @@depth N: scan this many messages instead of the book's depth
    name: str = ""


@dataclass
class Lorebook:
    name: str
    entries: list[LoreEntry]
    scan_depth: int | None = None
    token_budget: int | None = None
    recursive: bool = False


def _decorators(entry: LoreEntry) -> LoreEntry:
    lines = entry.content.split("\n")
    while lines and lines[0].startswith("@@"):
        word, _, arg = lines.pop(0)[2:].partition(" ")
        if word == "activate":
            entry.force_on = True
        elif word == "dont_activate":
            entry.force_off = True
        elif word == "depth" and arg.strip().isdigit():
            entry.depth = int(arg.strip())
    entry.content = "\n".join(lines)
    return entry


def _strings(value: Any, source: str, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [k.strip() for k in value.split(",") if k.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CardError(source, f"lorebook entry {what} must be a list of text")
    return [v for v in value if v.strip()]


def _int(value: Any, default: int) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def book_from_spec(book: dict[str, Any], source: str) -> Lorebook:
    """A V2 `character_book` or the `data` of a V3 `lorebook_v3`."""
    entries = []
    for i, raw in enumerate(book.get("entries") or []):
        if not isinstance(raw, dict):
            raise CardError(source, f"lorebook entry {i} is not an object")
        ext = raw.get("extensions") if isinstance(raw.get("extensions"), dict) else {}
        content = raw.get("content", "")
        if not isinstance(content, str):
            raise CardError(source, f"lorebook entry {i}: content must be text")
        entries.append(
            _decorators(
                LoreEntry(
                    uid=str(raw.get("id", i)),
                    keys=_strings(raw.get("keys"), source, "keys"),
                    secondary_keys=_strings(raw.get("secondary_keys"), source, "secondary_keys"),
                    content=content,
                    enabled=raw.get("enabled", True) is not False,
                    constant=bool(raw.get("constant")),
                    selective=bool(raw.get("selective")),
                    logic=LOGIC.get(_int(ext.get("selectiveLogic"), 0), "and_any"),
                    case_sensitive=bool(raw.get("case_sensitive")),
                    insertion_order=_int(raw.get("insertion_order"), 100),
                    priority=_int(raw.get("priority"), 10),
                    position="after_char" if raw.get("position") == "after_char" else "before_char",
                    use_regex=bool(raw.get("use_regex")),
                    name=str(raw.get("name") or raw.get("comment") or ""),
                )
            )
        )
    return Lorebook(
        name=str(book.get("name") or ""),
        entries=entries,
        scan_depth=_int(book.get("scan_depth"), 0) or None,
        token_budget=_int(book.get("token_budget"), 0) or None,
        recursive=bool(book.get("recursive_scanning")),
    )


def book_from_world_info(obj: dict[str, Any], source: str, name: str = "") -> Lorebook:
    """SillyTavern's World Info file: `entries` keyed by uid, SillyTavern's own field names."""
    raw_entries = obj.get("entries")
    if not isinstance(raw_entries, dict):
        raise CardError(source, "a World Info file needs an 'entries' object")
    entries = []
    for uid, raw in raw_entries.items():
        if not isinstance(raw, dict):
            raise CardError(source, f"World Info entry {uid} is not an object")
        content = raw.get("content", "")
        if not isinstance(content, str):
            raise CardError(source, f"World Info entry {uid}: content must be text")
        entries.append(
            _decorators(
                LoreEntry(
                    uid=str(raw.get("uid", uid)),
                    keys=_strings(raw.get("key"), source, "key"),
                    secondary_keys=_strings(raw.get("keysecondary"), source, "keysecondary"),
                    content=content,
                    enabled=not raw.get("disable", False),
                    constant=bool(raw.get("constant")),
                    selective=bool(raw.get("selective")),
                    logic=LOGIC.get(_int(raw.get("selectiveLogic"), 0), "and_any"),
                    case_sensitive=bool(raw.get("caseSensitive")),
                    insertion_order=_int(raw.get("order"), 100),
                    priority=_int(raw.get("order"), 100),
                    position="after_char" if raw.get("position") == 1 else "before_char",
                    depth=_int(raw.get("scanDepth"), 0) or None,
                    name=str(raw.get("comment") or ""),
                )
            )
        )
    return Lorebook(name=name or str(obj.get("name") or ""), entries=entries)


def read_lorebook(path: Path) -> Lorebook:
    source = str(path)
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise CardError(source, f"cannot read: {exc.strerror}") from None
    if len(text) > MAX_JSON_TEXT:
        raise CardError(source, f"larger than the {MAX_JSON_TEXT // 2**20} MiB a lorebook may be")
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CardError(source, f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CardError(source, "a lorebook must be a JSON object")
    if obj.get("spec") == "lorebook_v3":
        data = obj.get("data")
        if not isinstance(data, dict):
            raise CardError(source, "a lorebook_v3 needs a 'data' object")
        return book_from_spec(data, source)
    if isinstance(obj.get("entries"), dict):
        return book_from_world_info(obj, source, path.stem)
    if isinstance(obj.get("entries"), list):
        return book_from_spec(obj, source)
    raise CardError(source, "not a lorebook (no entries)")


def _key_hits(key: str, text: str, entry: LoreEntry) -> bool:
    m = _REGEX_KEY.match(key)
    if entry.use_regex or m:
        pattern, flags = (m.group(1), m.group(2)) if m else (key, "")
        options = re.IGNORECASE if ("i" in flags or not entry.case_sensitive) else 0
        try:
            return re.search(pattern, text, options) is not None
        except re.error:
            return False
    if entry.case_sensitive:
        return key in text
    return key.lower() in text.lower()


def _secondary_ok(entry: LoreEntry, text: str) -> bool:
    if not entry.selective or not entry.secondary_keys:
        return True
    hits = [_key_hits(k, text, entry) for k in entry.secondary_keys]
    return {
        "and_any": any(hits),
        "and_all": all(hits),
        "not_any": not any(hits),
        "not_all": not all(hits),
    }[entry.logic]


@dataclass
class Activation:
    entry: LoreEntry
    book: str
    why: str  # constant, decorator, key 'x', recursion


def activate(
    books: Sequence[Lorebook], messages: Sequence[str], *, count_tokens: Callable[[str], int] | None = None
) -> list[Activation]:
    """The entries the last messages switch on, within each book's budget, in insertion order."""
    result: list[Activation] = []
    for book in books:
        depth = book.scan_depth or DEFAULT_SCAN_DEPTH
        active: dict[str, Activation] = {}
        extra = ""
        for _ in range(MAX_RECURSION if book.recursive else 1):
            new = False
            for entry in book.entries:
                if entry.uid in active or not entry.enabled or entry.force_off:
                    continue
                why = None
                if entry.force_on:
                    why = "decorator"
                elif entry.constant:
                    why = "constant"
                else:
                    recent = "\n".join(messages[-(entry.depth or depth) :])
                    for text, label in ((recent, "key"), (extra, "recursion")):
                        hit = next((k for k in entry.keys if text and _key_hits(k, text, entry)), None)
                        if hit is not None and _secondary_ok(entry, recent + "\n" + extra):
                            why = f"key {hit!r}" if label == "key" else f"recursion on {hit!r}"
                            break
                if why:
                    active[entry.uid] = Activation(entry, book.name, why)
                    new = True
            if not new:
                break
            extra = "\n".join(a.entry.content for a in active.values())
        chosen = sorted(active.values(), key=lambda a: -a.entry.priority)
        if book.token_budget and count_tokens is not None:
            kept, used = [], 0
            for a in chosen:
                n = count_tokens(a.entry.content)
                if used + n <= book.token_budget:
                    kept.append(a)
                    used += n
            chosen = kept
        result += sorted(chosen, key=lambda a: a.entry.insertion_order)
    return result
