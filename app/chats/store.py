"""The chat store: every finished or stopped message is committed the moment it exists.

SQLite in WAL mode, one transaction per change, so a crash or a kill loses at most
the reply being generated, never a message already shown as finished. One
connection is shared by the app's threads (the UI, the generation worker that
commits a reply the moment it ends, the model hasher); a lock keeps each
transaction whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.chats.dberrors import is_busy, on_read_only_filesystem, sqlite_errors, translate
from app.chats.schema import migrate
from app.chats.titles import clean_title
from app.errors import CatteryError, disk_error


@dataclass
class Swipe:
    id: int
    idx: int
    text: str
    state: str
    provenance: dict[str, Any]
    reasoning: str = ""  # a thinking model's reasoning block, apart from the answer (`text`)


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

    @property
    def reasoning(self) -> str:
        return self.swipes[self.active].reasoning if self.swipes else ""


@dataclass
class ChatSummary:
    id: int
    title: str
    card_ref: str | None
    card_name: str | None
    updated_at: float
    messages: int
    last_message: str


@dataclass
class NewMessage:
    """A message to store with all its alternatives at once (an imported chat's).

    The provenances are JSON text already: an import holds a whole file's messages in
    memory before it stores them, and text takes a fraction of the room of the objects.
    """

    role: str
    swipes: list[str]
    name: str | None = None
    active: int = 0
    provenance: str = "{}"  # of the first alternative
    swipe_provenance: str = "{}"  # of the others
    reasoning: list[str] = field(default_factory=list)  # per alternative, where the file kept it


# Seconds to wait for another process's write transaction before saying the database is busy.
BUSY_TIMEOUT = 10.0


class ChatStore:
    """The chat database. Every failure that is not a bug is a one-line `CatteryError`
    (busy, full, read-only, damaged: app/chats/dberrors.py), with the transaction rolled back."""

    def __init__(self, path: Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = path
        self.lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, "keep the chats") from None
        with sqlite_errors(path):
            try:
                self.conn = _open(path, busy_timeout)
            except sqlite3.Error:
                # On a read-only filesystem SQLite cannot make the WAL's shared-memory file, so
                # even reading fails; nobody can change the file there, so it is read as immutable:
                # the chats can still be listed and exported, and a change says "read-only".
                if not (on_read_only_filesystem(path.parent) and path.is_file()):
                    raise
                self.conn = _open(path, busy_timeout, read_only=True)

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def _tx(self) -> Any:
        return _Transaction(self.conn, self.lock, self.path)

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self.lock, sqlite_errors(self.path):
            return self.conn.execute(sql, params).fetchall()

    # -- chats --------------------------------------------------------------------

    def create_chat(
        self,
        title: str,
        card_ref: str | None = None,
        card_name: str | None = None,
        user_name: str | None = None,
        extra: dict[str, Any] | None = None,
        *,
        auto_title: bool = False,
    ) -> int:
        """A new chat; `auto_title`: Cattery's own title, replaced by one from the first exchange."""
        now = time.time()
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO chats (title, card_ref, card_name, user_name, created_at, updated_at, extra, title_auto) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (title, card_ref, card_name, user_name, now, now, json.dumps(extra or {}), int(auto_title)),
            )
            return int(cur.lastrowid or 0)

    def chat(self, chat_id: int) -> dict[str, Any]:
        rows = self._read(
            "SELECT id, title, card_ref, card_name, user_name, created_at, updated_at, extra, title_auto "
            "FROM chats WHERE id = ?",
            (chat_id,),
        )
        if not rows:
            raise CatteryError(f"no chat with id {chat_id}")
        keys = ("id", "title", "card_ref", "card_name", "user_name", "created_at", "updated_at", "extra", "title_auto")
        out = dict(zip(keys, rows[0], strict=True))
        out["extra"] = _json_dict(out["extra"])
        out["title_auto"] = bool(out["title_auto"])
        return out

    def data_version(self) -> int:
        """A number that changes when another connection (another process) commits, and not for ours.

        The app compares it every few seconds to see chats made or changed by the command
        line beside it, without reading any table.
        """
        return int(self._read("PRAGMA data_version")[0][0])

    def has_chat(self, chat_id: int) -> bool:
        return bool(self._read("SELECT 1 FROM chats WHERE id = ?", (chat_id,)))

    def update_chat_extra(self, chat_id: int, **values: Any) -> None:
        """Merge keys into the chat's own state (window position, draft, macro seed, …).

        Not a change to the conversation: `updated_at` stays, so the chat list keeps its order.
        """
        with self._tx() as c:
            row = c.execute("SELECT extra FROM chats WHERE id = ?", (chat_id,)).fetchone()
            if row is None:
                return
            extra = {**_json_dict(row[0]), **values}
            c.execute("UPDATE chats SET extra = ? WHERE id = ?", (json.dumps(extra), chat_id))

    def latest_chat(self, card_ref: str | None) -> int | None:
        """The most recently changed chat with this character (None: chats without one)."""
        rows = self._read(
            "SELECT id FROM chats WHERE card_ref IS ? ORDER BY updated_at DESC, id DESC LIMIT 1", (card_ref,)
        )
        return int(rows[0][0]) if rows else None

    def list_chats(self, card_ref: str | None = None) -> list[ChatSummary]:
        query = """
            SELECT c.id, c.title, c.card_ref, c.card_name, c.updated_at,
                   (SELECT COUNT(*) FROM messages m WHERE m.chat_id = c.id),
                   (SELECT s.text FROM messages m JOIN swipes s ON s.message_id = m.id AND s.idx = m.active_swipe
                    WHERE m.chat_id = c.id ORDER BY m.position DESC LIMIT 1)
            FROM chats c {where} ORDER BY c.updated_at DESC, c.id DESC"""
        rows = (
            self._read(query.format(where="WHERE c.card_ref = ?"), (card_ref,))
            if card_ref
            else self._read(query.format(where=""))
        )
        return [ChatSummary(r[0], r[1], r[2], r[3], r[4], r[5], r[6] or "") for r in rows]

    def rename_chat(self, chat_id: int, title: str) -> str:
        """The person's own title (one line, bounded: app/chats/titles.py), never replaced automatically."""
        title = clean_title(title)
        with self._tx() as c:
            c.execute(
                "UPDATE chats SET title = ?, title_auto = 0, updated_at = ? WHERE id = ?", (title, time.time(), chat_id)
            )
        return title

    def set_auto_title(self, chat_id: int, title: str) -> bool:
        """Cattery's title from the first exchange, unless the person renamed the chat; whether it changed.

        Not a change to the conversation: `updated_at` stays, as for `update_chat_extra`.
        """
        with self._tx() as c:
            cur = c.execute(
                "UPDATE chats SET title = ? WHERE id = ? AND title_auto = 1 AND title IS NOT ?", (title, chat_id, title)
            )
            return cur.rowcount > 0

    def set_card_ref(self, chat_id: int, card_ref: str | None) -> None:
        with self._tx() as c:
            c.execute("UPDATE chats SET card_ref = ? WHERE id = ?", (card_ref, chat_id))

    def delete_chat(self, chat_id: int) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM chats WHERE id = ?", (chat_id,))

    # -- messages -----------------------------------------------------------------

    def messages(self, chat_id: int) -> list[StoredMessage]:
        out: dict[int, StoredMessage] = {}
        with self.lock, sqlite_errors(self.path):
            for r in self.conn.execute(
                "SELECT id, position, role, name, active_swipe, created_at FROM messages WHERE chat_id = ? "
                "ORDER BY position",
                (chat_id,),
            ):
                out[r[0]] = StoredMessage(r[0], r[1], r[2], r[3], r[4], created_at=r[5])
            for r in self.conn.execute(
                "SELECT s.id, s.message_id, s.idx, s.text, s.state, s.provenance, s.reasoning FROM swipes s "
                "JOIN messages m ON m.id = s.message_id WHERE m.chat_id = ? ORDER BY s.message_id, s.idx",
                (chat_id,),
            ):
                out[r[1]].swipes.append(Swipe(r[0], r[2], r[3], r[4], _json_dict(r[5]), r[6] or ""))
        for m in out.values():  # a row edited by hand or by another tool: never an index out of range
            if not 0 <= m.active < len(m.swipes):
                m.active = max(0, len(m.swipes) - 1)
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
        alternatives: list[str] | None = None,
        reasoning: str = "",
    ) -> int:
        """Append a message; `alternatives` are more swipes after `text` (a card's other greetings)."""
        now = time.time()
        with self._tx() as c:
            if c.execute("SELECT 1 FROM chats WHERE id = ?", (chat_id,)).fetchone() is None:
                raise CatteryError(f"chat {chat_id} no longer exists (deleted elsewhere); the message was not saved")
            position = c.execute(
                "SELECT COALESCE(MAX(position), -1) + 1 FROM messages WHERE chat_id = ?", (chat_id,)
            ).fetchone()[0]
            cur = c.execute(
                "INSERT INTO messages (chat_id, position, role, name, active_swipe, created_at) VALUES (?,?,?,?,0,?)",
                (chat_id, position, role, name, now),
            )
            message_id = int(cur.lastrowid or 0)
            c.execute(
                "INSERT INTO swipes (message_id, idx, text, state, created_at, provenance, reasoning) "
                "VALUES (?,0,?,?,?,?,?)",
                (message_id, text, state, now, json.dumps(provenance or {}), reasoning),
            )
            for idx, alt in enumerate(alternatives or [], start=1):
                c.execute(
                    "INSERT INTO swipes (message_id, idx, text, state, created_at, provenance) VALUES (?,?,?,?,?,?)",
                    (message_id, idx, alt, "done", now, json.dumps(provenance or {})),
                )
            c.execute("UPDATE chats SET updated_at = ? WHERE id = ?", (now, chat_id))
            return message_id

    def add_swipe(
        self,
        message_id: int,
        text: str,
        *,
        state: str = "done",
        provenance: dict[str, Any] | None = None,
        reasoning: str = "",
    ) -> int:
        """A new alternative for a message (a regenerated reply), made the active one."""
        now = time.time()
        with self._tx() as c:
            if c.execute("SELECT 1 FROM messages WHERE id = ?", (message_id,)).fetchone() is None:
                raise CatteryError("that message no longer exists (deleted elsewhere); the reply was not saved")
            idx = c.execute(
                "SELECT COALESCE(MAX(idx), -1) + 1 FROM swipes WHERE message_id = ?", (message_id,)
            ).fetchone()[0]
            c.execute(
                "INSERT INTO swipes (message_id, idx, text, state, created_at, provenance, reasoning) "
                "VALUES (?,?,?,?,?,?,?)",
                (message_id, idx, text, state, now, json.dumps(provenance or {}), reasoning),
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

    def delete_swipe(self, message_id: int, idx: int) -> int:
        """Delete one alternative of a message; the one shown after it (the next, else the one before).

        A message keeps at least one alternative: its last is deleted with the message.
        """
        with self._tx() as c:
            row = c.execute("SELECT active_swipe FROM messages WHERE id = ?", (message_id,)).fetchone()
            n = c.execute("SELECT COUNT(*) FROM swipes WHERE message_id = ?", (message_id,)).fetchone()[0]
            if row is None or not 0 <= idx < n:
                raise CatteryError(f"message {message_id} has {n} alternatives, not {idx + 1}")
            if n == 1:
                raise CatteryError("a message's only alternative is deleted with the message")
            c.execute("DELETE FROM swipes WHERE message_id = ? AND idx = ?", (message_id, idx))
            # (message_id, idx) is unique: renumber through negative values, as positions are.
            c.execute("UPDATE swipes SET idx = -(idx - 1) WHERE message_id = ? AND idx > ?", (message_id, idx))
            c.execute("UPDATE swipes SET idx = -idx WHERE message_id = ? AND idx < 0", (message_id,))
            active = row[0]
            shown = active - 1 if active > idx else min(active, n - 2)
            c.execute("UPDATE messages SET active_swipe = ? WHERE id = ?", (shown, message_id))
            self._touch(c, message_id, time.time())
            return int(shown)

    def update_swipe(
        self,
        message_id: int,
        text: str,
        *,
        state: str | None = None,
        provenance: dict[str, Any] | None = None,
        reasoning: str | None = None,
    ) -> None:
        """Replace the active alternative's text (and state, provenance, reasoning): a continued reply."""
        with self._tx() as c:
            sets, params = ["text = ?"], [text]
            if reasoning is not None:
                sets.append("reasoning = ?")
                params.append(reasoning)
            if state is not None:
                sets.append("state = ?")
                params.append(state)
            if provenance is not None:
                sets.append("provenance = ?")
                params.append(json.dumps(provenance))
            c.execute(
                f"UPDATE swipes SET {', '.join(sets)} WHERE message_id = ? AND idx = "
                "(SELECT active_swipe FROM messages WHERE id = ?)",
                (*params, message_id, message_id),
            )
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
        kept = ("chat_seed", "greeting", "author_note", "system_preset", "thinking")  # how the chat is set up
        extra = {k: v for k, v in info["extra"].items() if k in kept}
        extra["branched_from"] = chat_id
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
                    json.dumps(extra),
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
                        "INSERT INTO swipes (message_id, idx, text, state, created_at, provenance, reasoning) "
                        "VALUES (?,?,?,?,?,?,?)",
                        (mid, s.idx, s.text, s.state, now, json.dumps(s.provenance), s.reasoning),
                    )
            c.execute(  # a branch keeps the chat's lorebooks, as it keeps its Author's Note
                "INSERT INTO chat_lore (chat_id, book, added_at) SELECT ?, book, added_at FROM chat_lore "
                "WHERE chat_id = ?",
                (new_id, chat_id),
            )
        return new_id

    def insert_chat(
        self,
        title: str,
        messages: list[NewMessage],
        *,
        card_ref: str | None = None,
        card_name: str | None = None,
        user_name: str | None = None,
        auto_title: bool = False,
    ) -> int:
        """A whole chat in one transaction: all of it is stored, or (on any failure) none of it."""
        now = time.time()
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO chats (title, card_ref, card_name, user_name, created_at, updated_at, extra, title_auto) "
                "VALUES (?,?,?,?,?,?,'{}',?)",
                (title, card_ref, card_name, user_name, now, now, int(auto_title)),
            )
            chat_id = int(cur.lastrowid or 0)
            for position, m in enumerate(messages):
                mid = c.execute(
                    "INSERT INTO messages (chat_id, position, role, name, active_swipe, created_at) "
                    "VALUES (?,?,?,?,?,?)",
                    (chat_id, position, m.role, m.name, m.active, now),
                ).lastrowid
                c.executemany(
                    "INSERT INTO swipes (message_id, idx, text, state, created_at, provenance, reasoning) "
                    "VALUES (?,?,?,'done',?,?,?)",
                    (
                        (
                            mid,
                            idx,
                            text,
                            now,
                            m.provenance if idx == 0 else m.swipe_provenance,
                            m.reasoning[idx] if idx < len(m.reasoning) else "",
                        )
                        for idx, text in enumerate(m.swipes)
                    ),
                )
            return chat_id

    def _position(self, message_id: int) -> int:
        rows = self._read("SELECT position FROM messages WHERE id = ?", (message_id,))
        if not rows:
            raise CatteryError(f"no message with id {message_id}")
        return int(rows[0][0])

    @staticmethod
    def _touch(c: sqlite3.Connection, message_id: int, now: float) -> None:
        c.execute(
            "UPDATE chats SET updated_at = ? WHERE id = (SELECT chat_id FROM messages WHERE id = ?)", (now, message_id)
        )

    # -- lorebooks attached to a chat or a character ---------------------------------

    def chat_lorebooks(self, chat_id: int) -> list[str]:
        rows = self._read("SELECT book FROM chat_lore WHERE chat_id = ? ORDER BY added_at, book", (chat_id,))
        return [str(r[0]) for r in rows]

    def card_lorebooks(self, card_ref: str) -> list[str]:
        rows = self._read("SELECT book FROM card_lore WHERE card_ref = ? ORDER BY added_at, book", (card_ref,))
        return [str(r[0]) for r in rows]

    def attach_lorebook(self, book: str, *, chat_id: int | None = None, card_ref: str | None = None) -> None:
        """Attach a book (a library name or an absolute path) to a chat or to a character; again is a no-op."""
        with self._tx() as c:
            if chat_id is not None:
                c.execute(
                    "INSERT OR IGNORE INTO chat_lore (chat_id, book, added_at) VALUES (?,?,?)",
                    (chat_id, book, time.time()),
                )
            if card_ref is not None:
                c.execute(
                    "INSERT OR IGNORE INTO card_lore (card_ref, book, added_at) VALUES (?,?,?)",
                    (card_ref, book, time.time()),
                )

    def detach_lorebook(self, book: str, *, chat_id: int | None = None, card_ref: str | None = None) -> None:
        with self._tx() as c:
            if chat_id is not None:
                c.execute("DELETE FROM chat_lore WHERE chat_id = ? AND book = ?", (chat_id, book))
            if card_ref is not None:
                c.execute("DELETE FROM card_lore WHERE card_ref = ? AND book = ?", (card_ref, book))

    def forget_lorebook(self, book: str) -> None:
        """Detach a book from every chat and character (it left the library)."""
        with self._tx() as c:
            c.execute("DELETE FROM chat_lore WHERE book = ?", (book,))
            c.execute("DELETE FROM card_lore WHERE book = ?", (book,))

    def lorebook_users(self, book: str) -> tuple[int, int]:
        """How many chats and characters a book is attached to (before it leaves the library)."""
        chats = self._read("SELECT COUNT(*) FROM chat_lore WHERE book = ?", (book,))[0][0]
        cards = self._read("SELECT COUNT(*) FROM card_lore WHERE book = ?", (book,))[0][0]
        return int(chats), int(cards)

    # -- state and file hashes ------------------------------------------------------

    def get_state(self, key: str, default: str | None = None) -> str | None:
        rows = self._read("SELECT value FROM state WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def set_state(self, key: str, value: str) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = ?",
                (key, value, value),
            )

    def file_sha256(self, path: Path) -> str:
        """SHA-256 of a model file, computed once per (path, size, mtime)."""
        cached = self.cached_sha256(path)
        if cached is not None:
            return cached
        st = path.stat()
        key = str(path.resolve())
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

    def cached_sha256(self, path: Path) -> str | None:
        """The hash computed before, if the file has not changed since; never reads the file."""
        try:
            st = path.stat()
        except OSError:
            return None
        rows = self._read("SELECT size, mtime_ns, sha256 FROM file_hashes WHERE path = ?", (str(path.resolve()),))
        if rows and rows[0][0] == st.st_size and rows[0][1] == st.st_mtime_ns:
            return str(rows[0][2])
        return None

    def backfill_sha256(self, path: str, sha256: str) -> int:
        """Fill the model hash into replies made before it was known (hashing a big file takes minutes)."""
        with self._tx() as c:
            cur = c.execute(
                "UPDATE swipes SET provenance = json_set(provenance, '$.model.sha256', ?) "
                "WHERE json_extract(provenance, '$.model.path') = ? "
                "AND json_extract(provenance, '$.model.sha256') IS NULL",
                (sha256, path),
            )
            return cur.rowcount


def _open(path: Path, busy_timeout: float, *, read_only: bool = False) -> sqlite3.Connection:
    target = path.resolve().as_uri() + "?mode=ro&immutable=1" if read_only else str(path)
    conn = sqlite3.connect(target, uri=read_only, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    # Text another tool wrote as invalid UTF-8 reads as U+FFFD, not as a failure of every read.
    conn.text_factory = _decode
    try:
        if not read_only:
            _set_wal(conn, busy_timeout)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        migrate(conn, str(path))
    except BaseException:
        conn.close()
        raise
    return conn


def _set_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """WAL mode, waiting for other openers as the busy timeout says.

    SQLite answers a journal-mode change with "database is locked" at once, without
    its busy handler, while another connection opens the same new file; several
    Cattery processes starting together would otherwise fail on their first run.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _json_dict(text: Any) -> dict[str, Any]:
    """A JSON object column; {} for anything else (a row written by another tool, or damaged)."""
    try:
        value = json.loads(text or "{}")
    except (TypeError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT under the store's lock, rolled back on any error.

    SQLite's own failures (busy, full, read-only, damaged) leave as one-line errors.
    """

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock, path: Path) -> None:
        self.conn = conn
        self.lock = lock
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            with sqlite_errors(self.path):
                self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.conn

    def __exit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        try:
            if exc_type is None:
                try:
                    self.conn.execute("COMMIT")
                    return
                except sqlite3.Error as commit_failed:  # e.g. the disk filled up writing the log
                    exc = commit_failed
            if self.conn.in_transaction:  # SQLite rolls some failures back itself
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                mine = translate(exc, self.path)
                if mine is not None:
                    raise mine from None
                if exc_type is None:
                    raise exc
        finally:
            self.lock.release()
