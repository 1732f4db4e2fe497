"""Write files so that a crash or a full disk never leaves a half-written one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: setting it is process-wide, not for threads


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync it, then rename it into place.

    The file gets the permissions a plain `open()` would give it (mkstemp's are 0600).
    """
    write_parts_atomic(path, [data])


def write_parts_atomic(path: Path, parts: Iterable[bytes | bytearray], *, private: bool = False) -> int:
    """`write_bytes_atomic` for data in pieces (a header and a body of hundreds of MB, never
    joined in memory); the bytes written. `private`: only this user may read the file (a chat's
    KV cache holds what was said). The temporary file is `.NAME.*.tmp` beside `path`: a save
    that was killed leaves only that, and readers skip it. The folder is synced after the
    rename, so the rename itself survives a power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    written = 0
    try:
        if not private:
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
                written += len(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return written


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_text_checked(path: Path, text: str, check: Callable[[Path], object]) -> None:
    """Write `text` atomically, then read it back with `check`; a file `check` refuses (a
    CatteryError) is removed and the error raised, so nothing unreadable is left where the next
    listing would meet it."""
    from app.errors import CatteryError

    write_text_atomic(path, text)
    try:
        check(path)
    except CatteryError:
        path.unlink(missing_ok=True)
        raise
