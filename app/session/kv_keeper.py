"""Keeping each chat's KV cache, so that no chat is evaluated twice: the one place the line
chat and the app ask to restore a chat's state when it opens, and to keep it after a reply
or when it is left.

The engine makes and takes states on its own thread (`Engine.export_state`/`import_state`:
a copy in memory, no disk); the memory cache and the disk store are `session/snapshots.py`.
A state is written to disk on one writer thread of its own, so neither a key press nor the
next turn waits for a file: the next turn waits at most for the copy on the engine thread.
When two saves of one chat queue up, only the newest is written.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.errors import CatteryError

if TYPE_CHECKING:
    from app.engine.engine import Engine
    from app.engine.snapshot import KVState
    from app.session.chat import ChatSession
    from app.session.snapshots import SnapshotStore, StateCache
    from app.session.workspace import Workspace


@dataclass(frozen=True)
class Restored:
    """What opening a chat found: tokens put back in the cache, and from where ("memory",
    "disk", or "" for none); `note` is one line when a snapshot was refused or failed."""

    tokens: int = 0
    source: str = ""
    note: str | None = None


class KVKeeper:
    """Restores and keeps chats' states for one engine."""

    def __init__(self, engine: Engine, disk: SnapshotStore | None, memory: StateCache | None) -> None:
        self.engine = engine
        self.disk = disk
        self.memory = memory
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cattery-kv-writer")
        self._latest: dict[int, KVState] = {}  # chat id → the newest state waiting for the writer
        self._lock = threading.Lock()
        self.last_error: str | None = None

    @classmethod
    def for_workspace(cls, ws: Workspace, engine: Engine) -> KVKeeper | None:
        """As the settings ask (`[snapshots]`); None when snapshots are switched off."""
        from app.session.snapshots import StateCache

        prefs = ws.settings.snapshots
        if not prefs.enabled:
            return None
        return cls(engine, ws.snapshots, StateCache(prefs.memory_limit_mb << 20))

    def restore(self, session: ChatSession) -> Restored:
        """Put the chat's kept state in the engine's cache, from memory or else from disk. The
        usual prefix reuse and context shift then evaluate only what differs."""
        key = self.engine.snapshot_key()
        if key is None:
            return Restored()
        chat_id = session.chat_id
        with self._lock:
            pending = self._latest.get(chat_id)
        state = pending if pending is not None and pending.key == key else None
        source = "memory"
        if state is None and self.memory is not None:
            state = self.memory.get(chat_id, key)
        note = None
        if state is None and self.disk is not None:
            state, note = self.disk.load(chat_id, key)
            source = "disk"
        if state is None:
            return Restored(note=note)
        try:
            n = self.engine.import_state(state)
        except CatteryError as exc:
            if self.disk is not None:
                self.disk.remove(chat_id)
            if self.memory is not None:
                self.memory.drop(chat_id)
            return Restored(note=f"the KV snapshot of chat {chat_id} was not used: {exc}")
        return Restored(n, source)

    def keep(self, session: ChatSession) -> Future[int] | None:
        """Keep the chat's state as the cache holds it now: a copy on the engine thread (between
        generations), then memory, then a file on the writer thread. The future gives the bytes
        written (0: not written); None when there was nothing to keep."""
        if self.engine.snapshot_key() is None:
            return None
        try:
            state = self.engine.export_state()
        except CatteryError as exc:
            self.last_error = str(exc)
            return None
        if not state.tokens:
            return None
        chat_id = session.chat_id
        if self.memory is not None:
            self.memory.put(chat_id, state)
        if self.disk is None:
            return None
        with self._lock:
            self._latest[chat_id] = state
        return self._writer.submit(self._write, chat_id, state)

    def _write(self, chat_id: int, state: KVState) -> int:
        with self._lock:
            if self._latest.get(chat_id) is not state:
                return 0  # a newer save of this chat is queued behind: it is the one written
        assert self.disk is not None
        try:
            return self.disk.save(chat_id, state)
        except CatteryError as exc:
            self.last_error = str(exc)  # a full disk costs the snapshot, never the chat
            return 0
        finally:
            with self._lock:
                if self._latest.get(chat_id) is state:
                    del self._latest[chat_id]

    def forget(self, chat_id: int) -> None:
        """The chat was deleted: nothing of it is kept."""
        with self._lock:
            self._latest.pop(chat_id, None)
        if self.memory is not None:
            self.memory.drop(chat_id)
        if self.disk is not None:
            self.disk.remove(chat_id)

    def close(self) -> None:
        """Write what is queued (a quit keeps the last state), then stop the writer."""
        self._writer.shutdown(wait=True)
