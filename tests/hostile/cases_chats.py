"""The worst cases of the chats and settings door, for bench/hostile.py and the tests.

Each case builds its hostile input in a fresh temporary folder and pushes it through
the real code path: `import_st_chat` into a real SQLite store, `Settings.load` on a
real file. The ones here are those that used to hang, eat memory, or that sit right
at a bound (the largest input still accepted).
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from app.chats import transfer
from app.chats.store import ChatStore
from app.chats.transfer import import_st_chat
from app.settings import MAX_SETTINGS_FILE, Settings

HEADER = {"user_name": "Anon", "character_name": "Seraphina", "create_date": "2024-01-01@10h00m00s"}


def st_line(i: int, text: str = "", **fields: Any) -> bytes:
    row = {"name": "Anon" if i % 2 else "Seraphina", "is_user": bool(i % 2), "send_date": "x", "mes": text or f"m{i}"}
    row.update(fields)
    return json.dumps(row).encode() + b"\n"


def st_file(folder: Path, lines: Iterable[bytes] | bytes, name: str = "chat.jsonl") -> Path:
    """A SillyTavern chat file: the header, then `lines` (already encoded), written as they come
    so that a big file costs the case no memory of its own."""
    path = folder / name
    with path.open("wb") as f:
        f.write(json.dumps(HEADER).encode() + b"\n")
        if isinstance(lines, bytes):
            f.write(lines)
        else:
            for line in lines:
                f.write(line)
    return path


def _in_temp(build: Callable[[Path], Any]) -> Any:
    with tempfile.TemporaryDirectory(prefix="cattery-hostile-chats-") as tmp:
        return build(Path(tmp))


def _import(folder: Path, path: Path) -> int:
    store = ChatStore(folder / "chats.sqlite3")
    try:
        return import_st_chat(store, path)
    finally:
        store.close()


# -- chat files --------------------------------------------------------------------------


def largest_accepted_chat() -> int:
    """50,000 messages filling the 32 MiB bound: the most an import has to store."""

    def build(folder: Path) -> int:
        per = transfer.MAX_CHAT_FILE // transfer.MAX_MESSAGES - 120
        text = ("The moon is a cat's eye. " * (per // 25 + 1))[:per]
        return _import(folder, st_file(folder, (st_line(i, text) for i in range(transfer.MAX_MESSAGES))))

    return _in_temp(build)


def most_swipes_accepted() -> int:
    """200,000 empty swipes (the bound in all): the most rows one import writes."""

    def build(folder: Path) -> int:
        per = transfer.MAX_SWIPES
        count = transfer.MAX_ALTERNATIVES // per
        return _import(folder, st_file(folder, (st_line(i, "", swipes=[""] * per) for i in range(count))))

    return _in_temp(build)


def most_values_in_a_line() -> int:
    """Just under 500,000 empty objects in one message's `extra` (each counts twice from above,
    its brace and its comma): the most objects one line makes."""

    def build(folder: Path) -> int:
        n = transfer.MAX_LINE_VALUES // 2 - 10
        extra = b'{"x":[' + b"{}," * (n - 1) + b"{}]}"
        line = b'{"name":"A","is_user":false,"mes":"hi","extra":' + extra + b"}\n"
        return _import(folder, st_file(folder, line))

    return _in_temp(build)


def too_many_values_in_a_line() -> int:
    """Four million empty objects in 12 MB: refused from a count of bytes, before one is made."""

    def build(folder: Path) -> int:
        line = b'{"mes":"hi","extra":{"x":[' + b"{}," * 2_500_000 + b"{}]}}\n"
        return _import(folder, st_file(folder, line))

    return _in_temp(build)


def oversized_chat_file() -> int:
    """33 MiB of honest messages: refused when the count passes the bound, not after reading it all."""

    def build(folder: Path) -> int:
        text = "x" * 4000
        lines = (st_line(i, text) for i in range(transfer.MAX_CHAT_FILE // 4000 + 400))
        return _import(folder, st_file(folder, lines))

    return _in_temp(build)


def newline_flood() -> int:
    """30 MB of empty lines: 30 million lines, refused by the line count."""
    return _in_temp(lambda folder: _import(folder, st_file(folder, (b"\n" * 1_000_000 for _ in range(30)))))


def deep_message() -> int:
    """A message nested 200,000 levels deep."""
    return _in_temp(
        lambda folder: _import(folder, st_file(folder, b'{"mes":"a","extra":' + b"[" * 200_000 + b"]" * 200_000 + b"}"))
    )


def bad_name_at_the_end() -> int:
    """10,000 good messages, then one whose `name` is 10**30: the whole import is refused."""

    def build(folder: Path) -> int:
        lines = [*(st_line(i, "hello") for i in range(10_000)), st_line(10_000, "x", name=10**30)]
        return _import(folder, st_file(folder, lines))

    return _in_temp(build)


def lone_surrogate_at_the_end() -> int:
    """Half an emoji (a lone surrogate) in the last of 10,000 messages: mended to U+FFFD, stored."""

    def build(folder: Path) -> int:
        lines = [st_line(i, "hello") for i in range(10_000)] + [b'{"mes": "bad \\ud800 text"}\n']
        return _import(folder, st_file(folder, lines))

    return _in_temp(build)


# -- the database --------------------------------------------------------------------------


def database_held_by_another() -> int:
    """Another connection holds the write lock; the store waits 1 s (its busy timeout), then says so."""

    def build(folder: Path) -> int:
        db = folder / "chats.sqlite3"
        ChatStore(db).close()
        other = sqlite3.connect(db, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            store = ChatStore(db, busy_timeout=1.0)
            try:
                return store.create_chat("blocked")
            finally:
                store.close()
        finally:
            other.execute("ROLLBACK")
            other.close()

    return _in_temp(build)


def damaged_database() -> int:
    """A chats file that is 1 MB of noise (not SQLite)."""

    def build(folder: Path) -> int:
        db = folder / "chats.sqlite3"
        db.write_bytes(bytes(range(256)) * 4096)
        store = ChatStore(db)
        try:
            return len(store.list_chats())
        finally:
            store.close()

    return _in_temp(build)


# -- settings ------------------------------------------------------------------------------


def _settings(folder: Path, body: bytes) -> Settings:
    path = folder / "settings.toml"
    path.write_bytes(body)
    return Settings.load(path)


def settings_full_of_unknown_keys() -> int:
    """A settings file at its 1 MiB bound, 80,000 unknown keys: parsed, warned in 21 lines."""

    def build(folder: Path) -> int:
        body = b"".join(b"k%d = %d\n" % (i, i) for i in range(80_000))[:MAX_SETTINGS_FILE]
        body = body[: body.rindex(b"\n") + 1]
        return len(_settings(folder, body).warnings)

    return _in_temp(build)


def settings_many_model_tables() -> int:
    """20,000 per-model tables of bad values: each checked, each warning counted."""

    def build(folder: Path) -> int:
        body = b"[model_settings]\n" + b"".join(
            b'"m%d.gguf" = {ctx = -1, gpu_layers = "x"}\n' % i for i in range(20_000)
        )
        return len(_settings(folder, body).warnings)

    return _in_temp(build)


def settings_deep() -> int:
    return _in_temp(lambda folder: _settings(folder, b"a = " + b"[" * 100_000 + b"]" * 100_000))


def settings_oversized() -> int:
    """A 2 GiB settings file (sparse): refused from its size, never read."""

    def build(folder: Path) -> int:
        path = folder / "settings.toml"
        with path.open("wb") as f:
            f.truncate(2 << 30)
        return len(Settings.load(path).warnings)

    return _in_temp(build)


WORST_CASES: list[tuple[str, Callable[[], object]]] = [
    ("chat file: 50,000 messages at the 32 MiB bound", largest_accepted_chat),
    ("chat file: 200,000 swipes (the bound)", most_swipes_accepted),
    ("chat file: ~500,000 empty objects in one line", most_values_in_a_line),
    ("chat file: 2,500,000 empty objects in one line", too_many_values_in_a_line),
    ("chat file: over 32 MiB", oversized_chat_file),
    ("chat file: 30,000,000 empty lines", newline_flood),
    ("chat file: a message nested 200,000 deep", deep_message),
    ("chat file: name 10**30 after 10,000 messages", bad_name_at_the_end),
    ("chat file: lone surrogate after 10,000 messages (mended)", lone_surrogate_at_the_end),
    ("chats db: write lock held by another (1 s timeout)", database_held_by_another),
    ("chats db: 1 MB of noise", damaged_database),
    ("settings: 1 MiB of unknown keys", settings_full_of_unknown_keys),
    ("settings: 20,000 model tables of bad values", settings_many_model_tables),
    ("settings: array nested 100,000 deep", settings_deep),
    ("settings: 2 GiB file", settings_oversized),
]
