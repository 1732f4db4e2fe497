"""Where chats' KV-cache states are kept between turns: a few in RAM, more on disk.

Policy only: the engine makes and takes the states (`Engine.export_state`/`import_state`),
`app.engine.snapshot` writes and checks the files; this module decides which states are
kept, for which chat, and what is evicted when a byte budget is passed. Both stores are
thread-safe, so a save can run on a worker thread while the UI asks what is there.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

from app.engine.snapshot import (
    MAX_HEADER,
    TEMP_SUFFIX,
    KVState,
    SnapshotDamaged,
    SnapshotKey,
    SnapshotMismatch,
    read_snapshot,
    write_snapshot,
)
from app.errors import disk_error

SUFFIX = ".kv"
HEADER_ROOM = 16 + MAX_HEADER  # a file is its state's nbytes plus at most this
STALE_TEMP_SECONDS = 3600.0  # a temporary file this old is a save that was killed


class StateCache:
    """The last few chats' states in memory, least recently used evicted past `budget_bytes`.

    Switching between two chats (or a chat and its branch) then costs an import, not a
    re-evaluation. A state bigger than the whole budget is not kept at all.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = max(0, int(budget_bytes))
        self._states: OrderedDict[int, KVState] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, chat_id: int, key: SnapshotKey | None) -> KVState | None:
        """The chat's state if one is kept and was made under `key` (else None; a state for
        another model or setting is dropped, since it cannot be used until they change back)."""
        with self._lock:
            state = self._states.get(chat_id)
            if state is None:
                return None
            if key is None or state.key != key:
                del self._states[chat_id]
                return None
            self._states.move_to_end(chat_id)
            return state

    def put(self, chat_id: int, state: KVState) -> None:
        with self._lock:
            self._states.pop(chat_id, None)
            if state.nbytes > self.budget_bytes:
                return
            self._states[chat_id] = state
            total = sum(s.nbytes for s in self._states.values())
            while total > self.budget_bytes and len(self._states) > 1:
                _, old = self._states.popitem(last=False)
                total -= old.nbytes

    def drop(self, chat_id: int) -> None:
        with self._lock:
            self._states.pop(chat_id, None)

    def clear(self) -> None:
        with self._lock:
            self._states.clear()

    def total(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._states.values())

    def __contains__(self, chat_id: object) -> bool:
        with self._lock:
            return chat_id in self._states


class SnapshotStore:
    """One snapshot file per chat in `folder` (`<chat id>.kv`), at most `limit_bytes` in all.

    A file's mtime is its last use: a save writes it, a load touches it, and eviction
    removes the least recently used first, never the file just saved. A state bigger
    than the whole limit is not saved at all (the caller says the size before a big save).
    """

    def __init__(self, folder: Path, limit_bytes: int) -> None:
        self.folder = Path(folder)
        self.limit_bytes = max(0, int(limit_bytes))
        self._lock = threading.Lock()

    def path(self, chat_id: int) -> Path:
        if not isinstance(chat_id, int) or isinstance(chat_id, bool) or chat_id < 0:
            raise ValueError(f"not a chat id: {chat_id!r}")
        return self.folder / f"{chat_id}{SUFFIX}"

    def save(self, chat_id: int, state: KVState) -> int:
        """Write the chat's snapshot (atomically) and evict old ones past the limit; the bytes
        written. A state bigger than the whole limit is not written (0, and the chat's older
        snapshot is removed: it no longer matches the chat). Raises DiskError (one line)
        if the folder cannot be written."""
        path = self.path(chat_id)
        if state.nbytes > self.limit_bytes:
            self.remove(chat_id)
            return 0
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            written = write_snapshot(path, state)
        except OSError as exc:
            raise disk_error(exc, "save the chat's KV snapshot") from None
        with self._lock:
            self._evict(keep=path)
        return written

    def load(
        self, chat_id: int, key: SnapshotKey, *, max_bytes: int | None = None
    ) -> tuple[KVState | None, str | None]:
        """(state, None) if the chat has a usable snapshot; (None, None) if it has none;
        (None, why) if it had one that was another model's or settings', or damaged: that
        file is removed and `why` is one line for a notice.

        `max_bytes` bounds the memory a load may take (default: the store's limit, which
        every file the store writes fits in).
        """
        path = self.path(chat_id)
        if not path.is_file():
            return None, None
        cap = self.limit_bytes + HEADER_ROOM if max_bytes is None else max_bytes
        try:
            state = read_snapshot(path, key, max_bytes=cap)
        except (SnapshotMismatch, SnapshotDamaged) as exc:
            with contextlib.suppress(OSError):
                path.unlink()
            return None, f"the KV snapshot of chat {chat_id} was not used: {exc}"
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used
        return state, None

    def remove(self, chat_id: int) -> bool:
        """Delete the chat's snapshot (when the chat is deleted); True if there was one."""
        try:
            self.path(chat_id).unlink()
            return True
        except FileNotFoundError:
            return False

    def sizes(self) -> dict[int, int]:
        """Chat id → bytes of its snapshot, for every snapshot present (temporary files of a
        save in progress or killed are not snapshots and are left out)."""
        return {chat_id: size for chat_id, size, _mtime, _path in self._files()}

    def total(self) -> int:
        return sum(self.sizes().values())

    def _files(self) -> list[tuple[int, int, float, Path]]:
        out: list[tuple[int, int, float, Path]] = []
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return out
        for entry in entries:
            name = entry.name
            if not name.endswith(SUFFIX) or name.startswith("."):
                continue
            stem = name[: -len(SUFFIX)]
            if not stem.isdigit() or not stem.isascii():
                continue
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    st = entry.stat(follow_symlinks=False)
                    out.append((int(stem), st.st_size, st.st_mtime, Path(entry.path)))
        return out

    def _evict(self, keep: Path) -> None:
        """Remove least recently used snapshots until the total fits, never `keep`; and
        temporary files left by saves that were killed."""
        now = time.time()
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.folder):
                if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
                    with contextlib.suppress(OSError):
                        if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMP_SECONDS:
                            os.unlink(entry.path)
        files = sorted(self._files(), key=lambda f: f[2])
        total = sum(f[1] for f in files)
        for _chat_id, size, _mtime, path in files:
            if total <= self.limit_bytes:
                break
            if path == keep:
                continue
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size
