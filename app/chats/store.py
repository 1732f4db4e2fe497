"""The chat store: every finished or stopped message is committed the moment it exists.

SQLite in WAL mode, one transaction per change, so a crash or a kill loses at most
the reply being generated, never a message already shown as finished.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.chats.schema import migrate
from app.errors import CatteryError


@dataclass
class Swipe:
    id: int
    idx: int
    text: str
    state: str
    provenance: dict[str, Any]


@dataclass
class StoredMessage:
    id: int
    position: int
    role: str
    name: str | None
    active: int
    swipes: list[Swipe] = field(default_factory=list)
    created_at: float = 0.0

    @property
    def text(self) -> str:
        return self.swipes[self.active].text if self.swipes else ""

    @property
    def state(self) -> str:
        return self.swipes[self.active].state if self.swipes else "done"


@dataclass
class ChatSummary:
    id: int
    title: str
    card_ref: str | None
    card_name: str | None
    updated_at: float
    messages: int
    last_message: str


class ChatStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            migrate(self.conn)
        except sqlite3.DatabaseError as exc:
            raise CatteryError(f"{path}: the chat database cannot be opened: {exc}") from None

    def close(self) -> None:
        self.conn.close()

    def _tx(self) -> Any:
        return _Transaction(self.conn)

    # -- chats --------------------------------------------------------------------

    def create_chat(
        self, title: str, card_ref: str | None = None, card_name: str | None = None, user_name: str | None = None
    ) -> int:
        now = time.time()
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO chats (title, card_ref, card_name, user_name, created_at, updated_at) "
                "VALUES (?,?,?,?,?,?)",
                (title, card_ref, card_name, user_name, now, now),
            )
            return int(cur.lastrowid or 0)

    def chat(self, chat_id: int) -> dict[str, Any]:
        row = self.conn.execute(
            "SELECT id, title, card_ref, card_name, user_name, created_at, updated_at FROM chats WHERE id = ?",
            (chat_id,),
        ).fetchone()
        if row is None:
            raise CatteryError(f"no chat with id {chat_id}")
        keys = ("id", "title", "card_ref", "card_name", "user_name", "created_at", "updated_at")
        return dict(zip(keys, row, strict=True))

    def list_chats(self, card_ref: str | None = None) -> list[ChatSummary]:
        query = """
            SELECT c.id, c.title, c.card_ref, c.card_name, c.updated_at,
                   (SELECT COUNT(*) FROM messages m WHERE m.chat_id = c.id),
                   (SELECT s.text FROM messages m JOIN swipes s ON s.message_id = m.id AND s.idx = m.active_swipe
                    WHERE m.chat_id = c.id ORDER BY m.position DESC LIMIT 1)
            FROM chats c {where} ORDER BY c.updated_at DESC, c.id DESC"""
        rows = (
            self.conn.execute(query.format(where="WHERE c.card_ref = ?"), (card_ref,))
            if card_ref
            else self.conn.execute(query.format(where=""))
        )
        return [ChatSummary(r[0], r[1], r[2], r[3], r[4], r[5], r[6] or "") for r in rows]

    def rename_chat(self, chat_id: int, title: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE chats SET title = ?, updated_at = ? WHERE id = ?", (title, time.time(), chat_id))

    def delete_chat(self, chat_id: int) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM chats WHERE id = ?", (chat_id,))

    # -- messages -----------------------------------------------------------------

    def messages(self, chat_id: int) -> list[StoredMessage]:
        out: dict[int, StoredMessage] = {}
        for r in self.conn.execute(
            "SELECT id, position, role, name, active_swipe, created_at FROM messages WHERE chat_id = ? "
            "ORDER BY position",
            (chat_id,),
        ):
            out[r[0]] = StoredMessage(r[0], r[1], r[2], r[3], r[4], created_at=r[5])
        for r in self.conn.execute(
            "SELECT s.id, s.message_id, s.idx, s.text, s.state, s.provenance FROM swipes s "
            "JOIN messages m ON m.id = s.message_id WHERE m.chat_id = ? ORDER BY s.message_id, s.idx",
            (chat_id,),
        ):
            out[r[1]].swipes.append(Swipe(r[0], r[2], r[3], r[4], json.loads(r[5])))
        return list(out.values())

    def add_message(
        self,
        chat_id: int,
        role: str,
        text: str,
        *,
        name: str | None = None,
        state: str = "done",
        provenance: dict[str, Any] | None = None,
    ) -> int:
        now = time.time()
        with self._tx() as c:
            position = c.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM messages WHERE chat_id = ?", (chat_id,)
            ).fetchone()[0]
            cur = c.execute(
                "INSERT INTO messages (chat_id, position, role, name, active_swipe, created_at) VALUES (?,?,?,?,0,?)",
                (chat_id, position, role, name, now),
            )
            message_id = int(cur.lastrowid or 0)
            c.execute(
                "INSERT INTO swipes (message_id, idx, text, state, created_at, provenance) VALUES (?,0,?,?,?,?)",
                (message_id, text, state, now, json.dumps(provenance or {})),
            )
            c.execute("UPDATE chats SET updated_at = ? WHERE id = ?", (now, chat_id))
            return message_id

    def add_swipe(
        self, message_id: int, text: str, *, state: str = "done", provenance: dict[str, Any] | None = None
    ) -> int:
        """A new alternative for a message (a regenerated reply), made the active one."""
        now = time.time()
        with self._tx() as c:
            idx = c.execute(
                "SELECT COALESCE(MAX(idx), -1) + 1 FROM swipes WHERE message_id = ?", (message_id,)
            ).fetchone()[0]
            c.execute(
                "INSERT INTO swipes (message_id, idx, text, state, created_at, provenance) VALUES (?,?,?,?,?,?)",
                (message_id, idx, text, state, now, json.dumps(provenance or {})),
            )
            c.execute("UPDATE messages SET active_swipe = ? WHERE id = ?", (idx, message_id))
            self._touch(c, message_id, now)
            return int(idx)

    def select_swipe(self, message_id: int, idx: int) -> None:
        with self._tx() as c:
            n = c.execute("SELECT COUNT(*) FROM swipes WHERE message_id = ?", (message_id,)).fetchone()[0]
            if not 0 <= idx < n:
                raise CatteryError(f"message {message_id} has {n} alternatives, not {idx + 1}")
            c.execute("UPDATE messages SET active_swipe = ? WHERE id = ?", (idx, message_id))
            self._touch(c, message_id, time.time())

    def edit_message(self, message_id: int, text: str) -> None:
        """Change the text of the message's active alternative."""
        with self._tx() as c:
            c.execute(
                "UPDATE swipes SET text = ? WHERE message_id = ? AND idx = "
                "(SELECT active_swipe FROM messages WHERE id = ?)",
                (text, message_id, message_id),
            )
            self._touch(c, message_id, time.time())

    def delete_message(self, message_id: int, *, and_after: bool = False) -> None:
        with self._tx() as c:
            row = c.execute("SELECT chat_id, position FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                return
            chat_id, position = row
            if and_after:
                c.execute("DELETE FROM messages WHERE chat_id = ? AND position >= ?", (chat_id, position))
            else:
                c.execute("DELETE FROM messages WHERE id = ?", (message_id,))
                c.execute(
                    "UPDATE messages SET position = -(position - 1) WHERE chat_id = ? AND position > ?",
                    (chat_id, position),
                )
                c.execute("UPDATE messages SET position = -position WHERE chat_id = ? AND position < 0", (chat_id,))
            c.execute("UPDATE chats SET updated_at = ? WHERE id = ?", (time.time(), chat_id))

    def branch(self, chat_id: int, upto_message_id: int, title: str | None = None) -> int:
        """A new chat with copies of the messages up to and including `upto_message_id`, swipes and all."""
        info = self.chat(chat_id)
        keep = [m for m in self.messages(chat_id) if m.position <= self._position(upto_message_id)]
        now = time.time()
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO chats (title, card_ref, card_name, user_name, created_at, updated_at, extra) "
                "VALUES (?,?,?,?,?,?,?)",
                (
                    title or f"{info['title']} (branch)",
                    info["card_ref"],
                    info["card_name"],
                    info["user_name"],
                    now,
                    now,
                    json.dumps({"branched_from": chat_id}),
                ),
            )
            new_id = int(cur.lastrowid or 0)
            for m in keep:
                mid = c.execute(
                    "INSERT INTO messages (chat_id, position, role, name, active_swipe, created_at) "
                    "VALUES (?,?,?,?,?,?)",
                    (new_id, m.position, m.role, m.name, m.active, m.created_at),
                ).lastrowid
                for s in m.swipes:
                    c.execute(
                        "INSERT INTO swipes (message_id, idx, text, state, created_at, provenance) "
                        "VALUES (?,?,?,?,?,?)",
                        (mid, s.idx, s.text, s.state, now, json.dumps(s.provenance)),
                    )
        return new_id

    def _position(self, message_id: int) -> int:
        row = self.conn.execute("SELECT position FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise CatteryError(f"no message with id {message_id}")
        return int(row[0])

    @staticmethod
    def _touch(c: sqlite3.Connection, message_id: int, now: float) -> None:
        c.execute(
            "UPDATE chats SET updated_at = ? WHERE id = (SELECT chat_id FROM messages WHERE id = ?)", (now, message_id)
        )

    # -- state and file hashes ------------------------------------------------------

    def get_state(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_state(self, key: str, value: str) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
                (key, value, value),
            )

    def file_sha256(self, path: Path) -> str:
        """SHA-256 of a model file, computed once per (path, size, mtime)."""
        st = path.stat()
        key = str(path.resolve())
        row = self.conn.execute("SELECT size, mtime_ns, sha256 FROM file_hashes WHERE path = ?", (key,)).fetchone()
        if row and row[0] == st.st_size and row[1] == st.st_mtime_ns:
            return str(row[2])
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, sha256) VALUES (?,?,?,?)",
                (key, st.st_size, st.st_mtime_ns, digest),
            )
        return digest


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
