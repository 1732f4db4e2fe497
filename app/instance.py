"""One full-screen app per data folder, held by an OS lock that dies with its process.

Two apps on one data folder would both open the same chat, each with its own copy of
its messages, and a message sent from each would interleave (user, user, assistant,
assistant) with the wrong speaker shown. So the app takes an exclusive `flock` on
`app.lock` in the data folder for as long as it runs; a second app says in one line
where the first one is and exits. The kernel drops the lock when the process ends in
any way (quit, crash, SIGKILL), so a dead app never blocks the next start and there is
no stale lock file to clean up.

The line chat and the other commands never take the app's lock: they work beside the app.
The line chat writes its turns into the chat it continues, so it holds that one chat the
same way (`claim_chat`, a lock file per chat under `open-chats/`): the app will not open
it, nor a second line chat continue it, while it runs. A command that changes a stored
chat asks `chat_in_use` first and leaves alone a chat the app or a line chat has open.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.errors import CatteryError

if TYPE_CHECKING:
    from app.chats.store import ChatStore

try:
    import fcntl
except ImportError:  # Windows: no flock; the app runs without the guard there
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "app.lock"
CHAT_LOCKS = "open-chats"  # one lock file per chat a line chat has held
MAX_INFO_BYTES = 4096  # what the lock file says about its holder; anything longer is not ours


class AlreadyRunningError(CatteryError):
    """The full-screen app already runs on this data folder."""


@dataclass(frozen=True)
class Holder:
    """The running app, as it described itself in the lock file (each part may be unknown)."""

    pid: int | None
    terminal: str | None
    since: float | None
    kind: str = "app"  # "app": the full-screen app; "line": a line chat (`cattery chat --plain`)

    def where(self) -> str:
        """Who has a chat open, as a sentence says it: "the running app (pid 12 on /dev/pts/3)"."""
        who = "the running app" if self.kind == "app" else "a line chat"
        return f"{who} ({self.describe()})"

    def describe(self) -> str:
        parts = [f"pid {self.pid}" if self.pid else "pid unknown"]
        if self.terminal:
            parts.append(f"on {self.terminal}")
        if self.since:
            parts.append(time.strftime("since %H:%M", time.localtime(self.since)))
        return " ".join(parts)


class AppLock:
    """The app's hold on its data folder; `release` (or leaving the `with`) lets the next one start."""

    def __init__(self, fd: int | None, path: Path) -> None:
        self.fd = fd
        self.path = path

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = None

    def __enter__(self) -> AppLock:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def lock_path(data_dir: Path) -> Path:
    return data_dir / LOCK_FILE


def _open(path: Path, *, create: bool) -> int | None:
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    if create:
        flags |= os.O_CREAT
    try:
        return os.open(path, flags, 0o600)
    except OSError:
        return None


def _terminal() -> str | None:
    for stream in (sys.stdin, sys.stdout):
        try:
            return os.ttyname(stream.fileno())
        except (OSError, AttributeError, ValueError):
            continue
    return None


def claim_app(data_dir: Path) -> AppLock:
    """Hold the data folder for this app, or raise `AlreadyRunningError` naming the one that does.

    A folder where no lock can be made (read-only, a filesystem without locks, Windows)
    is not held: the app still starts, as it did before there was a lock; the chat
    store says what it can't do there.
    """
    path = lock_path(data_dir)
    lock = _claim(path)
    if lock is None:
        raise AlreadyRunningError(already_running(data_dir, read_holder(path))) from None
    return lock


def chat_lock_path(data_dir: Path, chat_id: int) -> Path:
    return data_dir / CHAT_LOCKS / f"{int(chat_id)}.lock"


def claim_chat(data_dir: Path, chat_id: int) -> AppLock | None:
    """Hold a stored chat for this line chat while it writes into it; None if another line chat
    holds it. Where no lock can be made the chat is not held (as for the app)."""
    return _claim(chat_lock_path(data_dir, chat_id))


def _claim(path: Path) -> AppLock | None:
    """An exclusive flock on `path` with who holds it written in; None if another process holds it."""
    if fcntl is None:
        return AppLock(None, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return AppLock(None, path)
    fd = _open(path, create=True)
    if fd is None:
        return AppLock(None, path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:  # ENOLCK and the like: this filesystem keeps no locks
        os.close(fd)
        return AppLock(None, path)
    info = {"pid": os.getpid(), "terminal": _terminal(), "since": time.time()}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError:
        pass  # the lock holds even when who holds it could not be written down
    return AppLock(fd, path)


def read_holder(path: Path) -> Holder:
    """What the lock file says about the app holding it (parts it can't tell are None)."""
    fd = _open(path, create=False)
    if fd is None:
        return Holder(None, None, None)
    try:
        data = os.read(fd, MAX_INFO_BYTES + 1)
    except OSError:
        data = b""
    finally:
        os.close(fd)
    try:
        info = json.loads(data.decode()) if len(data) <= MAX_INFO_BYTES else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        info = None
    if not isinstance(info, dict):
        return Holder(None, None, None)
    pid, terminal, since = info.get("pid"), info.get("terminal"), info.get("since")
    return Holder(
        pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None,
        terminal if isinstance(terminal, str) and terminal.startswith("/dev/") and len(terminal) < 64 else None,
        float(since) if isinstance(since, int | float) and not isinstance(since, bool) and 0 < since < 2**34 else None,
    )


def running_app(data_dir: Path) -> Holder | None:
    """The app running on this data folder, or None. Never takes the lock for longer than a look."""
    return _holder(lock_path(data_dir))


def line_chat_holding(data_dir: Path, chat_id: int) -> Holder | None:
    """The line chat writing into this chat, or None."""
    holder = _holder(chat_lock_path(data_dir, chat_id))
    return dataclasses.replace(holder, kind="line") if holder is not None else None


def _holder(path: Path) -> Holder | None:
    if fcntl is None:
        return None
    fd = _open(path, create=False)
    if fd is None:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_holder(path)
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def already_running(data_dir: Path, holder: Holder) -> str:
    return (
        f"Cattery is already running on this data folder ({data_dir}), {holder.describe()}: switch to that "
        "terminal, or use `cattery chat --plain` and the other commands here, which work beside it "
        "(CATTERY_HOME=DIR runs a separate Cattery)"
    )


def chat_in_use(data_dir: Path, store: ChatStore, chat_id: int) -> Holder | None:
    """Who has this chat open: the running app (it records its open chat as `last_chat`), or a
    line chat writing into it; None if nobody."""
    holder = running_app(data_dir)
    if holder is not None and store.get_state("last_chat") == str(chat_id):
        return holder
    return line_chat_holding(data_dir, chat_id)


def refuse_if_in_use(data_dir: Path, store: ChatStore, chat_id: int, doing: str) -> None:
    """A one-line error when the app or a line chat has this chat open: two writers would mix its messages."""
    holder = chat_in_use(data_dir, store, chat_id)
    if holder is not None:
        there = "open another chat there first" if holder.kind == "app" else "leave that chat first"
        raise CatteryError(f"chat {chat_id} is open in {holder.where()}: {there}, then {doing} it")
