"""The chat database's schema, as numbered upgrades applied in order (PRAGMA user_version)."""

from __future__ import annotations

import sqlite3

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


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database up to the newest schema; each step commits with its version number."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise sqlite3.DatabaseError(
            f"the chat database is schema {version}, newer than this Cattery ({len(MIGRATIONS)})"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    return len(MIGRATIONS)
