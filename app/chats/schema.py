"""The chat database's schema, as numbered upgrades applied in order (PRAGMA user_version)."""

from __future__ import annotations

import contextlib
import sqlite3

from app.errors import CatteryError

MIGRATIONS: list[str] = [
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
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return newest
