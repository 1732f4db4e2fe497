"""The chat database's schema, as numbered upgrades applied in order (PRAGMA user_version)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable

from app.errors import CatteryError


def _titles_from_first_exchange(conn: sqlite3.Connection) -> None:
    """3: `title_auto`: 1 while a chat's title is Cattery's own (app/chats/titles.py), 0 once it is
    the person's (renamed, or an imported file's name) or a branch's ("… (branch)").

    Chats titled by the date they were started (as Cattery titled every new chat before)
    or "NAME (imported)" are retitled once from their first exchange: a list of dates
    says nothing about what each chat was, and Cattery made those titles, nobody chose
    them. The date is still the chat's `created_at`, shown on the Chats screen. Chats
    without a user message keep their title until they get one. Renamed titles and
    branches ("… (branch)", named after the chat they came from) are left as they are.
    """
    from app.chats.titles import title_from

    conn.execute("ALTER TABLE chats ADD COLUMN title_auto INTEGER NOT NULL DEFAULT 0")
    conn.execute(f"UPDATE chats SET title_auto = 1 WHERE title GLOB '{DATE_TITLE_GLOB}'")
    conn.execute("UPDATE chats SET title_auto = 1 WHERE card_name IS NOT NULL AND title = card_name || ' (imported)'")
    ids = [row[0] for row in conn.execute("SELECT id FROM chats WHERE title_auto = 1")]
    for chat_id in ids:
        rows = conn.execute(
            "SELECT m.role, s.text, s.provenance FROM messages m JOIN swipes s ON s.message_id = m.id "
            "AND s.idx = m.active_swipe WHERE m.chat_id = ? ORDER BY m.position LIMIT ?",
            (chat_id, TITLE_SCAN_MESSAGES),
        )
        title = title_from((role, text or "", _generated(provenance)) for role, text, provenance in rows)
        if title:
            conn.execute("UPDATE chats SET title = ? WHERE id = ?", (title, chat_id))


def _generated(provenance: object) -> bool:
    """Whether a stored alternative was written by the model (its provenance names the turn kind)."""
    try:
        value = json.loads(provenance) if isinstance(provenance, str) else None
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and "kind" in value


# The title Cattery gave every new chat before titles came from the first exchange ("%Y-%m-%d %H:%M").
DATE_TITLE_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]"
TITLE_SCAN_MESSAGES = 64  # the first exchange is at the start of a chat; a longer search finds nothing better

# Each step is an SQL script, or a function for a step SQL alone can't do; both run inside
# the one transaction of `migrate`.
MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
    # 1: chats, messages, swipes (every alternative of a message, with where it came from)
    """
    CREATE TABLE chats (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        card_ref TEXT,
        card_name TEXT,
        user_name TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        extra TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        name TEXT,
        active_swipe INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        extra TEXT NOT NULL DEFAULT '{}',
        UNIQUE (chat_id, position)
    );
    CREATE TABLE swipes (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        text TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'done' CHECK (state IN ('done', 'stopped')),
        created_at REAL NOT NULL,
        provenance TEXT NOT NULL DEFAULT '{}',
        UNIQUE (message_id, idx)
    );
    CREATE INDEX messages_by_chat ON messages (chat_id, position);
    """,
    # 2: what Cattery remembers between runs, and SHA-256 of model files computed once
    """
    CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE file_hashes (
        path TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL
    );
    """,
    # 3: automatic titles (from the first exchange) apart from the person's own
    _titles_from_first_exchange,
    # 4: lorebooks attached to a chat or to a character (World Info in the app); a book is a
    # library name or an absolute path. A chat's go with it; a character's stay for its next card.
    """
    CREATE TABLE chat_lore (
        chat_id INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
        book TEXT NOT NULL,
        added_at REAL NOT NULL,
        PRIMARY KEY (chat_id, book)
    );
    CREATE TABLE card_lore (
        card_ref TEXT NOT NULL,
        book TEXT NOT NULL,
        added_at REAL NOT NULL,
        PRIMARY KEY (card_ref, book)
    );
    """,
    # 5: a thinking model's reasoning block, kept apart from the alternative's text (the answer):
    # shown folded, left out of later prompts unless the chat keeps it (app/prompt/reasoning.py)
    "ALTER TABLE swipes ADD COLUMN reasoning TEXT NOT NULL DEFAULT '';",
]


def _statements(script: str) -> list[str]:
    """A migration script split into statements (`executescript` would commit the open transaction)."""
    out: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip():
        out.append(current.strip())
    return out


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, source: str = "the chat database") -> int:
    """Bring the database up to the newest schema, all steps in one write transaction.

    Several Cattery processes may open a new database at the same moment: each takes
    the write lock (BEGIN IMMEDIATE, waiting up to the busy timeout) and reads the
    version again inside it, so only the first one creates the tables.
    """
    newest = len(MIGRATIONS)
    version = _version(conn)
    if version == newest:  # the usual case: no lock taken
        return newest
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _version(conn)
        if version > newest:
            raise CatteryError(f"{source}: the chat database is schema {version}, newer than this Cattery ({newest})")
        if version < 0:
            raise CatteryError(f"{source}: not a Cattery chats database (schema {version})")
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            if callable(step):
                step(conn)
            else:
                for statement in _statements(step):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return newest
