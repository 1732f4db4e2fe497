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

Where an active entry goes follows SillyTavern's positions: before or after the
character (the usual two), around the Author's Note (only when the note is inserted
that turn), or inside the chat at a depth, as a message of a role.

The same book reaches a chat from several places (a card embeds the World Info file a
user also attaches; a book is attached to the character and to the chat): a book is
known by what it holds (`Lorebook.digest`), and `unique_books` keeps each book, and
each entry (by id and content), once.

A lorebook is a stranger's file, read again for every turn of a chat, so reading it
checks every value once (numbers finite and clamped, text where text goes) and a scan
is bounded: a regular expression key gets `REGEX_TIMEOUT` on a text (and is dropped
for good once it needs more: `(a+)+$` on a line of a's is exponential), and a whole
activation `SCAN_SECONDS`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from app.cards.errors import MAX_JSON_TEXT, MAX_LIST_ITEMS, MAX_NAME, MAX_TEXT_FIELD, CardError
from app.cards.parse import load_json, read_file

log = logging.getLogger(__name__)

DEFAULT_SCAN_DEPTH = 4
MAX_RECURSION = 5
MAX_SCAN_DEPTH = 1000  # messages; SillyTavern's own slider stops at 1000
MAX_ORDER = 10**9  # insertion_order and priority are clamped to ±this
MAX_TOKEN_BUDGET = 10**7
MAX_KEY = 4096  # characters in one key (a regular expression key may be long)
MAX_BOOK_KEYS = 100_000  # keys and secondary keys of all entries of one book
REGEX_TIMEOUT = 0.1  # seconds one regular expression key may search one text
SCAN_SECONDS = 1.0  # one activation, all books; honest books take milliseconds
LOGIC = {0: "and_any", 1: "not_all", 2: "not_any", 3: "and_all"}  # SillyTavern's selectiveLogic numbers
# SillyTavern's World Info positions (5 and 6, around the example dialogue, go before the character).
POSITIONS = {0: "before_char", 1: "after_char", 2: "before_note", 3: "after_note", 4: "at_depth", 5: "before_char"}
POSITIONS[6] = "after_char"
ROLES = {0: "system", 1: "user", 2: "assistant"}  # SillyTavern's role numbers for entries at a depth
DEFAULT_INSERT_DEPTH = 4  # SillyTavern's default for an entry at a depth
MAX_INSERT_DEPTH = 1000
_REGEX_KEY = re.compile(r"^/(.+)/([a-z]*)$", re.DOTALL)
_DEPTH_ARG = re.compile(r"[0-9]{1,9}")
_NUMBER = re.compile(r"[+-]?[0-9]{1,18}(\.[0-9]{0,9})?")


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
    insert_depth: int = DEFAULT_INSERT_DEPTH  # position "at_depth": messages from the end it goes before
    role: str = "system"  # position "at_depth": the role of the message it becomes

    def identity(self) -> tuple[str, str]:
        """An entry is the same entry wherever it comes from when its id and its text are."""
        return (self.uid, self.content)

    def fingerprint(self) -> list[Any]:
        """What the entry does in a prompt (not its cosmetic name, nor `priority`, which
        SillyTavern's World Info files derive from `order` while cards leave it at 10)."""
        return [
            self.uid,
            self.content,
            self.keys,
            self.secondary_keys,
            self.enabled,
            self.constant,
            self.selective,
            self.logic,
            self.case_sensitive,
            self.insertion_order,
            self.position,
            self.use_regex,
            self.force_on,
            self.force_off,
            self.depth,
            self.insert_depth if self.position == "at_depth" else None,
            self.role if self.position == "at_depth" else None,
        ]


@dataclass
class Lorebook:
    name: str
    entries: list[LoreEntry]
    scan_depth: int | None = None
    token_budget: int | None = None
    recursive: bool = False

    @cached_property
    def digest(self) -> str:
        """The book's identity: a SHA-256 of its entries (in id order) and the settings that change a scan.

        A card's embedded book and the World Info file it was made from have the same
        digest, whatever their names and formats.
        """
        entries = sorted((e.fingerprint() for e in self.entries), key=lambda f: (f[0], f[1]))
        body = [entries, self.scan_depth, self.token_budget, self.recursive]
        return hashlib.sha256(json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()


def unique_books(books: Sequence[Lorebook]) -> list[Lorebook]:
    """Each book once (by `digest`), and each entry once (by id and content), the first seen winning.

    A book that only repeats entries of the books before it is left out; one that adds
    entries keeps only those, so an entry never reaches a prompt twice.
    """
    seen_books: set[str] = set()
    seen_entries: set[tuple[str, str]] = set()
    out: list[Lorebook] = []
    for book in books:
        if book.digest in seen_books:
            continue
        seen_books.add(book.digest)
        fresh = [e for e in book.entries if e.identity() not in seen_entries]
        seen_entries.update(e.identity() for e in book.entries)
        if len(fresh) == len(book.entries):
            out.append(book)
        elif fresh:
            out.append(Lorebook(book.name, fresh, book.scan_depth, book.token_budget, book.recursive))
    return out


# -- reading: every value checked once ---------------------------------------------------


def _decorators(entry: LoreEntry) -> LoreEntry:
    if not entry.content.startswith("@@"):
        return entry
    lines = entry.content.split("\n")
    start = 0
    while start < len(lines) and lines[start].startswith("@@"):
        word, _, arg = lines[start][2:].partition(" ")
        start += 1
        if word == "activate":
            entry.force_on = True
        elif word == "dont_activate":
            entry.force_off = True
        elif word == "depth" and _DEPTH_ARG.fullmatch(arg.strip()):
            entry.depth = min(int(arg.strip()), MAX_SCAN_DEPTH)
    if start:
        entry.content = "\n".join(lines[start:])
    return entry


def _keys(value: Any, source: str, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        if value.count(",") >= MAX_LIST_ITEMS:
            raise CardError(source, f"{what} has more than the {MAX_LIST_ITEMS:,} keys allowed")
        items = [k.strip() for k in value.split(",")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise CardError(source, f"{what} must be a list of text")
    if len(items) > MAX_LIST_ITEMS:
        raise CardError(source, f"{what} has {len(items):,} keys, more than the {MAX_LIST_ITEMS:,} allowed")
    for key in items:
        if len(key) > MAX_KEY:
            raise CardError(source, f"{what} has a key of {len(key):,} characters (at most {MAX_KEY:,})")
    return [k for k in items if k.strip()]


def _text(value: Any, source: str, what: str, limit: int = MAX_TEXT_FIELD) -> str:
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise CardError(source, f"{what} must be text, not {_kind(value)}")
    if len(value) > limit:
        raise CardError(source, f"{what} is {len(value):,} characters long (at most {limit:,})")
    return value


def _number(value: Any, source: str, what: str, default: int, low: int, high: int) -> int:
    """A whole number clamped to [low, high]; absent (or a yes/no) is the default."""
    if value is None or isinstance(value, bool):
        return default
    if isinstance(value, str):  # some tools write "100"
        if not value.strip():
            return default
        if not _NUMBER.fullmatch(value.strip()):
            raise CardError(source, f"{what} must be a number, not {value[:40]!r}")
        value = float(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CardError(source, f"{what} must be a finite number, not {value}")
        value = int(max(min(value, float(high)), float(low)))
    if not isinstance(value, int):
        raise CardError(source, f"{what} must be a number, not {_kind(value)}")
    return max(low, min(high, value))


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false"}.get(type(value), type(value).__name__)


def _logic(value: Any, source: str, what: str) -> str:
    return LOGIC.get(_number(value, source, f"{what}: selectiveLogic", 0, -MAX_ORDER, MAX_ORDER), "and_any")


def _wi_position(value: Any) -> str:
    """SillyTavern's position number; anything else (absent, text, out of range) is before the character."""
    if isinstance(value, int) and not isinstance(value, bool):
        return POSITIONS.get(value, "before_char")
    return "before_char"


def _spec_position(value: Any, st_number: Any) -> str:
    """A card's entry: "before_char"/"after_char" as the spec says, unless SillyTavern's own number
    in its extensions puts it around the Author's Note or at a depth."""
    special = _wi_position(st_number)
    if special in ("before_note", "after_note", "at_depth"):
        return special
    return "after_char" if value == "after_char" else "before_char"


def _insert_depth(value: Any, source: str, what: str) -> int:
    return _number(value, source, f"{what}: depth", DEFAULT_INSERT_DEPTH, 0, MAX_INSERT_DEPTH)


def _role(value: Any) -> str:
    """SillyTavern's role number (0 system, 1 user, 2 assistant) or its name; anything else is system."""
    if isinstance(value, int) and not isinstance(value, bool):
        return ROLES.get(value, "system")
    if isinstance(value, str) and value in ROLES.values():
        return value
    return "system"


def _uid(value: Any, source: str, what: str) -> str:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        text = str(value)
        if len(text) <= MAX_NAME:
            return text
    raise CardError(source, f"{what}: its id must be a short text or a number, not {_kind(value)}")


def _entries_count(entries: Any, source: str) -> None:
    if len(entries) > MAX_LIST_ITEMS:
        raise CardError(source, f"the lorebook has {len(entries):,} entries, more than the {MAX_LIST_ITEMS:,} allowed")


def _book(name: Any, entries: list[LoreEntry], source: str, **kw: Any) -> Lorebook:
    total = sum(len(e.keys) + len(e.secondary_keys) for e in entries)
    if total > MAX_BOOK_KEYS:
        raise CardError(source, f"the lorebook has {total:,} keys, more than the {MAX_BOOK_KEYS:,} allowed")
    return Lorebook(name=_text(name, source, "the lorebook's name", MAX_NAME), entries=entries, **kw)


def book_from_spec(book: dict[str, Any], source: str) -> Lorebook:
    """A V2 `character_book` or the `data` of a V3 `lorebook_v3`."""
    if not isinstance(book, dict):
        raise CardError(source, "a lorebook must be an object")
    raw_entries = book.get("entries")
    if raw_entries is None:
        raw_entries = []
    if not isinstance(raw_entries, list):
        raise CardError(source, "a lorebook's entries must be a list")
    _entries_count(raw_entries, source)
    entries = []
    for i, raw in enumerate(raw_entries):
        if not isinstance(raw, dict):
            raise CardError(source, f"lorebook entry {i} is not an object")
        what = f"lorebook entry {i}"
        ext = raw.get("extensions") if isinstance(raw.get("extensions"), dict) else {}
        entries.append(
            _decorators(
                LoreEntry(
                    uid=_uid(i if raw.get("id") is None else raw["id"], source, what),
                    keys=_keys(raw.get("keys"), source, f"{what} keys"),
                    secondary_keys=_keys(raw.get("secondary_keys"), source, f"{what} secondary_keys"),
                    content=_text(raw.get("content"), source, f"{what}: content"),
                    enabled=raw.get("enabled", True) is not False,
                    constant=bool(raw.get("constant")),
                    selective=bool(raw.get("selective")),
                    logic=_logic(ext.get("selectiveLogic"), source, what),
                    case_sensitive=bool(raw.get("case_sensitive")),
                    insertion_order=_number(
                        raw.get("insertion_order"), source, f"{what}: insertion_order", 100, -MAX_ORDER, MAX_ORDER
                    ),
                    priority=_number(raw.get("priority"), source, f"{what}: priority", 10, -MAX_ORDER, MAX_ORDER),
                    position=_spec_position(raw.get("position"), ext.get("position")),
                    use_regex=bool(raw.get("use_regex")),
                    name=_text(raw.get("name") or raw.get("comment"), source, f"{what}: name", MAX_TEXT_FIELD),
                    insert_depth=_insert_depth(ext.get("depth"), source, what),
                    role=_role(ext.get("role") if ext.get("role") is not None else raw.get("role")),
                )
            )
        )
    return _book(
        book.get("name"),
        entries,
        source,
        scan_depth=_number(book.get("scan_depth"), source, "the lorebook's scan_depth", 0, 0, MAX_SCAN_DEPTH) or None,
        token_budget=_number(book.get("token_budget"), source, "the lorebook's token_budget", 0, 0, MAX_TOKEN_BUDGET)
        or None,
        recursive=bool(book.get("recursive_scanning")),
    )


def book_from_world_info(obj: dict[str, Any], source: str, name: str = "") -> Lorebook:
    """SillyTavern's World Info file: `entries` keyed by uid, SillyTavern's own field names."""
    raw_entries = obj.get("entries")
    if not isinstance(raw_entries, dict):
        raise CardError(source, "a World Info file needs an 'entries' object")
    _entries_count(raw_entries, source)
    entries = []
    for uid, raw in raw_entries.items():
        what = f"World Info entry {uid[:40]}"
        if not isinstance(raw, dict):
            raise CardError(source, f"{what} is not an object")
        order = _number(raw.get("order"), source, f"{what}: order", 100, -MAX_ORDER, MAX_ORDER)
        entries.append(
            _decorators(
                LoreEntry(
                    uid=_uid(uid if raw.get("uid") is None else raw["uid"], source, what),
                    keys=_keys(raw.get("key"), source, f"{what} key"),
                    secondary_keys=_keys(raw.get("keysecondary"), source, f"{what} keysecondary"),
                    content=_text(raw.get("content"), source, f"{what}: content"),
                    enabled=not raw.get("disable", False),
                    constant=bool(raw.get("constant")),
                    selective=bool(raw.get("selective")),
                    logic=_logic(raw.get("selectiveLogic"), source, what),
                    case_sensitive=bool(raw.get("caseSensitive")),
                    insertion_order=order,
                    priority=order,
                    position=_wi_position(raw.get("position")),
                    depth=_number(raw.get("scanDepth"), source, f"{what}: scanDepth", 0, 0, MAX_SCAN_DEPTH) or None,
                    name=_text(raw.get("comment"), source, f"{what}: comment", MAX_TEXT_FIELD),
                    insert_depth=_insert_depth(raw.get("depth"), source, what),
                    role=_role(raw.get("role")),
                )
            )
        )
    return _book(name or obj.get("name"), entries, source)


def read_lorebook(path: Path) -> Lorebook:
    source = str(path)
    return lorebook_from_bytes(read_file(path, source, MAX_JSON_TEXT, "a lorebook"), source, path.stem)


def lorebook_from_bytes(data: bytes, source: str, stem: str = "") -> Lorebook:
    """A lorebook file's content (`stem`: the file's name without `.json`, a World Info book's name)."""
    obj = load_json(data, source, "the lorebook")
    if not isinstance(obj, dict):
        raise CardError(source, "a lorebook must be a JSON object")
    if obj.get("spec") == "lorebook_v3":
        data = obj.get("data")
        if not isinstance(data, dict):
            raise CardError(source, "a lorebook_v3 needs a 'data' object")
        return book_from_spec(data, source)
    if isinstance(obj.get("entries"), dict):
        return book_from_world_info(obj, source, stem)
    if isinstance(obj.get("entries"), list):
        return book_from_spec(obj, source)
    raise CardError(source, "not a lorebook (no entries)")


# -- scanning: bounded in time whatever the keys ------------------------------------------


_COMPILED: dict[tuple[str, int], Any] = {}  # pattern, flags → compiled, or None (invalid or too slow)
_COMPILED_MAX = 20_000


def _pattern(pattern: str, flags: int) -> Any:
    import regex

    key = (pattern, flags)
    if key not in _COMPILED:
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.clear()
        try:
            _COMPILED[key] = regex.compile(pattern, flags)
        except (regex.error, ValueError, OverflowError, RecursionError, MemoryError):
            _COMPILED[key] = None  # SillyTavern too treats a broken pattern as no match
    return _COMPILED[key]


class _Text:
    """A text to scan, lower-cased at most once however many keys look at it."""

    def __init__(self, raw: str) -> None:
        self.raw = raw

    @cached_property
    def lower(self) -> str:
        return self.raw.lower()


class _Scan:
    """One activation's texts and clock."""

    def __init__(self, messages: Sequence[str], deadline: float) -> None:
        self.messages = messages
        self.deadline = deadline
        self._recent: dict[int, _Text] = {}
        self.out_of_time = False

    def recent(self, depth: int) -> _Text:
        if depth not in self._recent:
            self._recent[depth] = _Text("\n".join(self.messages[-depth:]))
        return self._recent[depth]

    def late(self) -> bool:
        if not self.out_of_time and time.monotonic() > self.deadline:
            self.out_of_time = True
            log.warning("lorebook scan stopped after %.1f s: entries not reached stay off", SCAN_SECONDS)
        return self.out_of_time

    def key_hits(self, key: str, text: _Text, entry: LoreEntry) -> bool:
        m = _REGEX_KEY.match(key) if key[:1] == "/" else None
        if entry.use_regex or m:
            import regex

            source, letters = (m.group(1), m.group(2)) if m else (key, "")
            flags = regex.IGNORECASE if ("i" in letters or not entry.case_sensitive) else 0
            compiled = _pattern(source, flags)
            if compiled is None:
                return False
            seconds = min(REGEX_TIMEOUT, max(0.001, self.deadline - time.monotonic()))
            try:
                return compiled.search(text.raw, concurrent=True, timeout=seconds) is not None
            except TimeoutError:
                _COMPILED[(source, flags)] = None  # never again: the same text comes back every turn
                log.warning("lorebook key %r took more than %.2f s and is ignored from now on", key[:80], seconds)
                return False
        if entry.case_sensitive:
            return key in text.raw
        return key.lower() in text.lower


def _secondary_ok(scan: _Scan, entry: LoreEntry, text: _Text) -> bool:
    if not entry.selective or not entry.secondary_keys:
        return True
    hits = [scan.key_hits(k, text, entry) for k in entry.secondary_keys]
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
    scan = _Scan(messages, time.monotonic() + SCAN_SECONDS)
    result: list[Activation] = []
    for book in books:
        depth = book.scan_depth or DEFAULT_SCAN_DEPTH
        active: dict[int, Activation] = {}  # by position: two entries may share an id
        extra = _Text("")
        both: dict[int, _Text] = {}
        for _ in range(MAX_RECURSION if book.recursive else 1):
            new = False
            for index, entry in enumerate(book.entries):
                if index in active or not entry.enabled or entry.force_off:
                    continue
                why = None
                if entry.force_on:
                    why = "decorator"
                elif entry.constant:
                    why = "constant"
                elif not scan.late():
                    entry_depth = entry.depth or depth
                    recent = scan.recent(entry_depth)
                    for text, label in ((recent, "key"), (extra, "recursion")):
                        hit = next((k for k in entry.keys if text.raw and scan.key_hits(k, text, entry)), None)
                        if hit is None:
                            continue
                        if entry_depth not in both:
                            both[entry_depth] = _Text(recent.raw + "\n" + extra.raw)
                        if _secondary_ok(scan, entry, both[entry_depth]):
                            why = f"key {hit!r}" if label == "key" else f"recursion on {hit!r}"
                            break
                if why:
                    active[index] = Activation(entry, book.name, why)
                    new = True
            if not new:
                break
            extra = _Text("\n".join(a.entry.content for a in active.values()))
            both.clear()
        chosen = sorted(active.values(), key=lambda a: -a.entry.priority)
        if book.token_budget and count_tokens is not None:
            kept, used = [], 0
            for a in chosen:
                if used >= book.token_budget:
                    break
                n = count_tokens(a.entry.content)
                if used + n <= book.token_budget:
                    kept.append(a)
                    used += n
            chosen = kept
        result += sorted(chosen, key=lambda a: a.entry.insertion_order)
    return result
