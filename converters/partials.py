"""Files and folders being written, named so that a killed writer's leftovers are found and removed.

A conversion writes gigabytes under a temporary name and renames it into place when
complete. Killed with SIGKILL (or by the out-of-memory killer, or a power cut), it never
gets to remove that temporary file, and the next run would leave it there forever. So
every temporary output is named `.{final name}.{pid}[.{tag}].partial` and held under an
exclusive `flock` while it is written; a later run into the same folder removes each such
leftover whose writer is gone.

"Gone" needs two signs, because either alone can lie: the lock is free (a live writer
holds it until it is done; the kernel drops it when the writer dies, however it dies),
and no process has that pid (a lock is taken a moment after the file is made, so a
fresh file of a live writer may not be locked yet). A pid reused by an unrelated process
only delays the cleanup; a writer in another pid namespace still holds its lock. Two
runs into the same folder therefore never remove each other's work.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SUFFIX = ".partial"
_NAME = re.compile(r"^\.(?P<final>.+)\.(?P<pid>\d{1,10})(?:\.[A-Za-z0-9_]+)?\.partial$")
# What Cattery wrote before partials carried a pid: `.NAME.partial` (conversions, merges, shards),
# `.NAME.gguf.XXXXXXXX.part` (quantizations), `.NAME.old-PID` (a merge replacing a folder). Without a
# pid to ask about, they are removed only once nothing has touched them for STALE_SECONDS.
_OLD_NAMES = (
    re.compile(r"^\.(?P<final>.+)\.partial$"),
    re.compile(r"^\.(?P<final>.+\.gguf)\.[a-z0-9_]{8}\.part$"),
    re.compile(r"^\.(?P<final>.+)\.old-(?P<pid>\d{1,10})$"),
)
STALE_SECONDS = 3600
SCAN_LIMIT = 100_000  # entries looked at in one folder: a cleanup never walks a huge folder for long


def partial_name(final_name: str, tag: str = "") -> str:
    """The temporary name of `final_name` while this process writes it."""
    return f".{final_name}.{os.getpid()}{'.' + tag if tag else ''}{SUFFIX}"


def lock(fd: int) -> bool:
    """Take the exclusive lock without waiting; False when someone holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the pid alone decides
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    except OverflowError:
        return False
    return True


class Held:
    """A temporary file or folder of this process, locked for as long as it is written."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def remove(self) -> None:
        """Remove what was written and let go of the lock."""
        with contextlib.suppress(OSError):
            if self.path.is_dir() and not self.path.is_symlink():
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                self.path.unlink(missing_ok=True)
        self.release()


def hold_file(folder: Path, final_name: str, tag: str = "") -> Held:
    """Create the (empty) temporary file for `final_name` in `folder`, locked."""
    path = Path(folder) / partial_name(final_name, tag)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
    lock(fd)
    return Held(path, fd)


def hold_folder(folder: Path, final_name: str, tag: str = "", *, unique: bool = False) -> Held:
    """Create the temporary folder for `final_name` in `folder`, locked.

    `unique` adds a random part, for a process that may write several at once.
    """
    folder = Path(folder)
    if unique:
        path = Path(tempfile.mkdtemp(prefix=f".{final_name}.{os.getpid()}.", suffix=SUFFIX, dir=folder))
    else:
        path = folder / partial_name(final_name, tag)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)  # this very process's own, from an earlier try
        path.mkdir()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    lock(fd)
    return Held(path, fd)


def _abandoned(entry: os.DirEntry[str]) -> bool:
    """Named as a partial whose writer is gone: its pid is not running (or, for a name without a pid,
    nothing has touched it for an hour). The lock is checked by the caller."""
    m = _NAME.match(entry.name)
    if m is not None:
        pid = int(m.group("pid"))
        return pid != os.getpid() and not _pid_alive(pid)
    for pattern in _OLD_NAMES:
        m = pattern.match(entry.name)
        if m is None:
            continue
        pid = m.groupdict().get("pid")
        if pid is not None and (int(pid) == os.getpid() or _pid_alive(int(pid))):
            return False
        try:
            age = time.time() - entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            return False
        return age > STALE_SECONDS
    return False


def leftovers(folder: Path) -> Iterator[Path]:
    """The partial files and folders in `folder` whose writers are gone."""
    try:
        entries = os.scandir(folder)
    except OSError:
        return
    with entries:
        for i, entry in enumerate(entries):
            if i >= SCAN_LIMIT:
                return
            if not _abandoned(entry):
                continue
            path = Path(entry.path)
            if entry.is_symlink():  # never ours: removed as a name, never followed
                yield path
                continue
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                continue
            try:
                if lock(fd):
                    yield path
            finally:
                os.close(fd)


def clean_leftovers(folder: Path) -> list[Path]:
    """Remove what killed writers left in `folder`; the paths removed. Never fails."""
    removed = []
    for path in list(leftovers(folder)):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed
