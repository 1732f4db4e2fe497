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
from app.session.chat import SnapshotUse

POLICIES = ("window", "all")  # [snapshots] keep

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


@dataclass(frozen=True)
class Kept:
    """What `KVKeeper.keep` kept: the state's tokens and bytes; `written`, the file being written
    on the writer thread (its bytes; None: kept in memory only); `notice`, one line for the
    person (a big save's size, or why the state stays in memory only)."""

    tokens: int
    nbytes: int
    written: Future[int] | None
    notice: str | None = None


BIG_SAVE_BYTES = 256 << 20  # a save this big is said before it is written (a 7B at 4k in F16 is 2 GB)


def human_bytes(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GB"
    return f"{n / (1 << 20):.0f} MB"


class KVKeeper:
    """Restores and keeps chats' states for one engine.

    `policy`: "window" keeps what the chat's next prompt reuses (the pinned block and the
    window); "all" keeps the cache as it is.
    """

    def __init__(
        self, engine: Engine, disk: SnapshotStore | None, memory: StateCache | None, policy: str = "window"
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"keep policy {policy!r}")
        self.engine = engine
        self.disk = disk
        self.memory = memory
        self.policy = policy
        self._said: set[tuple[object, ...]] = set()
        # Keeps and restores asked for by the app run here one after another, in the order asked;
        # files are written on the writer, so a keep queued behind a write waits for no disk.
        self._jobs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cattery-kv")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cattery-kv-writer")
        self._latest: dict[int, KVState] = {}  # chat id → the newest state waiting for the writer
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def use_engine(self, engine: Engine) -> None:
        """Keep and restore for another engine from now on (the app switched between its local model
        and a server): in order, so the keeps and restores asked before still use the engine they
        were asked for."""

        def switch() -> None:
            self.engine = engine

        self._jobs.submit(switch)

    @classmethod
    def for_workspace(cls, ws: Workspace, engine: Engine) -> KVKeeper | None:
        """As the settings ask (`[snapshots]`); None when snapshots are switched off."""
        from app.session.snapshots import StateCache

        prefs = ws.settings.snapshots
        if not prefs.enabled:
            return None
        return cls(engine, ws.snapshots, StateCache(prefs.memory_limit_mb << 20), prefs.keep)

    def restore(self, session: ChatSession) -> Restored:
        """Put the chat's kept state in the engine's cache, from memory or else from disk. The
        usual prefix reuse and context shift then evaluate only what differs."""
        key = self.engine.snapshot_key()
        chat_id = session.chat_id
        if key is None or self.engine.kv_owner() == chat_id:
            return Restored()  # no model; or the cache is this chat's already (it was opened again)
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
            n = self.engine.import_state(state, owner=chat_id)
        except CatteryError as exc:
            if self.disk is not None:
                self.disk.remove(chat_id)
            if self.memory is not None:
                self.memory.drop(chat_id)
            return Restored(note=f"the KV snapshot of chat {chat_id} was not used: {exc}")
        if n:
            session.restored = SnapshotUse(source, n)  # the next turn says it started from it
        return Restored(n, source)

    def restore_soon(self, session: ChatSession) -> Future[Restored]:
        """`restore` on the keeper's own thread, after the keeps and restores asked for before it:
        a chat left and a chat opened at once are kept and restored in that order."""
        return self._jobs.submit(self.restore, session)

    def keep_soon(self, session: ChatSession) -> Future[Kept | None]:
        """`keep` on the keeper's own thread, in order with `restore_soon`."""
        return self._jobs.submit(self.keep, session)

    def keep(self, session: ChatSession) -> Kept | None:
        """Keep the chat's state as the cache holds it now: a copy on the engine thread (between
        generations), then memory, then a file on the writer thread. None when there was nothing
        to keep (no model, an empty cache, or a cache that holds another chat's prompt).

        With `keep = "window"` (the default) the cache is first fitted to the chat's next prompt
        (`ChatSession.next_prompt`): the state holds the pinned block and the window, nothing the
        next turn would evaluate again.
        """
        if self.engine.snapshot_key() is None:
            return None
        serial = self.engine.kv_serial()  # a turn run from here on makes this keep moot (it keeps its own)
        fit = session.next_prompt() if self.policy == "window" else None
        try:
            state = self.engine.export_state(fit=fit, owner=session.chat_id, serial=serial)
        except CatteryError as exc:
            self.last_error = str(exc)
            return None
        if not state.tokens:
            return None
        chat_id = session.chat_id
        if self.memory is not None:
            self.memory.put(chat_id, state)
        notice = self._notice(chat_id, state)
        if self.disk is None or state.nbytes > self.disk.limit_bytes:
            if self.disk is not None:
                self.disk.remove(chat_id)  # an older, smaller one no longer matches the chat
            return Kept(len(state.tokens), state.nbytes, None, notice)
        with self._lock:
            self._latest[chat_id] = state
        return Kept(len(state.tokens), state.nbytes, self._writer.submit(self._write, chat_id, state), notice)

    def _notice(self, chat_id: int, state: KVState) -> str | None:
        """One line before a big save, or when a state is too big for the disk budget; said once
        per chat and size step, so a long chat does not repeat it after every reply."""
        size = state.nbytes
        if self.disk is not None and size > self.disk.limit_bytes:
            step = ("over", chat_id)
            line = (
                f"this chat's KV cache ({human_bytes(size)}, {len(state.tokens)} tokens) is over the snapshots' "
                f"disk limit ({human_bytes(self.disk.limit_bytes)}): it is kept in memory only "
                "([snapshots] disk_limit_mb)"
            )
        elif self.disk is not None and size >= BIG_SAVE_BYTES:
            step = ("big", chat_id, size.bit_length())
            line = f"saving this chat's KV cache to disk: {human_bytes(size)} ({len(state.tokens)} tokens)"
        else:
            return None
        with self._lock:
            if step in self._said:
                return None
            self._said.add(step)
        return line

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
        """Finish what is queued (a quit keeps the last state, and writes it), then stop."""
        self._jobs.shutdown(wait=True)
        self._writer.shutdown(wait=True)
