"""SQLite's failures as one line a person can act on.

The chat database fails in a handful of ways that are not bugs: another Cattery holds
the write lock, the disk is full, the folder is read-only, the file was damaged or is
not a database at all. Each becomes a `CatteryError` naming the file or its folder;
the transaction that hit it is rolled back, so nothing saved before is lost.
Anything else (a constraint Cattery itself broke, a wrong parameter) stays a bug.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from app.errors import CatteryError, DiskError


class ChatsBusyError(CatteryError):
    """Another process held the chat database's write lock for longer than the busy timeout."""


class ChatsDamagedError(CatteryError):
    """The chat database file is not SQLite, or is truncated or corrupt."""


# SQLite's primary result codes (https://sqlite.org/rescode.html).
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26
_BY_TEXT = (
    ("database is locked", _BUSY),
    ("database is busy", _BUSY),
    ("database table is locked", _LOCKED),
    ("readonly database", _READONLY),
    ("disk i/o error", _IOERR),
    ("malformed", _CORRUPT),
    ("database or disk is full", _FULL),
    ("unable to open database", _CANTOPEN),
    ("file is not a database", _NOTADB),
)


def _code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        return code & 0xFF
    text = str(exc).lower()
    return next((c for fragment, c in _BY_TEXT if fragment in text), None)


def _statvfs(folder: Path) -> os.statvfs_result | None:
    try:
        return os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return None


def on_read_only_filesystem(folder: Path) -> bool:
    st = _statvfs(folder)
    return st is not None and bool(st.f_flag & os.ST_RDONLY)


def _disk_full(folder: Path) -> bool:
    st = _statvfs(folder)
    return st is not None and not st.f_flag & os.ST_RDONLY and st.f_bavail * st.f_frsize < 1 << 20


def is_busy(exc: sqlite3.Error) -> bool:
    return _code(exc) in (_BUSY, _LOCKED)


def translate(exc: sqlite3.Error, path: Path) -> CatteryError | None:
    """The one-line error for `exc`, or None when it is not the environment's doing (a bug)."""
    code = _code(exc)
    folder = path.parent
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if code in (_BUSY, _LOCKED):
        return ChatsBusyError(f"{path}: the chats database is busy (another Cattery?); nothing was changed, try again")
    if code == _READONLY or (code in (_IOERR, _CANTOPEN) and on_read_only_filesystem(folder)):
        return DiskError(f"cannot write the chats database in {folder}: the folder or the database is read-only")
    if code == _FULL or (code in (_IOERR, _CANTOPEN) and _disk_full(folder)):
        # SQLite says "disk I/O error" when a full disk stops it making its shared-memory file.
        return DiskError(f"cannot write the chats database in {folder}: the disk is full; nothing saved before is lost")
    if code == _CANTOPEN:
        return DiskError(f"cannot open the chats database {path}: {reason} (is {folder} writable?)")
    if code == _IOERR:
        return DiskError(f"cannot read or write the chats database in {folder}: {reason}")
    if code in (_CORRUPT, _NOTADB):
        return ChatsDamagedError(
            f"{path}: the chats database is damaged ({reason}); move it aside and Cattery starts a new one"
        )
    if "no such table" in reason or "no such column" in reason:  # another app's file, or ours mangled
        return ChatsDamagedError(f"{path}: not a Cattery chats database ({reason})")
    return None


@contextlib.contextmanager
def sqlite_errors(path: Path) -> Iterator[None]:
    """Turn the environment's SQLite failures inside the block into one-line errors."""
    try:
        yield
    except sqlite3.Error as exc:
        mine = translate(exc, path)
        if mine is None:
            raise
        raise mine from None
