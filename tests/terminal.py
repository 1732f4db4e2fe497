"""A pseudo-terminal with the real `cattery` on its other side, and the chat database read
beside it: what the kill, instance and hostile-terminal tests watch, as a user's terminal would."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import DEADLINE, ROOT

# Colours and styles (dropped: they sit between the letters of a line) and every other escape
# sequence: cursor moves, titles, modes (each a line break: what follows is drawn elsewhere).
STYLES = re.compile(r"\x1b\[[0-9;:]*m")
ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()][0-9A-Za-z]|.)")


class Terminal:
    """A pty with the app on its other side; everything the app draws is read and kept.

    Every wait polls what was drawn (or the process) until a deadline that a loaded
    machine never reaches (tests/conftest.py DEADLINE): nothing here sleeps for a
    fixed time hoping that something has happened meanwhile.
    """

    def __init__(
        self, args: list[str], home: Path, size: tuple[int, int] = (110, 32), *, command: list[str] | None = None
    ) -> None:
        """`cattery ARGS` on the pty; or `command`, which starts it some other way (`$PY` is its Python)."""
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
        env = {**os.environ, "CATTERY_HOME": str(home), "TERM": "xterm-256color", "COLUMNS": str(size[0])}
        env.pop("TEXTUAL", None)
        env["PY"] = sys.executable
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "app", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.output += data

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def text(self, start: int = 0) -> str:
        """What was drawn from byte `start` on, as text: the words as they were written, a line
        break wherever the app moved the cursor (so words from two places never run together)."""
        return ESCAPES.sub("\n", STYLES.sub("", bytes(self.output[start:]).decode("utf-8", "replace")))

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
        start = time.monotonic()
        while not condition():
            assert self.proc.poll() is None, f"the app exited: {bytes(self.output[-2000:])!r}"
            assert time.monotonic() - start < timeout, f"{what} never happened: {self.text()[-1500:]!r}"
            time.sleep(0.05)

    def wait_for(self, needle: str, timeout: float = DEADLINE) -> None:
        self.wait_until(lambda: needle.encode() in self.output, f"{needle!r} on the screen", timeout)

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        """The exit status, once the process is gone and everything it wrote has been read."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout)  # the pty ends (EIO) when the last process on it is gone
        os.close(self.master)
        return code

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=DEADLINE)
        os.close(self.master)


def rows(db: Path, chat_id: int | None = None) -> list[tuple[str, str, str]]:
    """(role, state, text) of every message shown, chat by chat (or of one chat), read beside the app."""
    conn = sqlite3.connect(db)
    try:
        where = "" if chat_id is None else f" WHERE m.chat_id = {int(chat_id)}"
        return conn.execute(
            "SELECT m.role, s.state, s.text FROM messages m JOIN swipes s ON s.message_id = m.id "
            f"AND s.idx = m.active_swipe{where} ORDER BY m.chat_id, m.position"
        ).fetchall()
    finally:
        conn.close()


def wait_rows(db: Path, condition, timeout: float = DEADLINE) -> list[tuple[str, str, str]]:
    start = time.monotonic()
    while True:
        try:
            found = rows(db) if db.exists() else []
        except sqlite3.OperationalError:  # the file is there but its tables are not yet (a child creating it)
            found = []
        if condition(found):
            return found
        assert time.monotonic() - start < timeout, f"the database never got there: {found}"
        time.sleep(0.05)
